"""The exactly-once checkpoint protocol of the embedded runtime.

Checkpoint ``n``:

1. Stop pulling; drain in-flight batches through the stages (the runtime is synchronous, so the
   batches already handed to :meth:`OpenCheckpoint.add` are all there is).
2. Write Parquet data files for every output table, the dead-letter table included; nothing is
   visible yet (:class:`~lakegate.sinks.writer.DataFileWriter` streams them while the checkpoint
   is open, and ``close`` finishes them).
3. Persist a *pending* record for ``n``: operator state, source end positions, files per table.
4. Commit each table in its own Iceberg transaction with ``lakegate.pipeline``,
   ``lakegate.checkpoint-id`` and ``lakegate.source-positions``; a table whose last snapshot from
   this pipeline already carries an id >= n is skipped. The snapshots these commits expired are kept
   on the checkpoint (``OpenCheckpoint.expired``) for the runtime to reclaim their files later.
5. Mark ``n`` committed; only now acknowledge the sources.

Recovery (:func:`finish_pending`) repeats steps 4 and 5 for a pending record, so a crash anywhere
leaves either nothing visible (before step 3) or a checkpoint that will be completed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.deadletter import DeadLetters
from lakegate.core.errors import ReconciliationError
from lakegate.runtime.faults import maybe_crash
from lakegate.runtime.state import CheckpointRecord, StateStore
from lakegate.sinks.commit import commit_checkpoint
from lakegate.sinks.reclaim import ExpiredSnapshots
from lakegate.sinks.tables import Granularity, TableManager
from lakegate.sinks.writer import DataFileWriter, WrittenFile


def constant_column(value: object, data_type: pa.DataType, length: int) -> pa.Array:
    """A column holding one value, built without a Python loop."""
    return pc.fill_null(pa.nulls(length, data_type), pa.scalar(value, data_type))


@dataclass
class Counts:
    """Reconciliation counters: ``records_read == rows_landed + dead_lettered`` must hold."""

    records_read: int = 0
    rows_landed: int = 0
    dead_lettered: int = 0
    child_rows: int = 0
    late_rows: int = 0

    def add(self, other: Counts) -> None:
        self.records_read += other.records_read
        self.rows_landed += other.rows_landed
        self.dead_lettered += other.dead_lettered
        self.child_rows += other.child_rows
        self.late_rows += other.late_rows

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def check(self, where: str) -> None:
        """Raises: ReconciliationError when records were lost or counted twice."""
        if self.records_read != self.rows_landed + self.dead_lettered:
            raise ReconciliationError(
                f"{where}: records read {self.records_read} != rows landed {self.rows_landed}"
                f" + dead-lettered {self.dead_lettered}"
            )


@dataclass
class OpenCheckpoint:
    """Checkpoint ``checkpoint_id`` while batches flow into it (steps 1-2)."""

    checkpoint_id: int
    pipeline: str
    tables: TableManager
    dead_letter_table: str
    partitions: Callable[[str], Granularity | None]
    writers: dict[str, DataFileWriter] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    input_bytes: int = 0
    ingested_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    expired: list[ExpiredSnapshots] = field(default_factory=list)
    """Snapshots step 4's commits expired (``sinks/reclaim.py`` deletes what only they referenced)."""

    @property
    def empty(self) -> bool:
        return self.counts.records_read == 0

    def add_rows(self, table: str, rows: pa.Table) -> None:
        """Stamp the runtime's system columns and stream the rows into the table's data files."""
        if rows.num_rows == 0:
            return
        rows = self._stamp(rows)
        iceberg_table = self.tables.ensure(table, rows.schema, self.partitions(table))
        writer = self.writers.get(table)
        if writer is None:
            writer = self.writers[table] = DataFileWriter(iceberg_table, self.pipeline, self.checkpoint_id)
        writer.table = iceberg_table
        writer.write(rows)
        self.input_bytes += rows.nbytes

    def add_dead_letters(self, dead_letters: DeadLetters) -> None:
        if len(dead_letters):
            rows = dead_letters.to_arrow(pipeline=self.pipeline, checkpoint_id=self.checkpoint_id)
            self.add_rows(self.dead_letter_table, rows)

    def _stamp(self, rows: pa.Table) -> pa.Table:
        n = rows.num_rows
        for name, value, data_type in (
            ("_lg_ingested_at", self.ingested_at, pa.timestamp("us", tz="UTC")),
            ("_lg_pipeline", self.pipeline, pa.string()),
            ("_lg_checkpoint", self.checkpoint_id, pa.int64()),
        ):
            if name in rows.column_names:
                rows = rows.drop_columns([name])
            rows = rows.append_column(pa.field(name, data_type), constant_column(value, data_type, n))
        return rows

    def write_files(self) -> dict[str, list[str]]:
        """Step 2's end: finish every data file."""
        return {table: writer.close() for table, writer in self.writers.items()}

    @property
    def written(self) -> dict[str, WrittenFile]:
        """Footer and size of every finished data file, by path (step 4 builds its entries from them)."""
        return {path: footer for writer in self.writers.values() for path, footer in writer.written.items()}


