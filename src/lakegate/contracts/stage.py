"""The contract stage: observe (learn) during warm-up, then enforce, with explicit state.

The stage never writes to the registry or the audit log itself: it *returns* what it decided
(a learned contract, the switch to enforce, alerts), and the runtime records it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa

from lakegate.contracts.api import Alert, LearnConfig
from lakegate.contracts.enforce import ContractEnforcer, Verdict
from lakegate.contracts.learn import ContractLearner, WarmupPolicy
from lakegate.contracts.model import Contract
from lakegate.core.config import ContractSpec

Mode = Literal["observe", "enforce"]
STATE_VERSION = 1


@dataclass
class ContractOutcome:
    """What the stage decided about one batch."""

    quarantined: np.ndarray
    """Rows that must go to the dead-letter table instead of the table."""
    verdict: Verdict | None = None
    alerts: list[Alert] = field(default_factory=list)
    learned: Contract | None = None
    """Set on the batch that ended warm-up: the contract to register and activate."""
    warmup_evidence: dict[str, Any] | None = None

    @property
    def quarantined_count(self) -> int:
        return int(self.quarantined.sum())


class ContractStage:
    """Semantic contract of one table."""

    def __init__(self, dataset: str, spec: ContractSpec, contract: Contract | None = None) -> None:
        self.dataset = dataset
        self.spec = spec
        self.config = LearnConfig(window_rows=spec.window_rows, duplicate_window_s=spec.duplicate_window)
        self.policy = WarmupPolicy(min_rows=spec.warmup_rows, min_seconds=spec.warmup_time, max_shift=spec.max_shift)
        self.learner = ContractLearner(dataset, self.config, keys=spec.keys)
        self.contract: Contract | None = None
        self.enforcer: ContractEnforcer | None = None
        self.mode: Mode = "observe"
        if contract is not None:
            self.use(contract)

    def use(self, contract: Contract) -> None:
        """Enforce ``contract`` from now on (a learned, activated or rolled-back version)."""
        self.contract = contract
        self.enforcer = ContractEnforcer(contract, self.config)
        self.mode = "enforce"

    def process(self, rows: pa.Table) -> ContractOutcome:
        if self.mode == "observe" or self.enforcer is None:
            self.learner.observe(rows)
            outcome = ContractOutcome(quarantined=np.zeros(rows.num_rows, dtype=bool))
            stable, evidence = self.learner.stable(self.policy)
            if stable:
                learned = self.learner.build(source=self.dataset)
                outcome.learned, outcome.warmup_evidence = learned, evidence
                self.use(learned)
            return outcome
        verdict = self.enforcer.check(rows)
        return ContractOutcome(quarantined=verdict.quarantined, verdict=verdict, alerts=verdict.alerts)

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "version": STATE_VERSION,
                "mode": self.mode,
                "contract": None if self.contract is None else self.contract.model_dump(mode="json", by_alias=True),
                "learner": base64.b64encode(self.learner.snapshot()).decode() if self.mode == "observe" else None,
                "enforcer": base64.b64encode(self.enforcer.snapshot()).decode() if self.enforcer else None,
            }
        )

    def restore(self, data: bytes) -> None:
        state = orjson.loads(data)
        if state.get("version") != STATE_VERSION:
            return
        if state["contract"] is not None:
            self.use(Contract.model_validate(state["contract"]))
            if state["enforcer"] and self.enforcer is not None:
                self.enforcer.restore(base64.b64decode(state["enforcer"]))
        if state["mode"] == "observe":
            self.mode = "observe"
            if state["learner"]:
                self.learner.restore(base64.b64decode(state["learner"]))
