"""PostgreSQL types as Arrow types, and the vectorized conversion of their text representation.

pgoutput (and ``value::text`` in the snapshot) sends every value as the type's text output, so a column
of a batch is a list of ``bytes``; each is converted once per batch with Arrow casts, never per value,
except for two cases with no Arrow kernel: array literals (``{1,2}``) are split by a small parser and
their elements converted vectorized, and a column whose cast fails is retried value by value to find
the rows that become dead letters.

Choices: unbounded ``numeric`` (no precision) and numerics wider than 38 digits stay strings, because
``decimal(38, 9)`` would silently round or overflow values PostgreSQL accepts; ``timestamp`` without
time zone is read as UTC (lakegate has one timestamp type, ``timestamp[us, UTC]``); ``time``,
``interval``, ``money``, network types, enums, domains and any type we do not know stay strings (their
text output is lossless); ``int2`` widens to ``int`` (Iceberg has no 16-bit integer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.types import TIMESTAMP, type_to_str

Converter = Callable[[pa.Array], pa.Array]
"""Turns a binary/string array of text representations into the column's Arrow type (may raise)."""

CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError, OverflowError)

# Built-in type OIDs (pg_type.oid is stable for built-ins).
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, BPCHAR, VARCHAR = 114, 142, 700, 701, 1042, 1043
DATE, TIME, TIMESTAMP_OID, TIMESTAMPTZ, INTERVAL, TIMETZ = 1082, 1083, 1114, 1184, 1186, 1266
NUMERIC, UUID, JSONB = 1700, 2950, 3802

_BASE_NAMES = {
    BOOL: "bool", BYTEA: "bytea", CHAR: "char", NAME: "name", INT8: "int8", INT2: "int2", INT4: "int4",
    TEXT: "text", OID: "oid", JSON: "json", XML: "xml", FLOAT4: "float4", FLOAT8: "float8",
    BPCHAR: "bpchar", VARCHAR: "varchar", DATE: "date", TIME: "time", TIMESTAMP_OID: "timestamp",
    TIMESTAMPTZ: "timestamptz", INTERVAL: "interval", TIMETZ: "timetz", NUMERIC: "numeric", UUID: "uuid",
    JSONB: "jsonb", 790: "money", 869: "inet", 650: "cidr", 829: "macaddr",
}  # fmt: skip
ARRAY_ELEMENT = {
    1000: BOOL, 1001: BYTEA, 1002: CHAR, 1003: NAME, 1005: INT2, 1007: INT4, 1009: TEXT, 1014: BPCHAR,
    1015: VARCHAR, 1016: INT8, 1021: FLOAT4, 1022: FLOAT8, 1028: OID, 1115: TIMESTAMP_OID, 1182: DATE,
    1183: TIME, 1185: TIMESTAMPTZ, 1187: INTERVAL, 1231: NUMERIC, 2951: UUID, 199: JSON, 3807: JSONB,
}  # fmt: skip
"""Array type OID -> element type OID."""


@dataclass(frozen=True)
class ColumnType:
    """How one PostgreSQL column becomes Arrow: its name for people, its Arrow type, its converter."""

    pg_name: str
    arrow: pa.DataType
    convert: Converter

    @property
    def name(self) -> str:
        """The lakegate type name (``long``, ``decimal(10,2)``, ``list<string>``...)."""
        return type_to_str(self.arrow)


def numeric_precision_scale(type_modifier: int) -> tuple[int, int] | None:
    """``(precision, scale)`` of ``numeric(p, s)`` from its type modifier, None when unbounded."""
    if type_modifier < 4:
        return None
    packed = type_modifier - 4
    scale = packed & 0x7FF
    if scale & 0x400:  # PostgreSQL 15 allows negative scales (an 11-bit signed field)
        scale -= 0x800
    return (packed >> 16) & 0xFFFF, scale


def _to_string(values: pa.Array) -> pa.Array:
    return values if values.type == pa.string() else values.cast(pa.string())


