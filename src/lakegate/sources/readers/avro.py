"""The Avro reader: object container files block by block, resumable at any record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any, cast

import fastavro
import numpy as np

from lakegate.sources.compression import DecodedStream
from lakegate.sources.readers.base import Chunk, FormatReader, ReadContext, position_labels
from lakegate.sources.readers.rows import rows_raw, rows_to_table


class AvroReader(FormatReader):
    """Avro object container files via fastavro, block by block; positions are record indices.

    Resuming skips whole blocks by their record counts without decoding them. ``offset`` is the
    start of the first block not yet fully read, which is where damage is reported from.
    """

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        super().__init__(ctx, resume)
        self._stream: DecodedStream | None = None
        self._blocks: Iterator[Any] | None = None
        self._records: Iterator[Any] | None = None
        self._block_end = 0
        self._skip = self.record

    def read(self) -> Chunk | None:
        if self._blocks is None:
            self._stream = DecodedStream(self.ctx.path, self.ctx.compression)
            try:
                self._blocks = iter(fastavro.block_reader(cast(IO[bytes], self._stream)))
            except Exception as err:  # fastavro raises many kinds of error on a bad header
                self._unreadable_header(err)
                return None
            self.offset = self._stream.offset
        assert self._stream is not None
        rows: list[Any] = []
        size = 0
        while len(rows) < self.ctx.batch_rows and size < self.ctx.batch_bytes:
            try:
                if self._records is None:
                    block = next(self._blocks)
                    self.offset, self._block_end = block.offset, block.offset + block.size
                    if block.num_records <= self._skip:
                        self._skip -= block.num_records
                        self.offset = self._block_end
                        continue
                    size += block.size
                    self._records = iter(block)
                    for _ in range(self._skip):
                        next(self._records)
                    self._skip = 0
                rows.append(next(self._records))
            except StopIteration:
                if self._records is None:
                    self.finished = True
                    break
                self._records, self.offset = None, self._block_end
            except Exception as err:  # fastavro raises many kinds of error on corrupt blocks
                self.record += len(rows)
                chunk = self._chunk(rows)
                self.fail(self._stream.damage or err, self.offset, max(self._stream.offset, self.offset))
                return chunk
        self.record += len(rows)
        return self._chunk(rows)

    def _unreadable_header(self, err: Exception) -> None:
        assert self._stream is not None
        if self._stream.offset == 0 and not self._stream.damage:
            self.finished = True  # an empty file
            return
        self.fail(self._stream.damage or f"not a readable Avro file: {err}", 0, self._stream.offset)

    def _chunk(self, rows: list[Any]) -> Chunk:
        table = rows_to_table(rows)
        first = self.record - len(rows)
        labels = position_labels(np.arange(first, self.record))
        return Chunk(table, labels, self.dead_letters(), rows_raw(table), len(rows))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
