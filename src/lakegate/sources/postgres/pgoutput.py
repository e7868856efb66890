"""A decoder of PostgreSQL's ``pgoutput`` logical replication protocol (version 1), over bytes only.

Why our own: the ``pypgoutput`` package breaks with pydantic 2 and flushes after every message. This
module turns one message payload (what psycopg2's ``read_message().payload`` holds with ``decode=False``)
into a small value; it knows nothing about connections. Column values stay as the server's text
representation (``bytes``), ``None`` for SQL null, or :data:`UNCHANGED` for an unchanged TOASTed value
the server did not send; turning text into Arrow is done per batch, vectorized, in ``types.py``.

Two speeds: :func:`decode_message` / :func:`decode_change` read one message in Python, and
:func:`bulk_new_tuples` reads the new tuples of many inserts/updates at once with numpy, straight into
Arrow binary columns (about 3x faster on a pgbench backlog; the source uses it for the common shape).

Message layouts: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pyarrow as pa

PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000
"""Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's timestamp epoch."""


class _Unchanged:
    """The marker of an unchanged TOASTed value (tuple column kind ``u``)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = bytes | None | _Unchanged
"""One column of a tuple: text bytes, SQL null, or :data:`UNCHANGED`."""

_INT8 = struct.Struct(">b")
_INT16 = struct.Struct(">h")
_UINT32 = struct.Struct(">I")
_INT32 = struct.Struct(">i")
_UINT64 = struct.Struct(">Q")
_INT64 = struct.Struct(">q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">bQQq")
_INT32_PAIR = struct.Struct(">Ii")


class DecodeError(ValueError):
    """A payload that does not follow the pgoutput protocol (truncated or of an unknown kind)."""


def lsn_to_str(lsn: int) -> str:
    """PostgreSQL's textual LSN (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_from_str(text: str) -> int:
    """The integer of a textual LSN.

    Raises:
        ValueError: the text is not ``HEX/HEX``.
    """
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not an LSN (expected HEX/HEX)")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    """LSN of the transaction's commit record: the commit position of every change inside."""
    commit_time_us: int
    """Commit time in microseconds since 1970-01-01 UTC."""
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    """LSN just past the commit record: streaming from here skips this transaction."""
    commit_time_us: int


@dataclass(frozen=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    """``d`` default (primary key), ``n`` nothing, ``f`` full, ``i`` index."""
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def key_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.is_key]


@dataclass(frozen=True)
class TypeInfo:
    """A non-built-in type (an enum, a domain...) named before the first Relation that uses it."""

    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Change:
    """An Insert (``c``), Update (``u``) or Delete (``d``) of one row.

    ``new`` is the after image (inserts, updates); ``old`` is the before image when the server sent one:
    the key columns (``old_kind == "K"``, others null) or the whole old row (``"O"``, REPLICA IDENTITY
    FULL). An update that does not change the key under REPLICA IDENTITY DEFAULT carries no ``old``.
    """

    op: str
    relation_id: int
    new: list[Value] | None
    old: list[Value] | None
    old_kind: str | None


@dataclass(frozen=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True)
class Unknown:
    """A message kind this decoder does not handle (newer protocol versions); the caller skips it."""

    kind: str
    payload: bytes = field(repr=False)


Message = Begin | Commit | Origin | Relation | TypeInfo | Change | Truncate | LogicalMessage | Unknown


def _string(buf: bytes, offset: int) -> tuple[str, int]:
    end = buf.index(b"\x00", offset)
    return buf[offset:end].decode("utf-8"), end + 1


