"""``MySQLSource``: a MySQL/MariaDB database as a resumable CDC source, and its spec.

Each ``poll`` returns one ``SourceBatch`` of one table and one shape. During the snapshot a poll copies
``batch_rows`` rows of one table; while streaming a poll reads a *window* of whole transactions (up to
``batch_rows`` rows or ``max_poll_seconds``), groups its rows per table (and per shape, split at a
schema change) and hands the groups out one per poll. The position after a group that is not the last of
its window is the window's start plus, per table, the last row already handed out (``marks``): a replay
from there drops those rows, so multi-table transactions batched per table are neither lost nor repeated.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pymysql

from lakegate.core.batch import SourceBatch
from lakegate.core.cdc import BEFORE, COMMIT_POSITION, COMMIT_TIME, OP, ColumnChange, SchemaChange
from lakegate.core.config import MySQLSourceSpec
from lakegate.core.deadletter import DEFAULT_MAX_PAYLOAD_BYTES, DeadLetters, Reason
from lakegate.core.errors import ConfigError
from lakegate.sources.mysql.binlog import (
    BinlogPoint,
    BinlogStream,
    ConnectionSettings,
    RowChange,
    TableShape,
    Transaction,
    diff_shapes,
    file_sequence,
)
from lakegate.sources.mysql.snapshot import (
    SnapshotChunk,
    SnapshotProgress,
    SnapshotReader,
    current_point,
    list_tables,
    read_shapes,
    server_is_mariadb,
)
from lakegate.sources.mysql.types import row_json, to_arrow

DECODE_STAGE = "decode"
POSITION_VERSION = 1


def resolve_password(spec: MySQLSourceSpec) -> str:
    """The password from the environment variable the spec names.

    Raises:
        ConfigError: ``password_env`` names a variable that is not set.
    """
    if spec.password_env is None:
        return ""
    value = os.environ.get(spec.password_env)
    if value is None:
        raise ConfigError(f"sources.{spec.name}.password_env: environment variable {spec.password_env!r} is not set")
    return value


@dataclass
class _Rows:
    """Rows of one table and one shape, gathered as columns of Python values before one Arrow conversion."""

    table: str
    shape: TableShape
    columns: dict[str, list[Any]]
    ops: list[str] = field(default_factory=list)
    befores: list[str | None] = field(default_factory=list)
    commit_positions: list[str] = field(default_factory=list)
    commit_seconds: list[float] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    schema_change: SchemaChange | None = None
    last_key: list[int] | None = None

    @classmethod
    def empty(cls, table: str, shape: TableShape) -> _Rows:
        return cls(table, shape, {name: [] for name, _ in shape.columns})

    def add_change(self, change: RowChange, transaction: Transaction) -> None:
        values = change.values
        for name, column in self.columns.items():
            column.append(values.get(name))
        self.ops.append(change.op)
        self.befores.append(None if change.before is None else row_json(change.before))
        self.commit_positions.append(transaction.commit_position)
        self.commit_seconds.append(float(transaction.timestamp))
        self.positions.append(f"{transaction.commit_position}:{change.index}")
        self.last_key = [*transaction.key, change.index]


class MySQLSource:
    """Snapshot, then binlog changes, of the captured tables; see the package docstring for positions."""

    def __init__(self, spec: MySQLSourceSpec, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.name = spec.name
        self.spec = spec
        self._max_payload_bytes = max_payload_bytes
        self._settings = ConnectionSettings(
            spec.host, spec.port, spec.user, resolve_password(spec), spec.connect_timeout
        )
        self._tables = spec.qualified_tables()
        self._stream = BinlogStream(
            self._settings,
            server_id=spec.effective_server_id(),
            databases=spec.databases,
            tables=self._tables,
            use_gtid=spec.position_mode == "gtid",
        )
        self._snapshot_reader: SnapshotReader | None = None
        self._snapshot: SnapshotProgress | None = None
        self._marks: dict[str, list[int]] = {}
        self._shapes: dict[str, TableShape] = {}
        self._renames: dict[str, list[list[str]]] = {}
        self._ddl: dict[str, list[str]] = {}
        self._queue: deque[SourceBatch] = deque()
        self._position: dict[str, Any] = {}
        self._acknowledged: dict[str, Any] | None = None
        self._restored = False

    # -- connections -----------------------------------------------------------------------------

    def _connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self._settings.host,
            port=self._settings.port,
            user=self._settings.user,
            password=self._settings.password,
            connect_timeout=self._settings.connect_timeout,
            charset="utf8mb4",
            autocommit=True,
        )

    # -- Source protocol -------------------------------------------------------------------------

    def restore(self, position: dict[str, Any] | None) -> None:
        """Continue from a recorded position; on a first run take a snapshot (or start at the binlog's end)."""
        self._queue.clear()
        self._stream.close()
        if self._snapshot_reader is not None:
            self._snapshot_reader.close()
            self._snapshot_reader = None
        self._restored = True
        if position is None:
            self._start_fresh()
            return
        if int(position.get("version", 0)) != POSITION_VERSION:
            raise ValueError(f"{self.name}: unknown MySQL position format {position.get('version')!r}")
        start = BinlogPoint.from_json(position["binlog"])
        self._marks = {table: list(mark) for table, mark in position.get("marks", {}).items()}
        self._shapes = {table: TableShape.from_json(data) for table, data in position.get("shapes", {}).items()}
        self._renames = copy.deepcopy(position.get("renames", {}))
        self._ddl = copy.deepcopy(position.get("ddl", {}))
        self._stream.seek(start)
        snapshot = position.get("snapshot")
        if snapshot is not None:
            self._snapshot_reader = SnapshotReader(self._connect, chunk_rows=self.spec.batch_rows)
            self._snapshot = self._snapshot_reader.begin([], SnapshotProgress.from_json(snapshot))
            self._shapes.update(self._snapshot.shapes)
        else:
            self._snapshot = None
        self._position = self._current_position()

    def _start_fresh(self) -> None:
        self._marks, self._renames, self._ddl = {}, {}, {}
        with contextlib.closing(self._connect()) as connection, connection.cursor() as cursor:
            tables = list_tables(cursor, self.spec.databases, self._tables)
            is_mariadb = server_is_mariadb(cursor)
            if not self.spec.snapshot:
                start = current_point(cursor, is_mariadb)
                self._shapes = read_shapes(cursor, tables)
        if self.spec.snapshot:
            self._snapshot_reader = SnapshotReader(self._connect, chunk_rows=self.spec.batch_rows)
            self._snapshot = self._snapshot_reader.begin(tables, None)
            self._shapes = dict(self._snapshot.shapes)
            start = self._snapshot.point
        self._stream.seek(start)
        self._position = self._current_position()

    def poll(self) -> SourceBatch | None:
        """One batch of one table: a snapshot chunk, or the next group of a binlog window."""
        if not self._restored:
            self.restore(None)
        if self._queue:
            return self._hand_out(self._queue.popleft())
        if self._snapshot is not None:
            batch = self._poll_snapshot()
            if batch is not None:
                return self._hand_out(batch)
        self._read_window()
        if self._queue:
            return self._hand_out(self._queue.popleft())
        return None

    def _hand_out(self, batch: SourceBatch) -> SourceBatch:
        self._position = batch.end_position
        return batch

    def position(self) -> dict[str, Any]:
        """The resumable position after the last batch handed out (JSON-serializable)."""
        if not self._restored:
            self.restore(None)
        return copy.deepcopy(self._position)

    def is_idle(self) -> bool:
        return not self._queue and self._snapshot is None and self._stream.at_end

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Note the position as committed downstream.

        MySQL keeps no replication slot: the server does not learn about it, and the runtime's checkpoint
        is what survives a restart. ``status()`` compares it with the binlog files the server still has
        (``expire_logs_days``/``binlog_expire_logs_seconds`` must keep it).
        """
        self._acknowledged = copy.deepcopy(position)

    def close(self) -> None:
        self._stream.close()
        if self._snapshot_reader is not None:
            self._snapshot_reader.close()
            self._snapshot_reader = None

    def primary_key(self, table: str) -> list[str]:
        """The primary key of source table ``table`` (``database.table``) as last seen; empty without one."""
        shape = self._shapes.get(table)
        return list(shape.primary_key) if shape is not None else []

    def status(self) -> dict[str, Any]:
        """Binlog retention and lag: the server's binlog end versus the read and acknowledged positions."""
        acknowledged = self._acknowledged or self._position
        point = BinlogPoint.from_json(acknowledged["binlog"]) if acknowledged.get("binlog") else None
        return binlog_status(self._connect, point, read=BinlogPoint.from_json(self._position["binlog"]))

    # -- snapshot --------------------------------------------------------------------------------

    def _poll_snapshot(self) -> SourceBatch | None:
        assert self._snapshot_reader is not None and self._snapshot is not None
        chunk = self._snapshot_reader.next_chunk()
        if chunk is None:
            self._snapshot_reader.close()
            self._snapshot_reader, self._snapshot = None, None
            self._position = self._current_position()
            return None
        rows = self._snapshot_rows(chunk, self._snapshot)
        return self._to_batch(rows, self._current_position())

    @staticmethod
    def _snapshot_rows(chunk: SnapshotChunk, progress: SnapshotProgress) -> _Rows:
        commit = progress.point.commit_position()
        seconds = datetime.fromisoformat(progress.started_at).timestamp()
        rows = _Rows(chunk.table, chunk.shape, chunk.columns)
        rows.ops = ["r"] * chunk.rows
        rows.befores = [None] * chunk.rows
        rows.commit_positions = [commit] * chunk.rows
        rows.commit_seconds = [seconds] * chunk.rows
        rows.positions = [f"{commit}:{chunk.first_ordinal + i}" for i in range(chunk.rows)]
        return rows

    # -- streaming -------------------------------------------------------------------------------

    def _current_position(self) -> dict[str, Any]:
        return {
            "version": POSITION_VERSION,
            "binlog": self._stream.read_point.to_json(),
            "marks": copy.deepcopy(self._marks),
            "shapes": {table: shape.to_json() for table, shape in self._shapes.items()},
            "renames": copy.deepcopy(self._renames),
            "ddl": copy.deepcopy(self._ddl),
            "snapshot": None if self._snapshot is None else self._snapshot.to_json(),
        }

    def _read_window(self) -> None:
        start = self._stream.read_point
        start_marks = copy.deepcopy(self._marks)
        start_shapes = dict(self._shapes)
        start_renames, start_ddl = copy.deepcopy(self._renames), copy.deepcopy(self._ddl)
        transactions = self._stream.read(self.spec.batch_rows, self.spec.max_poll_seconds)
        groups: dict[str, list[_Rows]] = {}
        for transaction in transactions:
            self._collect(transaction, groups)
        end_key = list(self._stream.read_point.key)
        self._marks = {table: mark for table, mark in start_marks.items() if mark[:2] > end_key}
        final = self._current_position()
        ordered = [rows for table_groups in groups.values() for rows in table_groups]
        emitted_marks = copy.deepcopy(start_marks)
        emitted_shapes = dict(start_shapes)
        emitted_renames, emitted_ddl = start_renames, start_ddl
        for number, rows in enumerate(ordered):
            if number == len(ordered) - 1:
                end_position = final
            else:
                if rows.last_key is not None:
                    emitted_marks[rows.table] = rows.last_key
                emitted_shapes[rows.table] = rows.shape
                if rows.schema_change is not None:
                    emitted_renames.pop(rows.table, None)
                    emitted_ddl.pop(rows.table, None)
                end_position = {
                    "version": POSITION_VERSION,
                    "binlog": start.to_json(),
                    "marks": copy.deepcopy(emitted_marks),
                    "shapes": {table: shape.to_json() for table, shape in emitted_shapes.items()},
                    "renames": copy.deepcopy(emitted_renames),
                    "ddl": copy.deepcopy(emitted_ddl),
                    "snapshot": None,
                }
            self._queue.append(self._to_batch(rows, end_position))
        if not ordered:
            self._position = final

    def _is_replayed(self, table: str, key: list[int]) -> bool:
        mark = self._marks.get(table)
        return mark is not None and key <= mark

    def _collect(self, transaction: Transaction, groups: dict[str, list[_Rows]]) -> None:
        """Sort a transaction's rows into per-table groups, opening a new group where the shape changes."""
        key = list(transaction.key)
        for ddl in transaction.ddl:
            if self._is_replayed(ddl.table, [*key, -1]):
                continue
            self._renames.setdefault(ddl.table, []).extend([list(pair) for pair in ddl.renames])
            self._ddl.setdefault(ddl.table, []).append(ddl.statement)
        for change in transaction.changes:
            if self._is_replayed(change.table, [*key, change.index]):
                continue
            shape = change.shape if change.op != "t" else self._shapes.get(change.table, TableShape(()))
            self._group_for(change.table, shape, transaction, groups).add_change(change, transaction)
        for unreadable in transaction.unreadable:
            if self._is_replayed(unreadable.table, [*key, unreadable.index]):
                continue
            shape = self._shapes.get(unreadable.table, TableShape(()))
            rows = self._group_for(unreadable.table, shape, transaction, groups)
            rows.unreadable.append((f"{transaction.commit_position}:{unreadable.index}", unreadable.message))
            rows.last_key = [*key, unreadable.index]

    def _group_for(
        self, table: str, shape: TableShape, transaction: Transaction, groups: dict[str, list[_Rows]]
    ) -> _Rows:
        known = self._shapes.get(table)
        change: SchemaChange | None = None
        if known is None:
            change = SchemaChange(
                table=table,
                position=transaction.commit_position,
                before={},
                after=shape.types,
                changes=[ColumnChange("table_added", table)],
                primary_key=list(shape.primary_key),
            )
        elif shape != known:
            renames = [(old, new) for old, new in self._renames.pop(table, [])]
            change = diff_shapes(table, transaction.commit_position, known, shape, renames, self._ddl.pop(table, []))
        table_groups = groups.setdefault(table, [])
        if change is not None:
            self._shapes[table] = shape
            rows = _Rows.empty(table, shape)
            rows.schema_change = change
            table_groups.append(rows)
        elif not table_groups:
            table_groups.append(_Rows.empty(table, shape))
        return table_groups[-1]

    # -- Arrow -----------------------------------------------------------------------------------

    def _to_batch(self, rows: _Rows, end_position: dict[str, Any]) -> SourceBatch:
        """Convert one group to Arrow: one ``pa.array`` per column; rows that do not fit become dead letters."""
        arrays: list[pa.Array] = []
        fields: list[pa.Field] = []
        bad: dict[int, tuple[str, str]] = {}
        for name, kind in rows.shape.columns:
            array, column_bad = to_arrow(rows.columns[name], kind)
            for index, reason in column_bad.items():
                bad.setdefault(index, (name, reason))
            arrays.append(array)
            fields.append(pa.field(name, array.type))
        micros = pc.cast(pc.multiply(pa.array(rows.commit_seconds, pa.float64()), 1_000_000.0), pa.int64())
        arrays += [
            pa.array(rows.ops, pa.string()),
            pa.array(rows.befores, pa.string()),
            pa.array(rows.commit_positions, pa.string()),
            micros.cast(pa.timestamp("us", tz="UTC")),
        ]
        fields += [
            pa.field(OP, pa.string()),
            pa.field(BEFORE, pa.string()),
            pa.field(COMMIT_POSITION, pa.string()),
            pa.field(COMMIT_TIME, pa.timestamp("us", tz="UTC")),
        ]
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        positions = pa.array(rows.positions, pa.string())
        dead = DeadLetters(max_payload_bytes=self._max_payload_bytes)
        if bad:
            keep = pa.array([i not in bad for i in range(table.num_rows)])
            for index, (column, reason) in sorted(bad.items()):
                image = {name: rows.columns[name][index] for name, _ in rows.shape.columns}
                dead.add(
                    source=f"{self.name}:{rows.table}",
                    position=rows.positions[index],
                    stage=DECODE_STAGE,
                    reason=Reason.TYPE_MISMATCH,
                    message=reason,
                    payload=row_json(image).encode(),
                    field_name=column,
                    raw_value=repr(rows.columns[column][index]),
                    target_table=rows.table,
                    detail={"op": rows.ops[index]},
                )
            table, positions = table.filter(keep), positions.filter(keep)
        for position, message in rows.unreadable:
            dead.add(
                source=f"{self.name}:{rows.table}",
                position=position,
                stage=DECODE_STAGE,
                reason=Reason.UNREADABLE,
                message=f"row event could not be decoded: {message}",
                payload=message.encode(),
                target_table=rows.table,
            )
        return SourceBatch(
            source=self.name,
            origin=rows.table,
            records=table,
            positions=positions,
            end_position=end_position,
            dead_letters=dead,
            schema_changes=[rows.schema_change] if rows.schema_change is not None else [],
        )


def binlog_status(connect: Any, acknowledged: BinlogPoint | None, *, read: BinlogPoint | None = None) -> dict[str, Any]:
    """The server's binlog end and files versus a reader's positions (retention and lag).

    ``connect`` returns a pymysql connection. Lag is in bytes of binlog between a position and the end;
    ``acknowledged_file_present`` is False once the server purged the file a restart would need.
    """
    with contextlib.closing(connect()) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW MASTER STATUS")
        master = cursor.fetchone()
        cursor.execute("SHOW BINARY LOGS")
        files = [(str(row[0]), int(row[1])) for row in cursor.fetchall()]
    end = BinlogPoint(str(master[0]), int(master[1])) if master else None

    def lag(point: BinlogPoint | None) -> int | None:
        if point is None or end is None:
            return None
        total = 0
        for name, size in files:
            if file_sequence(name) < file_sequence(point.file):
                continue
            upto = end.pos if name == end.file else size
            total += max(0, upto - (point.pos if name == point.file else 0))
        return total

    present = {name for name, _ in files}
    return {
        "server_end": None if end is None else end.to_json(),
        "binlog_files": [name for name, _ in files],
        "read": None if read is None else read.to_json(),
        "read_lag_bytes": lag(read),
        "acknowledged": None if acknowledged is None else acknowledged.to_json(),
        "acknowledged_lag_bytes": lag(acknowledged),
        "acknowledged_file_present": None if acknowledged is None else acknowledged.file in present,
    }
