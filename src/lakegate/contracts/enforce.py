"""Enforce mode: per-row verdicts and per-window alerts against one contract version.

Row rules run as vectorized checks that each return a mask; a row breaking any rule whose action is
``quarantine`` is quarantined, and only for those few rows are the reasons rendered (rule, observed
value, threshold). Window rules see fixed windows of rows buffered from the stream and raise alerts;
rows under an alert still land.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from lakegate.contracts.api import Alert, Family, LearnConfig, RowCheck, RowChecker, WindowChecker
from lakegate.contracts.drift import forget_sorted_windows
from lakegate.contracts.encodings import ENCODINGS
from lakegate.contracts.families import default_families, family_of
from lakegate.contracts.model import Contract, Rule

STATE_VERSION = 1
_WINDOW_SYSTEM_COLUMNS = ("_lg_event_time", "_lg_ingested_at", "_lg_late")


@dataclass
class Verdict:
    """What the contract says about one batch."""

    quarantined: np.ndarray
    """Boolean mask: rows that must not land (they go to the dead-letter table)."""
    checks: list[RowCheck] = field(default_factory=list)
    """Row checks that failed on at least one row (quarantining or alert-only)."""
    alerts: list[Alert] = field(default_factory=list)
    actions: dict[str, str] = field(default_factory=dict)
    """Rule id -> effective action."""

    @property
    def quarantined_count(self) -> int:
        return int(self.quarantined.sum())

    def reasons(self, row: int) -> list[dict[str, Any]]:
        """Every rule row ``row`` breaks, with the observed value and the learned threshold."""
        out = []
        for check in self.checks:
            if check.failed[row]:
                observed = None if check.observed is None else check.observed[row].as_py()
                out.append(
                    {
                        "rule": check.rule.id,
                        "kind": check.rule.kind,
                        "columns": check.rule.columns,
                        "observed": observed if _jsonable(observed) else str(observed),
                        "threshold": check.threshold,
                        "action": self.actions.get(check.rule.id, "quarantine"),
                        "origin": check.rule.origin,
                    }
                )
        return out


def _jsonable(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class ContractEnforcer:
    """Checks batches against a contract; carries duplicate-window and window-buffer state."""

    def __init__(
        self, contract: Contract, config: LearnConfig | None = None, families: list[Family] | None = None
    ) -> None:
        self.contract = contract
        self.config = config or LearnConfig()
        self.families = families if families is not None else default_families()
        self.row_checkers: list[RowChecker] = []
        self.window_checkers: list[WindowChecker] = []
        for rule in contract.rules:
            action = contract.action_of(rule)
            if action == "off":
                continue
            family = family_of(rule.kind, self.families)
            if family is None:
                continue  # a rule kind this build does not know: kept in the contract, not enforced
            if rule.level == "row":
                row_checker = family.row_checker(rule, self.config)
                if row_checker is not None:
                    self.row_checkers.append(row_checker)
            else:
                window_checker = family.window_checker(rule, self.config)
                if window_checker is not None:
                    self.window_checkers.append(window_checker)
        self._window_columns = sorted(
            {c for w in self.window_checkers for c in w.rule.columns} | set(_WINDOW_SYSTEM_COLUMNS)
        )
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.windows_checked = 0

    def check(self, rows: pa.Table) -> Verdict:
        """Row verdicts for this batch, plus alerts for every window it completes."""
        try:
            return self._check(rows)
        finally:  # the batch's shared encodings and sorted windows served their rules; free them
            ENCODINGS.clear()
            forget_sorted_windows()

    def _check(self, rows: pa.Table) -> Verdict:
        quarantined = np.zeros(rows.num_rows, dtype=bool)
        verdict = Verdict(quarantined=quarantined)
        for checker in self.row_checkers:
            if not all(c in rows.column_names for c in checker.rule.columns):
                continue  # a missing column is schema drift, not a semantic violation
            result = checker.check(rows)
            if result.failed.any():
                action = self.contract.action_of(checker.rule)
                verdict.checks.append(result)
                verdict.actions[checker.rule.id] = action
                if action == "quarantine":
                    quarantined |= result.failed
        # Windows describe what arrives, quarantined rows included: a shift that also breaks row rules
        # (a quarter of the rows moved to one airport, many now breaking a dependency) is still a shift,
        # and the alert names the cause of the quarantines.
        verdict.alerts = self._windows(rows)
        return verdict

    def _windows(self, rows: pa.Table) -> list[Alert]:
        if not self.window_checkers or rows.num_rows == 0:
            return []
        present = [c for c in self._window_columns if c in rows.column_names]
        self._buffer.append(rows.select(present))
        self._buffered += rows.num_rows
        alerts: list[Alert] = []
        size = self.config.window_rows
        if self._buffered < size:
            return alerts
        table = pa.concat_tables(self._buffer, promote_options="default")
        full = (self._buffered // size) * size
        block, rest = table.slice(0, full), table.slice(full)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows
        if block.num_columns and block.column(0).num_chunks > 1:
            block = block.combine_chunks()
        for checker in self.window_checkers:
            if all(c in block.column_names for c in checker.rule.columns):
                alerts.extend(checker.check_windows(block, self.windows_checked, size))
        self.windows_checked += full // size
        alerts.sort(key=lambda alert: alert.window_index)
        return alerts

    def snapshot(self) -> bytes:
        """Checker state (e.g. keys in the duplicate window); the partial window is not kept."""
        return orjson.dumps(
            {
                "version": STATE_VERSION,
                "contract_version": self.contract.version,
                "windows_checked": self.windows_checked,
                "rows": {c.rule.id: c.to_state() for c in self.row_checkers},
                "windows": {c.rule.id: c.to_state() for c in self.window_checkers},
            }
        )

    def restore(self, data: bytes) -> None:
        state = orjson.loads(data)
        if state.get("version") != STATE_VERSION:
            return
        self.windows_checked = state.get("windows_checked", 0)
        for checker in self.row_checkers:
            if checker.rule.id in state["rows"]:
                checker.from_state(state["rows"][checker.rule.id])
        for window_checker in self.window_checkers:
            if window_checker.rule.id in state["windows"]:
                window_checker.from_state(state["windows"][window_checker.rule.id])


def rule_summary(rules: list[Rule]) -> dict[str, int]:
    """Rules per family, for reports."""
    counts: dict[str, int] = {}
    for rule in rules:
        counts[rule.family] = counts.get(rule.family, 0) + 1
    return counts
