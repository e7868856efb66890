"""The NDJSON reader: chunks of whole lines, resumable at any line."""

from __future__ import annotations

from typing import Any

import numpy as np

from lakegate.sources.compression import READ_SIZE, DecodedStream
from lakegate.sources.readers.base import Chunk, FormatReader, ReadContext
from lakegate.sources.readers.json_decoding import decode_json_spans, open_text
from lakegate.sources.readers.scanning import first_non_space


class NdjsonReader(FormatReader):
    """Newline-delimited JSON, resumed at a byte offset; positions are 1-based line numbers.

    A chunk is ``batch_bytes`` of whole lines (a longer line is read to its end, however long);
    blank lines are skipped and do not count as records.
    """

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        super().__init__(ctx, resume)
        self.line = int((resume or {}).get("line", 0))
        self._stream: DecodedStream | None = None
        self._carry = b""
        self._eof = False

    def position(self) -> dict[str, Any]:
        return {**super().position(), "line": self.line}

    def next_label(self) -> str:
        return str(self.line + 1)

    def read(self) -> Chunk | None:
        if self._stream is None:
            self._stream, self.offset, self._carry = open_text(self.ctx, self.offset)
        stream = self._stream
        buf, newlines = self._fill(stream)
        cut = int(newlines[-1]) + 1 if newlines.size else 0
        if self._eof and not stream.damage:
            cut = buf.size
        ends = newlines if cut == 0 or buf[cut - 1] == 10 else np.append(newlines, cut)
        if len(ends) > self.ctx.batch_rows:
            ends = ends[: self.ctx.batch_rows]
            cut = int(ends[-1]) + 1
        self._carry = buf[cut:].tobytes()
        arr = buf[:cut]
        view = arr.data
        starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64) if len(ends) else ends
        firsts = first_non_space(arr, starts, ends)
        records = np.flatnonzero(firsts < ends)
        chunk = decode_json_spans(
            self.ctx,
            view,
            view,
            (starts[records], ends[records], firsts[records]),
            self.line + 1 + records,
            base_offset=self.offset,
            multiline=False,
        )
        self.offset += cut
        self.line += len(ends)
        self.record += len(records)
        if self._eof and stream.damage:
            self.fail(stream.damage, self.offset, stream.offset)
        elif self._eof and not self._carry:
            self.finished = True
        return chunk if len(ends) else None

    def _fill(self, stream: DecodedStream) -> tuple[np.ndarray, np.ndarray]:
        """Carried bytes plus about ``batch_bytes`` more, extended until a line ends; and the line ends.

        Reads go straight into one numpy buffer: there is no copy to join reads, and numpy puts large
        buffers on huge pages where the OS allows, so filling one costs several times less than
        filling a new ``bytes``.
        """
        carry = self._carry
        buf = np.empty(max(self.ctx.batch_bytes, len(carry)), dtype=np.uint8)
        buf[: len(carry)] = np.frombuffer(carry, dtype=np.uint8)
        size = len(carry)
        while not self._eof and size < buf.size:
            # Released at once: a traceback the stream keeps after damage may still refer to it.
            with buf[size:].data as room:
                count = stream.readinto(room)
            self._eof = not count
            size += count
        buf = buf[:size]
        newlines = np.flatnonzero(buf == 10)
        if newlines.size or self._eof:
            return buf, newlines
        grown = bytearray(buf)
        while not self._eof:
            more = stream.read(max(len(grown), READ_SIZE))
            self._eof = not more
            grown += more
            if b"\n" in more:
                break
        buf = np.frombuffer(grown, dtype=np.uint8)
        return buf, np.flatnonzero(buf == 10)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