def decode_tuple(buf: bytes, offset: int) -> tuple[list[Value], int]:
    """A TupleData at ``offset``: the column values and the offset after it (the hot path: keep it lean).

    Raises:
        DecodeError: the tuple is truncated or holds an unknown column kind.
    """
    try:
        count = (buf[offset] << 8) | buf[offset + 1]
        offset += 2
        values: list[Value] = [None] * count
        from_bytes = int.from_bytes
        for column in range(count):
            kind = buf[offset]
            if kind == 0x74:  # 't' text: Int32 length, bytes
                start = offset + 5
                offset = start + from_bytes(buf[offset + 1 : start])
                values[column] = buf[start:offset]
            elif kind == 0x6E:  # 'n' null
                offset += 1
            elif kind == 0x75:  # 'u' unchanged TOAST
                values[column] = UNCHANGED
                offset += 1
            else:  # 'b' binary needs the binary option, which we never ask for
                raise DecodeError(f"unsupported tuple column kind {chr(kind)!r} at offset {offset}")
    except IndexError as err:
        raise DecodeError(f"truncated tuple data at offset {offset}") from err
    if offset > len(buf):
        raise DecodeError(f"tuple data runs past the message end ({offset} > {len(buf)})")
    return values, offset


RawChange = tuple[str, int, list[Value] | None, list[Value] | None, str | None]
"""``(op, relation_id, new, old, old_kind)``: a Change as a plain tuple, for the hot path."""


def decode_change(buf: bytes) -> RawChange:
    """An Insert, Update or Delete message as a :data:`RawChange` (no object per row).

    Raises:
        DecodeError: not a change message, or truncated/malformed.
    """
    try:
        kind = buf[0]
        relation_id = int.from_bytes(buf[1:5])
        marker = buf[5]
        if kind == 0x55:  # 'U': optional 'K'/'O' old tuple, then 'N' new tuple
            if marker == 0x4E:
                return "u", relation_id, decode_tuple(buf, 6)[0], None, None
            if marker not in (0x4B, 0x4F):
                raise DecodeError(f"update: unexpected tuple marker {chr(marker)!r}")
            old, offset = decode_tuple(buf, 6)
            if buf[offset] != 0x4E:
                raise DecodeError(f"update: expected 'N' after the old tuple, got {buf[offset : offset + 1]!r}")
            return "u", relation_id, decode_tuple(buf, offset + 1)[0], old, chr(marker)
        if kind == 0x49:  # 'I'
            if marker != 0x4E:
                raise DecodeError(f"insert: expected 'N', got {chr(marker)!r}")
            return "c", relation_id, decode_tuple(buf, 6)[0], None, None
        if kind == 0x44:  # 'D'
            if marker not in (0x4B, 0x4F):
                raise DecodeError(f"delete: expected 'K' or 'O', got {chr(marker)!r}")
            return "d", relation_id, None, decode_tuple(buf, 6)[0], chr(marker)
    except IndexError as err:
        raise DecodeError(f"truncated change message ({len(buf)} bytes)") from err
    raise DecodeError(f"not a change message: {buf[:1]!r}")


def _decode_relation(buf: bytes) -> Relation:
    (relation_id,) = _UINT32.unpack_from(buf, 1)
    namespace, offset = _string(buf, 5)
    name, offset = _string(buf, offset)
    identity = chr(buf[offset])
    (count,) = _INT16.unpack_from(buf, offset + 1)
    offset += 3
    columns = []
    for _ in range(count):
        flags = buf[offset]
        column_name, offset = _string(buf, offset + 1)
        type_oid, modifier = _INT32_PAIR.unpack_from(buf, offset)
        offset += 8
        columns.append(Column(column_name, type_oid, modifier, bool(flags & 1)))
    return Relation(relation_id, namespace or "pg_catalog", name, identity, tuple(columns))


