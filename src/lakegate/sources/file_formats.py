"""Format readers behind ``FileSource``: each turns one file into Arrow chunks, resumable mid-file.

Every reader is forward-only and holds one chunk at a time, so memory does not grow with file size.
Damage never raises out of a reader: it sets ``failure`` (where the unread part starts and why) and
finishes, so the records read before the damage flow on and the rest becomes one dead letter.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal, cast
from uuid import UUID

import fastavro
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import zstandard

from lakegate.core.batch import RawPayloads
from lakegate.core.deadletter import DeadLetters, Reason

Compression = Literal["none", "gzip", "zstd"]

DECODE_STAGE = "decode"
_READ_SIZE = 1 << 20
_COMPRESSED_READ = 128 * 1024
_MIN_JSON_BLOCK = 4 << 20
_CSV_MIN_GROWTH_LIMIT = 1 << 20
_DAMAGE = (OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError)
"""What a damaged compressed stream raises (BadGzipFile is an OSError)."""
_CONVERSION = (ValueError, TypeError, OverflowError, NotImplementedError)
"""What Arrow raises when Python values do not fit one type (ArrowInvalid is a ValueError...)."""


# ---------------------------------------------------------------------------------------------------
# Streams


class _Decoder:
    """Decompresses a stream of frames (zstd) or members (gzip) and raises on a truncated one.

    Output decoded before damage is always handed out first; the error is raised on the next read.
    (``gzip.GzipFile`` drops the output of the read that hits a truncation, and ``zstandard``'s stream
    reader ends quietly on one, which would hide lost data.)
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._out = bytearray()
        self._error: Exception | None = None

    def read(self, size: int) -> bytes:
        if not self._out and self._error is not None:
            raise self._error
        while len(self._out) < size and self._error is None:
            try:
                if not self._step(size - len(self._out)):
                    break
            except _DAMAGE as err:
                self._error = err
        with memoryview(self._out) as pending:
            out = bytes(pending[:size])
        del self._out[:size]
        if not out and self._error is not None:
            raise self._error
        return out

    def _step(self, want: int) -> bool:
        """Decode some more into ``_out``; False at a clean end of stream."""
        raise NotImplementedError

    def close(self) -> None:
        self._out = bytearray()


class _ZstdFrames(_Decoder):
    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(raw)
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: Any = None

    def _step(self, want: int) -> bool:
        if self._frame is None or self._frame.eof:
            feed = self._frame.unused_data if self._frame is not None else b""
            feed = feed or self._raw.read(_COMPRESSED_READ)
            if not feed:
                return False
            self._frame = self._dctx.decompressobj()
        else:
            feed = self._raw.read(_COMPRESSED_READ)
            if not feed:
                raise EOFError("zstd stream ended in the middle of a frame (truncated file)")
        self._out += self._frame.decompress(feed)
        return True


class _GzipMembers(_Decoder):
    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(raw)
        self._member: Any = None
        self._pending = b""

    def _step(self, want: int) -> bool:
        if self._member is None:
            self._pending = self._pending.lstrip(b"\x00")  # zero padding between members is allowed
            while not self._pending:
                more = self._raw.read(_COMPRESSED_READ)
                if not more:
                    return False
                self._pending = more.lstrip(b"\x00")
            self._member = zlib.decompressobj(wbits=31)
        feed = self._pending or self._raw.read(_COMPRESSED_READ)
        if not feed:
            self._out += self._member.flush()
            raise EOFError("gzip stream ended in the middle of a member (truncated file)")
        self._out += self._member.decompress(feed, max(want, _COMPRESSED_READ))
        self._pending = self._member.unconsumed_tail
        if self._member.eof:
            self._pending, self._member = self._member.unused_data, None
        return True


