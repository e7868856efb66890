"""Runtime glue for semantic contracts: quarantine rows, register learned contracts, record decisions.

Stages return what they decided; this module is where the runtime acts on it: quarantined rows (and
their child rows) move to the dead-letter table with the rule, the observed value and the threshold;
a contract learned at the end of warm-up is registered and activated; the switch to enforce and the
window alerts are recorded as decisions.
"""

from __future__ import annotations

import logging
from dataclasses import replace
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
from lakegate.normalize.stage import NormalizedBatch

log = logging.getLogger(__name__)

CONTRACT_STAGE = "contract"


def row_keys(rows: pa.Table) -> pa.Array:
    """``_lg_source || '#' || _lg_position``: a row's key, which its children carry as parent key."""
    return pc.binary_join_element_wise(rows.column("_lg_source"), rows.column("_lg_position"), "#")


def quarantine(
    result: NormalizedBatch, outcome: ContractOutcome, batch: SourceBatch, contract_version: int | None
) -> NormalizedBatch:
    """Move quarantined rows and their children from ``result`` to its dead letters."""
    mask = outcome.quarantined
    if not mask.any() or outcome.verdict is None:
        return result
    rows = result.rows
    bad = np.flatnonzero(mask)
    # The original bytes of each quarantined record, found by position in the source batch.
    source_index = pc.index_in(rows.column("_lg_position").take(pa.array(bad)), value_set=batch.positions)
    payloads = batch.raw([int(i) if i is not None else 0 for i in source_index.to_pylist()])
    dead = DeadLetters(max_payload_bytes=result.dead_letters.max_payload_bytes)
    dead.extend(result.dead_letters)
    for row, payload in zip(bad.tolist(), payloads, strict=True):
        reasons = outcome.verdict.reasons(row)
        first = next((r for r in reasons if r["action"] == "quarantine"), reasons[0])
        dead.add(
            source=rows.column("_lg_source")[row].as_py(),
            position=rows.column("_lg_position")[row].as_py(),
            stage=CONTRACT_STAGE,
            reason=Reason.CONTRACT_VIOLATION,
            message=(
                f"{first['kind']} rule {first['rule']} broken: observed {first['observed']!r},"
                f" allowed {first['threshold']}" + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")
            ),
            payload=payload,
            field_name=",".join(first["columns"]),
            raw_value=None if first["observed"] is None else str(first["observed"]),
            target_table=result.table,
            detail={"contract_version": contract_version, "violations": reasons},
        )
    keep = pa.array(~mask)
    bad_keys = row_keys(rows.filter(pa.array(mask)))
    children = {
        name: child.filter(pc.invert(pc.is_in(child.column("_lg_parent_key"), value_set=bad_keys)))
        for name, child in result.children.items()
    }
    return replace(result, rows=rows.filter(keep), children=children, dead_letters=dead)


class Governance:
    """Contract stages of a pipeline's tables and the registry they are versioned in."""

    def __init__(self, registry_url: str, stages: dict[str, ContractStage], pins: dict[str, int | None]) -> None:
        from lakegate.contracts.registry import ContractRegistry  # sqlalchemy: only when contracts are on

        self.registry = ContractRegistry(registry_url)
        self.stages = stages
        self.pins = pins
        self.alerts: list[Alert] = []
        for table, stage in stages.items():
            current = self.registry.resolve(table, pins.get(table))
            if current is not None:
                stage.use(current)

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
