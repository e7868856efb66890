"""The embedded runtime: pull from sources, run the stages, cut checkpoints, recover after a crash."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lakegate.contracts.stage import ContractStage
from lakegate.core.config import FileSourceSpec, MySQLSourceSpec, PipelineSpec, PostgresSourceSpec, load_spec
from lakegate.core.errors import LakegateError, ReconciliationError, StageError
from lakegate.normalize.stage import NormalizedBatch, Normalizer
from lakegate.runtime.cdc import STATE_KEY as CDC_STATE_KEY
from lakegate.runtime.cdc import CdcRuntime, Compactor
from lakegate.runtime.checkpoint import Counts, OpenCheckpoint, finish_pending, run_protocol
from lakegate.runtime.compaction_worker import CompactionWorker
from lakegate.runtime.governance import Governance, quarantine, stored_rows_lookup
from lakegate.runtime.state import CheckpointRecord, StateStore
from lakegate.schema.llm_proposer import LLMProposer
from lakegate.schema.stage import SchemaPolicy, SchemaStage
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.cdc import CompactionPolicy
from lakegate.sinks.commit import delete_stray_files
from lakegate.sinks.tables import Granularity, TableManager
from lakegate.sources.base import Source
from lakegate.sources.files import FileSource

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a progress line shows; handed to the ``on_progress`` callback about once a second."""

    records_read: int
    rows_landed: int
    dead_lettered: int
    rows_per_s: float
    last_checkpoint: int
    elapsed_s: float


@dataclass
class RunSummary:
    """Totals of one ``run`` and the reconciliation that must hold for them."""

    pipeline: str
    counts: Counts = field(default_factory=Counts)
    checkpoints: int = 0
    last_checkpoint: int = 0
    recovered_checkpoint: int | None = None
    elapsed_s: float = 0.0
    tables: dict[str, int] = field(default_factory=dict)
    """Rows landed per table in this run (children included)."""
    quarantined: int = 0
    """Rows the semantic contracts sent to the dead-letter table (part of ``dead_lettered``)."""
    held: int = 0
    """Rows of an upstream schema change held for review (dead-lettered, replayable on approval)."""
    alerts: list[Any] = field(default_factory=list)
    """Window alerts raised by the contracts (rows landed)."""

    @property
    def reconciled(self) -> bool:
        c = self.counts
        return c.records_read == c.rows_landed + c.dead_lettered

    def render(self) -> str:
        c = self.counts
        rate = c.records_read / self.elapsed_s if self.elapsed_s else 0.0
        lines = [
            f"pipeline {self.pipeline}: {self.checkpoints} checkpoint(s), last #{self.last_checkpoint},"
            f" {self.elapsed_s:.1f}s ({rate:,.0f} records/s)",
            f"  records read        {c.records_read:>12,}",
            f"  rows landed         {c.rows_landed:>12,}",
            f"  dead-lettered       {c.dead_lettered:>12,}",
            f"  child rows landed   {c.child_rows:>12,}",
            f"  late rows (labeled) {c.late_rows:>12,}",
            f"  reconciled: read = landed + dead-lettered -> "
            f"{c.records_read:,} = {c.rows_landed:,} + {c.dead_lettered:,}"
            f" {'OK' if self.reconciled else 'MISMATCH'}",
        ]
        if self.quarantined:
            lines.append(f"  of the dead-lettered, quarantined by contracts: {self.quarantined:,}")
        if self.held:
            lines.append(f"  of the dead-lettered, held for a schema review: {self.held:,} (lakegate proposals list)")
        for table, rows in sorted(self.tables.items()):
            lines.append(f"  table {table:<32} +{rows:,} rows")
        if self.alerts:
            lines.append(f"  contract alerts ({len(self.alerts)}; rows landed):")
            for alert in self.alerts[:20]:
                lines.append(f"    [{alert.severity}] window {alert.window_index}: {alert.message}")
            if len(self.alerts) > 20:
                lines.append(f"    ... {len(self.alerts) - 20} more (lakegate contract history)")
        return "\n".join(lines)


