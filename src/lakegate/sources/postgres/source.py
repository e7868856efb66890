"""PostgreSQL change data capture: an initial consistent snapshot, then the pgoutput stream of a slot.

Snapshot without gaps or overlaps: the slot is created on a replication connection with an exported
snapshot; the tables are copied inside that snapshot (``_lg_op = 'r'``), then the stream starts at the
slot's consistent point. A crash during the snapshot cannot resume it (the exported snapshot died with
the connection), so the snapshot is **redone from scratch**: the slot is dropped and recreated, and the
copy starts over. Redone snapshot rows carry the new slot's consistent LSN as ``_lg_commit_position``
(and in their positions), so the downstream can tell the attempts apart: a mirror table upserts by key
and a redo is harmless; a changelog (append) table must drop the ``_lg_op = 'r'`` rows whose commit
position is not the latest snapshot's (or dedupe ``r`` rows by key keeping the latest commit position).

Positions (what a checkpoint records)::

    {"phase": "snapshot", "slot": ..., "snapshot_lsn": "0/16B3748", "table": "public.t", "rows": 5000,
     "relations": {...}}                        # snapshot in progress: a restore redoes it
    {"phase": "stream", "slot": ..., "lsn": "0/1A2B3C4",         # every transaction ending <= lsn is out
     "emitted": {"public.t": "0/1A2B3D0:17"},  # rows after lsn already returned, per table
     "relations": {"public.t": {...}}}          # each table's shape as of this position

A poll reads a window of messages (``batch_rows`` rows or ``poll_timeout``) and splits it into one
batch per table and shape, so a checkpoint may be cut between two batches of one window, even inside
a transaction: ``emitted`` says, per table, which rows past ``lsn`` were already returned, and a
restored source skips exactly those. Only ``lsn`` is ever confirmed to the server, and only in
``acknowledge`` (after the Iceberg commit), so a crash replays instead of losing.

Unchanged TOAST values (an UPDATE that did not touch a large value, REPLICA IDENTITY DEFAULT) are not
sent by the server: the column is null and its name is listed in the ``_lg_unchanged`` column
(``list<string>``, present only in batches holding such a row), which a mirror merge must honour (keep
the stored value). With REPLICA IDENTITY FULL the old row is sent, so
the value is filled from it and nothing is listed.

Schema changes: pgoutput sends a Relation message before the first change after a DDL. A new shape
starts a new batch carrying a ``SchemaChange``; a rename is inferred when a column at the same place
with the same type has a new name (pgoutput itself only shows a drop and an add).
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.batch import SourceBatch
from lakegate.core.cdc import BEFORE, COMMIT_POSITION, COMMIT_TIME, OP, ColumnChange, SchemaChange
from lakegate.core.config import PostgresSourceSpec
from lakegate.core.deadletter import DeadLetters, Reason
from lakegate.core.types import TIMESTAMP
from lakegate.sources.postgres import replication as repl
from lakegate.sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    DecodeError,
    Relation,
    Truncate,
    TypeInfo,
    Value,
    bulk_new_tuples,
    decode_change,
    decode_message,
    lsn_from_str,
    lsn_to_str,
)
from lakegate.sources.postgres.types import ColumnType, column_type, convert_column

log = logging.getLogger(__name__)

CATCH_UP_S = 15.0
"""Longest a freshly started stream may take to reach the WAL end of its start before it counts as idle."""
UNCHANGED_COLUMN = "_lg_unchanged"
"""Columns of an update whose value the server did not send (unchanged TOAST): keep the stored value."""
DECODE_STAGE = "decode"


# -- shapes --------------------------------------------------------------------------------------


def _shape_key(relation: Relation) -> tuple[tuple[str, int, int, bool], ...]:
    return tuple((c.name, c.type_oid, c.type_modifier, c.is_key) for c in relation.columns)


def relation_to_json(relation: Relation, custom: dict[int, str]) -> dict[str, Any]:
    return {
        "id": relation.relation_id,
        "namespace": relation.namespace,
        "name": relation.name,
        "identity": relation.replica_identity,
        "columns": [[c.name, c.type_oid, c.type_modifier, c.is_key] for c in relation.columns],
        "types": {str(c.type_oid): custom[c.type_oid] for c in relation.columns if c.type_oid in custom},
    }


def relation_from_json(data: dict[str, Any]) -> tuple[Relation, dict[int, str]]:
    columns = tuple(Column(name, oid, mod, bool(key)) for name, oid, mod, key in data["columns"])
    relation = Relation(int(data["id"]), data["namespace"], data["name"], data["identity"], columns)
    return relation, {int(k): v for k, v in data.get("types", {}).items()}


def _types(relation: Relation, custom: dict[int, str]) -> list[ColumnType]:
    return [column_type(c.type_oid, c.type_modifier, custom) for c in relation.columns]


def schema_change(table: str, position: str, old: Relation, new: Relation, custom: dict[int, str]) -> SchemaChange:
    """What changed between two shapes of a table."""
    old_types = dict(zip([c.name for c in old.columns], _types(old, custom), strict=True))
    new_types = dict(zip([c.name for c in new.columns], _types(new, custom), strict=True))
    old_pg = {c.name: (c.type_oid, c.type_modifier) for c in old.columns}
    new_pg = {c.name: (c.type_oid, c.type_modifier) for c in new.columns}
    changes: list[ColumnChange] = []
    renamed_from: dict[str, str] = {}
    if len(old.columns) == len(new.columns):
        for before, after in zip(old.columns, new.columns, strict=True):
            same_type = (before.type_oid, before.type_modifier) == (after.type_oid, after.type_modifier)
            if before.name != after.name and before.name not in new_pg and after.name not in old_pg and same_type:
                renamed_from[after.name] = before.name
    for column in new.columns:
        name = column.name
        if name in renamed_from:
            changes.append(
                ColumnChange("column_renamed", name, old_types[renamed_from[name]].name, new_types[name].name,
                             old_name=renamed_from[name])
            )  # fmt: skip
        elif name not in old_pg:
            changes.append(ColumnChange("column_added", name, None, new_types[name].name))
        elif old_pg[name] != new_pg[name]:
            changes.append(ColumnChange("column_retyped", name, old_types[name].name, new_types[name].name))
    for column in old.columns:
        if column.name not in new_pg and column.name not in renamed_from.values():
            changes.append(ColumnChange("column_dropped", column.name, old_types[column.name].name, None))
    return SchemaChange(
        table=table,
        position=position,
        before={name: kind.name for name, kind in old_types.items()},
        after={name: kind.name for name, kind in new_types.items()},
        changes=changes,
        primary_key=new.key_columns,
        detail={
            "pg_types_before": {name: kind.pg_name for name, kind in old_types.items()},
            "pg_types_after": {name: kind.pg_name for name, kind in new_types.items()},
            "replica_identity": new.replica_identity,
            "renames_inferred": bool(renamed_from),
        },
    )


# -- window segments -----------------------------------------------------------------------------


@dataclass
class _Segment:
    """Rows of one table with one shape, in stream order, waiting to become a batch."""

    table: str
    relation: Relation
    types: list[ColumnType]
    schema_changes: list[SchemaChange] = field(default_factory=list)
    rows: list[list[Value] | bytes] = field(default_factory=list)
    """Decoded values, or the raw payload of an insert/update whose new tuple is decoded in bulk."""
    meta: list[tuple[str, int, int]] = field(default_factory=list)
    """Per row: operation, transaction number within the window, index within the transaction."""
    befores: dict[int, str] = field(default_factory=dict)
    """Row -> before image JSON, for the rows that have one."""
    last_key: tuple[int, int] = (0, 0)
    has_unchanged: bool = False
    dead_letters: DeadLetters = field(default_factory=DeadLetters)


@dataclass(frozen=True)
class _ChangeColumns:
    """The change columns of a batch, already as Arrow arrays."""

    ops: pa.Array
    befores: pa.Array
    commit_positions: pa.Array
    commit_times: pa.Array
    positions: pa.Array


def _text(value: Value) -> str | None:
    if value is None or value is UNCHANGED:
        return None
    if isinstance(value, str):  # snapshot rows arrive as str
        return value
    return value.decode("utf-8", errors="replace")  # type: ignore[union-attr]


def _cell(values: Any, row: int) -> str | None:
    """One value of a column (an Arrow binary array or a sequence of text/None) as text."""
    return _text(values[row].as_py() if isinstance(values, pa.Array) else values[row])


def _image_json(relation: Relation, values: list[Value], key_only: bool) -> str:
    """A before image as JSON: PostgreSQL's text representation per column, unsent TOAST values left out,
    only the key columns when the server sent only those (``K``)."""
    image = {
        c.name: _text(v)
        for c, v in zip(relation.columns, values, strict=False)
        if v is not UNCHANGED and (c.is_key or not key_only)
    }
    return orjson.dumps(image).decode()


class PostgresSource:
    """The ``Source`` of one PostgreSQL database: snapshot, then the slot's change stream.

    Raises (from ``restore`` and ``poll``):
        ReplicationError: the slot, publication or tables are not usable (the message says why).
        TransientError: the server went away; a restart replays from the last committed position.
    """

    def __init__(self, spec: PostgresSourceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.slot = spec.slot
        self.tables = [".".join(repl.split_table_name(t)) for t in spec.tables]
        self._conn: Any = None
        self._replication_conn: Any = None
        self._cursor: Any = None
        self._copy: repl.SnapshotCopy | None = None
        self._snapshot_iter: Iterator[SourceBatch] | None = None
        self._phase: Literal["idle", "snapshot", "stream"] = "idle"
        self._pending: deque[SourceBatch] = deque()
        self._position: dict[str, Any] = {}
        self._custom: dict[int, str] = {}
        self._relations: dict[int, Relation] = {}
        self._tables_by_id: dict[int, str] = {}
        self._window_txns: list[tuple[int, str, int]] = []
        self._window_arrays: tuple[pa.Array, pa.Array] | None = None
        self._txn_number = 0
        self._column_types: dict[int, list[ColumnType]] = {}
        self._shapes: dict[str, Relation] = {}
        """Each table's shape as of the rows read so far (decides when a SchemaChange starts)."""
        self._emitted_shapes: dict[str, dict[str, Any]] = {}
        """Each table's shape as of the last batch returned (goes into positions)."""
        self._changed: dict[str, SchemaChange] = {}
        self._safe_lsn = 0
        self._catch_up_lsn = 0
        self._catch_up_deadline = 0.0
        self._emitted: dict[str, tuple[int, int]] = {}
        self._skip: dict[str, tuple[int, int]] = {}
        self._acknowledged = 0
        self._txn_lsn = 0
        self._txn_lsn_text = ""
        self._txn_time = 0
        self._txn_index = 0
        self._drained = False
        self._snapshot_progress: tuple[str, int] = ("", 0)
        self.stats = {"messages": 0, "changes": 0, "skipped": 0}

    # -- Source protocol ---------------------------------------------------------------------------

    def restore(self, position: dict[str, Any] | None) -> None:
        """Start from a recorded position: redo an unfinished snapshot, or stream from ``lsn``.

        Raises:
            ReplicationError: a stream position whose slot is gone (rows since then cannot be replayed).
        """
        self.close()
        self._reset_stream_state()
        self._conn = repl.connect(self.spec.dsn)
        repl.ensure_publication(self._conn, self.spec.publication, self.tables)
        status = repl.read_slot_status(self._conn, self.slot)
        # Never confirm below what the server has: PostgreSQL 15 would move confirmed_flush_lsn back.
        self._acknowledged = lsn_from_str(status.confirmed_flush_lsn) if status.confirmed_flush_lsn else 0
        if position is not None and position.get("phase") == "stream":
            self._resume_stream(position)
        elif self.spec.snapshot:
            if position is not None:
                log.warning("source %s: the snapshot was interrupted; redoing it from scratch", self.name)
            self._start_snapshot()
        else:
            self._start_stream_only()

    def poll(self) -> SourceBatch | None:
        if self._phase == "idle":
            self.restore(None)
        if not self._pending and self._phase == "snapshot":
            assert self._snapshot_iter is not None
            batch = next(self._snapshot_iter, None)
            if batch is not None:
                return self._returned(batch)
        if not self._pending and self._phase == "stream":
            self._read_window()
        return self._returned(self._pending.popleft()) if self._pending else None

    def position(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self._position))

    def is_idle(self) -> bool:
        return self._phase == "stream" and not self._pending and self._drained

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Confirm ``position["lsn"]`` to the server (flush LSN): the slot may then discard older WAL."""
        if position.get("phase") != "stream" or position.get("slot") != self.slot:
            return
        lsn = lsn_from_str(position["lsn"])
        if lsn <= self._acknowledged:
            return
        self._acknowledged = lsn
        if self._cursor is not None:
            self._cursor.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)

    def close(self) -> None:
        for closer in (self._copy, self._replication_conn, self._conn):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # noqa: S110 - closing a broken connection must not hide the first error
                    pass
        self._copy = self._replication_conn = self._conn = self._cursor = None
        self._snapshot_iter = None
        self._pending.clear()
        self._phase = "idle"

    def _reset_stream_state(self) -> None:
        """Forget what the previous connection said (relations, transaction, pending shape changes)."""
        self._relations.clear()
        self._tables_by_id.clear()
        self._column_types.clear()
        self._changed.clear()
        self._custom = {}
        self._txn_lsn, self._txn_lsn_text, self._txn_time, self._txn_index = 0, "", 0, 0
        self._window_txns, self._window_arrays, self._txn_number = [], None, 0
        self._drained = False

    # -- starting ----------------------------------------------------------------------------------

    def _start_snapshot(self) -> None:
        if repl.drop_slot_on(self._conn, self.slot, force=True):
            log.warning("source %s: dropped slot %s left by an earlier attempt", self.name, self.slot)
        self._replication_conn = repl.replication_connect(self.spec.dsn)
        created = repl.create_slot_exporting_snapshot(self._replication_conn, self.slot)
        assert created.snapshot_name is not None
        self._copy = repl.SnapshotCopy(self.spec.dsn, created.snapshot_name)
        relations = {t: self._copy.relation(t) for t in self.tables}
        type_oids = sorted({c.type_oid for r in relations.values() for c in r.columns})
        self._custom = self._copy.custom_type_names(type_oids)
        self._shapes = dict(relations)
        self._emitted_shapes = {t: relation_to_json(r, self._custom) for t, r in relations.items()}
        self._safe_lsn = self._acknowledged = created.consistent_lsn
        self._emitted, self._skip = {}, {}
        self._phase = "snapshot"
        self._position = self._snapshot_position(created.consistent_lsn, self.tables[0], 0)
        self._snapshot_iter = self._snapshot_batches(created.consistent_lsn, relations)

    def _start_stream_only(self) -> None:
        status = repl.read_slot_status(self._conn, self.slot)
        if status.exists:
            start = lsn_from_str(status.confirmed_flush_lsn or "0/0")
        else:
            start = repl.create_slot(self._conn, self.slot).consistent_lsn
        self._begin_streaming(start, {}, {})

    def _resume_stream(self, position: dict[str, Any]) -> None:
        if position.get("slot") != self.slot:
            raise repl.ReplicationError(
                f"source {self.name}: the recorded position belongs to slot {position.get('slot')!r}, not {self.slot!r}"
            )
        if not repl.read_slot_status(self._conn, self.slot).exists:
            raise repl.ReplicationError(
                f"source {self.name}: replication slot {self.slot!r} is gone, so changes since "
                f"{position['lsn']} cannot be replayed; reset the pipeline state to take a new snapshot"
            )
        skip = {table: _row_key(text) for table, text in position.get("emitted", {}).items()}
        self._begin_streaming(lsn_from_str(position["lsn"]), skip, position.get("relations", {}))

    def _begin_streaming(self, start: int, skip: dict[str, tuple[int, int]], shapes: dict[str, Any]) -> None:
        self._safe_lsn = start
        self._skip, self._emitted = dict(skip), dict(skip)
        self._shapes, self._emitted_shapes = {}, dict(shapes)
        for table, data in shapes.items():
            relation, custom = relation_from_json(data)
            self._shapes[table] = relation
            self._custom.update(custom)
        if self._replication_conn is None:
            self._replication_conn = repl.replication_connect(self.spec.dsn)
        self._cursor = repl.start_stream(self._replication_conn, self.slot, self.spec.publication, start)
        self._phase = "stream"
        self._position = self._stream_position()
        # "Idle" must not mean "the walsender has not started sending yet": until the stream has
        # reached the WAL end of this moment (or CATCH_UP_S passed), an empty read is not the end.
        self._catch_up_lsn = self._current_wal_lsn()
        self._catch_up_deadline = time.monotonic() + CATCH_UP_S

    def _current_wal_lsn(self) -> int:
        if self._conn is None:
            return 0
        with self._conn.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()")
            row = cursor.fetchone()
        return lsn_from_str(row[0]) if row and row[0] else 0

    def _caught_up(self) -> bool:
        """Whether the stream has delivered everything committed when streaming began."""
        if not self._catch_up_lsn:
            return True
        received = max(self._safe_lsn, int(getattr(self._cursor, "wal_end", 0) or 0))
        if received >= self._catch_up_lsn or time.monotonic() >= self._catch_up_deadline:
            self._catch_up_lsn = 0
            return True
        return False

    # -- snapshot ----------------------------------------------------------------------------------

    def _snapshot_position(self, lsn: int, table: str, rows: int) -> dict[str, Any]:
        return {
            "phase": "snapshot",
            "slot": self.slot,
            "snapshot_lsn": lsn_to_str(lsn),
            "table": table,
            "rows": rows,
            "relations": self._emitted_shapes,
        }

    def _snapshot_batches(self, lsn: int, relations: dict[str, Relation]) -> Iterator[SourceBatch]:
        """Every table's rows in chunks; the last batch's position already says "stream from lsn"."""
        assert self._copy is not None
        started = datetime.now(UTC)
        lsn_text = lsn_to_str(lsn)
        ordinal = 0
        pending: tuple[str, list[tuple[str | None, ...]], int] | None = None
        for table in self.tables:
            relation = relations[table]
            copied = 0
            for chunk in self._copy.chunks(relation, self.spec.batch_rows):
                copied += len(chunk)
                if pending is not None:
                    yield self._snapshot_batch(*pending, relations, lsn_text, started, last=False)
                pending = (table, chunk, ordinal)
                ordinal += len(chunk)
                self._snapshot_progress = (table, copied)
        self._copy.close()
        self._copy = None
        if pending is not None:
            # Start streaming before the last batch is returned, so its position is a stream position.
            self._begin_streaming(lsn, {}, self._emitted_shapes)
            yield self._snapshot_batch(*pending, relations, lsn_text, started, last=True)
        else:
            self._begin_streaming(lsn, {}, self._emitted_shapes)

    def _snapshot_batch(
        self,
        table: str,
        chunk: list[tuple[str | None, ...]],
        first_ordinal: int,
        relations: dict[str, Relation],
        lsn_text: str,
        started: datetime,
        *,
        last: bool,
    ) -> SourceBatch:
        relation = relations[table]
        segment = _Segment(table, relation, _types(relation, self._custom))
        segment.rows = chunk  # type: ignore[assignment]
        count = len(chunk)
        commit_positions = pa.array([lsn_text], pa.string()).take(pa.array(np.zeros(count, np.int32)))
        ordinals = pa.array(np.arange(first_ordinal, first_ordinal + count, dtype=np.int64)).cast(pa.string())
        changes = _ChangeColumns(
            ops=pa.array(["r"], pa.string()).take(pa.array(np.zeros(count, np.int32))),
            befores=pa.nulls(count, pa.string()),
            commit_positions=commit_positions,
            commit_times=pa.array(np.full(count, int(started.timestamp() * 1_000_000), np.int64)).cast(TIMESTAMP),
            positions=pc.binary_join_element_wise(commit_positions, ordinals, ":"),
        )
        if last:
            end = self._stream_position()
        else:
            table_now, copied = self._snapshot_progress
            end = self._snapshot_position(lsn_from_str(lsn_text), table_now, copied)
        return self._to_batch(segment, end, changes)

    # -- streaming ---------------------------------------------------------------------------------

    def _stream_position(self) -> dict[str, Any]:
        return {
            "phase": "stream",
            "slot": self.slot,
            "lsn": lsn_to_str(self._safe_lsn),
            "emitted": {t: f"{lsn_to_str(k[0])}:{k[1]}" for t, k in sorted(self._emitted.items())},
            "relations": dict(self._emitted_shapes),
        }

    def _read_window(self) -> None:
        """Read messages until ``batch_rows`` rows, ``poll_timeout`` or a pause; queue their batches."""
        cursor = self._cursor
        read = cursor.read_message
        deadline = time.monotonic() + self.spec.poll_timeout
        segments: list[_Segment] = []
        current: dict[str, _Segment] = {}
        rows = messages = 0
        completed_end: int | None = None
        limit = self.spec.batch_rows
        self._window_txns = [(self._txn_lsn, self._txn_lsn_text, self._txn_time)]
        self._window_arrays = None
        self._txn_number = 0
        self._drained = False
        while rows < limit:
            message = read()
            if message is None:
                if rows or completed_end is not None:
                    self._drained = self._caught_up()
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._drained = self._caught_up()
                    break
                select.select([cursor], [], [], min(remaining, 0.05))
                continue
            payload = message.payload
            messages += 1
            kind = payload[0]
            if kind == 0x55 or kind == 0x49 or kind == 0x44:  # update, insert, delete
                rows += self._on_change(payload, segments, current)
            elif kind == 0x42:  # begin
                self._on_begin(payload)
            elif kind == 0x43:  # commit
                completed_end = int.from_bytes(payload[10:18])
                if messages & 0x3F == 0 and time.monotonic() >= deadline:
                    break
            else:
                rows += self._on_other(payload, segments, current)
        self.stats["messages"] += messages
        self.stats["changes"] += rows
        self._queue(segments, completed_end)

    def _on_begin(self, payload: bytes) -> None:
        begin = decode_message(payload)
        assert isinstance(begin, Begin)
        self._txn_lsn, self._txn_time, self._txn_index = begin.final_lsn, begin.commit_time_us, 0
        self._txn_lsn_text = lsn_to_str(begin.final_lsn)
        self._window_txns.append((begin.final_lsn, self._txn_lsn_text, begin.commit_time_us))
        self._txn_number = len(self._window_txns) - 1

    def _segment(self, relation: Relation, segments: list[_Segment], current: dict[str, _Segment]) -> _Segment:
        table = self._tables_by_id[relation.relation_id]
        segment = current.get(table)
        change = self._changed.pop(table, None) if self._changed else None
        if segment is None or change is not None:
            types = self._column_types.get(relation.relation_id) or _types(relation, self._custom)
            segment = _Segment(table, relation, types, [change] if change else [])
            segments.append(segment)
            current[table] = segment
        return segment

    def _on_change(self, payload: bytes, segments: list[_Segment], current: dict[str, _Segment]) -> int:
        """One insert/update/delete into its table's segment (the hot path: no object per row).

        An insert or an update without an old tuple (the common case) is kept as its raw payload and
        decoded with all the others of its batch at once (``bulk_new_tuples``); the rest is decoded here.
        """
        index = self._txn_index
        self._txn_index = index + 1
        relation_id = int.from_bytes(payload[1:5])
        relation = self._relations.get(relation_id)
        if relation is None or len(payload) < 8:
            self._dead_letter_message(payload, index, "change of an unknown relation", segments, current)
            return 1
        table = self._tables_by_id[relation_id]
        if self._skip:
            skip = self._skip.get(table)
            if skip is not None:
                if (self._txn_lsn, index) <= skip:
                    self.stats["skipped"] += 1
                    return 0
                del self._skip[table]
        segment = current.get(table) if not self._changed else None
        if segment is None:
            segment = self._segment(relation, segments, current)
        if payload[5] == 0x4E:  # 'N' right away: insert, or update keeping its key
            segment.rows.append(payload)
            segment.meta.append(("c" if payload[0] == 0x49 else "u", self._txn_number, index))
            segment.last_key = (self._txn_lsn, index)
            return 1
        try:
            op, _, new, old, old_kind = decode_change(payload)
        except DecodeError as err:
            self._dead_letter_message(payload, index, f"undecodable change: {err}", segments, current)
            return 1
        values = old if op == "d" else new
        if values is None or len(values) != len(relation.columns):
            self._dead_letter_message(payload, index, "tuple width differs from the relation", segments, current)
            return 1
        if op == "u" and UNCHANGED in values:
            if old is not None and old_kind == "O":  # REPLICA IDENTITY FULL: the old row has the value
                values = [o if v is UNCHANGED else v for v, o in zip(values, old, strict=True)]
            segment.has_unchanged = segment.has_unchanged or UNCHANGED in values
        if old is not None:
            segment.befores[len(segment.rows)] = _image_json(relation, old, old_kind == "K")
        segment.rows.append(values)
        segment.meta.append((op, self._txn_number, index))
        segment.last_key = (self._txn_lsn, index)
        return 1

    def _on_other(self, payload: bytes, segments: list[_Segment], current: dict[str, _Segment]) -> int:
        try:
            message = decode_message(payload)
        except DecodeError as err:
            self._dead_letter_message(payload, self._txn_index, f"undecodable message: {err}", segments, current)
            self._txn_index += 1
            return 1
        if isinstance(message, Relation):
            self._on_relation(message)
        elif isinstance(message, TypeInfo):
            self._custom[message.type_oid] = f"{message.namespace}.{message.name}"
        elif isinstance(message, Truncate):
            emitted = 0
            for relation_id in message.relation_ids:
                relation = self._relations.get(relation_id)
                index = self._txn_index
                self._txn_index += 1
                if relation is None:
                    continue
                skip = self._skip.get(self._tables_by_id[relation_id])
                if skip is not None and (self._txn_lsn, index) <= skip:
                    continue
                segment = self._segment(relation, segments, current)
                segment.rows.append([None] * len(relation.columns))
                segment.meta.append(("t", self._txn_number, index))
                segment.last_key = (self._txn_lsn, index)
                emitted += 1
            return emitted
        return 0

    def _on_relation(self, relation: Relation) -> None:
        self._relations[relation.relation_id] = relation
        self._tables_by_id[relation.relation_id] = relation.qualified_name
        self._column_types[relation.relation_id] = _types(relation, self._custom)
        table = relation.qualified_name
        known = self._shapes.get(table)
        if known is not None and _shape_key(known) != _shape_key(relation):
            self._changed[table] = schema_change(table, self._txn_lsn_text, known, relation, self._custom)
        self._shapes[table] = relation

    def _dead_letter_message(
        self, payload: bytes, index: int, message: str, segments: list[_Segment], current: dict[str, _Segment]
    ) -> None:
        relation = None
        if len(payload) >= 5 and payload[:1] in (b"I", b"U", b"D"):
            relation = self._relations.get(int.from_bytes(payload[1:5], "big"))
        if relation is not None:
            segment = self._segment(relation, segments, current)
        else:  # a message we cannot place: a batch of its own with no rows, origin ""
            segment = current.get("") or _Segment("", Relation(0, "", "", "n", ()), [])
            if "" not in current:
                segments.append(segment)
                current[""] = segment
        segment.dead_letters.add(
            source=self.name,
            position=f"{self._txn_lsn_text}:{index}",
            stage=DECODE_STAGE,
            reason=Reason.MALFORMED_ROW,
            message=message,
            payload=bytes(payload),
            target_table=segment.table or None,
        )
        segment.last_key = (self._txn_lsn, index)

    def _queue(self, segments: list[_Segment], completed_end: int | None) -> None:
        """Turn the window's segments into batches, each with the exact position after it."""
        for number, segment in enumerate(segments):
            if segment.table:
                self._emitted[segment.table] = segment.last_key
                self._emitted_shapes[segment.table] = relation_to_json(segment.relation, self._custom)
            if number == len(segments) - 1 and completed_end is not None:
                self._safe_lsn = completed_end
                self._emitted = {t: k for t, k in self._emitted.items() if k[0] >= completed_end}
            self._pending.append(self._to_batch(segment, self._stream_position()))
        if not segments and completed_end is not None:  # transactions without rows for us: move on
            self._safe_lsn = completed_end
            self._emitted = {t: k for t, k in self._emitted.items() if k[0] >= completed_end}
            self._position = self._stream_position()

    # -- batches -----------------------------------------------------------------------------------

    def _returned(self, batch: SourceBatch) -> SourceBatch:
        self._position = batch.end_position
        return batch

    def _stream_change_columns(self, segment: _Segment) -> _ChangeColumns:
        """Operation, before image, commit position/time and row position of a streamed segment, vectorized."""
        count = len(segment.meta)
        if not count:
            empty = pa.array([], pa.string())
            return _ChangeColumns(empty, empty, empty, pa.array([], TIMESTAMP), empty)
        ops, txn_numbers, indices = zip(*segment.meta, strict=True)
        txns = pa.array(txn_numbers, pa.int32())
        if self._window_arrays is None:  # once per window, shared by its batches
            self._window_arrays = (
                pa.array([t[1] for t in self._window_txns], pa.string()),
                pa.array([t[2] for t in self._window_txns], pa.int64()),
            )
        commit_positions = self._window_arrays[0].take(txns)
        befores: list[str | None] = [None] * count
        for row, image in segment.befores.items():
            befores[row] = image
        return _ChangeColumns(
            ops=pa.array(ops, pa.string()),
            befores=pa.array(befores, pa.string()),
            commit_positions=commit_positions,
            commit_times=self._window_arrays[1].take(txns).cast(TIMESTAMP),
            positions=pc.binary_join_element_wise(
                commit_positions, pa.array(indices, pa.int64()).cast(pa.string()), ":"
            ),
        )

    def _columns(self, segment: _Segment) -> tuple[list[Any], dict[int, tuple[Reason, str | None, str]]]:
        """The segment's values column by column (Arrow binary arrays or sequences of text/None).

        Raw payloads are decoded in bulk when they all fit the fast shape; otherwise one by one, and a
        payload that does not decode becomes a malformed row (reported by index).
        """
        rows, width = segment.rows, len(segment.relation.columns)
        malformed: dict[int, tuple[Reason, str | None, str]] = {}
        raw = [i for i, row in enumerate(rows) if row.__class__ is bytes]
        if not raw:
            return (list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]), malformed
        bulk = None if segment.has_unchanged else bulk_new_tuples([rows[i] for i in raw], width)  # type: ignore[misc]
        if bulk is not None and len(raw) == len(rows):
            return bulk, malformed
        if bulk is not None:  # raw rows in bulk, the others (deletes, key updates) merged back in order
            decoded = [i for i, row in enumerate(rows) if row.__class__ is not bytes]
            order = pa.array(np.argsort(np.array(raw + decoded, dtype=np.int64), kind="stable"))
            slow = list(zip(*[rows[i] for i in decoded], strict=True))
            return [
                pa.concat_arrays([bulk[c], pa.array(slow[c], pa.binary())]).take(order) for c in range(width)
            ], malformed
        for i in raw:
            try:
                _, _, new, _, _ = decode_change(rows[i])  # type: ignore[arg-type]
                if new is None or len(new) != width:
                    raise DecodeError(f"tuple width {0 if new is None else len(new)}, relation width {width}")
            except DecodeError as err:
                malformed[i] = (Reason.MALFORMED_ROW, None, f"undecodable change: {err}")
                new = [None] * width
            if UNCHANGED in new:
                segment.has_unchanged = True
            rows[i] = new
        return list(zip(*rows, strict=True)), malformed

    def _to_batch(
        self, segment: _Segment, end_position: dict[str, Any], changes: _ChangeColumns | None = None
    ) -> SourceBatch:
        """Columns from text to Arrow, vectorized per column; rows that fail to convert become dead letters."""
        changes = changes or self._stream_change_columns(segment)
        relation = segment.relation
        count = len(segment.rows)
        received = list(segment.rows)  # _columns replaces raw payloads by their values
        columns, bad = self._columns(segment)
        payloads = {i: received[i] for i in bad}
        arrays: list[pa.Array] = []
        names: list[str] = []
        unchanged: list[list[str] | None] | None = [None] * count if segment.has_unchanged else None
        for column, kind, values in zip(relation.columns, segment.types, columns, strict=True):
            if unchanged is not None and UNCHANGED in values:
                cleaned = list(values)
                for row, value in enumerate(values):
                    if value is UNCHANGED:
                        cleaned[row] = None
                        unchanged[row] = [*(unchanged[row] or []), column.name]
                values = tuple(cleaned)
            array, failed = convert_column(values, kind)
            for row in failed:
                text = _cell(values, row)
                message = f"column {column.name!r}: {text!r} is not a valid {kind.pg_name} for {kind.name}"
                bad.setdefault(row, (Reason.TYPE_MISMATCH, column.name, message))
            arrays.append(array)
            names.append(column.name)
        arrays += [changes.ops, changes.befores, changes.commit_positions, changes.commit_times]
        names += [OP, BEFORE, COMMIT_POSITION, COMMIT_TIME]
        if unchanged is not None:
            arrays.append(pa.array(unchanged, pa.list_(pa.string())))
            names.append(UNCHANGED_COLUMN)
        records = pa.Table.from_arrays(arrays, names=names)
        positions = changes.positions
        dead = segment.dead_letters
        if bad:
            keep = np.ones(count, dtype=bool)
            for row, (reason, column_name, message) in sorted(bad.items()):
                keep[row] = False
                payload = payloads.get(row)
                if not isinstance(payload, bytes):  # the row's text values, as the server sent them
                    image = {c.name: _cell(values, row) for c, values in zip(relation.columns, columns, strict=True)}
                    payload = orjson.dumps(image)
                dead.add(
                    source=self.name,
                    position=positions[row].as_py(),
                    stage=DECODE_STAGE,
                    reason=reason,
                    message=message,
                    payload=payload,
                    field_name=column_name,
                    raw_value=None if column_name is None else _cell(columns[names.index(column_name)], row),
                    target_table=segment.table,
                )
            mask = pa.array(keep)
            records, positions = records.filter(mask), positions.filter(mask)
        return SourceBatch(
            source=self.name,
            origin=segment.table,
            records=records,
            positions=positions,
            end_position=end_position,
            dead_letters=dead,
            schema_changes=segment.schema_changes,
        )

    # -- keys --------------------------------------------------------------------------------------

    def primary_key(self, table: str) -> list[str]:
        """The primary key of source table ``table`` (``schema.table``); empty when it has none.

        The relation's key flags are the replica identity: the primary key under ``DEFAULT``, the
        chosen index under ``USING INDEX``, but every column under ``FULL``; then (and when the shape
        is not known yet) the catalog says.
        """
        relation = self._shapes.get(table)
        if relation is not None and relation.replica_identity in ("d", "i"):
            return relation.key_columns
        conn = self._conn if self._conn is not None else repl.connect(self.spec.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT a.attname FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid"
                    " AND a.attnum = ANY (x.indkey) WHERE x.indrelid = %s::regclass AND x.indisprimary"
                    " ORDER BY array_position(x.indkey::int2[], a.attnum)",
                    (repl.qualified_sql(table),),
                )
                return [str(row[0]) for row in cur.fetchall()]
        finally:
            if conn is not self._conn:
                conn.close()

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> repl.SlotStatus:
        """The slot's state and lag."""
        return repl.slot_status(self.spec.dsn, self.slot)


def _row_key(text: str) -> tuple[int, int]:
    lsn, _, index = text.rpartition(":")
    return lsn_from_str(lsn), int(index)
