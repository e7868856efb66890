"""Vectorized 64-bit hashes of Arrow values and rows (duplicate keys, distinct samples).

Numbers hash by their bit pattern, strings by their bytes laid out in 8-byte words; no per-row Python.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.encodings import ENCODINGS

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0x6A09E667F3BCC909)
_STRING_CHUNK_BYTES = 1 << 23


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, on a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return np.asarray(x ^ (x >> np.uint64(31)))


def _hash_strings(array: pa.Array) -> np.ndarray:
    """A hash of each string's bytes: the bytes are laid out in zero-padded 8-byte words per row
    (a reshape when all strings have one length, one scatter otherwise) and folded word by word."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32)[
        array.offset : array.offset + len(array) + 1
    ].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    out = np.empty(len(array), dtype=np.uint64)
    width = int(-(-int(lengths.max(initial=0)) // 8) * 8) or 8
    rows_per_chunk = max(1, _STRING_CHUNK_BYTES // width)
    for start in range(0, len(array), rows_per_chunk):
        stop = min(start + rows_per_chunk, len(array))
        n = stop - start
        first, last = int(offsets[start]), int(offsets[stop])
        chunk_lengths = lengths[start:stop]
        padded = np.zeros((n, width), dtype=np.uint8)
        if n and chunk_lengths.min() == chunk_lengths.max():
            size = int(chunk_lengths[0])
            padded[:, :size] = data[first:last].reshape(n, size)
        elif last > first:
            rows = np.arange(n, dtype=np.int64) * width - (offsets[start:stop] - first)
            padded.reshape(-1)[np.arange(last - first, dtype=np.int64) + np.repeat(rows, chunk_lengths)] = data[
                first:last
            ]
        words = padded.view(np.uint64)
        h = chunk_lengths.astype(np.uint64) * _GOLDEN
        for k in range(words.shape[1]):
            # only a string's own words: the hash must not depend on the longest string of the batch
            folded = (h ^ words[:, k]) * _M1
            np.copyto(h, folded, where=chunk_lengths > 8 * k)
        out[start:stop] = mix(h)
    return out


def hash_array(array: pa.Array) -> np.ndarray:
    """64-bit words standing for one column's values (numbers: their bit pattern; strings: a hash).

    Not mixed: :func:`row_hashes` mixes them (:func:`mix` does). Nulls stand for a constant.
    """
    data_type = array.type
    if pa.types.is_dictionary(data_type):
        values = hash_array(array.dictionary)
        indices = pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = values[indices] if len(values) else np.zeros(len(array), dtype=np.uint64)
    elif _is_text(data_type):
        out = _hash_strings(array)
    elif pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        values = pc.fill_null(pc.cast(array, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        values = np.where(values == 0, 0.0, values)  # -0.0 == 0.0
        values = np.where(np.isnan(values), math.nan, values)
        out = values.astype(np.float64).view(np.uint64)
    elif (pa.types.is_integer(data_type) or pa.types.is_temporal(data_type)) and data_type.bit_width == 64:
        # zero-copy: the value buffer's words themselves (null slots are replaced below)
        out = np.frombuffer(array.buffers()[1], dtype=np.uint64, count=len(array), offset=array.offset * 8)
    elif pa.types.is_boolean(data_type) or pa.types.is_integer(data_type):
        out = pc.fill_null(pc.cast(array, pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64)
    elif pa.types.is_temporal(data_type):
        width = pa.int32() if data_type.bit_width == 32 else pa.int64()
        out = pc.fill_null(array.view(width).cast(pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64)
    else:
        text = [None if v is None else repr(v) for v in array.to_pylist()]
        out = _hash_strings(pa.array(text, type=pa.string()))
    if array.null_count:
        out = np.where(array.is_valid().to_numpy(zero_copy_only=False), out, _NULL)
    return np.asarray(out, dtype=np.uint64)  # may be a read-only view of the column


def _is_text(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
    )


ROW_BLOCK = 1 << 16
"""Rows hashed at a time: every column's words for a block are folded while the block sits in cache."""


def _column_words(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A column as (words, per-row index, null rows): a row's word is ``words[index]`` for an encoded
    string column (index -1, a null: the null constant), else ``words[row]``, where a null row's word
    (64-bit columns: a zero-copy view of the values) must be swapped for the null constant."""
    if _is_text(column.type):
        dictionary, indices = ENCODINGS.get(
            column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
        )
        distinct = hash_array(dictionary) if len(dictionary) else np.zeros(0, np.uint64)
        return np.append(distinct, _NULL), indices, None
    array = column
    if isinstance(column, pa.ChunkedArray):  # a single chunk as it is: combine_chunks would copy it
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    data_type = array.type
    if (pa.types.is_integer(data_type) or pa.types.is_temporal(data_type)) and data_type.bit_width == 64:
        words = np.frombuffer(array.buffers()[1], dtype=np.uint64, count=len(array), offset=array.offset * 8)
        nulls = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)) if array.null_count else None
        return words, None, nulls
    return hash_array(array), None, None


def row_hashes(rows: pa.Table, columns: list[str]) -> np.ndarray:
    """One 64-bit hash per row over ``columns`` (order matters, names do not).

    A string column is hashed through its shared dictionary encoding: each distinct value once. The
    rows are folded and mixed a block at a time (one pass over each column instead of several).
    """
    parts = [_column_words(rows.column(name)) for name in columns]
    swaps = [None if nulls is None else _NULL - words[nulls] for words, _, nulls in parts]  # word -> _NULL
    out = np.empty(rows.num_rows, dtype=np.uint64)
    for start in range(0, rows.num_rows, ROW_BLOCK):
        stop = min(start + ROW_BLOCK, rows.num_rows)
        combined = out[start:stop]
        combined.fill(len(columns))
        for (words, index, nulls), swap in zip(parts, swaps, strict=True):
            np.multiply(combined, _M1, out=combined)  # a polynomial over the columns' words, mixed at the end
            if index is not None:
                np.add(combined, words[index[start:stop]], out=combined)
                continue
            np.add(combined, words[start:stop], out=combined)
            if nulls is not None and swap is not None:  # wrapping arithmetic: + (_NULL - word) makes it _NULL
                low, high = np.searchsorted(nulls, (start, stop))
                combined[nulls[low:high] - start] += swap[low:high]
        combined[:] = mix(combined)
    return out
