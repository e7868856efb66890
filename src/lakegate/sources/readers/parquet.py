"""The Parquet reader: row group by row group, so damage stays inside one group."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lakegate.sources.compression import READ_SIZE, DecodedStream
from lakegate.sources.readers.base import Chunk, FormatReader, ReadContext, position_labels
from lakegate.sources.readers.rows import rows_raw


class ParquetReader(FormatReader):
    """Parquet via Arrow, row group by row group; positions are row indices.

    Reading one row group at a time keeps damage contained: the groups before a corrupt one flow on.
    Resuming skips whole row groups. Parquet needs random access, so a compressed Parquet file is
    first decompressed to a temporary file. ``offset`` is the start of the row group being read.
    """

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        super().__init__(ctx, resume)
        self._file: pq.ParquetFile | None = None
        self._spool: IO[bytes] | None = None
        self._group = 0
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._leftover: pa.RecordBatch | None = None
        self._drop = 0
        self._batch_size = 1
        self._size = 0

    def _open(self) -> bool:
        source: Any = str(self.ctx.path)
        self._size = self.ctx.path.stat().st_size
        if self.ctx.compression != "none":
            with DecodedStream(self.ctx.path, self.ctx.compression) as stream:
                self._spool = tempfile.NamedTemporaryFile(suffix=".parquet")  # deleted in close()
                shutil.copyfileobj(stream, self._spool, READ_SIZE)
                self._spool.flush()
                self._size = stream.offset
                if stream.damage:
                    self.fail(stream.damage, 0, stream.offset)
                    return False
            source = self._spool.name  # by name, so Arrow reads it natively
        if self._size == 0:
            self.finished = True
            return False
        try:
            self._file = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as err:
            self.fail(err, 0, self._size)
            return False
        meta = self._file.metadata
        group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        bounds = np.cumsum([0, *group_rows])
        self._group = int(np.searchsorted(bounds, self.record, side="right") - 1)
        self._drop = self.record - int(bounds[min(self._group, len(group_rows))])
        widest_row = max(
            (meta.row_group(i).total_byte_size // max(1, rows) for i, rows in enumerate(group_rows)),
            default=1,
        )
        self._batch_size = max(1, min(self.ctx.batch_rows, self.ctx.batch_bytes // max(1, widest_row)))
        return True

    def _group_offset(self, group: int) -> int:
        assert self._file is not None
        if group >= self._file.metadata.num_row_groups:
            return self._size
        meta = self._file.metadata.row_group(group)
        offsets = []
        for j in range(meta.num_columns):
            column = meta.column(j)
            offsets.append(column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset)
        return min(offsets) if offsets else 0

    def _next_batch(self) -> pa.RecordBatch | None:
        """The next batch of the current row group, moving on to the next group; None at the end."""
        assert self._file is not None
        while True:
            if self._leftover is not None:
                batch, self._leftover = self._leftover, None
                return batch
            if self._batches is None:
                if self._group >= self._file.metadata.num_row_groups:
                    return None
                self.offset = self._group_offset(self._group)
                self._batches = self._file.iter_batches(batch_size=self._batch_size, row_groups=[self._group])
            try:
                batch = next(self._batches)
            except StopIteration:
                self._group, self._batches = self._group + 1, None
                continue
            if self._drop:
                dropped = min(self._drop, batch.num_rows)
                batch, self._drop = batch.slice(dropped), self._drop - dropped
            if batch.num_rows:
                return batch

    def read(self) -> Chunk | None:
        if self._file is None and not self._open():
            return None
        batches: list[pa.RecordBatch] = []
        count = size = 0
        error: Exception | None = None
        while count < self.ctx.batch_rows and size < self.ctx.batch_bytes:
            try:
                batch = self._next_batch()
            except (pa.ArrowException, OSError) as err:
                error = err
                break
            if batch is None:
                self.finished = True
                break
            room = self.ctx.batch_rows - count
            if batch.num_rows > room:
                batch, self._leftover = batch.slice(0, room), batch.slice(room)
            batches.append(batch)
            count, size = count + batch.num_rows, size + batch.nbytes
        first = self.record
        self.record += count
        if error is not None:
            self.fail(error, self.offset, self._size)
        if not batches:
            return None
        table = pa.Table.from_batches(batches)
        labels = position_labels(np.arange(first, self.record))
        return Chunk(table, labels, self.dead_letters(), rows_raw(table), table.num_rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._spool is not None:
            self._spool.close()