def decode_message(buf: bytes) -> Message:
    """One pgoutput message.

    Raises:
        DecodeError: the payload is truncated or malformed.
    """
    if not buf:
        raise DecodeError("empty message")
    kind = buf[0]
    try:
        if kind in (0x49, 0x55, 0x44):  # insert, update, delete
            return Change(*decode_change(buf))
        if kind == 0x42:  # 'B' begin
            final_lsn, commit_ts, xid = _BEGIN.unpack_from(buf, 1)
            return Begin(final_lsn, commit_ts + PG_EPOCH_OFFSET_US, xid)
        if kind == 0x43:  # 'C' commit
            flags, commit_lsn, end_lsn, commit_ts = _COMMIT.unpack_from(buf, 1)
            return Commit(flags, commit_lsn, end_lsn, commit_ts + PG_EPOCH_OFFSET_US)
        if kind == 0x52:  # 'R' relation
            return _decode_relation(buf)
        if kind == 0x59:  # 'Y' type
            (type_oid,) = _UINT32.unpack_from(buf, 1)
            namespace, offset = _string(buf, 5)
            name, _ = _string(buf, offset)
            return TypeInfo(type_oid, namespace, name)
        if kind == 0x54:  # 'T' truncate
            (count,) = _INT32.unpack_from(buf, 1)
            options = buf[5]
            ids = struct.unpack_from(f">{count}I", buf, 6)
            return Truncate(tuple(ids), bool(options & 1), bool(options & 2))
        if kind == 0x4F:  # 'O' origin
            (lsn,) = _UINT64.unpack_from(buf, 1)
            return Origin(lsn, _string(buf, 9)[0])
        if kind == 0x4D:  # 'M' logical decoding message
            flags = buf[1]
            (lsn,) = _UINT64.unpack_from(buf, 2)
            prefix, offset = _string(buf, 10)
            (length,) = _INT32.unpack_from(buf, offset)
            return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(buf[offset + 4 : offset + 4 + length]))
    except (IndexError, ValueError, struct.error) as err:
        if isinstance(err, DecodeError):
            raise
        raise DecodeError(f"malformed {chr(kind)!r} message ({len(buf)} bytes): {err}") from err
    return Unknown(chr(kind), bytes(buf))


def bulk_new_tuples(payloads: list[bytes], width: int) -> list[pa.Array] | None:
    """The columns of many Insert / key-keeping Update messages (new tuple at offset 6), decoded at once.

    The per-message decoder spends most of its time walking tuples column by column in Python; here
    the walk is done once per column for all messages with numpy, and each column comes back as an
    Arrow binary array of text values (null for SQL null). Returns None when any message does not fit
    the fast shape (another width, an unchanged TOAST value, a truncated tuple): the caller then
    decodes those messages one by one, which also reports the bad ones.
    """
    count = len(payloads)
    if not count:
        return [pa.array([], pa.binary()) for _ in range(width)]
    lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=count)
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    if lengths.min() < 8:
        return None
    kinds, markers = buf[starts], buf[starts + 5]
    if not (np.all((kinds == 0x49) | (kinds == 0x55)) and np.all(markers == 0x4E)):
        return None
    ncols = (buf[starts + 6].astype(np.int64) << 8) | buf[starts + 7]
    if np.any(ncols != width):
        return None
    position = starts + 8
    columns: list[pa.Array] = []
    for _ in range(width):
        if np.any(position >= ends):
            return None
        kind = buf[position]
        is_text = kind == 0x74
        if not np.all(is_text | (kind == 0x6E)):
            return None  # 'u' (unchanged TOAST) or binary: the slow path handles it
        header = np.where(is_text, position + 4, position)
        if np.any(header >= ends):
            return None
        size = np.zeros(count, dtype=np.int64)
        text_at = position[is_text]
        size[is_text] = (
            (buf[text_at + 1].astype(np.int64) << 24)
            | (buf[text_at + 2].astype(np.int64) << 16)
            | (buf[text_at + 3].astype(np.int64) << 8)
            | buf[text_at + 4]
        )
        value_start = position + 5
        offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(size, out=offsets[1:])
        total = int(offsets[-1])
        if total >= 2**31 or np.any(np.where(is_text, value_start + size, position + 1) > ends):
            return None
        gather = np.repeat(value_start - offsets[:-1], size) + np.arange(total, dtype=np.int64)
        data = buf[gather]
        validity = None if is_text.all() else pa.array(is_text).buffers()[1]
        columns.append(
            pa.Array.from_buffers(
                pa.binary(),
                count,
                [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
                null_count=int(count - is_text.sum()),
            )
        )
        position = np.where(is_text, value_start + size, position + 1)
    if np.any(position != ends):
        return None
    return columns
