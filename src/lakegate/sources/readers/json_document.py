"""The JSON document reader: a top-level array of objects (or objects one after another), streamed."""

from __future__ import annotations

from typing import Any

import numpy as np

from lakegate.sources.compression import DecodedStream
from lakegate.sources.readers.base import Chunk, FormatReader, ReadContext
from lakegate.sources.readers.json_decoding import decode_json_spans, open_text
from lakegate.sources.readers.scanning import first_non_space, scan_top_level


class JsonReader(FormatReader):
    """A JSON document: a top-level array of objects (or one object), streamed chunk by chunk.

    Resumes at a byte offset between records (``in_array`` says whether that is inside the top-level
    array); positions are 0-based record indices. Raw payloads are the records' original JSON text.
    One record is held whole, so a single top-level object is limited by memory, an array is not.
    """

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        super().__init__(ctx, resume)
        self.in_array = bool((resume or {}).get("in_array", False))
        self._stream: DecodedStream | None = None
        self._carry = b""
        self._eof = False

    def position(self) -> dict[str, Any]:
        return {**super().position(), "in_array": self.in_array}

    def read(self) -> Chunk | None:
        if self._stream is None:
            self._stream, self.offset, self._carry = open_text(self.ctx, self.offset)
        stream = self._stream
        buf = self._carry
        want = self.ctx.batch_bytes
        while True:
            while not self._eof and len(buf) < want:
                more = stream.read(want - len(buf))
                self._eof = not more
                buf += more
            arr = np.frombuffer(buf, dtype=np.uint8)
            ends, starts, in_array = scan_top_level(arr, self.in_array)
            if ends.size or self._eof:
                break
            want = 2 * len(buf)
        span_starts = np.concatenate(([0], starts[:-1])).astype(np.int64)
        state_after = in_array
        if self._eof and not stream.damage:  # the tail after the last cut is a last (odd) record
            span_starts = np.append(span_starts, starts[-1] if starts.size else 0)
            ends = np.append(ends, len(buf))
            starts = np.append(starts, len(buf))
            state_after = np.append(in_array, False)
        firsts = first_non_space(arr, span_starts, ends)
        records = np.flatnonzero(firsts < ends)
        cut_index = len(ends) - 1
        if records.size > self.ctx.batch_rows:
            cut_index = int(records[self.ctx.batch_rows - 1])
            records = records[: self.ctx.batch_rows]
        consumed = int(starts[cut_index]) if cut_index >= 0 else 0
        parse = arr[:consumed].copy()
        separators = starts[: cut_index + 1][starts[: cut_index + 1] > ends[: cut_index + 1]] - 1
        parse[separators] = 10
        view = memoryview(buf)[:consumed]
        chunk = decode_json_spans(
            self.ctx,
            view,
            parse,
            (span_starts[records], ends[records], firsts[records]),
            self.record + np.arange(records.size),
            base_offset=self.offset,
            multiline=True,
        )
        if cut_index >= 0:
            self.in_array = bool(state_after[cut_index])
        self._carry = buf[consumed:]
        self.offset += consumed
        self.record += records.size
        if self._eof and stream.damage:
            self.fail(stream.damage, self.offset, stream.offset)
        elif self._eof and not self._carry:
            self.finished = True
        return chunk

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