def _cast(target: pa.DataType) -> Converter:
    def convert(values: pa.Array) -> pa.Array:
        return _to_string(values).cast(target)

    return convert


def _boolean(values: pa.Array) -> pa.Array:
    text = _to_string(values)
    known = pc.or_(pc.equal(text, "t"), pc.equal(text, "f"))
    if known.false_count:
        raise ValueError("boolean text must be 't' or 'f'")
    return pc.equal(text, "t")


def _naive_timestamp(values: pa.Array) -> pa.Array:
    return _to_string(values).cast(pa.timestamp("us")).cast(TIMESTAMP)


def _bytea(values: pa.Array) -> pa.Array:
    """``\\x4142`` hex text -> binary: strip the prefixes and decode all values' hex in one call."""
    data = values if values.type == pa.binary() else values.cast(pa.binary())
    if isinstance(data, pa.ChunkedArray):
        data = data.combine_chunks()
    count = len(data)
    offsets = np.frombuffer(data.buffers()[1], dtype=np.int32, count=count + 1, offset=data.offset * 4)
    raw = data.buffers()[2]
    text = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    valid = np.asarray(data.is_valid())
    if np.any(lengths[valid] < 2) or np.any(lengths % 2):
        raise ValueError("bytea text must be hex ('\\x...'); set bytea_output = 'hex'")
    starts = offsets[:-1][valid & (lengths >= 2)]
    if starts.size and (np.any(text[starts] != ord("\\")) or np.any(text[starts + 1] != ord("x"))):
        raise ValueError("bytea text must start with '\\x'")
    keep = np.ones(text.size, dtype=bool)
    keep[starts] = False
    keep[starts + 1] = False
    region = text[offsets[0] : offsets[-1]] if count else text[:0]
    keep = keep[offsets[0] : offsets[-1]] if count else keep[:0]
    decoded = bytes.fromhex(region[keep].tobytes().decode("ascii"))
    new_lengths = np.where(valid & (lengths >= 2), (lengths - 2) // 2, 0)
    new_offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int32)
    mask = pa.array(~valid) if data.null_count else None
    return _binary_from(new_offsets, decoded, mask)


def _binary_from(offsets: np.ndarray, data: bytes, mask: pa.Array | None) -> pa.Array:
    validity = None
    count = len(offsets) - 1
    if mask is not None:
        validity = pa.array(pc.invert(mask)).buffers()[1]
    return pa.Array.from_buffers(
        pa.binary(),
        count,
        [validity, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)],
        null_count=-1 if mask is not None else 0,
    )


def parse_array_literal(text: str) -> list[str | None]:
    """The elements of a one-dimensional PostgreSQL array literal (``{1,NULL,"a b","q\\"x"}``).

    Raises:
        ValueError: not an array literal, or a multi-dimensional one (kept out rather than flattened).
    """
    if text.startswith("["):  # explicit bounds: [0:1]={...}
        text = text[text.index("=") + 1 :]
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        raise ValueError(f"not an array literal: {text[:40]!r}")
    body = text[1:-1]
    if not body:
        return []
    if body[0] == "{":
        raise ValueError("multi-dimensional arrays are not supported")
    if '"' not in body and "\\" not in body:
        return [None if item == "NULL" else item for item in body.split(",")]
    items: list[str | None] = []
    index, size = 0, len(body)
    while index <= size:
        if index < size and body[index] == '"':
            chars: list[str] = []
            index += 1
            while body[index] != '"':
                if body[index] == "\\":
                    index += 1
                chars.append(body[index])
                index += 1
            items.append("".join(chars))
            index += 1  # closing quote
        else:
            end = body.find(",", index)
            end = size if end < 0 else end
            item = body[index:end].strip()
            items.append(None if item == "NULL" else item)
            index = end
        if index < size and body[index] != ",":
            raise ValueError(f"malformed array literal near {body[index : index + 20]!r}")
        index += 1
    return items