class DecodedStream(io.RawIOBase):
    """The decompressed bytes of one file, read forward only.

    Damage (a truncated gzip or zstd stream, an I/O error) does not raise: the stream ends early and
    ``damage`` names the error, so a reader can emit what it read and dead-letter the rest.
    """

    def __init__(self, path: Path, compression: Compression) -> None:
        super().__init__()
        self._raw = open(path, "rb")  # closed in close()
        self.raw_size = os.fstat(self._raw.fileno()).st_size
        self.compression = compression
        self.offset = 0
        """Decompressed bytes handed out so far: where decoding got to."""
        self.damage: str | None = None
        self._ended = False
        self._decoder: Any
        if compression == "gzip":
            self._decoder = _GzipMembers(self._raw)
        elif compression == "zstd":
            self._decoder = _ZstdFrames(self._raw)
        else:
            self._decoder = self._raw

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.offset

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(_READ_SIZE), b""))
        parts: list[bytes] = []
        have = 0
        while have < size and not self._ended:
            chunk = self._decode(size - have)
            if not chunk:
                self._ended = True
                break
            parts.append(chunk)
            have += len(chunk)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(out)
        return out

    def _decode(self, size: int) -> bytes:
        try:
            return bytes(self._decoder.read(size))
        except _DAMAGE as err:
            self.damage = f"{type(err).__name__}: {err}"
            return b""

    def skip(self, offset: int) -> None:
        """Move forward to a decompressed offset (a seek for plain files)."""
        if self.compression == "none" and offset <= self.raw_size:
            self._raw.seek(offset)
            self.offset = offset
            return
        while self.offset < offset:
            if not self.read(min(_READ_SIZE, offset - self.offset)):
                return

    def close(self) -> None:
        if isinstance(self._decoder, _Decoder):
            self._decoder.close()
        self._raw.close()
        super().close()


# ---------------------------------------------------------------------------------------------------
# Reader plumbing


@dataclass(frozen=True)
class ReadContext:
    """What a reader needs to know about its file and the source."""

    path: Path
    source_ref: str
    compression: Compression
    batch_rows: int
    batch_bytes: int
    max_payload_bytes: int
    csv_delimiter: str = ","


@dataclass
class Failure:
    """The damaged rest of a file: what went wrong and where the unread part lies."""

    position: str
    start: int
    end: int
    message: str


@dataclass
class Chunk:
    """Records read by one ``read`` call, before ``FileSource`` wraps them in a SourceBatch."""

    records: pa.Table
    positions: pa.Array
    dead_letters: DeadLetters
    raw: RawPayloads
    records_read: int


def _labels(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int64, copy=False)).cast(pa.string())


def _no_columns(num_rows: int) -> pa.Table:
    return pa.Table.from_struct_array(pa.array([{}] * num_rows, pa.struct([])))


class FormatReader:
    """Base of the readers: position bookkeeping and the damage protocol."""

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        self.ctx = ctx
        resume = resume or {}
        self.offset = int(resume.get("offset", 0))
        self.record = int(resume.get("record", 0))
        self.finished = False
        self.failure: Failure | None = None

    def read(self) -> Chunk | None:
        """The next chunk, or None at the end; sets ``finished`` once the file is fully read."""
        raise NotImplementedError

    def position(self) -> dict[str, Any]:
        """Where to resume: the offset after the last consumed record and how many were consumed."""
        return {"offset": self.offset, "record": self.record}

    def next_label(self) -> str:
        return str(self.record)

    def fail(self, err: BaseException | str, start: int | None = None, end: int | None = None) -> None:
        """Give up on the rest of the file; it becomes one dead letter."""
        message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        begin = self.offset if start is None else start
        self.failure = Failure(
            self.next_label(), begin, max(begin, end if end is not None else begin), message
        )
        self.finished = True

    def dead_letters(self) -> DeadLetters:
        return DeadLetters(max_payload_bytes=self.ctx.max_payload_bytes)

    def close(self) -> None:
        """Release the file."""


class NoRecords(FormatReader):
    """A file with nothing to read (empty), or one that cannot be read at all (``failure`` set)."""

    def __init__(self, ctx: ReadContext, failure: str | None = None, size: int = 0) -> None:
        super().__init__(ctx, None)
        if failure:
            self.fail(failure, 0, size)
        self.finished = True

    def read(self) -> Chunk | None:
        return None


# ---------------------------------------------------------------------------------------------------
# JSON decoding shared by NDJSON and JSON documents

_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 13, 32]] = True
_OPEN_BRACE = ord("{")
_BOM = b"\xef\xbb\xbf"


