"""Flattening nested records into one flat table plus child tables, vectorized.

Nested objects become ``parent__child`` columns. Arrays of objects become child tables named
``f"{parent_table}__{field}"`` (recursively: grandchildren are ``f"{table}__{field}__{subfield}"``),
built with ``list_flatten`` / ``list_parent_indices`` so no Python runs per row. Maps, unions and
arrays of arrays of objects become JSON text (built with Arrow string kernels too). Each child row keeps
the index of its parent row, its index inside the parent's array and the index of its top-level
record, which is all the stage needs for row keys, positions and record-level rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

SEPARATOR = "__"
SYSTEM_PREFIX = "_lg_"


@dataclass(eq=False)
class FlatTable:
    """One flat table of a batch: the top-level rows or the elements of one array of objects.

    Attributes:
        name: the table name (``"orders"``, ``"orders__items"``).
        num_rows: rows of this table in the batch (before rejection).
        columns: flattened data columns, still in their source types.
        json_columns: columns made of JSON text by this module (typed as string, never inferred).
        parent: the table whose arrays these rows were elements of (None for the top level).
        field: the parent's flattened field holding the array.
        parent_index: for each row, the index of its parent row.
        element_index: for each row, its index inside the parent's array.
        root_index: for each row, the index of its top-level record.
    """

    name: str
    num_rows: int
    columns: dict[str, pa.Array] = dataclass_field(default_factory=dict)
    json_columns: set[str] = dataclass_field(default_factory=set)
    parent: FlatTable | None = None
    field: str = ""
    parent_index: np.ndarray | None = None
    element_index: np.ndarray | None = None
    root_index: np.ndarray | None = None

    @property
    def path(self) -> str:
        """The array path from the top-level table (``"orders__items"``); ``""`` for the top level."""
        if self.parent is None:
            return ""
        parent_path = self.parent.path
        return f"{parent_path}{SEPARATOR}{self.field}" if parent_path else self.field

    def element_path(self, row: int) -> str:
        """Where a row sits inside its record, e.g. ``orders[2].items[0]`` (for dead-letter messages)."""
        parts: list[str] = []
        table: FlatTable | None = self
        while table is not None and table.parent is not None:
            assert table.element_index is not None and table.parent_index is not None
            parts.append(f"{table.field}[{int(table.element_index[row])}]")
            row = int(table.parent_index[row])
            table = table.parent
        return ".".join(reversed(parts))


def flatten(
    records: pa.Table,
    table: str,
    *,
    arrays_of_objects: Literal["child_table", "json"] = "child_table",
    arrays_of_scalars: Literal["list", "json"] = "list",
    known_child_tables: frozenset[str] = frozenset(),
) -> list[FlatTable]:
    """Flatten a batch of records into its top-level table and child tables.

    Args:
        records: one row per record; columns may be structs, lists and lists of structs.
        table: the top-level table name; child tables are named from it.
        arrays_of_objects: ``child_table`` or ``json`` (one JSON text column).
        arrays_of_scalars: ``list`` (a list column) or ``json``.
        known_child_tables: child tables established by earlier batches; an array whose elements
            are all null (``list<null>``) becomes rows of such a table instead of being dropped.

    Returns:
        The top-level table first, then child tables depth first, in column order.
    """
    root = FlatTable(name=table, num_rows=records.num_rows, root_index=None)
    out = [root]
    items = [(name, _one(records.column(i))) for i, name in enumerate(records.column_names)]
    _flatten_into(root, "", items, out, arrays_of_objects, arrays_of_scalars, known_child_tables)
    return out


def _one(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def is_list_type(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def as_list(arr: pa.Array) -> pa.Array:
    """Any list-like array as a plain ``list<...>`` array (large, fixed-size and view lists cast)."""
    if pa.types.is_list(arr.type):
        return arr
    return pc.cast(arr, pa.list_(arr.type.value_type))


def list_values(lists: pa.Array) -> pa.Array:
    """The values of the non-null lists, in order (``list_flatten``).

    Lists of nulls are rebuilt from the lengths: pyarrow's JSON reader can return ``list<null>``
    arrays whose child is shorter than their offsets say.
    """
    if pa.types.is_null(lists.type.value_type):
        total = pc.sum(pc.list_value_length(lists)).as_py() or 0
        return pa.nulls(total)
    return pc.list_flatten(lists)


def _scalar_nested(t: pa.DataType) -> bool:
    """A scalar, or lists of lists of scalars: what can stay a list column."""
    while is_list_type(t):
        t = t.value_type
    return not (pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t))


def _flatten_into(
    table: FlatTable,
    prefix: str,
    items: list[tuple[str, pa.Array]],
    out: list[FlatTable],
    objects: str,
    scalars: str,
    known: frozenset[str],
) -> None:
    for name, arr in items:
        if not prefix and name.startswith(SYSTEM_PREFIX):
            continue  # system columns are written by lakegate only
        full = f"{prefix}{name}"
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        kind = arr.type
        if pa.types.is_struct(kind):
            children = arr.flatten()  # parent nulls propagate into the children
            sub = [(kind.field(i).name, children[i]) for i in range(kind.num_fields)]
            _flatten_into(table, f"{full}{SEPARATOR}", sub, out, objects, scalars, known)
        elif is_list_type(kind):
            value_type = kind.value_type
            child_name = f"{table.name}{SEPARATOR}{full}"
            is_objects = pa.types.is_struct(value_type) or (pa.types.is_null(value_type) and child_name in known)
            if is_objects and objects == "child_table":
                child, values = _child_table(table, full, arr)
                out.append(child)
                sub = []
                if pa.types.is_struct(values.type):
                    fields = values.flatten()
                    sub = [(value_type.field(i).name, fields[i]) for i in range(value_type.num_fields)]
                _flatten_into(child, "", sub, out, objects, scalars, known)
            elif is_objects or (scalars == "json" and _scalar_nested(kind)) or not _scalar_nested(kind):
                table.columns[full] = to_json(arr)
                table.json_columns.add(full)
            else:
                table.columns[full] = arr
        elif pa.types.is_map(kind) or pa.types.is_union(kind):
            table.columns[full] = to_json(arr)
            table.json_columns.add(full)
        else:
            table.columns[full] = arr


def _child_table(parent: FlatTable, field_name: str, arr: pa.Array) -> tuple[FlatTable, pa.Array]:
    """The elements of an array-of-objects column as the rows of a child table, and the elements."""
    values = list_values(arr)
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy().astype(np.int64, copy=False)
    if pa.types.is_null(arr.type.value_type):  # see list_values: the child may be short
        parent_index = np.repeat(np.arange(len(arr), dtype=np.int64), lengths)
    else:
        parent_index = pc.list_parent_indices(arr).to_numpy().astype(np.int64, copy=False)
    starts = np.cumsum(lengths) - lengths
    element_index = np.arange(len(values), dtype=np.int64) - np.repeat(starts, lengths)
    root_index = parent_index if parent.root_index is None else parent.root_index[parent_index]
    child = FlatTable(
        name=f"{parent.name}{SEPARATOR}{field_name}",
        num_rows=len(values),
        parent=parent,
        field=field_name,
        parent_index=parent_index,
        element_index=element_index,
        root_index=root_index,
    )
    return child, values


# ---------------------------------------------------------------------------------------------------
# JSON text, vectorized: used for the ``json`` array modes and for nested values in string columns.


def _quote(strings: pa.Array) -> pa.Array:
    """JSON string literals for a string array (nulls stay null)."""
    s = pc.replace_substring(strings, "\\", "\\\\")
    s = pc.replace_substring(s, '"', '\\"')
    s = pc.replace_substring(s, "\n", "\\n")
    s = pc.replace_substring(s, "\r", "\\r")
    s = pc.replace_substring(s, "\t", "\\t")
    quoted = pc.binary_join_element_wise('"', s, '"', "")
    odd = pc.match_substring_regex(s, "[\x00-\x08\x0b\x0c\x0e-\x1f]")
    if pc.any(odd).as_py():  # rare control characters: let orjson escape those few values
        idx = np.flatnonzero(odd.fill_null(False).to_numpy(zero_copy_only=False))
        texts = quoted.to_pylist()
        for i in idx:
            texts[i] = orjson.dumps(strings[int(i)].as_py()).decode()
        quoted = pa.array(texts, pa.string())
    return quoted


def to_json(arr: pa.Array) -> pa.Array:
    """Each value as JSON text (a string array); a null value stays null.

    Built from Arrow kernels: strings are escaped and quoted, structs joined field by field, lists
    re-assembled over their offsets and joined with ``binary_join``.
    """
    t = arr.type
    n = len(arr)
    if pa.types.is_dictionary(t):
        return to_json(arr.dictionary_decode())
    if pa.types.is_null(t):
        return pa.nulls(n, pa.string())
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false")
    if pa.types.is_integer(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(t):
        finite = pc.is_finite(arr)
        return pc.if_else(finite, pc.cast(arr, pa.string()), pa.scalar(None, pa.string()))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _quote(pc.cast(arr, pa.string()))
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        text = pc.replace_substring(pc.cast(arr, pa.string()), " ", "T", max_replacements=1)
        return _quote(text)
    if pa.types.is_struct(t):
        fields = arr.flatten()
        parts: list[pa.Array | str] = []
        for i in range(t.num_fields):
            key = orjson.dumps(t.field(i).name).decode()
            parts.append(("{" if i == 0 else ",") + key + ":")
            parts.append(to_json(fields[i]).fill_null("null"))
        if not parts:
            joined = pa.array(["{}"] * n, pa.string())
        else:
            joined = pc.binary_join_element_wise(*parts, "}", "")
        return pc.if_else(arr.is_valid(), joined, pa.scalar(None, pa.string()))
    if pa.types.is_map(t):
        entries = pa.StructArray.from_arrays([arr.keys, arr.items], names=["key", "value"])
        lists = pa.ListArray.from_arrays(arr.offsets, entries, mask=arr.is_null())
        key_values = pc.list_flatten(lists).flatten()  # the entries of the non-null maps
        keys = _quote(pc.cast(key_values[0], pa.string()))
        items = pc.binary_join_element_wise(keys, ":", to_json(key_values[1]).fill_null("null"), "")
        return _join_list(lists, items, "{", "}")
    if is_list_type(t):
        lst = as_list(arr)
        values = to_json(list_values(lst)).fill_null("null")
        return _join_list(lst, values, "[", "]")
    # binary, unions, intervals...: rare; fall back to Python values
    texts = [
        None if v is None else orjson.dumps(v, default=str).decode()
        for v in (x.hex() if isinstance(x, bytes) else x for x in arr.to_pylist())
    ]
    return pa.array(texts, pa.string())


def _join_list(lists: pa.Array, items: pa.Array, open_: str, close: str) -> pa.Array:
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int32, copy=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    rebuilt = pa.ListArray.from_arrays(pa.array(offsets), items, mask=lists.is_null())
    joined = pc.binary_join(rebuilt, ",")
    return pc.binary_join_element_wise(open_, joined, close, "")
