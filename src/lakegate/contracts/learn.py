"""Observe mode: learn a contract from Arrow batches with bounded memory.

The learner fans each batch out to the families' learners (column profiles, relationships, temporal
patterns), tracks the dataset's schema, and tells when the baseline is stable enough to enforce.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import Family, FamilyLearner, LearnConfig
from lakegate.contracts.columns import ColumnLearner
from lakegate.contracts.families import default_families
from lakegate.contracts.model import Contract, DatasetSchema, FieldSchema, Metadata, Provenance
from lakegate.core.errors import TerminalError
from lakegate.core.types import type_to_str

SYSTEM_PREFIX = "_lg_"
STATE_VERSION = 1


@dataclass(frozen=True)
class WarmupPolicy:
    """When observe mode may end: enough rows, enough time, and a baseline that stopped moving."""

    min_rows: int = 10_000
    min_seconds: float = 0.0
    max_shift: float = 0.05
    """The families' largest recent baseline shift must be at most this."""
    stable_batches: int = 2
    """...for this many batches in a row."""


def learnable_columns(rows: pa.Table) -> list[str]:
    """User columns; system columns are lakegate's, not the dataset's."""
    return [c for c in rows.column_names if not c.startswith(SYSTEM_PREFIX)]


def _type_name(data_type: pa.DataType) -> str:
    try:
        return type_to_str(data_type)
    except ValueError:
        return str(data_type)


class ContractLearner:
    """Learns one dataset's contract during warm-up."""

    def __init__(
        self,
        dataset: str,
        config: LearnConfig | None = None,
        families: list[Family] | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.dataset = dataset
        self.keys = list(keys or [])
        self.config = config or LearnConfig()
        self.families = families if families is not None else default_families()
        self.learners: dict[str, FamilyLearner] = {f.name: f.learner(self.config) for f in self.families}
        self.rows_seen = 0
        self.fields: dict[str, str] = {}
        self.null_counts: dict[str, int] = {}
        self.first_event_us: int | None = None
        self.last_event_us: int | None = None
        self.started_at = time.time()
        self._shifts: deque[float] = deque(maxlen=8)

    def observe(self, rows: pa.Table) -> None:
        """Learn from a batch (its system columns other than event time are ignored)."""
        if rows.num_rows == 0:
            return
        for name in learnable_columns(rows):
            column = rows.column(name)
            self.fields.setdefault(name, _type_name(column.type))
            self.null_counts[name] = self.null_counts.get(name, 0) + column.null_count
        if "_lg_event_time" in rows.column_names:
            micros = pc.cast(rows.column("_lg_event_time"), pa.int64())
            low, high = pc.min(micros).as_py(), pc.max(micros).as_py()
            if low is not None:
                self.first_event_us = low if self.first_event_us is None else min(self.first_event_us, low)
                self.last_event_us = high if self.last_event_us is None else max(self.last_event_us, high)
        for learner in self.learners.values():
            learner.observe(rows)
        self.rows_seen += rows.num_rows
        self._shifts.append(max((learner.stability() for learner in self.learners.values()), default=0.0))

    def stable(self, policy: WarmupPolicy) -> tuple[bool, dict[str, Any]]:
        """Whether warm-up may end, with the evidence for the decision."""
        elapsed = time.time() - self.started_at
        recent = list(self._shifts)[-policy.stable_batches :]
        shift = max(recent) if recent else float("inf")
        evidence = {
            "rows_seen": self.rows_seen,
            "min_rows": policy.min_rows,
            "elapsed_s": round(elapsed, 3),
            "min_seconds": policy.min_seconds,
            "recent_max_shift": shift,
            "max_shift": policy.max_shift,
        }
        ok = (
            self.rows_seen >= policy.min_rows
            and elapsed >= policy.min_seconds
            and len(recent) >= policy.stable_batches
            and shift <= policy.max_shift
        )
        return ok, evidence

    def schema(self) -> DatasetSchema:
        return DatasetSchema(
            fields=[
                FieldSchema(name=name, type=type_name, nullable=self.null_counts.get(name, 0) > 0)
                for name, type_name in self.fields.items()
            ],
            keys=self.keys,
        )

    def build(
        self,
        base: Contract | None = None,
        *,
        checkpoint_id: int | None = None,
        source: str | None = None,
        reason: str = "learned baseline",
    ) -> Contract:
        """A contract from what was observed; declared rules and metadata of ``base`` are kept."""
        schema = self.schema()
        learned = [rule for learner in self.learners.values() for rule in learner.rules(schema)]
        declared = [r for r in base.rules if r.origin == "declared"] if base else []
        declared_ids = {r.id for r in declared}
        rules = declared + [r for r in learned if r.id not in declared_ids]
        if base is not None and base.schema_.keys:
            schema = schema.model_copy(update={"keys": base.schema_.keys})
        names = {f.name for f in schema.fields}
        profiles = {
            name: summary
            for learner in self.learners.values()
            if isinstance(learner, ColumnLearner)
            for name, summary in learner.field_profiles().items()
            if name in names
        }
        return Contract(
            dataset=self.dataset,
            schema=schema,
            rules=rules,
            profiles=profiles,
            policies=base.policies if base else Contract(dataset=self.dataset).policies,
            metadata=base.metadata if base else Metadata(description=f"learned contract of {self.dataset}"),
            provenance=Provenance(
                learned_from_rows=self.rows_seen,
                first_event_time=_as_datetime(self.first_event_us),
                last_event_time=_as_datetime(self.last_event_us),
                learned_at=datetime.now(UTC),
                checkpoint_id=checkpoint_id,
                source=source,
                parent_version=base.version if base else None,
                reason=reason,
            ),
        )

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "version": STATE_VERSION,
                "dataset": self.dataset,
                "rows_seen": self.rows_seen,
                "fields": self.fields,
                "null_counts": self.null_counts,
                "first_event_us": self.first_event_us,
                "last_event_us": self.last_event_us,
                "started_at": self.started_at,
                "shifts": list(self._shifts),
                "families": {name: learner.to_state() for name, learner in self.learners.items()},
            }
        )

    def restore(self, data: bytes) -> None:
        """Raises: TerminalError when the state belongs to another dataset or format."""
        state = orjson.loads(data)
        if state.get("version") != STATE_VERSION or state.get("dataset") != self.dataset:
            raise TerminalError(
                f"learner state for {state.get('dataset')!r} v{state.get('version')} cannot restore"
                f" the learner of {self.dataset!r} v{STATE_VERSION}"
            )
        self.rows_seen = state["rows_seen"]
        self.fields = state["fields"]
        self.null_counts = state["null_counts"]
        self.first_event_us = state["first_event_us"]
        self.last_event_us = state["last_event_us"]
        self.started_at = state["started_at"]
        self._shifts = deque(state["shifts"], maxlen=8)
        for name, learner_state in state["families"].items():
            if name in self.learners:
                self.learners[name].from_state(learner_state)


def _as_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, tz=UTC)
