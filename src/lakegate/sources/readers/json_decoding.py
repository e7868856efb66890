"""JSON decoding shared by NDJSON and JSON documents: a chunk of records to a table and dead letters.

Arrow parses a whole chunk at once when every record is a well-formed object; otherwise the records
are parsed one by one, so the bad ones become dead letters and the good ones still land.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pa_json

from lakegate.core.deadletter import DeadLetters, Reason
from lakegate.sources.compression import DecodedStream
from lakegate.sources.readers.base import DECODE_STAGE, Chunk, ReadContext, position_labels
from lakegate.sources.readers.rows import no_columns, rows_to_table

_PIECE_MIN = 1 << 20
"""The smallest piece of a chunk worth parsing on a thread of its own."""
_MAX_BLOCK = (1 << 31) - 1
"""Arrow's JSON block size is a 32-bit int."""
_OPEN_BRACE = ord("{")
_BOM = b"\xef\xbb\xbf"


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


def _arrow_json(data: Any, *, multiline: bool) -> pa.Table | None:
    """``data`` parsed by Arrow's JSON reader as one block; None when Arrow rejects it."""
    block_size = min(max(len(data) + 1, 1 << 16), _MAX_BLOCK)
    options = pa_json.ReadOptions(use_threads=False, block_size=block_size)
    parse_options = pa_json.ParseOptions(newlines_in_values=multiline)
    try:
        return pa_json.read_json(pa.BufferReader(pa.py_buffer(data)), read_options=options, parse_options=parse_options)
    except pa.ArrowException:
        return None


def _arrow_json_parallel(data: Any, record_starts: np.ndarray, *, multiline: bool) -> pa.Table | None:
    """``data`` parsed by Arrow's JSON reader in pieces cut between records, one per core, in parallel.

    The result is the one-block parse of ``data``: each piece is one block, and the pieces' tables
    are joined only when they agree on every column's type (a column missing from a piece, or null
    throughout it, takes the others' type, as in one block); any other disagreement, or a piece
    Arrow rejects, falls back to parsing ``data`` as one block.

    Arrow's own parallelism (several blocks, ``use_threads``) is not used: the column order it infers
    depends on which block finishes first, it cannot join a block where a column is null to one
    where it is an object, and pyarrow 26 can crash in its cross-block type inference when the
    blocks disagree on a type, which dirty input does.
    """
    size = len(data)
    pieces = min(pa.cpu_count(), size // _PIECE_MIN, len(record_starts))
    if pieces <= 1:
        return _arrow_json(data, multiline=multiline)
    wanted = np.arange(1, pieces, dtype=np.int64) * (size // pieces)
    nearest = record_starts[np.minimum(np.searchsorted(record_starts, wanted), len(record_starts) - 1)]
    bounds = [0, *np.unique(nearest[(nearest > 0) & (nearest < size)]).tolist(), size]
    with ThreadPoolExecutor(len(bounds) - 1, thread_name_prefix="lakegate-json") as pool:
        tables = list(
            pool.map(lambda span: _arrow_json(data[span[0] : span[1]], multiline=multiline), pairwise(bounds))
        )
    if any(table is None for table in tables):
        return _arrow_json(data, multiline=multiline)
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException:
        return _arrow_json(data, multiline=multiline)


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
        return Chunk(no_columns(0), pa.array([], pa.string()), dead, lambda idx: [], 0)
    table = None
    attempted = bool((arr[firsts] == _OPEN_BRACE).all()) and _is_utf8(view, arr)
    if attempted:
        table = _arrow_json_parallel(parse_data, starts, multiline=multiline)
    if table is not None and table.num_rows == count:
        kept = np.arange(count)
    else:
        arrow_rejected = attempted and table is None
        table, kept = _decode_one_by_one(ctx, view, starts, ends, labels, dead, base_offset, arrow_rejected)

    def raw(indices: Sequence[int]) -> list[bytes]:
        return [view[starts[kept[i]] : ends[kept[i]]].tobytes() for i in indices]

    return Chunk(table, position_labels(labels[kept]), dead, raw, count)


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
        table = _arrow_json(compact, multiline=False) if compact else None
    if table is None or table.num_rows != len(rows):
        table = rows_to_table(rows)
    return table, np.asarray(kept, dtype=np.int64)


def open_text(ctx: ReadContext, offset: int) -> tuple[DecodedStream, int, bytes]:
    """A stream at ``offset``, past a UTF-8 byte order mark at the start; with the bytes peeked."""
    stream = DecodedStream(ctx.path, ctx.compression)
    if offset:
        stream.skip(offset)
        return stream, offset, b""
    head = stream.read(len(_BOM))
    return (stream, len(_BOM), b"") if head == _BOM else (stream, 0, head)
