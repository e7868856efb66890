"""Rows as Python values, to Arrow and back to JSON text.

Avro records and the JSON records Arrow cannot take in one go arrive as Python dicts; dead letters of
row formats need each row's original content as bytes. Both conversions must never lose a value.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import pyarrow as pa

from lakegate.core.batch import RawPayloads

_CONVERSION = (ValueError, TypeError, OverflowError, NotImplementedError)
"""What Arrow raises when Python values do not fit one type (ArrowInvalid is a ValueError...)."""


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
        return no_columns(len(rows))
    columns = []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns.append(pa.array(values))
        except _CONVERSION:
            columns.append(pa.array([as_text(v) for v in values], pa.string()))
    return pa.Table.from_arrays(columns, names=[str(n) for n in names])


def no_columns(num_rows: int) -> pa.Table:
    """A table of ``num_rows`` rows that have no fields."""
    return pa.Table.from_struct_array(pa.array([{}] * num_rows, pa.struct([])))


def rows_raw(table: pa.Table) -> RawPayloads:
    """Raw payloads of a table's rows: each row as JSON (for formats whose bytes are not per-record)."""

    def raw(indices: Sequence[int]) -> list[bytes]:
        rows = table.take(pa.array(list(indices), pa.int64())).to_pylist()
        return [orjson.dumps(row, default=json_default, option=orjson.OPT_NON_STR_KEYS) for row in rows]

    return raw
