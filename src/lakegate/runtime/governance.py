"""Runtime glue for semantic contracts: quarantine rows, register learned contracts, record decisions.

Stages return what they decided; this module is where the runtime acts on it: quarantined rows (and
their child rows) move to the dead-letter table with the rule, the observed value and the threshold;
a contract learned at the end of warm-up is registered and activated; the switch to enforce and the
window alerts are recorded as decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import Alert
from lakegate.contracts.decisions import Decision
from lakegate.contracts.model import Contract
from lakegate.contracts.stage import ContractOutcome, ContractStage
from lakegate.core.batch import SourceBatch
from lakegate.core.deadletter import DeadLetters, Reason
from lakegate.core.errors import TerminalError
from lakegate.normalize.stage import NormalizedBatch
from lakegate.schema.stage import KeyLookup, Proposal, SchemaOutcome, SchemaStage
from lakegate.sinks.tables import TableManager

log = logging.getLogger(__name__)

CONTRACT_STAGE = "contract"
SCHEMA_STAGE = "schema"


def row_keys(rows: pa.Table) -> pa.Array:
    """``_lg_source || '#' || _lg_position``: a row's key, which its children carry as parent key."""
    return pc.binary_join_element_wise(rows.column("_lg_source"), rows.column("_lg_position"), "#")


def _dead_letter(
    result: NormalizedBatch, batch: SourceBatch, mask: np.ndarray, entry: Callable[[int], dict[str, Any]]
) -> NormalizedBatch:
    """Move the masked rows of ``result`` and their children to its dead letters.

    ``entry(row)`` gives the dead letter's stage, reason, message, field, raw value and detail; the
    payload is the record's original bytes, found by its position in the source batch.
    """
    rows = result.rows
    bad = np.flatnonzero(mask)
    source_index = pc.index_in(rows.column("_lg_position").take(pa.array(bad)), value_set=batch.positions)
    indices = source_index.to_pylist()
    if any(i is None for i in indices):
        raise TerminalError(f"a dead-lettered row of {result.table} has no position in its source batch")
    payloads = batch.raw([int(i) for i in indices])
    dead = DeadLetters(max_payload_bytes=result.dead_letters.max_payload_bytes)
    dead.extend(result.dead_letters)
    for row, payload in zip(bad.tolist(), payloads, strict=True):
        dead.add(
            source=rows.column("_lg_source")[row].as_py(),
            position=rows.column("_lg_position")[row].as_py(),
            payload=payload,
            target_table=result.table,
            **entry(row),
        )
    bad_keys = row_keys(rows.filter(pa.array(mask)))
    children = {
        name: child.filter(pc.invert(pc.is_in(child.column("_lg_parent_key"), value_set=bad_keys)))
        for name, child in result.children.items()
    }
    return replace(result, rows=rows.filter(pa.array(~mask)), children=children, dead_letters=dead)


def quarantine(
    result: NormalizedBatch, outcome: ContractOutcome, batch: SourceBatch, contract_version: int | None
) -> NormalizedBatch:
    """Move quarantined rows and their children from ``result`` to its dead letters."""
    if not outcome.quarantined.any() or outcome.verdict is None:
        return result
    verdict = outcome.verdict

    def entry(row: int) -> dict[str, Any]:
        reasons = verdict.reasons(row)
        first = next((r for r in reasons if r["action"] == "quarantine"), reasons[0])
        return {
            "stage": CONTRACT_STAGE,
            "reason": Reason.CONTRACT_VIOLATION,
            "message": (
                f"{first['kind']} rule {first['rule']} broken: observed {first['observed']!r},"
                f" allowed {first['threshold']}" + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")
            ),
            "field_name": ",".join(first["columns"]),
            "raw_value": None if first["observed"] is None else str(first["observed"]),
            "detail": {"contract_version": contract_version, "violations": reasons},
        }

    return _dead_letter(result, batch, outcome.quarantined, entry)


def hold(result: NormalizedBatch, outcome: SchemaOutcome, batch: SourceBatch) -> NormalizedBatch:
    """Rows of an upstream shape awaiting review go to the dead letters (replayable after approval);
    the others continue in the contract's shape."""
    rows = outcome.rows
    if not outcome.held_by:
        return replace(result, rows=rows)
    # ``outcome.rows`` dropped the held rows; put them back so the dead letters can take them out with
    # their children (the kept rows are already mapped, the held ones never are).
    proposal_of = np.full(result.rows.num_rows, "", dtype=object)
    for proposal_id, mask in outcome.held_by.items():
        proposal_of[mask] = proposal_id
    held = ~outcome.kept

    def entry(row: int) -> dict[str, Any]:
        proposal_id = str(proposal_of[row])
        return {
            "stage": SCHEMA_STAGE,
            "reason": Reason.SCHEMA_HELD,
            "message": f"upstream schema change held for review: lakegate proposals show {proposal_id}",
            "field_name": None,
            "raw_value": None,
            "detail": {"proposal": proposal_id},
        }

    moved = _dead_letter(result, batch, held, entry)
    return replace(moved, rows=rows)