def first_non_space(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Index of the first non-whitespace byte of each span (``end`` when the span is blank).

    Vectorized over spans, one step per leading whitespace byte; the rare span with a long run of
    leading whitespace is finished in Python.
    """
    first = starts.copy()
    live = np.flatnonzero(first < ends)
    for _ in range(64):
        if live.size == 0:
            return first
        live = live[_SPACE[arr[first[live]]]]
        first[live] += 1
        live = live[first[live] < ends[live]]
    for i in live.tolist():
        span = arr[first[i] : ends[i]].tobytes()
        first[i] = ends[i] - len(span.lstrip(b" \t\r\n"))
    return first


def _is_utf8(view: memoryview, arr: np.ndarray) -> bool:
    """Whether a chunk is valid UTF-8, checked by Arrow in place (decoding to str would copy it)."""
    if arr.size == 0 or int(arr.max()) < 0x80:
        return True
    offsets = pa.py_buffer(np.array([0, arr.size], dtype=np.int64))
    chunk = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(view)])
    try:
        chunk.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _arrow_json(data: Any, *, multiline: bool, block_size: int) -> pa.Table | None:
    options = pa_json.ReadOptions(use_threads=True, block_size=max(block_size, 1 << 16))
    parse_options = pa_json.ParseOptions(newlines_in_values=multiline)
    try:
        return pa_json.read_json(
            pa.BufferReader(pa.py_buffer(data)), read_options=options, parse_options=parse_options
        )
    except pa.ArrowException:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_record(data: bytes) -> tuple[dict[str, Any] | None, Reason | None, str]:
    """One JSON object from bytes, or why it is not one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as bad:
            return None, Reason.INVALID_UTF8, f"invalid UTF-8 at byte {bad.start}"
        try:  # orjson refuses integers beyond 64 bits; they are valid JSON
            value = json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            return None, Reason.MALFORMED_JSON, f"malformed JSON: {err}"
    if not isinstance(value, dict):
        return None, Reason.NOT_AN_OBJECT, f"a JSON {type(value).__name__}, not an object"
    return value, None, ""


def json_default(value: Any) -> Any:
    """How orjson writes values it has no native form for (Decimal, bytes, Arrow leftovers)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def as_text(value: Any) -> str | None:
    """A value of a column whose rows disagree on type, as text a later coercion stage can read."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | float | dict | list | tuple):
        return orjson.dumps(value, default=json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(value, int | Decimal | UUID):
        return str(value)
    result = json_default(value)
    return result if isinstance(result, str) else str(result)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Python rows as a table; a column whose values disagree on type becomes text, so nothing is lost."""
    try:
        table = pa.Table.from_pylist(rows)
    except _CONVERSION:
        table = None
    if table is not None and table.num_rows == len(rows):
        return table
    names = list(dict.fromkeys(key for row in rows for key in row))
    if not names:
        return _no_columns(len(rows))
    columns = []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns.append(pa.array(values))
        except _CONVERSION:
            columns.append(pa.array([as_text(v) for v in values], pa.string()))
    return pa.Table.from_arrays(columns, names=[str(n) for n in names])


def decode_json_spans(
    ctx: ReadContext,
    view: memoryview,
    parse_data: Any,
    spans: tuple[np.ndarray, np.ndarray, np.ndarray],
    labels: np.ndarray,
    *,
    base_offset: int,
    multiline: bool,
) -> Chunk:
    """Decode non-blank spans of ``view`` that should each hold one JSON object.

    The fast path hands ``parse_data`` (the spans separated by whitespace) to Arrow's JSON reader in
    one call. Only when that fails or is unsafe (a span that is not an object, invalid UTF-8, a type
    conflict, a row count that does not match) are the spans parsed one by one: bad ones become dead
    letters, good ones become a table whose column names match the fast path's.
    """
    starts, ends, firsts = spans
    arr = np.frombuffer(view, dtype=np.uint8)
    count = len(starts)
    dead = DeadLetters(max_payload_bytes=ctx.max_payload_bytes)
    if count == 0:
        return Chunk(_no_columns(0), pa.array([], pa.string()), dead, lambda idx: [], 0)
    longest = int((ends - starts).max())
    table = None
    attempted = bool((arr[firsts] == _OPEN_BRACE).all()) and _is_utf8(view, arr)
    if attempted:
        # Blocks are parsed in parallel; one per core is fastest, and a line must fit in one block.
        block_size = max(_MIN_JSON_BLOCK, len(view) // (os.cpu_count() or 1) + 1, 2 * longest + 2)
        table = _arrow_json(parse_data, multiline=multiline, block_size=block_size)
    if table is not None and table.num_rows == count:
        kept = np.arange(count)
    else:
        arrow_rejected = attempted and table is None
        table, kept = _decode_one_by_one(ctx, view, starts, ends, labels, dead, base_offset, arrow_rejected)

    def raw(indices: Sequence[int]) -> list[bytes]:
        return [view[starts[kept[i]] : ends[kept[i]]].tobytes() for i in indices]

    return Chunk(table, _labels(labels[kept]), dead, raw, count)


def _decode_one_by_one(
    ctx: ReadContext,
    view: memoryview,
    starts: np.ndarray,
    ends: np.ndarray,
    labels: np.ndarray,
    dead: DeadLetters,
    base_offset: int,
    arrow_rejected: bool,
) -> tuple[pa.Table, np.ndarray]:
    """Parse spans one at a time; ``arrow_rejected``: Arrow already failed on all of them."""
    rows: list[dict[str, Any]] = []
    kept: list[int] = []
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        data = view[start:end].tobytes()
        row, reason, message = parse_record(data)
        if row is None:
            assert reason is not None
            dead.add(
                source=ctx.source_ref,
                position=str(labels[i]),
                stage=DECODE_STAGE,
                reason=reason,
                message=message,
                payload=data,
                byte_range=(base_offset + start, base_offset + end),
            )
        else:
            rows.append(row)
            kept.append(i)
    table = None
    if rows and (dead or not arrow_rejected):  # else only a type conflict is left: Arrow fails again
        # Re-read the good rows through Arrow so types match the fast path (timestamps, nesting).
        try:
            compact = b"\n".join(orjson.dumps(row) for row in rows)
        except TypeError:
            compact = b""
        table = _arrow_json(compact, multiline=False, block_size=2 * len(compact) + 2) if compact else None
    if table is None or table.num_rows != len(rows):
        table = rows_to_table(rows)
    return table, np.asarray(kept, dtype=np.int64)


def _open_text(ctx: ReadContext, offset: int) -> tuple[DecodedStream, int, bytes]:
    """A stream at ``offset``, past a UTF-8 byte order mark at the start; with the bytes peeked."""
    stream = DecodedStream(ctx.path, ctx.compression)
    if offset:
        stream.skip(offset)
        return stream, offset, b""
    head = stream.read(len(_BOM))
    return (stream, len(_BOM), b"") if head == _BOM else (stream, 0, head)


# ---------------------------------------------------------------------------------------------------
# NDJSON


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
            self._stream, self.offset, self._carry = _open_text(self.ctx, self.offset)
        stream = self._stream
        buf = self._fill(stream)
        cut = buf.rfind(b"\n") + 1
        if self._eof and not stream.damage:
            cut = len(buf)
        view = memoryview(buf)[:cut]
        arr = np.frombuffer(view, dtype=np.uint8)
        newlines = np.flatnonzero(arr == 10)
        ends = newlines if cut == 0 or buf[cut - 1] == 10 else np.append(newlines, cut)
        if len(ends) > self.ctx.batch_rows:
            ends = ends[: self.ctx.batch_rows]
            cut = int(ends[-1]) + 1
            view, arr = view[:cut], arr[:cut]
        self._carry = buf[cut:]
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

    def _fill(self, stream: DecodedStream) -> bytes:
        """Carried bytes plus about ``batch_bytes`` more, extended until a line ends."""
        parts, size = ([self._carry] if self._carry else []), len(self._carry)
        while not self._eof and size < self.ctx.batch_bytes:
            more = stream.read(self.ctx.batch_bytes - size)
            if not more:
                self._eof = True
            parts.append(more)
            size += len(more)
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        if b"\n" in buf or self._eof:
            return buf
        grown = bytearray(buf)
        while not self._eof:
            more = stream.read(max(len(grown), _READ_SIZE))
            if not more:
                self._eof = True
            grown += more
            if b"\n" in more:
                break
        return bytes(grown)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


# ---------------------------------------------------------------------------------------------------
# JSON documents (a top-level array of objects, or objects one after another)


def _prefix_parity(mask: np.ndarray) -> np.ndarray:
    """For each byte, whether an odd number of ``mask`` bytes occur up to and including it.

    Works on packed bits: a prefix XOR inside each 64-bit word by shifts, then a carry across words,
    several times faster than a byte-wise cumulative sum.
    """
    packed = np.packbits(mask, bitorder="little")
    words = np.zeros((packed.size + 7) // 8, dtype="<u8")
    words.view(np.uint8)[: packed.size] = packed
    for shift in (1, 2, 4, 8, 16, 32):
        words ^= words << np.uint64(shift)
    carry = np.bitwise_xor.accumulate(words >> np.uint64(63))
    words[1:] ^= carry[:-1] * np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    return np.unpackbits(words.view(np.uint8), count=mask.size, bitorder="little").view(bool)


def scan_top_level(arr: np.ndarray, in_array: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut points between top-level records of a JSON text, found with vectorized bracket counting.

    Records are the elements of a top-level array, or top-level objects. Returns, per cut, the end of
    the span before it, the start of the span after it, and whether the scan resumes inside the
    top-level array there. ``in_array`` is the state at ``arr[0]`` (always outside a string).
    """
    quote = arr == 34
    if np.count_nonzero(arr == 92):
        backslashes = np.flatnonzero(arr == 92)
        index = np.arange(backslashes.size)
        run_start = np.ones(backslashes.size, dtype=bool)
        run_start[1:] = backslashes[1:] != backslashes[:-1] + 1
        first_of_run = np.maximum.accumulate(np.where(run_start, index, 0))
        escaped = backslashes[(index - first_of_run) % 2 == 0] + 1
        quote[escaped[escaped < arr.size]] = False
    outside = ~_prefix_parity(quote)
    del quote
    folded = arr & 0xDF  # maps { } onto [ ]
    outside &= (folded == 91) | (folded == 93) | (arr == 44)
    del folded
    structural = np.flatnonzero(outside)
    del outside
    chars = arr[structural]
    opens = (chars == 123) | (chars == 91)
    delta = opens.astype(np.int64) - ((chars == 125) | (chars == 93))
    running = int(in_array) + np.cumsum(delta)
    depth_after = running - np.minimum(np.minimum.accumulate(running), 0) if running.size else running
    depth_before = np.concatenate(([int(in_array)], depth_after[:-1])) if running.size else running
    top_open = opens & (depth_before == 0)
    last_top = np.maximum.accumulate(np.where(top_open, np.arange(chars.size), -1)) if chars.size else chars
    top_char = np.where(last_top >= 0, chars[np.maximum(last_top, 0)], 91 if in_array else 0)
    in_top_array = (depth_before == 1) & (top_char == 91)
    array_open = (chars == 91) & (depth_before == 0)
    array_sep = (chars == 44) & in_top_array
    array_close = (chars == 93) & in_top_array
    object_open = (chars == 123) & (depth_before == 0)
    object_close = (chars == 125) & (depth_before == 1) & (top_char == 123)
    is_cut = array_open | array_sep | array_close | object_open | object_close
    where = structural[is_cut].astype(np.int64)
    zero_width = (object_open | object_close)[is_cut]
    ends = np.where(object_close[is_cut], where + 1, where)
    starts = np.where(zero_width, ends, where + 1)
    return ends, starts, (array_open | array_sep)[is_cut]


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
            self._stream, self.offset, self._carry = _open_text(self.ctx, self.offset)
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


# ---------------------------------------------------------------------------------------------------
# Row formats: CSV, Avro, Parquet


def _rows_raw(table: pa.Table) -> RawPayloads:
    def raw(indices: Sequence[int]) -> list[bytes]:
        rows = table.take(pa.array(list(indices), pa.int64())).to_pylist()
        return [orjson.dumps(row, default=json_default, option=orjson.OPT_NON_STR_KEYS) for row in rows]

    return raw


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
            boundaries = np.flatnonzero(newline & ~_prefix_parity(arr == 34))
            if not boundaries.size and len(buf) >= limit:
                boundaries = np.flatnonzero(newline)
            if boundaries.size or self._eof:
                return buf, boundaries
            want = 2 * len(buf)

    def _parse(self, data: memoryview) -> Chunk:
        bad: list[tuple[int | None, str, str]] = []

        def on_invalid(row: Any) -> str:
            bad.append(
                (row.number, row.text, f"expected {row.expected_columns} columns, found {row.actual_columns}")
            )
            return "skip"

        if not bytes(data[:64]).strip() and not bytes(data).strip():  # nothing but blank lines
            table = pa.table({name: pa.array([], pa.string()) for name in self._names})
            return Chunk(table, _labels(np.empty(0, np.int64)), self.dead_letters(), _rows_raw(table), 0)
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
        return Chunk(table, _labels(indices), dead, _rows_raw(table), total)

    def _read_csv(self, data: memoryview, on_invalid: Any, *, threads: bool) -> pa.Table:
        block_size = max(1 << 20, len(data) // (os.cpu_count() or 1) + 1)
        return pa_csv.read_csv(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pa_csv.ReadOptions(
                column_names=self._names, use_threads=threads, block_size=block_size
            ),
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
        invalid.append(
            (int(indices[i]), delimiter.encode().join(cells), "invalid UTF-8", Reason.INVALID_UTF8)
        )
    return rows.filter(pa.array(good)).cast(as_text), indices[good], invalid


def _valid_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class AvroReader(FormatReader):
    """Avro object container files via fastavro, block by block; positions are record indices.

    Resuming skips whole blocks by their record counts without decoding them. ``offset`` is the
    start of the first block not yet fully read, which is where damage is reported from.
    """

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        super().__init__(ctx, resume)
        self._stream: DecodedStream | None = None
        self._blocks: Iterator[Any] | None = None
        self._records: Iterator[Any] | None = None
        self._block_end = 0
        self._skip = self.record

    def read(self) -> Chunk | None:
        if self._blocks is None:
            self._stream = DecodedStream(self.ctx.path, self.ctx.compression)
            try:
                self._blocks = iter(fastavro.block_reader(cast(IO[bytes], self._stream)))
            except Exception as err:  # fastavro raises many kinds of error on a bad header
                self._unreadable_header(err)
                return None
            self.offset = self._stream.offset
        assert self._stream is not None
        rows: list[Any] = []
        size = 0
        while len(rows) < self.ctx.batch_rows and size < self.ctx.batch_bytes:
            try:
                if self._records is None:
                    block = next(self._blocks)
                    self.offset, self._block_end = block.offset, block.offset + block.size
                    if block.num_records <= self._skip:
                        self._skip -= block.num_records
                        self.offset = self._block_end
                        continue
                    size += block.size
                    self._records = iter(block)
                    for _ in range(self._skip):
                        next(self._records)
                    self._skip = 0
                rows.append(next(self._records))
            except StopIteration:
                if self._records is None:
                    self.finished = True
                    break
                self._records, self.offset = None, self._block_end
            except Exception as err:  # fastavro raises many kinds of error on corrupt blocks
                self.record += len(rows)
                chunk = self._chunk(rows)
                self.fail(self._stream.damage or err, self.offset, max(self._stream.offset, self.offset))
                return chunk
        self.record += len(rows)
        return self._chunk(rows)

    def _unreadable_header(self, err: Exception) -> None:
        assert self._stream is not None
        if self._stream.offset == 0 and not self._stream.damage:
            self.finished = True  # an empty file
            return
        self.fail(self._stream.damage or f"not a readable Avro file: {err}", 0, self._stream.offset)

    def _chunk(self, rows: list[Any]) -> Chunk:
        table = rows_to_table(rows)
        first = self.record - len(rows)
        labels = _labels(np.arange(first, self.record))
        return Chunk(table, labels, self.dead_letters(), _rows_raw(table), len(rows))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class ParquetReader(FormatReader):
    """Parquet via Arrow, row group by row group; positions are row indices.

    Reading one row group at a time keeps damage contained: the groups before a corrupt one flow on.
    Resuming skips whole row groups. Parquet needs random access, so a compressed Parquet file is
    first decompressed to a temporary file. ``offset`` is the start of the row group being read.
    """

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        super().__init__(ctx, resume)
        self._file: pq.ParquetFile | None = None
        self._spool: IO[bytes] | None = None
        self._group = 0
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._leftover: pa.RecordBatch | None = None
        self._drop = 0
        self._batch_size = 1
        self._size = 0

    def _open(self) -> bool:
        source: Any = str(self.ctx.path)
        self._size = self.ctx.path.stat().st_size
        if self.ctx.compression != "none":
            with DecodedStream(self.ctx.path, self.ctx.compression) as stream:
                self._spool = tempfile.NamedTemporaryFile(suffix=".parquet")  # deleted in close()
                shutil.copyfileobj(stream, self._spool, _READ_SIZE)
                self._spool.flush()
                self._size = stream.offset
                if stream.damage:
                    self.fail(stream.damage, 0, stream.offset)
                    return False
            source = self._spool.name  # by name, so Arrow reads it natively
        if self._size == 0:
            self.finished = True
            return False
        try:
            self._file = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as err:
            self.fail(err, 0, self._size)
            return False
        meta = self._file.metadata
        group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        bounds = np.cumsum([0, *group_rows])
        self._group = int(np.searchsorted(bounds, self.record, side="right") - 1)
        self._drop = self.record - int(bounds[min(self._group, len(group_rows))])
        widest_row = max(
            (meta.row_group(i).total_byte_size // max(1, rows) for i, rows in enumerate(group_rows)),
            default=1,
        )
        self._batch_size = max(1, min(self.ctx.batch_rows, self.ctx.batch_bytes // max(1, widest_row)))
        return True

    def _group_offset(self, group: int) -> int:
        assert self._file is not None
        if group >= self._file.metadata.num_row_groups:
            return self._size
        meta = self._file.metadata.row_group(group)
        offsets = []
        for j in range(meta.num_columns):
            column = meta.column(j)
            offsets.append(
                column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
            )
        return min(offsets) if offsets else 0

    def _next_batch(self) -> pa.RecordBatch | None:
        """The next batch of the current row group, moving on to the next group; None at the end."""
        assert self._file is not None
        while True:
            if self._leftover is not None:
                batch, self._leftover = self._leftover, None
                return batch
            if self._batches is None:
                if self._group >= self._file.metadata.num_row_groups:
                    return None
                self.offset = self._group_offset(self._group)
                self._batches = self._file.iter_batches(batch_size=self._batch_size, row_groups=[self._group])
            try:
                batch = next(self._batches)
            except StopIteration:
                self._group, self._batches = self._group + 1, None
                continue
            if self._drop:
                dropped = min(self._drop, batch.num_rows)
                batch, self._drop = batch.slice(dropped), self._drop - dropped
            if batch.num_rows:
                return batch

    def read(self) -> Chunk | None:
        if self._file is None and not self._open():
            return None
        batches: list[pa.RecordBatch] = []
        count = size = 0
        error: Exception | None = None
        while count < self.ctx.batch_rows and size < self.ctx.batch_bytes:
            try:
                batch = self._next_batch()
            except (pa.ArrowException, OSError) as err:
                error = err
                break
            if batch is None:
                self.finished = True
                break
            room = self.ctx.batch_rows - count
            if batch.num_rows > room:
                batch, self._leftover = batch.slice(0, room), batch.slice(room)
            batches.append(batch)
            count, size = count + batch.num_rows, size + batch.nbytes
        first = self.record
        self.record += count
        if error is not None:
            self.fail(error, self.offset, self._size)
        if not batches:
            return None
        table = pa.Table.from_batches(batches)
        labels = _labels(np.arange(first, self.record))
        return Chunk(table, labels, self.dead_letters(), _rows_raw(table), table.num_rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._spool is not None:
            self._spool.close()
