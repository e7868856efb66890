"""The runtime's CDC glue: route change batches to tables, decide schema changes, land them by write mode.

A CDC source (``sources/postgres``, ``sources/mysql``) emits one batch per source table and shape. Here:

* **routing**: the batch's ``origin`` (``schema.table``) names its target table (``core.config.target_table_name``);
  the table's write mode is ``mirror`` (default with a primary key) or ``changelog`` (default without);
* **schema changes** (``batch.schema_changes``): each is decided and recorded as a ``Decision`` of kind
  ``schema.cdc_change``; a rename keeps the Iceberg column (a ``FieldMapping`` new -> old, kept in operator
  state), a widening evolves the table, a narrowing or other retype is cast back to the Iceberg type through
  the DSL, and the rows whose value does not convert are held (dead letters ``schema_held``);
* **types**: the source's Arrow types are authoritative, so they are established in the table's normalizer
  before it sees the batch (it would otherwise re-infer text columns from their values);
* **landing**: ``mirror`` rows go to ``T__changes`` in the open checkpoint and a background compactor
  rewrites ``T`` on a schedule (``sinks/cdc.py``); ``changelog`` rows go to ``T``;
* **reclaim**: the snapshots a checkpoint's commits (and a compaction's) expired are handed to the
  compactor, which deletes the files only they referenced once their grace is over (``sinks/reclaim.py``);
  those still waiting are kept in the checkpointed state, and a restart also takes what the tables'
  metadata logs show their recent commits expired;
* **redone snapshots** (PostgreSQL redoes an interrupted snapshot from scratch with a new slot): a mirror
  gets a truncate marker before the new snapshot's rows; a changelog table loses the old attempt's
  ``r`` rows at recovery.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.decisions import Decision
from lakegate.core.batch import SourceBatch
from lakegate.core.cdc import COMMIT_POSITION, OP, ColumnChange, SchemaChange
from lakegate.core.config import CdcSourceSpec, FileSourceSpec, PipelineSpec, PostgresSourceSpec, target_table_name
from lakegate.core.deadletter import DeadLetters, Reason
from lakegate.core.errors import ConfigError, TerminalError, TransientError
from lakegate.core.types import type_to_str
from lakegate.normalize.stage import NormalizedBatch, Normalizer
from lakegate.runtime.checkpoint import OpenCheckpoint
from lakegate.runtime.compaction_worker import CompactionWorker
from lakegate.runtime.faults import maybe_crash
from lakegate.runtime.state import CheckpointRecord
from lakegate.schema.dsl import Cast, FieldMapping, Program
from lakegate.schema.stage import apply_mappings
from lakegate.sinks.cdc import (
    ChangeSequencer,
    CompactionPolicy,
    CompactionResult,
    changes_table_name,
    compact_mirror,
    ensure_cdc_tables,
    mirror_watermark,
    pending_changes,
    prepare_changes,
)
from lakegate.sinks.reclaim import (
    ExpiredSnapshots,
    Reclaimer,
    ReclaimResult,
    expired_in_metadata_log,
    expiries_from_json,
    expiries_to_json,
)
from lakegate.sinks.tables import TableManager

log = logging.getLogger(__name__)

STATE_KEY = "cdc:state"
"""Operator-state entry of the CDC glue (a ``:`` keeps it apart from the normalizers' entries)."""
STATE_VERSION = 1
DECISION_KIND = "schema.cdc_change"
SYSTEM_PREFIX = "_lg_"
SCHEMA_STAGE = "schema"
RECLAIM_EVERY_S = 10.0
"""Least time between two reclaim passes: expiries come in batches, and one pass takes every ripe one."""
Mode = Literal["mirror", "changelog"]


# -- types ----------------------------------------------------------------------------------------


def canonical_type(data_type: pa.DataType) -> pa.DataType | None:
    """The Iceberg-compatible type a source column lands as; None when the normalizer should decide
    (structs, times)."""
    if pa.types.is_dictionary(data_type):
        return canonical_type(data_type.value_type)
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return pa.string()
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return pa.binary()
    if pa.types.is_boolean(data_type):
        return pa.bool_()
    if pa.types.is_integer(data_type):
        small = data_type.bit_width < 32 or (data_type.bit_width == 32 and pa.types.is_signed_integer(data_type))
        return pa.int32() if small else pa.int64()
    if pa.types.is_float32(data_type) or pa.types.is_float16(data_type):
        return pa.float32()
    if pa.types.is_float64(data_type):
        return pa.float64()
    if pa.types.is_decimal(data_type):
        return data_type if data_type.precision <= 38 else pa.string()
    if pa.types.is_timestamp(data_type):
        return pa.timestamp("us", tz="UTC")
    if pa.types.is_date(data_type):
        return pa.date32()
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        inner = canonical_type(data_type.value_type)
        return None if inner is None else pa.list_(inner)
    return None


def is_widening(old: pa.DataType, new: pa.DataType) -> bool:
    """Iceberg's legal promotions: int -> long, float -> double, decimal(P,S) -> decimal(P',S) with P' >= P."""
    if old == new:
        return True
    if old == pa.int32() and new == pa.int64():
        return True
    if old == pa.float32() and new == pa.float64():
        return True
    return (
        pa.types.is_decimal(old)
        and pa.types.is_decimal(new)
        and old.scale == new.scale
        and new.precision >= old.precision
    )


def establish_types(normalizer: Normalizer, columns: dict[str, pa.DataType]) -> None:
    """Make ``columns`` the normalizer's established types (new columns and widenings), through its
    public state (``snapshot``/``restore``), so source-typed values are not re-inferred from text."""
    state = orjson.loads(normalizer.snapshot())
    table_columns = dict((name, kind) for name, kind in state["columns"].get(normalizer.table, []))
    changed = False
    for name, data_type in columns.items():
        try:
            text = type_to_str(data_type)
        except ValueError:
            continue
        if table_columns.get(name) != text:
            table_columns[name] = text
            changed = True
    if changed:
        state["columns"][normalizer.table] = [[name, kind] for name, kind in table_columns.items()]
        normalizer.restore(orjson.dumps(state))


# -- operator state -------------------------------------------------------------------------------


@dataclass
class TableState:
    """What the runtime decided about one CDC table, checkpointed with it."""

    mode: Mode
    key: list[str]
    renames: dict[str, str] = field(default_factory=dict)
    """Source column name -> the Iceberg column it lands in (a rename upstream keeps the old name)."""
    casts: dict[str, str] = field(default_factory=dict)
    """Iceberg column -> its type, for columns retyped upstream to a type it cannot be widened to."""

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "key": self.key, "renames": self.renames, "casts": self.casts}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableState:
        return cls(data["mode"], list(data["key"]), dict(data.get("renames", {})), dict(data.get("casts", {})))