def stored_rows_lookup(tables: TableManager, table: str) -> KeyLookup:
    """A key lookup into ``table`` as landed, for the schema gate's row-by-row evidence.

    Returns, per incoming key, the newest stored row with that key (by ``_lg_checkpoint``), or nulls.
    """

    def lookup(keys: pa.Table, fields: list[str]) -> pa.Table | None:
        iceberg = tables.get(table)
        if iceberg is None or keys.num_rows == 0:
            return None
        stored_fields = {f.name for f in iceberg.schema().fields}
        wanted = [f for f in fields if f in stored_fields]
        if not wanted or not all(k in stored_fields for k in keys.column_names):
            return None
        first = keys.column_names[0]
        values = pc.unique(keys.column(first).drop_null()).to_pylist()[:MAX_LOOKUP_KEYS]
        if not values:
            return None
        literals = ", ".join(_literal(v) for v in values)
        stored = iceberg.scan(
            row_filter=f"{first} IN ({literals})",
            selected_fields=(*keys.column_names, *wanted, "_lg_checkpoint"),
        ).to_arrow()
        if stored.num_rows == 0:
            return None
        newest = stored.sort_by([("_lg_checkpoint", "descending")])
        newest = newest.group_by(keys.column_names, use_threads=False).aggregate([(f, "first") for f in wanted])
        newest = newest.rename_columns([c.removesuffix("_first") for c in newest.column_names])
        indexed = keys.append_column("_lg_row", pa.array(range(keys.num_rows), pa.int64()))
        try:
            joined = indexed.join(newest, keys=keys.column_names, join_type="left outer")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # key types differ: no link
            return None
        return joined.sort_by("_lg_row").select(wanted)

    return lookup


