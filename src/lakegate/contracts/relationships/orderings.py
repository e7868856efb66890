"""Orderings (``order_date <= ship_date``) that the two columns' ranges alone would not imply: found on the
sample, then checked per row.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from lakegate.contracts.api import LearnConfig, RowCheck
from lakegate.contracts.model import Rule
from lakegate.contracts.relationships.arrays import MAX_VIOLATION_RATE, SYSTEM_PREFIX, floats, struct_of

MIN_INDEPENDENT_VIOLATION = 0.01


def discover_orderings(
    values: dict[str, np.ndarray], kinds: dict[str, str], rows_seen: int, config: LearnConfig, seed: int = 7
) -> list[dict[str, Any]]:
    names = [n for n in values if kinds.get(n) in ("numeric", "temporal") and not n.startswith(SYSTEM_PREFIX)]
    if not names or len(values[names[0]]) < 100:
        return []
    rng = np.random.default_rng(seed)
    need = max(config.min_confidence, 1.0 - MAX_VIOLATION_RATE)
    n_rows = len(values[names[0]])
    found: list[dict[str, Any]] = []
    for a, b in combinations(names, 2):
        if kinds[a] != kinds[b]:
            continue
        xa, xb = values[a], values[b]
        ok = np.isfinite(xa) & np.isfinite(xb)
        n = int(ok.sum())
        if n < 100:
            continue
        va, vb = xa[ok], xb[ok]
        le, ge = float(np.mean(va <= vb)), float(np.mean(va >= vb))
        if le >= need and ge >= need:
            continue  # the same column twice
        if le >= need:
            left, right, lv, rv, confidence = a, b, va, vb, le
        elif ge >= need:
            left, right, lv, rv, confidence = b, a, vb, va, ge
        else:
            continue
        independent = float(np.mean(lv > rng.permutation(rv)))
        if independent < max(MIN_INDEPENDENT_VIOLATION, 20 * (1 - confidence)):
            continue  # implied by the two ranges alone
        support = int(round(rows_seen * n / n_rows))
        if support < config.min_support:
            continue
        found.append(
            {
                "left": left,
                "right": right,
                "confidence": confidence,
                "support": support,
                "independent_violation": independent,
                "unit": kinds[a],
            }
        )
    return found


def ordering_rule(ordering: dict[str, Any]) -> Rule:
    left, right = ordering["left"], ordering["right"]
    return Rule(
        id=f"ordering:{left}<={right}",
        kind="ordering",
        columns=[left, right],
        params={
            "slack": 0.0,
            "unit": ordering["unit"],
            "independent_violation": round(ordering["independent_violation"], 6),
        },
        support=ordering["support"],
        confidence=round(ordering["confidence"], 6),
        description=f"{left} <= {right}",
    )


class OrderingChecker:
    """Rows where left > right + slack (rows missing either side are not judged)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.left, self.right = rule.columns[0], rule.columns[1]
        self.slack = float(rule.params.get("slack", 0.0))

    def check(self, rows: pa.Table) -> RowCheck:
        left, right = floats(rows.column(self.left)), floats(rows.column(self.right))
        failed = np.asarray(left > right + self.slack)
        if not failed.any():
            return RowCheck(rule=self.rule, failed=failed)
        slack = f" + {self.slack:g}" if self.slack else ""
        return RowCheck(
            rule=self.rule,
            failed=failed,
            observed=struct_of(rows, [self.left, self.right]),
            threshold=f"{self.left} <= {self.right}{slack}",
        )

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None