# -- the glue -------------------------------------------------------------------------------------


class CdcRuntime:
    """Per pipeline: the CDC tables' routing, schema decisions, landing and compaction."""

    def __init__(
        self,
        spec: PipelineSpec,
        tables: TableManager,
        registry: Callable[[], Any],
        compactor: Compactor | None = None,
    ) -> None:
        self.spec = spec
        self.tables = tables
        self._registry_factory = registry
        self._registry: Any = None
        self.sources: dict[str, CdcSourceSpec] = {s.name: s for s in spec.sources if not isinstance(s, FileSourceSpec)}
        self.states: dict[str, TableState] = {}
        self._ensured: set[str] = set()
        self._sequencer: ChangeSequencer | None = None
        self._landed: dict[str, int] = {}
        """Change rows per mirror in the open checkpoint (the compaction schedule counts them)."""
        self._needs_truncate: set[str] = set()
        """Mirror tables whose next snapshot rows start a redone snapshot (a truncate marker goes first)."""
        self.compactor = compactor
        self._expiries_recovered = False
        """Whether this process took in the expiries a previous one left (state, metadata logs)."""

    def handles(self, source_name: str) -> bool:
        return source_name in self.sources

    @property
    def registry(self) -> Any:
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    # -- state ------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "tables": {name: s.to_json() for name, s in sorted(self.states.items())},
        }
        if self.compactor is not None:  # a restart reclaims what still waits for its grace
            state["awaiting_reclaim"] = expiries_to_json(self.compactor.awaiting_reclaim)
        return orjson.dumps(state)

    def restore(self, data: bytes) -> None:
        state = orjson.loads(data)
        if state.get("version") == STATE_VERSION:
            self.states = {name: TableState.from_json(s) for name, s in state.get("tables", {}).items()}
            if self.compactor is not None and not self._expiries_recovered:
                self.compactor.expire(expiries_from_json(state.get("awaiting_reclaim", [])))

    def _recover_expiries(self) -> None:
        """Once per process: what the CDC tables' recent commits expired (their metadata logs); the
        checkpointed state gave what older ones left waiting. A leak avoided, nothing more: a table
        that cannot be read is left to the next start."""
        if self.compactor is None or self._expiries_recovered:
            return
        self._expiries_recovered = True
        for name, state in sorted(self.states.items()):
            for table_name in [name, changes_table_name(name)] if state.mode == "mirror" else [name]:
                try:
                    table = self.tables.refresh(table_name)
                    expired = None if table is None else expired_in_metadata_log(".".join(table.name()), table)
                except Exception as err:  # noqa: BLE001 - the files stay: a leak, never a wrong deletion
                    log.warning("expired snapshots of %s not recovered from its metadata log: %s", table_name, err)
                    continue
                if expired is not None:
                    self.compactor.expire([expired])

    def after_recover(self, record: CheckpointRecord, expired: Iterable[ExpiredSnapshots] = ()) -> None:
        """A PostgreSQL source recorded mid-snapshot redoes its snapshot: supersede the old attempt's rows.
        ``expired``: what finishing a pending checkpoint expired (reclaimed like any checkpoint's)."""
        if self.compactor is not None:
            self.compactor.expire(expired)
        self._recover_expiries()
        for name, source in self.sources.items():
            position = record.source_positions.get(name)
            if not isinstance(source, PostgresSourceSpec) or not isinstance(position, dict):
                continue
            if position.get("phase") != "snapshot" or not source.snapshot:
                continue
            for table in self.spec.cdc_tables(source).values():
                state = self.states.get(table)
                if state is None:
                    continue  # nothing of it was ever committed
                if state.mode == "mirror":
                    self._needs_truncate.add(table)
                else:
                    drop_snapshot_rows(self.tables, table)

    # -- before the normalizer ----------------------------------------------------------------------

    def route(self, source_name: str, batch: SourceBatch) -> str:
        """The target table of a CDC batch (set on the batch)."""
        source = self.sources[source_name]
        if batch.table is None:
            batch.table = (
                target_table_name(source, batch.origin) if batch.origin else f"{source.table_prefix}{source.name}"
            )
        return batch.table

    def prepare(self, source: Any, batch: SourceBatch, normalizer: Normalizer) -> SourceBatch:
        """Decide the batch's schema changes, apply renames and casts, establish the source's types."""
        table = self.route(source.name, batch)
        if batch.records.num_rows == 0 and not batch.schema_changes:
            return batch
        state = self._state(source, batch, table)
        established = {f.name: f.type for f in normalizer.schemas[table]}
        for change in batch.schema_changes:
            self._decide(table, change, state, batch, established)
        if state.renames:
            present = [m for m in state.renames.items() if m[0] in batch.records.column_names]
            if present:
                mappings = [FieldMapping(target=old, sources=[new], program=Program()) for new, old in present]
                records, _ = apply_mappings(batch.records, mappings)
                batch = replace(batch, records=records)
        batch = self._retype(table, batch, state, established)
        if table in self._needs_truncate and _has_snapshot_rows(batch):
            self._needs_truncate.discard(table)
            batch = _with_truncate_marker(batch)
        types = {}
        for column in batch.records.schema:
            if column.name.startswith(SYSTEM_PREFIX):
                continue  # the normalizer leaves system columns out; land() puts the change columns back
            target = canonical_type(column.type)
            if target is None:
                continue
            known = established.get(column.name)
            if known is None or (known != target and is_widening(known, target)):
                types[column.name] = target
        if types:
            establish_types(normalizer, types)
        return batch

    def _state(self, source: Any, batch: SourceBatch, table: str) -> TableState:
        state = self.states.get(table)
        if state is not None:
            return state
        table_spec = self.spec.table_spec(table)
        key = list(table_spec.primary_key)
        if not key and batch.origin and hasattr(source, "primary_key"):
            key = list(source.primary_key(batch.origin))
        for change in batch.schema_changes:
            key = key or list(change.primary_key)
        mode: Mode
        if table_spec.mode in ("mirror", "changelog"):
            mode = table_spec.mode
        elif table_spec.mode == "append":
            mode = "changelog"
        else:
            mode = "mirror" if key else "changelog"
        if mode == "mirror" and not key:
            raise ConfigError(
                f"tables.{table}.mode: mirror needs a primary key, and source table {batch.origin!r} has none;"
                f" use mode: changelog or give tables.{table}.primary_key"
            )
        state = self.states[table] = TableState(mode, key)
        return state

    def _decide(
        self, table: str, change: SchemaChange, state: TableState, batch: SourceBatch, established: dict[str, Any]
    ) -> None:
        """One upstream schema change: what happens to the Iceberg table, recorded as a decision."""
        for column_change in change.changes:
            action, reversal = self._action(table, column_change, state, batch, established)
            self._record(table, change, column_change, action, reversal)

    def _action(
        self,
        table: str,
        change: ColumnChange,
        state: TableState,
        batch: SourceBatch,
        established: dict[str, pa.DataType],
    ) -> tuple[str, dict[str, Any]]:
        kind, column = change.kind, change.column
        if kind == "table_added":
            return f"table {table} created from the source table's first rows ({state.mode})", {
                "note": "remove the table from the source's tables to stop capturing it"
            }
        if kind == "column_added":
            if column in established:
                return f"column {column} came back: it lands in the existing Iceberg column again", {
                    "note": "none needed"
                }
            return f"column {column} ({change.new_type}) added to {table} (compatible schema evolution)", {
                "note": f"the Iceberg column stays; drop it with ALTER TABLE ... DROP COLUMN {column} if unwanted"
            }
        if kind == "column_dropped":
            target = state.renames.get(column, column)
            return f"column {target} kept in {table}; null from position {_position_of(batch)} on", {
                "note": "nothing to undo: earlier values stay, later rows carry null"
            }
        if kind == "column_renamed":
            old = change.old_name or column
            target = state.renames.pop(old, old)
            if column != target:
                state.renames[column] = target
            return f"source column {old} renamed to {column}: it keeps landing in Iceberg column {target}", {
                "note": f"to land it as {column} instead, rename the Iceberg column {target} and drop the mapping",
                "mapping": FieldMapping(target=target, sources=[column]).model_dump(mode="json"),
            }
        if kind == "column_retyped":
            target = state.renames.get(column, column)
            old_type = established.get(target)
            new_type = (
                canonical_type(batch.records.schema.field(column).type)
                if column in batch.records.column_names
                else None
            )
            if old_type is None or new_type is None or is_widening(old_type, new_type):
                state.casts.pop(target, None)
                return f"column {target} widened {change.old_type} -> {change.new_type}: the Iceberg column evolves", {
                    "note": "a widened Iceberg column cannot be narrowed back; values are unchanged"
                }
            try:
                old_text = type_to_str(old_type)
            except ValueError:
                old_text = "string"
            state.casts[target] = old_text
            values = batch.records.column(column)
            applied = Program(steps=[Cast(to=old_text)]).apply(values)
            held = applied.failures
            verb = (
                f"cast back to {old_text} through the DSL (all {len(values) - values.null_count} values of the first"
                " batch convert)"
                if not held
                else f"cast back to {old_text} where a value converts; {held} row(s) of the first batch held"
                f" (dead letters, reason schema_held)"
            )
            return f"column {target} retyped {change.old_type} -> {change.new_type}: {verb}", {
                "note": "replay the held rows (lakegate dlq) after widening the Iceberg column by hand",
                "program": Program(steps=[Cast(to=old_text)]).model_dump(mode="json"),
            }
        return f"{kind} of {column}: no action", {}

    def _record(
        self, table: str, change: SchemaChange, column_change: ColumnChange, action: str, reversal: dict[str, Any]
    ) -> None:
        evidence = {
            "source_table": change.table,
            "position": change.position,
            "change": {k: v for k, v in column_change.__dict__.items() if v is not None},
            "before": change.before,
            "after": change.after,
            "primary_key": change.primary_key,
            "detail": change.detail,
            "action": action,
        }
        identity = orjson.dumps(
            [self.spec.pipeline, table, change.position, evidence["change"]], option=orjson.OPT_SORT_KEYS
        )
        decision_id = hashlib.sha256(identity).hexdigest()[:32]
        registry = self.registry
        if any(d.id == decision_id for d in registry.decisions(dataset=table, kind=DECISION_KIND)):
            return  # replayed after a crash: decided already
        registry.record_decision(
            Decision(
                id=decision_id,
                dataset=table,
                kind=DECISION_KIND,
                summary=f"{table}: {action}",
                evidence=_jsonable(evidence),
                actor="lakegate",
                reversal=reversal,
            )
        )
        log.warning("%s: %s", table, action)

    def _retype(self, table: str, batch: SourceBatch, state: TableState, established: dict[str, Any]) -> SourceBatch:
        """Cast columns retyped upstream back to their Iceberg type; hold the rows that do not convert."""
        if not state.casts:
            return batch
        records = batch.records
        held = np.zeros(records.num_rows, dtype=bool)
        reasons: dict[int, tuple[str, str]] = {}
        for column, type_name in state.casts.items():
            if column not in records.column_names:
                continue
            values = records.column(column)
            target = established.get(column)
            if target is not None and values.type == target:
                continue
            applied = Program(steps=[Cast(to=type_name)]).apply(values)
            records = records.set_column(records.column_names.index(column), column, applied.values)
            for row in np.flatnonzero(applied.failed & ~held).tolist():
                reasons[row] = (column, type_name)
            held |= applied.failed
        batch = replace(batch, records=records)
        if not held.any():
            return batch
        return _hold_rows(batch, table, held, reasons)

    # -- after the normalizer ---------------------------------------------------------------------

    def land(
        self, checkpoint: OpenCheckpoint, table: str, batch: SourceBatch, result: NormalizedBatch
    ) -> NormalizedBatch:
        """Hand a CDC table's rows to the open checkpoint by write mode; returns what landed and the
        rows that cannot be applied added to the dead letters."""
        state = self.states.get(table)
        if state is None or result.rows.num_rows == 0:
            if result.rows.num_rows:
                checkpoint.add_rows(table, result.rows)
            return result
        rows = with_change_columns(result.rows, batch)
        if self._sequencer is None or self._sequencer.checkpoint_id != checkpoint.checkpoint_id:
            self._sequencer = ChangeSequencer(checkpoint.checkpoint_id)
        key = state.key
        prepared = prepare_changes(
            rows,
            table=table,
            key_columns=key if state.mode == "mirror" else [],
            sequencer=self._sequencer,
            source_ref=batch.source_ref,
            positions=rows.column("_lg_position").combine_chunks(),
        )
        if table not in self._ensured:
            ensure_cdc_tables(self.tables, table, prepared.rows.schema, mode=state.mode, key_columns=key)
            self._ensured.add(table)
        target = changes_table_name(table) if state.mode == "mirror" else table
        checkpoint.add_rows(target, prepared.rows)
        if state.mode == "mirror":
            self._landed[table] = self._landed.get(table, 0) + prepared.rows.num_rows
        if not len(prepared.dead_letters):
            return result
        dead = DeadLetters(max_payload_bytes=result.dead_letters.max_payload_bytes)
        dead.extend(result.dead_letters)
        dead.extend(prepared.dead_letters)
        return replace(result, rows=prepared.rows, dead_letters=dead)

    def mirrors(self) -> list[tuple[str, list[str]]]:
        return [(name, s.key) for name, s in sorted(self.states.items()) if s.mode == "mirror"]

    def after_commit(self, positions: dict[str, Any], expired: Iterable[ExpiredSnapshots] = ()) -> None:
        """After a checkpoint's commit: count what each mirror received, hand over the snapshots its
        commits expired, compact the due mirrors, except while a source is still in its snapshot (a
        mirror half loaded would be rewritten for nothing), and reclaim the expired files past their grace."""
        landed, self._landed = self._landed, {}
        if self.compactor is None:
            return
        for table, rows in landed.items():
            self.compactor.note(table, rows)
        self.compactor.expire(expired)
        loading = any(in_snapshot(positions.get(name)) for name in self.sources)
        self.compactor.kick([] if loading else self.mirrors())

    def close(self) -> None:
        if self.compactor is not None:
            self.compactor.close()


