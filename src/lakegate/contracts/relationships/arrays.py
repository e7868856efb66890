"""Arrow columns as numpy values and value codes, and the names and limits every relationship module shares."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.encodings import ENCODINGS, is_string_type
from lakegate.contracts.sketches import numbers

SYSTEM_PREFIX = "_lg_"
MAX_VIOLATION_RATE = 5e-4
"""A row rule breaking on more learning rows than this is not proposed, whatever ``min_confidence``."""
DENSE_INDEX_SPAN = 1 << 22
ROW_BLOCK = 1 << 16
"""Rows a row rule's element-wise arithmetic works on at a time: its temporaries stay in cache."""


def one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The column as one array: a single chunk as it is (``combine_chunks`` copies even that one)."""
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = one_array(column)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Values as float64, NaN for nulls; temporal values as microseconds since the epoch."""
    array = _plain(column)
    if pa.types.is_date(array.type):
        array = pc.cast(array, pa.timestamp("us"))
    if pa.types.is_timestamp(array.type):
        if array.type.unit != "us":
            array = pc.cast(array, pa.timestamp("us", array.type.tz))
        array = array.view(pa.int64())
    if pa.types.is_integer(array.type) or array.type == pa.float64():
        # numpy turns nulls of integer arrays into NaN on its own
        return np.asarray(array.to_numpy(zero_copy_only=False)).astype(np.float64, copy=False)
    array = pc.cast(array, pa.float64())
    if array.null_count:
        array = pc.fill_null(array, math.nan)
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def unb64(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


class IntegerIndex:
    """Positions of integer values through a dense table over their span (no hashing)."""

    def __init__(self, values: pa.Array) -> None:
        numbers = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        self.low = int(numbers.min())
        self.table = np.full(int(numbers.max()) - self.low + 1, -1, dtype=np.int64)
        self.table[numbers - self.low] = np.arange(len(numbers))
        self.padded = np.concatenate([[-1], self.table, [-1]])

    @staticmethod
    def usable(values: pa.Array) -> bool:
        if not pa.types.is_integer(values.type) or len(values) == 0 or values.null_count:
            return False
        span = pc.min_max(values)
        return int(span["max"].as_py()) - int(span["min"].as_py()) < DENSE_INDEX_SPAN

    def codes(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
        array = one_array(column)
        if not pa.types.is_integer(array.type):
            return None
        values, valid = numbers(array)
        # one gather from the table with a -1 on either side; values off the span land on those
        at = np.subtract(values, self.low - 1, dtype=np.int64)
        np.clip(at, 0, len(self.table) + 1, out=at)
        out = self.padded[at]
        if valid is not None:
            out[~valid] = -1
        return np.asarray(out)


def codes_of(
    column: pa.ChunkedArray | pa.Array, values: pa.Array, index: IntegerIndex | None = None, *, shared: bool = True
) -> np.ndarray:
    """Index of each row's value in ``values`` (int64), -1 for nulls and values not in the set."""
    if index is not None:
        codes = index.codes(column)
        if codes is not None:
            return codes
    if shared and is_string_type(column.type) and len(column) > len(values):
        # each distinct string once, through the batch's shared encoding of this column
        chunked = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
        dictionary, indices = ENCODINGS.get(chunked)
        dictionary_codes = codes_of(dictionary, values, shared=False)
        return np.append(dictionary_codes, -1)[indices]  # one gather; a null's index -1 takes the -1
    array = one_array(column)
    n = len(array)
    if len(values) == 0:
        return np.full(n, -1, dtype=np.int64)
    if pa.types.is_dictionary(array.type):
        dictionary_codes = codes_of(array.dictionary, values)
        indices = pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = dictionary_codes[indices] if len(dictionary_codes) else np.full(n, -1, dtype=np.int64)
        if array.null_count:
            out = np.where(array.is_null().to_numpy(zero_copy_only=False), -1, out)
        return np.asarray(out, dtype=np.int64)
    try:
        if values.type != array.type:
            values = values.cast(array.type)
        found = pc.index_in(array, value_set=values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        try:
            found = pc.index_in(array.cast(values.type), value_set=values)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return np.full(n, -1, dtype=np.int64)
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


class BlockCodes:
    """:func:`codes_of` a block of rows at a time, the same codes: a string column's shared encoding
    is coded once per distinct value, an integer column with an index goes through it block by block,
    any other column is coded whole once."""

    def __init__(self, column: pa.ChunkedArray, values: pa.Array, index: IntegerIndex | None = None) -> None:
        self.lookup: np.ndarray | None = None
        self.indices: np.ndarray | None = None
        self.array: pa.Array | None = None
        self.whole: np.ndarray | None = None
        self.index = index
        if index is not None and pa.types.is_integer(column.type):
            self.array = one_array(column)
        elif is_string_type(column.type) and len(column) > len(values):
            dictionary, self.indices = ENCODINGS.get(column)
            self.lookup = np.append(codes_of(dictionary, values, shared=False), -1)  # index -1 (null): -1
        else:
            self.whole = codes_of(column, values, index)

    def block(self, start: int, stop: int) -> np.ndarray:
        if self.lookup is not None and self.indices is not None:
            return np.asarray(self.lookup[self.indices[start:stop]])
        if self.index is not None and self.array is not None:
            codes = self.index.codes(self.array.slice(start, stop - start))
            assert codes is not None
            return codes
        assert self.whole is not None
        return self.whole[start:stop]


def group_rank(labels: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions carry the same label (a vectorized cumcount)."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]
    sizes = np.diff(np.r_[starts, n])
    rank_sorted = np.arange(n) - np.repeat(starts, sizes)
    out = np.empty(n, dtype=np.int64)
    out[order] = rank_sorted
    return out


def values_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([str(v) for v in values])


def struct_of(rows: pa.Table, names: list[str]) -> pa.Array:
    return pa.StructArray.from_arrays([rows.column(n).combine_chunks() for n in names], names=names)
