"""MySQL/MariaDB column types: one canonical name per type, its Arrow type, and column-at-a-time conversion.

The snapshot learns types from ``information_schema.columns`` and the binlog from the table-map event
(``binlog_row_metadata=FULL``); both are reduced to the same canonical names (``int``, ``bigint unsigned``,
``decimal(10,2)``, ``varchar``, ``text``, ``blob``, ``datetime``, ``timestamp``...), so a shape read
from either side compares equal and a real retype is visible. String lengths are left out on purpose:
``varchar(20)`` -> ``varchar(40)`` does not change the Arrow type. MariaDB's ``JSON`` is ``longtext``
with a check constraint, so it is ``text`` on both sides (MySQL's binary JSON is ``json``).

Values are gathered per column as Python lists (the binlog library decodes row by row) and turned into
Arrow once per batch; a column that does not convert as a whole is retried value by value only to find
the rows to dead-letter, so good batches pay for one ``pa.array`` call per column.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

_MAX_DECIMAL128_PRECISION = 38
_DAY_MICROS = 86_400_000_000
_SIGNED_INTEGERS = {"tinyint": pa.int32(), "smallint": pa.int32(), "mediumint": pa.int32(), "int": pa.int32()}
_UNSIGNED_INTEGERS = {
    "tinyint unsigned": pa.int32(),
    "smallint unsigned": pa.int32(),
    "mediumint unsigned": pa.int32(),
    "int unsigned": pa.int64(),
    "bigint": pa.int64(),
    "bigint unsigned": pa.decimal128(20, 0),
}
_STRINGS = {"char", "varchar", "text", "enum", "set", "json"}
_BINARIES = {"binary", "varbinary", "blob", "geometry"}
_SCALARS = {
    "float": pa.float32(),
    "double": pa.float64(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "time": pa.time64("us"),
    "year": pa.int32(),
    "bit": pa.int64(),
}
_INFORMATION_SCHEMA_ALIASES = {
    "tinytext": "text",
    "mediumtext": "text",
    "longtext": "text",
    "tinyblob": "blob",
    "mediumblob": "blob",
    "longblob": "blob",
    "integer": "int",
    "numeric": "decimal",
    "real": "double",
    "bool": "tinyint",
    "boolean": "tinyint",
    "point": "geometry",
    "linestring": "geometry",
    "polygon": "geometry",
    "multipoint": "geometry",
    "multilinestring": "geometry",
    "multipolygon": "geometry",
    "geometrycollection": "geometry",
}
_INTEGER_NAMES = ("tinyint", "smallint", "mediumint", "int", "bigint")
_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")

# Binlog field type codes (MySQL include/field_types.h), as the table-map event carries them.
_BINLOG_TYPES = {
    1: "tinyint",
    2: "smallint",
    3: "int",
    4: "float",
    5: "double",
    7: "timestamp",
    8: "bigint",
    9: "mediumint",
    10: "date",
    11: "time",
    12: "datetime",
    13: "year",
    14: "date",
    16: "bit",
    17: "timestamp",
    18: "datetime",
    19: "time",
    245: "json",
    247: "enum",
    248: "set",
    255: "geometry",
}
_BINLOG_VARCHAR = (15, 253)
_BINLOG_CHAR = 254
_BINLOG_BLOBS = (249, 250, 251, 252)
_BINLOG_DECIMAL = 246


def canonical_from_information_schema(
    data_type: str, column_type: str, precision: int | None, scale: int | None
) -> str:
    """The canonical name of a column described by ``information_schema.columns``."""
    name = _INFORMATION_SCHEMA_ALIASES.get(data_type.lower(), data_type.lower())
    if name == "decimal":
        return f"decimal({precision or 10},{scale or 0})"
    if name in _INTEGER_NAMES and "unsigned" in column_type.lower():
        return f"{name} unsigned"
    return name


def canonical_from_binlog(column: Any) -> str:
    """The canonical name of a column of a binlog table-map event (a ``pymysqlreplication`` Column)."""
    code = int(column.type)
    binary = (getattr(column, "character_set_name", None) or "").lower() == "binary"
    if code == _BINLOG_DECIMAL:
        return f"decimal({column.precision},{column.decimals})"
    if code in _BINLOG_VARCHAR:
        return "varbinary" if binary else "varchar"
    if code == _BINLOG_CHAR:
        return "binary" if binary else "char"
    if code in _BINLOG_BLOBS:
        return "blob" if binary else "text"
    name = _BINLOG_TYPES.get(code, f"unknown({code})")
    if name in _INTEGER_NAMES and getattr(column, "unsigned", False):
        return f"{name} unsigned"
    return name


def arrow_type(canonical: str) -> pa.DataType:
    """The Arrow type a canonical MySQL type lands as (unknown types as their text form)."""
    if canonical in _SIGNED_INTEGERS:
        return _SIGNED_INTEGERS[canonical]
    if canonical in _UNSIGNED_INTEGERS:
        return _UNSIGNED_INTEGERS[canonical]
    if canonical in _STRINGS:
        return pa.string()
    if canonical in _BINARIES:
        return pa.binary()
    if canonical in _SCALARS:
        return _SCALARS[canonical]
    match = _DECIMAL.match(canonical)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        return pa.decimal128(precision, scale) if precision <= _MAX_DECIMAL128_PRECISION else pa.string()
    return pa.string()


def _prepare(values: Sequence[Any], canonical: str, target: pa.DataType) -> list[Any]:
    """Bring the few types both drivers hand over in odd shapes to what ``pa.array`` takes."""
    if canonical == "bit":
        return [_bit_value(value) for value in values]
    if canonical == "set":
        return [",".join(sorted(value)) if isinstance(value, set | frozenset) else value for value in values]
    if canonical == "json":
        return [value if value is None or isinstance(value, str) else orjson.dumps(value).decode() for value in values]
    if pa.types.is_string(target) and canonical not in _STRINGS:
        return [None if value is None else str(value) for value in values]
    return list(values)


def _bit_value(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big")
    if isinstance(value, str):
        return int(value, 2)
    return int(value)


def _time_column(values: Sequence[Any]) -> tuple[pa.Array, dict[int, str]]:
    """TIME is a duration in MySQL (-838:59:59..838:59:59); only time-of-day values fit Arrow ``time64``."""
    micros = pa.array(values, type=pa.duration("us")).cast(pa.int64())
    in_day = pc.and_(pc.greater_equal(micros, 0), pc.less(micros, _DAY_MICROS))
    bad_mask = pc.invert(pc.fill_null(in_day, True))
    bad = {int(i): f"TIME value {values[int(i)]} is outside 00:00:00..23:59:59" for i in pc.indices_nonzero(bad_mask)}
    cleaned = pc.if_else(bad_mask, pa.scalar(None, pa.int64()), micros)
    return cleaned.cast(pa.time64("us")), bad


def to_arrow(values: Sequence[Any], canonical: str) -> tuple[pa.Array, dict[int, str]]:
    """A column of Python values as an Arrow array, plus ``{row index: reason}`` for values that do not fit.

    Rows that do not fit are null in the returned array; the caller drops and dead-letters them.
    """
    target = arrow_type(canonical)
    try:
        return _convert(values, canonical, target)
    except _CONVERSION_ERRORS:
        return _convert_by_value(values, canonical, target)


_CONVERSION_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, decimal.InvalidOperation)


def _convert(values: Sequence[Any], canonical: str, target: pa.DataType) -> tuple[pa.Array, dict[int, str]]:
    prepared = _prepare(values, canonical, target)
    if canonical == "time":
        return _time_column(prepared)
    if canonical == "bigint unsigned":
        return pa.array(prepared, type=pa.uint64()).cast(target), {}
    return pa.array(prepared, type=target), {}


def _convert_by_value(values: Sequence[Any], canonical: str, target: pa.DataType) -> tuple[pa.Array, dict[int, str]]:
    """The slow path, taken only by a column holding a bad value: find which rows fail, and why."""
    good: list[Any] = []
    bad: dict[int, str] = {}
    for index, value in enumerate(values):
        try:
            array, value_bad = _convert([value], canonical, target)
            if value_bad:
                bad[index] = value_bad[0]
                good.append(None)
            else:
                good.append(array[0].as_py())
        except _CONVERSION_ERRORS as err:
            bad[index] = f"{canonical} value {value!r} does not convert to {target}: {err}"
            good.append(None)
    return pa.array(good, type=target), bad


def json_default(value: Any) -> Any:
    """``orjson`` fallback for the Python values MySQL drivers return (before images as JSON)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def row_json(row: dict[str, Any]) -> str:
    """A before image as a JSON string (decimals as strings, bytes as hex, TIME as seconds)."""
    return orjson.dumps(row, default=json_default, option=orjson.OPT_NON_STR_KEYS).decode()
