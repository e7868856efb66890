"""The CSV reader: chunks cut at row boundaries outside quotes, every column read as text."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from lakegate.core.deadletter import Reason
from lakegate.sources.compression import DecodedStream
from lakegate.sources.readers.base import DECODE_STAGE, Chunk, FormatReader, ReadContext, position_labels
from lakegate.sources.readers.rows import rows_raw
from lakegate.sources.readers.scanning import prefix_parity

_CSV_MIN_GROWTH_LIMIT = 1 << 20


class CsvReader(FormatReader):
    """CSV with a header row, cut into chunks at row boundaries and parsed by Arrow chunk by chunk.

    Row boundaries are newlines outside quotes (found with the vectorized quote parity), so quoted
    values may span lines, and a chunk never holds a partial row. Arrow's own streaming reader is not
    used because it reads up to 32 blocks ahead, which makes memory grow with the file. Every column
    is read as text (typed downstream), empty cells are nulls. Rows with the wrong number of columns or
    invalid UTF-8 become dead letters and count as read. Positions are 0-based data-row indices
    (malformed rows included); resuming seeks to ``offset``, a row boundary.
    """

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        super().__init__(ctx, resume)
        self._stream: DecodedStream | None = None
        self._names: list[str] = []
        self._carry = b""
        self._eof = False

    def read(self) -> Chunk | None:
        if self._stream is None:
            self._stream = DecodedStream(self.ctx.path, self.ctx.compression)
            if not self._read_header():
                return None
        stream = self._stream
        buf, boundaries = self._fill(self._carry)
        cut = int(boundaries[-1]) + 1 if boundaries.size else 0
        if self._eof and not stream.damage:
            cut = len(buf)
        if boundaries.size > self.ctx.batch_rows:
            cut = int(boundaries[self.ctx.batch_rows - 1]) + 1
        self._carry = buf[cut:]
        chunk = self._parse(memoryview(buf)[:cut])
        self.offset += cut
        self.record += chunk.records_read
        if self._eof and stream.damage:
            self.fail(stream.damage, self.offset, stream.offset)
        elif self._eof and not self._carry:
            self.finished = True
        return chunk

    def _read_header(self) -> bool:
        """Column names from the first row; then move to the resume offset. False for an empty file."""
        assert self._stream is not None
        buf, boundaries = self._fill(b"", first_row=True)
        if not buf.strip(b"\r\n"):
            if self._stream.damage:
                self.fail(self._stream.damage, 0, self._stream.offset)
            self.finished = True
            return False
        end = int(boundaries[0]) + 1 if boundaries.size else len(buf)
        header = pa_csv.read_csv(
            pa.BufferReader(buf[:end].rstrip(b"\r\n") + b"\n"),
            parse_options=pa_csv.ParseOptions(delimiter=self.ctx.csv_delimiter, newlines_in_values=True),
        )
        self._names = list(header.schema.names)
        self.offset = max(self.offset, end)
        if self.offset <= len(buf):
            self._carry = buf[self.offset :]
        else:
            self._stream.skip(self.offset)
            self._carry, self._eof = b"", False
        return True

    def _fill(self, carry: bytes, *, first_row: bool = False) -> tuple[bytes, np.ndarray]:
        """``carry`` plus about ``batch_bytes`` more, extended until a row ends; and the row ends.

        Quote parity counts every quote, while Arrow takes a quote in the middle of a field as a
        character; so when no row end turns up within a generous limit (a stray quote), any newline
        counts as one, keeping memory bounded. A quoted value cut that way becomes a malformed row.
        """
        assert self._stream is not None
        want = 1 << 16 if first_row else self.ctx.batch_bytes
        limit = max(4 * self.ctx.batch_bytes, _CSV_MIN_GROWTH_LIMIT)
        buf = carry
        while True:
            while not self._eof and len(buf) < want:
                more = self._stream.read(want - len(buf))
                self._eof = not more
                buf += more
            arr = np.frombuffer(buf, dtype=np.uint8)
            newline = arr == 10
            boundaries = np.flatnonzero(newline & ~prefix_parity(arr == 34))
            if not boundaries.size and len(buf) >= limit:
                boundaries = np.flatnonzero(newline)
            if boundaries.size or self._eof:
                return buf, boundaries
            want = 2 * len(buf)

    def _parse(self, data: memoryview) -> Chunk:
        bad: list[tuple[int | None, str, str]] = []

        def on_invalid(row: Any) -> str:
            bad.append((row.number, row.text, f"expected {row.expected_columns} columns, found {row.actual_columns}"))
            return "skip"

        if not bytes(data[:64]).strip() and not bytes(data).strip():  # nothing but blank lines
            table = pa.table({name: pa.array([], pa.string()) for name in self._names})
            return Chunk(table, position_labels(np.empty(0, np.int64)), self.dead_letters(), rows_raw(table), 0)
        table = self._read_csv(data, on_invalid, threads=True)
        if bad:  # Arrow numbers the malformed rows only when parsing on one thread
            bad.clear()
            table = self._read_csv(data, on_invalid, threads=False)
        total = table.num_rows + len(bad)
        bad_ordinals = np.array([(number or 0) - 1 for number, _, _ in bad], dtype=np.int64)
        good = np.setdiff1d(np.arange(total, dtype=np.int64), bad_ordinals, assume_unique=True)
        indices = self.record + good[: table.num_rows]
        table, indices, invalid = _utf8_rows(table, indices, self.ctx.csv_delimiter)
        dead = self.dead_letters()
        letters = [
            (self.record + o, text.encode(), m, Reason.MALFORMED_ROW)
            for o, (_, text, m) in zip(bad_ordinals.tolist(), bad, strict=True)
        ]
        for index, payload, message, reason in sorted(letters + invalid, key=lambda letter: letter[0]):
            dead.add(
                source=self.ctx.source_ref,
                position=str(index),
                stage=DECODE_STAGE,
                reason=reason,
                message=message,
                payload=payload,
            )
        return Chunk(table, position_labels(indices), dead, rows_raw(table), total)

    def _read_csv(self, data: memoryview, on_invalid: Any, *, threads: bool) -> pa.Table:
        block_size = max(1 << 20, len(data) // (os.cpu_count() or 1) + 1)
        return pa_csv.read_csv(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pa_csv.ReadOptions(column_names=self._names, use_threads=threads, block_size=block_size),
            parse_options=pa_csv.ParseOptions(
                delimiter=self.ctx.csv_delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.binary() for name in self._names},
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
            ),
        )

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def _utf8_rows(
    rows: pa.Table, indices: np.ndarray, delimiter: str
) -> tuple[pa.Table, np.ndarray, list[tuple[int, bytes, str, Reason]]]:
    """Binary CSV columns as strings; rows holding invalid UTF-8 are split off as dead letters."""
    as_text = pa.schema([pa.field(f.name, pa.string()) for f in rows.schema])
    try:
        return rows.cast(as_text), indices, []
    except pa.ArrowInvalid:
        pass
    good = np.ones(rows.num_rows, dtype=bool)
    for column in rows.columns:
        for i, value in enumerate(column.to_pylist()):
            if value is not None and not _valid_utf8(value):
                good[i] = False
    invalid = []
    for i in np.flatnonzero(~good).tolist():
        cells = [value or b"" for value in rows.slice(i, 1).to_pylist()[0].values()]
        invalid.append((int(indices[i]), delimiter.encode().join(cells), "invalid UTF-8", Reason.INVALID_UTF8))
    return rows.filter(pa.array(good)).cast(as_text), indices[good], invalid


def _valid_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