def build_sources(spec: PipelineSpec) -> list[Source]:
    """One connector per spec entry (the CDC connectors import their drivers only when used)."""
    sources: list[Source] = []
    for s in spec.sources:
        if isinstance(s, FileSourceSpec):
            sources.append(FileSource(s, max_payload_bytes=spec.dead_letter.max_payload_bytes))
        elif isinstance(s, PostgresSourceSpec):
            from lakegate.sources.postgres import PostgresSource

            sources.append(PostgresSource(s))
        elif isinstance(s, MySQLSourceSpec):
            from lakegate.sources.mysql import MySQLSource

            sources.append(MySQLSource(s, max_payload_bytes=spec.dead_letter.max_payload_bytes))
    return sources


def _advisor(spec: PipelineSpec) -> LLMProposer | None:
    """The optional model that proposes mappings for held schema changes (``llm:`` in the spec)."""
    if not spec.llm:
        return None
    from lakegate.ai.llm import ChatClient, LLMConfig

    return LLMProposer(ChatClient(LLMConfig.parse(spec.llm, origin="llm")))


class Pipeline:
    """A pipeline spec brought to life: sources -> normalize -> Iceberg tables + dead letters.

    Example:
        >>> Pipeline.from_yaml("orders.yaml").run(until_idle=True)  # doctest: +SKIP
    """

    IDLE_SLEEP_S = 0.2

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.catalog = open_catalog(spec.catalog, spec.data_dir)
        self.tables = TableManager(self.catalog, spec.namespace)
        self.state = StateStore(spec.state_dir)
        self.sources = build_sources(spec)
        self._source_tables = {s.name: spec.table_of(s) for s in spec.sources if isinstance(s, FileSourceSpec)}
        self.normalizers: dict[str, Normalizer] = {
            table: Normalizer(table, spec.table_spec(table), spec.dead_letter.max_payload_bytes)
            for table in sorted(set(self._source_tables.values()))
        }
        self.governance = self._governance(spec)
        if self.governance is not None:
            for name, schema_stage in self.governance.schema_stages.items():
                schema_stage.lookup = stored_rows_lookup(self.tables, name)
        self.cdc = self._cdc(spec)
        self.known_tables: list[str] = []
        self._pending_state: dict[str, str] = {}
        self.last_checkpoint = 0
        self._positions: dict[str, Any] = {}

    @staticmethod
    def _governance(spec: PipelineSpec) -> Governance | None:
        stages: dict[str, ContractStage] = {}
        schema_stages: dict[str, SchemaStage] = {}
        advisor = _advisor(spec)
        pins: dict[str, int | None] = {}
        for table in spec.target_tables():
            contract_spec = spec.table_spec(table).contract
            if contract_spec is not None and contract_spec.enabled:
                stages[table] = ContractStage(table, contract_spec)
                pins[table] = contract_spec.pin_version
                if contract_spec.schema_intelligence:
                    schema_stages[table] = SchemaStage(
                        table, SchemaPolicy(auto_apply=contract_spec.auto_apply), advisor=advisor
                    )
        return Governance(spec.registry_url, stages, pins, schema_stages) if stages else None

    def _cdc(self, spec: PipelineSpec) -> CdcRuntime | None:
        """The CDC glue when a source is a database (its decisions go to the contract registry)."""
        if all(isinstance(s, FileSourceSpec) for s in spec.sources):
            return None

        def registry() -> object:
            if self.governance is not None:
                return self.governance.registry
            from lakegate.contracts.registry import ContractRegistry

            return ContractRegistry(spec.registry_url)

        policy = CompactionPolicy(
            every_checkpoints=spec.checkpoint.compact_every, max_change_share=spec.checkpoint.compact_share
        )
        compactor = Compactor(
            lambda: TableManager(open_catalog(spec.catalog, spec.data_dir), spec.namespace),
            policy,
            worker=lambda: CompactionWorker(spec.catalog, spec.data_dir, spec.namespace),
        )
        return CdcRuntime(spec, self.tables, registry, compactor)

    def _operator_state(self) -> dict[str, bytes]:
        state = {name: base64.b64decode(encoded) for name, encoded in self._pending_state.items()}
        state.update({name: n.snapshot() for name, n in self.normalizers.items()})
        if self.governance:
            state.update({f"contract:{t}": s.snapshot() for t, s in self.governance.stages.items()})
            state.update({f"schema:{t}": s.snapshot() for t, s in self.governance.schema_stages.items()})
        if self.cdc is not None:
            state[CDC_STATE_KEY] = self.cdc.snapshot()
        return state

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Raises: ConfigError naming the file and field when the spec is invalid."""
        return cls(load_spec(path))

    # -- recovery ---------------------------------------------------------------------------------

    def recover(self) -> int | None:
        """Finish a half-committed checkpoint, clean stray files, restore state and positions.

        Returns the checkpoint id recovered from, or ``None`` on a first run.
        """
        record = self.state.latest()
        if record is None:
            for source in self.sources:
                source.restore(None)
            return None
        expired = []
        if record.status == "pending":
            log.warning("finishing checkpoint %d left pending by a crash", record.checkpoint_id)
            expired = finish_pending(
                record,
                state=self.state,
                tables=self.tables,
                pipeline=self.spec.pipeline,
                acknowledge=lambda: self._acknowledge(record),
            )
        for name in record.tables:
            table = self.tables.get(name)
            if table is not None:
                removed = delete_stray_files(table, self.spec.pipeline, record.checkpoint_id)
                if removed:
                    log.warning("removed %d data file(s) of an unfinished checkpoint in %s", len(removed), name)
        self._restore(record)
        current = self._rewind(record) if self.state.pending_rewinds() else record
        if self.cdc is not None:
            self.cdc.after_recover(current, expired)
        return current.checkpoint_id

    def _rewind(self, record: CheckpointRecord) -> CheckpointRecord:
        """Carry out the rewinds a reverted mapping left (see ``runtime/rewind.py``) and seek back."""
        from lakegate.contracts.decisions import Decision
        from lakegate.runtime.rewind import carry_out_rewinds

        record, results = carry_out_rewinds(self, record)
        self._restore(record)
        for result in results:
            if self.governance is not None:
                self.governance.registry.record_decision(
                    Decision(
                        dataset=result.table,
                        kind="schema.replay_after_revert",
                        summary=f"{result.table}: {result.status}: rows landed since checkpoint"
                        f" {result.from_checkpoint} by {result.sources} {result.note}",
                        evidence={"from_checkpoint": result.from_checkpoint, "sources": result.sources,
                                  "status": result.status, "note": result.note},  # fmt: skip
                        reversal={"note": "the rows are re-read from the source; nothing is lost"},
                    )
                )
        return record

    def sources_of(self, table: str) -> list[Source]:
        """The sources whose records land in ``table`` (from the spec)."""
        return [s for s in self.sources if self._source_tables.get(s.name) == table]

    def _restore(self, record: CheckpointRecord) -> None:
        self.last_checkpoint = record.checkpoint_id
        self.known_tables = list(record.tables)
        for name, encoded in record.operator_state.items():
            if name in self.normalizers:
                self.normalizers[name].restore(base64.b64decode(encoded))
            elif name == CDC_STATE_KEY:
                if self.cdc is not None:
                    self.cdc.restore(base64.b64decode(encoded))
            elif ":" not in name:
                self._pending_state[name] = encoded  # a table named by its batches: restored on first sight
            elif name.startswith("contract:") and self.governance:
                stage = self.governance.stages.get(name.removeprefix("contract:"))
                if stage is not None:
                    stage.restore(base64.b64decode(encoded))
            elif name.startswith("schema:") and self.governance:
                schema_stage = self.governance.schema_stages.get(name.removeprefix("schema:"))
                if schema_stage is not None:
                    schema_stage.restore(base64.b64decode(encoded))
        if self.governance:
            self.governance.follow_active()
        self._positions = dict(record.source_positions)
        for source in self.sources:
            source.restore(record.source_positions.get(source.name))

    def _acknowledge(self, record: CheckpointRecord) -> None:
        for source in self.sources:
            position = record.source_positions.get(source.name)
            if position is not None:
                source.acknowledge(position)

    # -- the loop ---------------------------------------------------------------------------------

    def _open_checkpoint(self) -> OpenCheckpoint:
        return OpenCheckpoint(
            checkpoint_id=self.last_checkpoint + 1,
            pipeline=self.spec.pipeline,
            tables=self.tables,
            dead_letter_table=self.spec.dead_letter_table,
            partitions=self._partition_of,
        )

    def _partition_of(self, table: str) -> Granularity | None:
        base = table.split("__", 1)[0]
        if table == self.spec.dead_letter_table or base not in self._source_tables.values():
            return None
        table_spec = self.spec.table_spec(base)
        if table_spec.partition == "none" or (table_spec.partition == "auto" and table_spec.event_time is None):
            return None
        return "day" if table_spec.partition == "auto" else table_spec.partition

    def _normalizer(self, table: str) -> Normalizer:
        """The table's normalizer; tables a source names per batch (CDC, replays) get one on first sight."""
        normalizer = self.normalizers.get(table)
        if normalizer is None:
            normalizer = Normalizer(table, self.spec.table_spec(table), self.spec.dead_letter.max_payload_bytes)
            encoded = self._pending_state.pop(table, None)
            if encoded is not None:
                normalizer.restore(base64.b64decode(encoded))
            self.normalizers[table] = normalizer
        return normalizer

    def _process(self, source: Source, checkpoint: OpenCheckpoint, summary: RunSummary) -> bool:
        batch = source.poll()
        if batch is None:
            return False
        cdc = self.cdc if self.cdc is not None and self.cdc.handles(source.name) else None
        if cdc is not None:
            table = cdc.route(source.name, batch)
            try:
                batch = cdc.prepare(source, batch, self._normalizer(table))
            except LakegateError:
                raise
            except Exception as err:
                raise StageError("cdc", checkpoint.checkpoint_id, f"{type(err).__name__}: {err}") from err
        table = batch.table or self._source_tables[source.name]
        try:
            result: NormalizedBatch = self._normalizer(table).process(batch)
        except Exception as err:
            raise StageError("normalize", checkpoint.checkpoint_id, f"{type(err).__name__}: {err}") from err
        quarantined = 0
        if self.governance is not None:
            try:
                result, held = self.governance.schema_batch(table, result, batch, checkpoint.checkpoint_id)
            except Exception as err:
                raise StageError("schema", checkpoint.checkpoint_id, f"{type(err).__name__}: {err}") from err
            summary.held += held
        stage = self.governance.stages.get(table) if self.governance else None
        if stage is not None and self.governance is not None and result.rows.num_rows:
            try:
                outcome = stage.process(result.rows)
                self.governance.after_batch(table, outcome)
                result = quarantine(result, outcome, batch, stage.contract.version if stage.contract else None)
            except Exception as err:
                raise StageError("contract", checkpoint.checkpoint_id, f"{type(err).__name__}: {err}") from err
            quarantined = outcome.quarantined_count
            summary.alerts.extend(outcome.alerts)
        summary.quarantined += quarantined
        if cdc is not None:
            result = cdc.land(checkpoint, table, batch, result)
        else:
            checkpoint.add_rows(table, result.rows)
        counts = Counts(
            records_read=result.records_read,
            rows_landed=result.rows.num_rows,
            dead_lettered=len(result.dead_letters),
            child_rows=sum(t.num_rows for t in result.children.values()),
            late_rows=result.late_rows,
        )
        counts.check(f"batch {batch.source_ref} (checkpoint {checkpoint.checkpoint_id})")
        for side_table, side_rows in batch.side_rows.items():
            checkpoint.add_rows(side_table, side_rows)
        for child, rows in result.children.items():
            checkpoint.add_rows(child, rows)
        for dead_letter in result.dead_letters.rows:
            dead_letter["target_table"] = dead_letter["target_table"] or table
        checkpoint.add_dead_letters(result.dead_letters)
        checkpoint.counts.add(counts)
        self._positions[source.name] = source.position()
        for name, rows in [
            (table, result.rows.num_rows),
            *((c, t.num_rows) for c, t in result.children.items()),
        ]:
            summary.tables[name] = summary.tables.get(name, 0) + rows
        return True

    def _checkpoint(self, checkpoint: OpenCheckpoint, summary: RunSummary) -> None:
        started = time.monotonic()
        record = run_protocol(
            checkpoint,
            state=self.state,
            source_positions=self._positions,
            operator_state=self._operator_state(),
            known_tables=self.known_tables,
            acknowledge=lambda: self._acknowledge_positions(),
        )
        log.info(
            "checkpoint #%d committed in %.3fs: %d records, %d table(s)",
            record.checkpoint_id, time.monotonic() - started, checkpoint.counts.records_read, len(record.files),
        )  # fmt: skip
        self.known_tables = record.tables
        self.last_checkpoint = record.checkpoint_id
        summary.checkpoints += 1
        summary.last_checkpoint = record.checkpoint_id
        summary.counts.add(checkpoint.counts)
        if self.governance:
            self.governance.follow_active()
        if self.cdc is not None:
            self.cdc.after_commit(self._positions, checkpoint.expired)

    def _acknowledge_positions(self) -> None:
        for source in self.sources:
            if source.name in self._positions:
                source.acknowledge(self._positions[source.name])

    def run(
        self,
        until_idle: bool = True,
        max_seconds: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> RunSummary:
        """Run until every source is drained and committed (``until_idle``) or ``max_seconds``.

        Raises:
            StageError: a stage failed on a batch (nothing of the open checkpoint is committed).
            ReconciliationError: counts did not add up (a bug; nothing of that checkpoint lands).
        """
        started = time.monotonic()
        summary = RunSummary(pipeline=self.spec.pipeline)
        summary.recovered_checkpoint = self.recover()
        summary.last_checkpoint = self.last_checkpoint
        checkpoint = self._open_checkpoint()
        opened_at = last_report = time.monotonic()
        cp = self.spec.checkpoint
        try:
            while True:
                progressed = False
                for source in self.sources:
                    progressed |= self._process(source, checkpoint, summary)
                now = time.monotonic()
                due = (
                    now - opened_at >= cp.interval
                    or checkpoint.counts.records_read >= cp.max_rows
                    or checkpoint.input_bytes >= cp.max_bytes
                )
                idle = not progressed and all(s.is_idle() for s in self.sources)
                if not checkpoint.empty and (due or idle):
                    self._checkpoint(checkpoint, summary)
                    checkpoint = self._open_checkpoint()
                    # Due an interval after this cut, not after its commit (that stretched every
                    # period, and so the end-to-end lag, by the commit time), yet read at least half one.
                    opened_at = max(now, time.monotonic() - cp.interval / 2)
                if on_progress and now - last_report >= 1.0:
                    last_report = now
                    on_progress(self._progress(summary, checkpoint, now - started))
                if idle and checkpoint.empty and until_idle:
                    break
                if max_seconds is not None and now - started >= max_seconds:
                    if not checkpoint.empty:
                        self._checkpoint(checkpoint, summary)
                    break
                if not progressed:
                    time.sleep(self.IDLE_SLEEP_S)
        finally:
            summary.elapsed_s = time.monotonic() - started
        if not summary.reconciled:
            raise ReconciliationError(summary.render())
        return summary

    def _progress(self, summary: RunSummary, checkpoint: OpenCheckpoint, elapsed: float) -> Progress:
        read = summary.counts.records_read + checkpoint.counts.records_read
        return Progress(
            records_read=read,
            rows_landed=summary.counts.rows_landed + checkpoint.counts.rows_landed,
            dead_lettered=summary.counts.dead_lettered + checkpoint.counts.dead_lettered,
            rows_per_s=read / elapsed if elapsed else 0.0,
            last_checkpoint=self.last_checkpoint,
            elapsed_s=elapsed,
        )

    def close(self) -> None:
        if self.cdc is not None:
            self.cdc.close()
        for source in self.sources:
            source.close()
        self.state.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