def with_change_columns(rows: pa.Table, batch: SourceBatch) -> pa.Table:
    """Normalized rows with the batch's change columns (``_lg_op``...) put back, matched by position.

    The normalizer writes system columns itself and leaves the source's ``_lg_*`` columns out; the rows
    it kept are found in the batch by their ``_lg_position`` (unique within a batch).
    """
    names = [n for n in batch.records.column_names if n.startswith(SYSTEM_PREFIX)]
    if not names:
        return rows
    index = pc.index_in(rows.column("_lg_position"), value_set=batch.positions.cast(pa.string()))
    if index.null_count:
        raise TerminalError(f"a normalized row of {batch.source_ref} has no position in its source batch")
    side = batch.records.select(names).take(index)
    rows = rows.drop_columns([n for n in names if n in rows.column_names])
    for name in names:
        rows = rows.append_column(side.schema.field(name), side.column(name))
    return rows


def in_snapshot(position: Any) -> bool:
    """Whether a CDC source's recorded position is inside its initial snapshot (PostgreSQL or MySQL)."""
    if not isinstance(position, dict):
        return False
    return position.get("phase") == "snapshot" or position.get("snapshot") is not None


# -- redone snapshots -----------------------------------------------------------------------------


def _has_snapshot_rows(batch: SourceBatch) -> bool:
    ops = batch.records.column(OP) if OP in batch.records.column_names else None
    return ops is not None and bool(pc.any(pc.equal(ops, "r")).as_py())


