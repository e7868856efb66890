"""Dictionary encodings of a batch's string columns, computed once and shared by every rule on them.

Rules on a string column (allowed values, patterns, lengths, dependencies, duplicate keys) work on the
column's distinct values and a per-row index into them; encoding is the expensive part, so the first
rule to ask pays for it and the others reuse it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def is_string_type(data_type: pa.DataType) -> bool:
    """Whether a column of this type is one the shared encodings serve (string or large string)."""
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


class Encodings:
    """Dictionary encodings of the string columns of recent batches, shared by the rules on a column.

    Keyed by the identity of the column's buffers (the entry holds the column, so the addresses stay
    valid while cached); a small LRU, so at most ``size`` columns are kept alive.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[Any, ...], tuple[pa.ChunkedArray, pa.Array, np.ndarray]] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def _key(column: pa.ChunkedArray) -> tuple[Any, ...]:
        def addresses(array: pa.Array) -> tuple[int, ...]:
            return tuple(b.address if b is not None else 0 for b in array.buffers())

        return tuple(
            (
                chunk.offset,
                len(chunk),
                *addresses(chunk),
                *(addresses(chunk.dictionary) if pa.types.is_dictionary(chunk.type) else ()),
            )
            for chunk in column.chunks
        )

    def get(self, column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
        """(distinct values, per-row index into them with -1 for null)."""
        key = self._key(column)
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
                return hit[1], hit[2]
        if pa.types.is_dictionary(column.type):
            encoded = column.unify_dictionaries() if column.num_chunks > 1 else column
        else:
            encoded = pc.dictionary_encode(column)
        if encoded.num_chunks == 0:
            dictionary, indices = pa.array([], pa.string()), np.empty(0, dtype=np.int64)
        else:
            dictionary = encoded.chunk(0).dictionary
            parts = [pc.fill_null(c.indices, -1).to_numpy(zero_copy_only=False) for c in encoded.chunks]
            indices = parts[0] if len(parts) == 1 else np.concatenate(parts)
        with self.lock:
            self.entries[key] = (column, dictionary, indices)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return dictionary, indices

    def clear(self) -> None:
        """Drop every cached encoding (a batch is done: its columns need not stay alive)."""
        with self.lock:
            self.entries.clear()


ENCODINGS = Encodings()
"""The process-wide cache (checkers of one contract run on the same batch one after another)."""