def _literal(value: Any) -> str:
    if isinstance(value, bool | int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


MAX_LOOKUP_KEYS = 1000


class Governance:
    """Contract stages of a pipeline's tables and the registry they are versioned in."""

    def __init__(
        self,
        registry_url: str,
        stages: dict[str, ContractStage],
        pins: dict[str, int | None],
        schema_stages: dict[str, SchemaStage] | None = None,
    ) -> None:
        from lakegate.contracts.registry import ContractRegistry  # sqlalchemy: only when contracts are on

        self.registry = ContractRegistry(registry_url)
        self.stages = stages
        self.pins = pins
        self.schema_stages = schema_stages or {}
        self.alerts: list[Alert] = []
        self._drift_seen: set[tuple[str, str]] = set()
        for table, stage in stages.items():
            current = self.registry.resolve(table, pins.get(table))
            if current is not None:
                stage.use(current)
        self._sync_proposals()

    def after_batch(self, table: str, outcome: ContractOutcome) -> None:
        """Register a contract learned at the end of warm-up; record alerts."""
        if outcome.learned is not None:
            self._register_learned(table, outcome)
        for alert in outcome.alerts:
            self.alerts.append(alert)
            self.registry.record_decision(
                Decision(
                    dataset=table,
                    kind=f"alert.{alert.kind}",
                    summary=alert.message,
                    evidence={
                        "rule": alert.rule_id,
                        "severity": alert.severity,
                        "metric": alert.metric,
                        "value": alert.value,
                        "threshold": alert.threshold,
                        "window": alert.window_index,
                        **_jsonable(alert.evidence),
                    },
                    actor="lakegate",
                    reversal={"note": "an alert changes nothing; rows landed labeled as usual"},
                    contract_version=self._version(table),
                )
            )

    # -- schema intelligence --------------------------------------------------------------------

    def schema_batch(
        self, table: str, result: NormalizedBatch, batch: SourceBatch, checkpoint_id: int
    ) -> tuple[NormalizedBatch, int]:
        """Run the table's schema gate once its contract enforces; returns the batch and rows held."""
        stage = self.schema_stages.get(table)
        contract_stage = self.stages.get(table)
        if stage is None or contract_stage is None or contract_stage.mode != "enforce" or not result.rows.num_rows:
            return result, 0
        outcome = stage.process(result.rows, contract_stage.contract)
        if outcome.drift is not None:
            self._record_drift(table, outcome)
        for proposal in outcome.proposals:
            self._record_proposal(table, proposal, checkpoint_id)
        while stage.fallbacks:
            evidence = stage.fallbacks.pop(0)
            why = evidence.get("refusal") or evidence.get("reason")
            self.registry.record_decision(
                Decision(
                    dataset=table,
                    kind="schema.model_fallback",
                    summary=f"{table}: the model gave no usable answer ({why}); synthesis and review decide",
                    evidence=evidence,
                    reversal={"note": "nothing was changed"},
                )
            )
        return hold(result, outcome, batch), outcome.held_count

    def _record_drift(self, table: str, outcome: SchemaOutcome) -> None:
        assert outcome.drift is not None
        key = (table, ",".join(sorted(f"{c.kind}:{c.field}" for c in outcome.drift.changes)))
        if key in self._drift_seen:
            return
        self._drift_seen.add(key)
        changes = outcome.drift.changes
        self.registry.record_decision(
            Decision(
                dataset=table,
                kind="schema.drift",
                summary=f"{table}: upstream schema {outcome.drift.compatibility}: "
                + "; ".join(f"{c.kind} {c.field}" for c in changes[:6])
                + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else ""),
                evidence={"drift": outcome.drift.to_dict(), "mapped_rows": outcome.mapped},
                reversal={"note": "detection only; the proposals it led to are reversible one by one"},
                contract_version=outcome.drift.contract_version,
            )
        )

    def _record_proposal(self, table: str, proposal: Proposal, checkpoint_id: int) -> None:
        from lakegate.contracts.registry import ProposalRecord

        contract_stage = self.stages[table]
        current = contract_stage.contract
        assert current is not None
        version: int | None = None
        if proposal.auto:
            mapped = current.with_mappings(
                [*current.mappings, *(m.model_dump(mode="json") for m in proposal.mappings)],
                f"mapping {proposal.id} applied",
            )
            stored = self.registry.register(mapped)
            self.registry.activate(table, stored.version, actor="lakegate", reason=f"mapping {proposal.id} applied")
            contract_stage.use(stored)
            version = stored.version
        self.registry.add_proposal(
            ProposalRecord(
                id=proposal.id,
                dataset=table,
                signature=proposal.signature,
                created_at=datetime.now(UTC),
                status="applied" if proposal.auto else "pending",
                confidence=proposal.confidence,
                decided_at=datetime.now(UTC) if proposal.auto else None,
                decided_by="lakegate" if proposal.auto else None,
                contract_version=version,
                body={**proposal.body(), **({"applied_checkpoint": checkpoint_id} if proposal.auto else {})},
            )
        )
        described = "; ".join(m.describe() for m in proposal.mappings) or "no mapping"
        self.registry.record_decision(
            Decision(
                dataset=table,
                kind="schema.mapping_applied" if proposal.auto else "schema.mapping_held",
                summary=(
                    f"{table}: applied {described} (confidence {proposal.confidence:.2f}) as contract v{version}"
                    if proposal.auto
                    else f"{table}: held {described} for review: {'; '.join(proposal.reasons)}"
                ),
                evidence={"proposal": proposal.id, **proposal.body()},
                reversal={"command": f"lakegate proposals revert {proposal.id}"}
                if proposal.auto
                else {
                    "approve": f"lakegate proposals approve {proposal.id}",
                    "reject": f"lakegate proposals reject {proposal.id}",
                },
                contract_version=version or proposal.contract_version,
            )
        )
        log.warning("%s", described)

    def _sync_proposals(self) -> None:
        """Approvals and rejections made from the CLI reach the running schema gates."""
        for table, stage in self.schema_stages.items():
            stage.review_only = {p.signature for p in self.registry.proposals(dataset=table, status="reverted")}
            stage.rejected |= {p.signature for p in self.registry.proposals(dataset=table, status="rejected")}
            for signature, proposal_id in list(stage.held.items()):
                status = self.registry.proposal(proposal_id).status
                if status == "rejected":
                    stage.reject(signature)
                elif status != "pending":
                    stage.release(proposal_id)

    def _register_learned(self, table: str, outcome: ContractOutcome) -> None:
        assert outcome.learned is not None
        stored = self.registry.register(outcome.learned)
        previous = self.registry.active(table)
        self.registry.activate(table, stored.version, actor="lakegate", reason="warm-up baseline stable")
        self.stages[table].use(stored)
        rows_seen = (outcome.warmup_evidence or {}).get("rows_seen")
        rule_counts: dict[str, int] = {}
        for rule in stored.rules:
            rule_counts[rule.family] = rule_counts.get(rule.family, 0) + 1
        self.registry.record_decision(
            Decision(
                dataset=table,
                kind="mode.enforce",
                summary=f"{table}: warm-up over after {rows_seen} rows; enforcing contract"
                f" v{stored.version} ({len(stored.rules)} rules)",
                evidence={"warmup": outcome.warmup_evidence, "rules_per_family": rule_counts},
                actor="lakegate",
                reversal={
                    "command": f"lakegate contract rollback {table}"
                    + (f" --to {previous.version}" if previous else ""),
                    "note": "or pin an earlier version with tables.<t>.contract.pin_version",
                },
                contract_version=stored.version,
            )
        )
        log.info("%s: enforcing learned contract v%d", table, stored.version)

    def follow_active(self) -> None:
        """Between checkpoints: a table that follows the active version picks up an activation or rollback."""
        self._sync_proposals()
        for table, stage in self.stages.items():
            if self.pins.get(table) is not None or stage.mode != "enforce":
                continue
            active = self.registry.active(table)
            if active is not None and (stage.contract is None or stage.contract.version != active.version):
                log.warning("%s: active contract is now v%d", table, active.version)
                stage.use(active)

    def _version(self, table: str) -> int | None:
        contract: Contract | None = self.stages[table].contract
        return contract.version if contract else None


def _jsonable(evidence: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in evidence.items():
        out[key] = value if isinstance(value, str | int | float | bool | list | dict | type(None)) else str(value)
    return out