def _with_truncate_marker(batch: SourceBatch) -> SourceBatch:
    """The batch with a truncate change first: the mirror forgets the superseded snapshot's rows."""
    records = batch.records
    commit = records.column(COMMIT_POSITION)[0].as_py() if COMMIT_POSITION in records.column_names else ""
    marker = {name: pa.nulls(1, records.schema.field(name).type) for name in records.column_names}
    marker[OP] = pa.array(["t"], records.schema.field(OP).type)
    if COMMIT_POSITION in marker:
        marker[COMMIT_POSITION] = pa.array([commit], records.schema.field(COMMIT_POSITION).type)
    first = pa.Table.from_pydict(marker, schema=records.schema)
    positions = pa.concat_arrays(
        [pa.array([f"{commit}:snapshot-redo"], pa.string()), batch.positions.cast(pa.string())]
    )
    raw = batch.raw

    def shifted(indices: Any) -> list[bytes]:
        found = raw([i - 1 for i in indices if i > 0])
        return [b"" if i == 0 else found.pop(0) for i in indices]

    return SourceBatch(
        source=batch.source,
        origin=batch.origin,
        records=pa.concat_tables([first, records]),
        positions=positions,
        end_position=batch.end_position,
        dead_letters=batch.dead_letters,
        raw=shifted,
        schema_changes=batch.schema_changes,
        table=batch.table,
    )


