"""lakegate's names for the Iceberg-compatible Arrow types every stage agrees on.

Specs (``types: {amount: "decimal(12,2)"}``), checkpointed stage state and contracts all name types
with these strings, so they live in ``core`` where every package may import them.
"""

from __future__ import annotations

import re

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
"""Event time and every timestamp column: microseconds, UTC (Iceberg ``timestamptz``)."""

_NAMES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "timestamp": TIMESTAMP,
}
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_LIST = re.compile(r"^list<(.+)>$")


def type_from_str(name: str) -> pa.DataType:
    """An Arrow type from its lakegate name (``int``, ``long``, ``decimal(10,2)``, ``list<long>``...).

    Raises:
        ValueError: the name is not one of the supported types.
    """
    text = name.strip().lower()
    if text in _NAMES:
        return _NAMES[text]
    match = _DECIMAL.match(text)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if not 1 <= precision <= 38 or scale > precision:
            raise ValueError(f"decimal({precision},{scale}): precision must be 1..38 and scale <= precision")
        return pa.decimal128(precision, scale)
    match = _LIST.match(text)
    if match:
        return pa.list_(type_from_str(match.group(1)))
    allowed = ", ".join([*_NAMES, "decimal(P,S)", "list<T>"])
    raise ValueError(f"unknown type {name!r}; use one of {allowed}")


def type_to_str(t: pa.DataType) -> str:
    """The lakegate name of an established type (the inverse of :func:`type_from_str`)."""
    for name, known in _NAMES.items():
        if t == known:
            return name
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_list(t):
        return f"list<{type_to_str(t.value_type)}>"
    raise ValueError(f"{t} is not an Iceberg-compatible lakegate type")