def run_protocol(
    checkpoint: OpenCheckpoint,
    *,
    state: StateStore,
    source_positions: Mapping[str, object],
    operator_state: Mapping[str, bytes],
    known_tables: list[str],
    acknowledge: Callable[[], None],
) -> CheckpointRecord:
    """Steps 2-5 for an open checkpoint; returns the committed record."""
    checkpoint.counts.check(f"checkpoint {checkpoint.checkpoint_id}")
    # Step 2: finish the data files; none is referenced by any table yet.
    files = checkpoint.write_files()
    maybe_crash("after_write")
    # Step 3: persist the pending record.
    tables = sorted(set(known_tables) | set(files))
    record = CheckpointRecord(
        checkpoint_id=checkpoint.checkpoint_id,
        status="pending",
        source_positions=dict(source_positions),
        files={t: paths for t, paths in files.items() if paths},
        operator_state={k: base64.b64encode(v).decode() for k, v in operator_state.items()},
        counts=checkpoint.counts.as_dict(),
        tables=tables,
    )
    state.put_pending(record)
    maybe_crash("after_pending")
    # Steps 4 and 5 are exactly what recovery repeats.
    checkpoint.expired = finish_pending(
        record,
        state=state,
        tables=checkpoint.tables,
        pipeline=checkpoint.pipeline,
        acknowledge=acknowledge,
        written=checkpoint.written,
        reload=False,
    )
    return record


def finish_pending(
    record: CheckpointRecord,
    *,
    state: StateStore,
    tables: TableManager,
    pipeline: str,
    acknowledge: Callable[[], None],
    written: Mapping[str, WrittenFile] | None = None,
    reload: bool = True,
) -> list[ExpiredSnapshots]:
    """Steps 4-5 for a pending record: commit each table (idempotently), mark, acknowledge.

    Recovery reloads every table first (``reload``). The runtime's own checkpoints commit on the
    tables as the previous checkpoint left them, with the footers their writers kept (``written``):
    a table changed meanwhile by someone else fails the catalog's check and is reloaded then
    (``sinks/commit.py``). Returns the snapshots the commits expired.
    """
    positions = orjson.dumps(record.source_positions).decode()
    expired: list[ExpiredSnapshots] = []
    # Step 4: one Iceberg transaction per table; tables already at >= n are skipped.
    for index, (name, files) in enumerate(sorted(record.files.items())):
        table = tables.refresh(name) if reload else tables.get(name)
        if table is None:
            raise ReconciliationError(f"table {name} named by pending checkpoint {record.checkpoint_id} is gone")
        result = commit_checkpoint(
            table,
            files,
            pipeline=pipeline,
            checkpoint_id=record.checkpoint_id,
            source_positions=positions,
            written=written,
            refresh=False,
        )
        if result.expired is not None:
            expired.append(result.expired)
        if index == 0:
            maybe_crash("mid_commit")
    maybe_crash("after_commit")
    # Step 5: mark committed, then acknowledge upstream.
    state.mark_committed(record.checkpoint_id)
    record.status = "committed"
    maybe_crash("after_mark")
    acknowledge()
    maybe_crash("after_ack")
    return expired
