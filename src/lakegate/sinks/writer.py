"""Step 2 of the checkpoint protocol: stream rows into Parquet data files that nothing references yet.

Files are written straight into the table's data location with names that carry the pipeline and
the checkpoint id, one partition value per file (an Iceberg data file holds one partition value), so
that memory stays bounded however long a checkpoint runs and recovery can tell whose files a stray
one is. Each finished file keeps the footer its writer produced (:class:`WrittenFile`), so the commit
builds the Iceberg entry from it instead of opening the file again.
"""

from __future__ import annotations

import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.table import Table

from lakegate.sinks.tables import EVENT_TIME_COLUMN, Granularity, file_schema, partition_granularity

_MICROS = {"hour": 3_600_000_000, "day": 86_400_000_000}
_NULL_KEY = np.iinfo(np.int64).min


def data_file_prefix(pipeline: str, checkpoint_id: int) -> str:
    """File names of one pipeline's checkpoint start with this (used by recovery to find strays)."""
    return f"lg-{pipeline}-{checkpoint_id:012d}-"


def partition_keys(rows: pa.Table, granularity: Granularity) -> np.ndarray:
    """An int64 partition key per row (hours, days or months since epoch), vectorized."""
    column = rows.column(EVENT_TIME_COLUMN).combine_chunks()
    micros = pc.fill_null(column.cast(pa.int64()), _NULL_KEY).to_numpy()
    if granularity == "month":
        months = micros.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
        return np.where(micros == _NULL_KEY, _NULL_KEY, months)
    return np.where(micros == _NULL_KEY, _NULL_KEY, micros // _MICROS[granularity])


def split_by_partition(rows: pa.Table, granularity: Granularity | None) -> list[tuple[int, pa.Table]]:
    """Group rows by partition key with one sort and contiguous slices."""
    if granularity is None or rows.num_rows == 0:
        return [(0, rows)]
    keys = partition_keys(rows, granularity)
    if keys.min() == keys.max():
        return [(int(keys[0]), rows)]
    if np.all(keys[1:] >= keys[:-1]):
        sorted_keys = keys  # event time mostly arrives in order: slice without a copy
    else:
        distinct = np.unique(keys)
        if len(distinct) <= 4:  # a few rows across a day boundary: a filter per key beats a sort
            return [(int(k), rows.filter(pa.array(keys == k))) for k in distinct]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        rows = rows.take(pa.array(order))
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(sorted_keys)]])
    return [(int(sorted_keys[s]), rows.slice(s, e - s)) for s, e in zip(starts, ends, strict=True)]


def align(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast ``rows`` to a table's file schema: same column order, nulls for absent columns."""
    arrays = []
    for target in schema:
        if target.name in rows.column_names:
            column = rows.column(target.name)
            arrays.append(column if column.type.equals(target.type) else column.cast(target.type))
        else:
            arrays.append(pa.nulls(rows.num_rows, target.type))
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclass(frozen=True)
class WrittenFile:
    """A finished data file: its path, its size and the Parquet footer its writer produced."""

    path: str
    size: int
    footer: pq.FileMetaData


@dataclass
class _OpenFile:
    path: str
    writer: pq.ParquetWriter
    stream: Any
    rows: int = 0

    def finish(self) -> WrittenFile | None:
        """Close the file; its footer and size when the output stream can tell them."""
        self.writer.close()
        # pyarrow keeps the footer it wrote on its inner writer; without it the commit reads the file.
        footer = getattr(getattr(self.writer, "writer", None), "metadata", None)
        size = self.stream.tell() if hasattr(self.stream, "tell") else None
        self.stream.close()
        if footer is None or not isinstance(size, int) or size <= 0:
            return None
        return WrittenFile(self.path, size, footer)


@dataclass
class DataFileWriter:
    """Writes one checkpoint's rows of one table; ``close()`` returns the files to commit."""

    table: Table
    pipeline: str
    checkpoint_id: int
    _schema: pa.Schema | None = None
    _open: dict[int, _OpenFile] = field(default_factory=dict)
    _closed: list[str] = field(default_factory=list)
    written: dict[str, WrittenFile] = field(default_factory=dict)
    """Path -> footer and size of every finished file (the commit builds its entries from them)."""
    _pending: deque[Future[None]] = field(default_factory=deque)
    _executor: ThreadPoolExecutor | None = None
    rows_written: int = 0

    MAX_IN_FLIGHT = 2
    """Encoding and compressing Parquet releases the GIL: one writer thread overlaps it with the
    next batch's decoding, and at most this many batches wait for it, so memory stays bounded."""

    def write(self, rows: pa.Table) -> None:
        """Append rows (their columns must already exist in the table's schema)."""
        if rows.num_rows == 0:
            return
        schema = file_schema(self.table)
        if self._schema is not None and not schema.equals(self._schema, check_metadata=True):
            self._roll()  # the table's schema evolved: later files carry the new one
        self._schema = schema
        granularity = partition_granularity(self.table)
        for key, part in split_by_partition(rows, granularity):
            handle = self._open.get(key)
            if handle is None:
                handle = self._open[key] = self._new_file(schema)
            self._submit(handle, align(part, schema))
            handle.rows += part.num_rows
        self.rows_written += rows.num_rows

    def _submit(self, handle: _OpenFile, rows: pa.Table) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lakegate-parquet")
        while len(self._pending) >= self.MAX_IN_FLIGHT:
            self._pending.popleft().result()
        self._pending.append(self._executor.submit(handle.writer.write_table, rows))

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def _new_file(self, schema: pa.Schema) -> _OpenFile:
        name = f"{data_file_prefix(self.pipeline, self.checkpoint_id)}{uuid.uuid4().hex}.parquet"
        path = f"{self.table.location().rstrip('/')}/data/{name}"
        stream = self.table.io.new_output(path).create(overwrite=True)
        writer = pq.ParquetWriter(stream, schema, compression="zstd", write_statistics=True)
        return _OpenFile(path=path, writer=writer, stream=stream)

    def _roll(self) -> None:
        self._drain()
        for handle in self._open.values():
            finished = handle.finish()
            if finished is not None:
                self.written[handle.path] = finished
            self._closed.append(handle.path)
        self._open.clear()

    def close(self) -> list[str]:
        """Finish every file; the paths are what step 4 commits."""
        self._roll()
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        return list(self._closed)