def _array(element: ColumnType) -> Converter:
    def convert(values: pa.Array) -> pa.Array:
        texts = _to_string(values).to_pylist()
        offsets = [0]
        flat: list[str | None] = []
        for text in texts:
            if text is not None:
                flat.extend(parse_array_literal(text))
            offsets.append(len(flat))
        elements = element.convert(pa.array(flat, pa.string()))
        mask = pc.is_null(values) if values.null_count else None
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), elements, mask=mask)

    return convert


def _string_type(name: str) -> ColumnType:
    return ColumnType(name, pa.string(), _to_string)


def column_type(type_oid: int, type_modifier: int = -1, custom_names: dict[int, str] | None = None) -> ColumnType:
    """The conversion of a column of type ``type_oid`` (``custom_names``: enum/domain OIDs from Type messages)."""
    if type_oid in ARRAY_ELEMENT:
        element = column_type(ARRAY_ELEMENT[type_oid], -1 if ARRAY_ELEMENT[type_oid] != NUMERIC else type_modifier)
        return ColumnType(element.pg_name + "[]", pa.list_(element.arrow), _array(element))
    if type_oid in (INT2, INT4):
        return ColumnType(_BASE_NAMES[type_oid], pa.int32(), _cast(pa.int32()))
    if type_oid in (INT8, OID):
        return ColumnType(_BASE_NAMES[type_oid], pa.int64(), _cast(pa.int64()))
    if type_oid == FLOAT4:
        return ColumnType("float4", pa.float32(), _cast(pa.float32()))
    if type_oid == FLOAT8:
        return ColumnType("float8", pa.float64(), _cast(pa.float64()))
    if type_oid == BOOL:
        return ColumnType("bool", pa.bool_(), _boolean)
    if type_oid == NUMERIC:
        bounds = numeric_precision_scale(type_modifier)
        if bounds is None or not 1 <= bounds[0] <= 38 or not 0 <= bounds[1] <= bounds[0]:
            return _string_type("numeric" if bounds is None else f"numeric({bounds[0]},{bounds[1]})")
        return ColumnType(f"numeric({bounds[0]},{bounds[1]})", pa.decimal128(*bounds), _cast(pa.decimal128(*bounds)))
    if type_oid == DATE:
        return ColumnType("date", pa.date32(), _cast(pa.date32()))
    if type_oid == TIMESTAMPTZ:
        return ColumnType("timestamptz", TIMESTAMP, _cast(TIMESTAMP))
    if type_oid == TIMESTAMP_OID:
        return ColumnType("timestamp", TIMESTAMP, _naive_timestamp)
    if type_oid == BYTEA:
        return ColumnType("bytea", pa.binary(), _bytea)
    if type_oid in _BASE_NAMES:
        return _string_type(_BASE_NAMES[type_oid])
    name = (custom_names or {}).get(type_oid)
    if name is not None and name.rsplit(".", 1)[-1].startswith("_"):  # an array of a custom type (enum[])
        element = _string_type(name.rsplit(".", 1)[-1][1:])
        return ColumnType(name, pa.list_(pa.string()), _array(element))
    return _string_type(name or f"oid:{type_oid}")


def convert_column(values: Sequence[object] | pa.Array, kind: ColumnType) -> tuple[pa.Array, list[int]]:
    """The Arrow column of ``values`` (text bytes/str or None) and the indices that could not convert.

    The whole column converts in one cast; only when that fails is each value tried alone, and the
    failing ones come back as nulls plus their indices (the caller dead-letters those rows).
    """
    array = values if isinstance(values, pa.Array) else pa.array(values, pa.binary())
    try:
        return kind.convert(array), []
    except CONVERSION_ERRORS:
        pass
    pieces: list[pa.Array] = []
    bad: list[int] = []
    for index in range(len(array)):
        try:
            pieces.append(kind.convert(array.slice(index, 1)))
        except CONVERSION_ERRORS:
            pieces.append(pa.nulls(1, kind.arrow))
            bad.append(index)
    if not pieces:
        return pa.array([], kind.arrow), bad
    return pa.concat_arrays([p.cast(kind.arrow) for p in pieces]), bad