def drop_snapshot_rows(tables: TableManager, table: str) -> None:
    """Delete the ``r`` rows of a changelog table (a superseded snapshot attempt); idempotent."""
    iceberg = tables.refresh(table)
    if iceberg is None or iceberg.current_snapshot() is None:
        return
    log.warning("%s: dropping the rows of a snapshot attempt a crash interrupted (it is redone)", table)
    iceberg.delete(f"{OP} = 'r'")
    tables.refresh(table)


# -- held rows ------------------------------------------------------------------------------------


def _hold_rows(batch: SourceBatch, table: str, held: np.ndarray, reasons: dict[int, tuple[str, str]]) -> SourceBatch:
    """Move the held rows of a batch to its dead letters (reason ``schema_held``), keeping the others."""
    dead = DeadLetters(max_payload_bytes=batch.dead_letters.max_payload_bytes)
    dead.extend(batch.dead_letters)
    bad = np.flatnonzero(held)
    rows = batch.records.take(pa.array(bad)).to_pylist()
    for row, record in zip(bad.tolist(), rows, strict=True):
        column, type_name = reasons[row]
        dead.add(
            source=batch.source_ref,
            position=str(batch.positions[row].as_py()),
            stage=SCHEMA_STAGE,
            reason=Reason.SCHEMA_HELD,
            message=f"column {column} was retyped upstream; {record.get(column)!r} does not convert to {type_name}",
            payload=orjson.dumps(record, default=str),
            field_name=column,
            raw_value=None if record.get(column) is None else str(record.get(column)),
            target_table=table,
            detail={"decision_kind": DECISION_KIND, "cast_to": type_name},
        )
    keep = np.flatnonzero(~held)
    raw = batch.raw

    def kept_raw(indices: Any) -> list[bytes]:
        return raw([int(keep[i]) for i in indices])

    return SourceBatch(
        source=batch.source,
        origin=batch.origin,
        records=batch.records.take(pa.array(keep)),
        positions=batch.positions.take(pa.array(keep)),
        end_position=batch.end_position,
        dead_letters=dead,
        raw=kept_raw,
        records_read=batch.records_read,
        schema_changes=batch.schema_changes,
        table=batch.table,
    )


