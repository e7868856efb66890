"""The interface between the contract orchestrators and the rule families.

A *family* module (``columns``, ``relationships``, ``temporal``) contributes three things:

* a learner (:class:`FamilyLearner`): observes Arrow batches in warm-up with bounded memory,
  proposes rules with thresholds, and keeps its state as JSON-able data for checkpoints;
* row checkers (:class:`RowChecker`, built per row-level rule): vectorized, return a mask of the
  rows that break the rule plus what was observed and what was allowed;
* window checkers (:class:`WindowChecker`, built per window-level rule): look at one window of rows
  (a fixed number of rows, e.g. 10,000) and return alerts, never reject rows.

Families register themselves in ``FAMILIES`` (see ``contracts/families.py``), so the learner and the
enforcer never need to know a kind by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from lakegate.contracts.model import DatasetSchema, Rule, Severity


@dataclass(frozen=True)
class LearnConfig:
    """Knobs of learning; the defaults are what the benchmarks run with."""

    sketch_k: int = 200
    """KLL quantile sketch size (fixed: memory does not grow with rows)."""
    max_categories: int = 1000
    """Above this many distinct values a string field is not treated as categorical."""
    range_quantiles: tuple[float, float] = (0.001, 0.999)
    range_margin: float = 0.5
    """Bounds are widened by this share of the inter-quantile span on each side (robust bounds)."""
    min_support: int = 200
    """Rows a relationship must hold on before it becomes a rule."""
    min_confidence: float = 0.995
    max_identity_columns: int = 30
    """Bounded search: identities are searched over at most this many numeric columns."""
    field_ttl_rows: int = 5_000_000
    """A field unseen for this many rows is evicted from the learner's state."""
    window_rows: int = 10_000
    duplicate_window_s: float = 3600.0


@dataclass
class RowCheck:
    """The outcome of one row-level rule on one batch."""

    rule: Rule
    failed: np.ndarray
    """Boolean mask over the batch's rows: True where the rule is broken."""
    observed: pa.Array | None = None
    """The value the rule looked at, per row (rendered only for failed rows)."""
    threshold: str = ""
    """What was allowed, for humans: ``[0.5, 1200.0]``, ``one of 14 values``, ``<= ship_date``."""


@dataclass
class Alert:
    """A window-level finding: recorded and shown, rows still land."""

    rule_id: str
    kind: str
    severity: Severity
    message: str
    metric: str
    value: float
    threshold: float
    window_index: int = 0
    window_start: datetime | None = None
    window_end: datetime | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


class FamilyLearner(Protocol):
    """Learns one family of rules from warm-up batches."""

    def observe(self, rows: pa.Table) -> None:
        """Update the state with a batch (vectorized; bounded memory)."""
        ...

    def rules(self, schema: DatasetSchema) -> list[Rule]:
        """Rules with their thresholds, from what was observed so far."""
        ...

    def stability(self) -> float:
        """How much the learned baseline moved recently (0 = not at all); used to leave warm-up."""
        ...

    def to_state(self) -> dict[str, Any]: ...

    def from_state(self, state: dict[str, Any]) -> None: ...


class RowChecker(Protocol):
    rule: Rule

    def check(self, rows: pa.Table) -> RowCheck:
        """Vectorized: a mask of the rows breaking ``rule``."""
        ...

    def to_state(self) -> dict[str, Any]:
        """State carried across batches (e.g. keys seen in the duplicate window); {} if none."""
        ...

    def from_state(self, state: dict[str, Any]) -> None: ...


class WindowChecker(Protocol):
    rule: Rule

    def check(self, window: pa.Table, index: int) -> list[Alert]:
        """Alerts for one full window of rows."""
        ...

    def check_windows(self, block: pa.Table, first_index: int, size: int) -> list[Alert]:
        """Alerts for consecutive full windows (``block`` holds a multiple of ``size`` rows).

        The same alerts as :meth:`check` on each window in order; checkers whose metric vectorizes
        over windows screen them all at once and build alerts only for the windows that fail.
        """
        ...

    def to_state(self) -> dict[str, Any]: ...

    def from_state(self, state: dict[str, Any]) -> None: ...


class Family(Protocol):
    """A family of rules: one learner, and checkers for the kinds it owns."""

    name: str
    kinds: frozenset[str]

    def learner(self, config: LearnConfig) -> FamilyLearner: ...

    def row_checker(self, rule: Rule, config: LearnConfig) -> RowChecker | None:
        """A checker for a row-level rule of this family (None for window kinds)."""
        ...

    def window_checker(self, rule: Rule, config: LearnConfig) -> WindowChecker | None: ...


def each_window(checker: WindowChecker, block: pa.Table, first_index: int, size: int) -> list[Alert]:
    """``check_windows`` for checkers that carry state from window to window: one ``check`` each."""
    alerts: list[Alert] = []
    for offset in range(0, block.num_rows - size + 1, size):
        alerts.extend(checker.check(block.slice(offset, size), first_index + offset // size))
    return alerts


def alerts_of_windows(
    checker: WindowChecker, block: pa.Table, windows: np.ndarray, first_index: int, size: int
) -> list[Alert]:
    """Full alerts, from ``check``, for the windows (indices into ``block``) a vectorized screen chose."""
    alerts: list[Alert] = []
    for w in windows.tolist():
        alerts.extend(checker.check(block.slice(w * size, size), first_index + w))
    return alerts