def _position_of(batch: SourceBatch) -> str:
    return str(batch.positions[0].as_py()) if len(batch.positions) else "?"


def _jsonable(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, default=str))


# -- compaction -----------------------------------------------------------------------------------


class Compactor:
    """Rewrites due mirrors on one background thread, so a checkpoint never waits for a compaction.

    Whether a mirror is due is kept in memory (checkpoints and change rows since its last compaction,
    read once from the tables' metadata, then counted from what each checkpoint landed), so a
    checkpoint costs the compactor no catalog round trip. Due: ``policy.every_checkpoints`` checkpoints
    with changes, or more changes than ``policy.max_change_share`` of the mirror's rows and at least
    ``min_share_rows`` (small mirrors would otherwise be rewritten after every checkpoint).

    It has its own catalog handle (pyiceberg tables are not shared across threads); given a ``worker``
    factory, its background passes compact in that child process instead (``runtime/compaction_worker``:
    no GIL shared with the checkpoint loop). A compaction is idempotent and crash-safe
    (``sinks/cdc.compact_mirror``), so a SIGKILL mid-way only costs redoing it.
    ``LAKEGATE_FAULT=compact_before_commit`` kills the process after the new mirror files are written, before
    their commit.

    It also reclaims storage: the snapshots that checkpoints and compactions expired (:meth:`expire`)
    wait in memory until their grace is over, then a pass (at most every ``reclaim_every_s``) deletes
    the files only they referenced, in the worker too (``sinks/reclaim.py``). What was reclaimed is
    logged and totalled in :attr:`reclaimed`. Expiries still waiting when the process stops are left
    to the next start (``CdcRuntime``: the checkpointed state and the tables' metadata logs).
    """

    def __init__(
        self,
        tables: Callable[[], TableManager],
        policy: CompactionPolicy,
        *,
        min_share_rows: int = 50_000,
        worker: Callable[[], CompactionWorker] | None = None,
        reclaim_every_s: float | None = None,
    ) -> None:
        self._tables_factory = tables
        self._tables: TableManager | None = None
        self._worker_factory = worker
        self._worker: CompactionWorker | None = None
        """Background passes compact in this child process when given (see runtime/compaction_worker.py)."""
        self.policy = policy
        self.min_share_rows = min_share_rows
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, list[int]] = {}
        """Mirror -> [checkpoints with changes, change rows, mirror rows] since its last compaction."""
        self.results: list[CompactionResult] = []
        self.errors: list[str] = []
        self.reclaim_every_s = RECLAIM_EVERY_S if reclaim_every_s is None else reclaim_every_s
        self._expired: list[ExpiredSnapshots] = []
        """Expired snapshots whose files wait for their grace (then for a reclaim pass)."""
        self._last_reclaim = -math.inf
        self._reclaimer: Reclaimer | None = None
        self.reclaimed = ReclaimResult()
        """Totals of every reclaim so far (files, bytes, ...)."""

    def note(self, table: str, rows: int) -> None:
        """A checkpoint committed ``rows`` change rows of mirror ``table``."""
        with self._lock:
            counts = self._pending.get(table)
            if counts is not None and rows:
                counts[0] += 1
                counts[1] += rows

    def _due(self, table: str) -> bool:
        with self._lock:
            counts = self._pending.get(table)
        if counts is None:
            return True  # not known yet: the pass reads the metadata
        checkpoints, rows, mirror_rows = counts
        if rows < max(self.policy.min_changes, 1):
            return False
        share = rows > max(self.policy.max_change_share * mirror_rows, self.min_share_rows)
        return checkpoints >= self.policy.every_checkpoints or share

    def expire(self, expired: Iterable[ExpiredSnapshots]) -> None:
        """Snapshots a commit expired: their files are reclaimed by a later pass, once their grace is over."""
        with self._lock:
            self._expired.extend(expired)

    @property
    def awaiting_reclaim(self) -> list[ExpiredSnapshots]:
        """Expired snapshots whose files are not reclaimed yet."""
        with self._lock:
            return list(self._expired)

    def _take_ripe(self, now: float, *, force: bool = False) -> list[ExpiredSnapshots]:
        with self._lock:
            if not force and now - self._last_reclaim < self.reclaim_every_s:
                return []
            ripe = [e for e in self._expired if e.ripe(now)]
            if ripe:
                self._expired = [e for e in self._expired if not e.ripe(now)]
                self._last_reclaim = time.monotonic()
        return ripe

    def kick(self, mirrors: list[tuple[str, list[str]]]) -> None:
        """Start a pass over the due ``mirrors`` and the ripe expired snapshots unless one is still running."""
        if self._thread is not None and self._thread.is_alive():
            return
        due = [(table, key) for table, key in mirrors if self._due(table)]
        ripe = self._take_ripe(time.monotonic())
        if not due and not ripe:
            return
        # The pass reclaims first and again after each compaction: a pass of several mirrors can take
        # most of a minute under load, and expired files must not wait behind it.
        if self._worker_factory is not None and (self._worker is None or not self._worker.alive):
            # Started here, on the pipeline's own thread: PR_SET_PDEATHSIG fires when the *thread* that
            # started the child ends, so one started by a pass's thread died with that pass.
            self._worker = self._worker_factory()
        self._thread = threading.Thread(target=self._pass, args=(due, ripe), name="lakegate-compactor", daemon=True)
        self._thread.start()

    def run_now(self, mirrors: list[tuple[str, list[str]]], *, force: bool = False) -> list[CompactionResult]:
        """Compact in this thread (``lakegate cdc compact``, tests): every due mirror, or all with ``force``."""
        self.wait()
        return [r for r in (self._one(t, k, force) for t, k in mirrors) if r is not None]

    def reclaim_now(self, now: float | None = None) -> ReclaimResult | None:
        """Reclaim in this thread the files of the expired snapshots past their grace at ``now`` (tests)."""
        self.wait()
        now = time.monotonic() if now is None else now
        ripe = self._take_ripe(now, force=True)
        return self._reclaim(ripe, in_background=False, now=now) if ripe else None

    def _pass(self, mirrors: list[tuple[str, list[str]]], ripe: list[ExpiredSnapshots]) -> None:
        if ripe:
            self._reclaim(ripe, in_background=True)
        for table, key in mirrors:
            try:
                self._one(table, key, False)
            except Exception as err:  # a failed compaction leaves the old mirror; the read path stays current
                log.warning("compaction of %s failed (will retry): %s", table, err)
                self.errors.append(f"{table}: {type(err).__name__}: {err}")
            ripe = self._take_ripe(time.monotonic())
            if ripe:
                self._reclaim(ripe, in_background=True)

    def _reclaim(
        self, ripe: list[ExpiredSnapshots], *, in_background: bool, now: float | None = None
    ) -> ReclaimResult | None:
        try:
            if in_background and self._worker_factory is not None:
                result = self._live_worker().reclaim(ripe)
            else:
                if self._reclaimer is None:
                    if self._tables is None:
                        self._tables = self._tables_factory()
                    self._reclaimer = Reclaimer(self._tables.catalog)
                result = self._reclaimer.reclaim(ripe, now)
        except Exception as err:  # the files stay in storage: a leak, never a wrong deletion
            log.warning("reclaim of %d expired snapshot set(s) failed (their files stay): %s", len(ripe), err)
            self.errors.append(f"reclaim: {type(err).__name__}: {err}")
            return None
        if result.deferred:
            self.expire(result.deferred)
        with self._lock:
            self.reclaimed.add(result)
        self.errors += [f"reclaim: {error}" for error in result.errors]
        log.info(
            "reclaimed %d file(s), %.1f MB of expired snapshots in %d table(s) in %.2fs (%d still referenced)",
            result.files, result.bytes / 1e6, result.tables, result.seconds, result.kept,
        )  # fmt: skip
        return result

    def _one(self, table: str, key: list[str], force: bool) -> CompactionResult | None:
        if self._tables is None:
            self._tables = self._tables_factory()
        tables = self._tables
        if force or table not in self._pending:
            mirror, changes = tables.refresh(table), tables.refresh(changes_table_name(table))
            if mirror is None or changes is None:
                return None
            pending = pending_changes(changes, mirror_watermark(mirror))
            snapshot = mirror.current_snapshot()
            rows = int(snapshot.summary.get("total-records") or 0) if snapshot and snapshot.summary else 0
            with self._lock:
                self._pending[table] = [pending.checkpoints, pending.rows, rows]
            if not (force and pending.rows) and not self._due(table):
                return None
        with self._lock:
            noted = list(self._pending[table])
        background = not force and threading.current_thread() is self._thread
        result = self._compact(tables, table, key, in_background=background, rows=noted[1] + noted[2])
        if result.expired is not None:
            self.expire([result.expired])
        with self._lock:  # changes noted while it ran may not be in it: they stay counted
            counts = self._pending[table]
            if result.outcome == "nothing_new":
                self._pending[table] = [0, 0, noted[2]]
            else:
                mirror_rows = result.mirror_rows_after if result.outcome == "compacted" else noted[2]
                self._pending[table] = [counts[0] - noted[0], counts[1] - noted[1], mirror_rows]
        log.info(
            "compacted %s: %d changes into %d rows in %.2fs", table, result.changes_merged, result.mirror_rows_after,
            result.total_s,
        )  # fmt: skip
        self.results.append(result)
        return result

    def _compact(
        self, tables: TableManager, table: str, key: list[str], *, in_background: bool, rows: int
    ) -> CompactionResult:
        if not in_background or self._worker_factory is None:
            return compact_mirror(tables, table, key, before_commit=lambda: maybe_crash("compact_before_commit"))
        return self._live_worker().compact(table, key, rows=rows)

    def _live_worker(self) -> CompactionWorker:
        if self._worker is None:
            raise TransientError("no compaction process (it is started by the next kick)")
        return self._worker

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self.wait()
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        waiting = self.awaiting_reclaim
        if waiting:
            log.info(
                "%d expired snapshot set(s) still within their grace are left to the next start", len(waiting)
            )
