"""The relationship learner: fans each batch out to the dependency counter, the sample and the correlation sums,
and turns them into rules.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from lakegate.contracts.api import LearnConfig
from lakegate.contracts.model import DatasetSchema, Rule
from lakegate.contracts.relationships.arrays import SYSTEM_PREFIX
from lakegate.contracts.relationships.correlations import (
    CORRELATION_SIGMAS,
    CORRELATION_WINDOW_SHARE,
    MAX_CORRELATION_STD,
    MAX_CORRELATIONS,
    MIN_CORRELATION,
    MIN_CORRELATION_DELTA,
    MIN_CORRELATION_ROWS,
    MIN_CORRELATION_WINDOWS,
    CorrelationSums,
)
from lakegate.contracts.relationships.dependencies import (
    CODE_BITS,
    DETERMINANT_PURITY,
    MAX_FD_VALUES,
    MAX_MAPPING,
    MIN_COVERAGE,
    MIN_DETERMINANT_ROWS,
    PROMOTE_AFTER,
    PROMOTE_SHARE,
    DependencyCounter,
    determinant_stats,
    informative,
    split_key,
)
from lakegate.contracts.relationships.identities import (
    UniformSample,
    discover_dateparts,
    discover_identities,
    identity_rule,
    implied_by_identities,
    tie_groups,
)
from lakegate.contracts.relationships.orderings import discover_orderings, ordering_rule

EVENT_TIME = "_lg_event_time"


def _column_kind(data_type: pa.DataType) -> str | None:
    """``numeric``, ``temporal``, ``categorical`` or None (not used by this family)."""
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "numeric"
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return "temporal"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_boolean(data_type):
        return "categorical"
    return None


def _fd_eligible(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return (
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_boolean(data_type)
    )


class RelationshipLearner:
    """Counts dependencies on every row; samples rows for identities and orderings; sums correlations."""

    def __init__(self, config: LearnConfig) -> None:
        self.config = config
        self.rows_seen = 0
        self.dependencies = DependencyCounter()
        self.sample = UniformSample()
        self.correlations = CorrelationSums(config.window_rows)
        self.last_seen: dict[str, int] = {}
        self.shift = 1.0
        self._candidates: set[str] = set()

    def observe(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        names = [n for n in rows.column_names if not n.startswith(SYSTEM_PREFIX)]
        kinds = {n: _column_kind(rows.schema.field(n).type) for n in names}
        for name in names:
            self.last_seen[name] = self.rows_seen
        self._evict()
        fd_names = [n for n in names if _fd_eligible(rows.schema.field(n).type)]
        limit = self.config.max_identity_columns
        sampled = [n for n in names if kinds[n] in ("numeric", "temporal")]
        known = [n for n in sampled if n in self.sample.values]
        sampled = (known + [n for n in sampled if n not in self.sample.values])[:limit]
        if EVENT_TIME in rows.column_names:
            sampled.append(EVENT_TIME)
            kinds[EVENT_TIME] = "temporal"
        for name in sampled:
            self.sample.kinds[name] = str(kinds[name])
        self.sample.observe(rows, sampled, seed=self.rows_seen + 1)
        numeric = [n for n in names if kinds[n] == "numeric"]
        self.correlations.observe(rows, numeric, limit)
        buffered = self.dependencies.buffered
        self.dependencies.observe(rows, fd_names)
        self.rows_seen += rows.num_rows
        if self.dependencies.buffered < buffered + rows.num_rows:
            self._update_shift()

    def _update_shift(self) -> None:
        current = {
            DependencyCounter.key(det, dep) for det, deps in self.dependencies.candidates.items() for dep in deps
        }
        union = current | self._candidates
        self.shift = len(current ^ self._candidates) / len(union) if union else 0.0
        self._candidates = current

    def _evict(self) -> None:
        ttl = self.config.field_ttl_rows
        gone = [n for n, seen in self.last_seen.items() if self.rows_seen - seen > ttl]
        for name in gone:
            del self.last_seen[name]
            self.dependencies.drop_column(name, forget=True)
            self.sample.values.pop(name, None)
            self.sample.kinds.pop(name, None)

    def stability(self) -> float:
        """How much the dependency candidates changed since the last look (0 = not at all).

        Asked once per warm-up batch: buffered rows are counted first, so the answer is current
        rather than waiting for the next periodic flush.
        """
        if self.dependencies.buffered:
            self.dependencies.flush()
            self._update_shift()
        return float(self.shift)

    def rules(self, schema: DatasetSchema) -> list[Rule]:
        self.dependencies.flush()
        self._update_shift()
        identities = discover_identities(
            self.sample.values,
            [n for n in self.sample.values if self.sample.kinds.get(n) == "numeric"],
            self.rows_seen,
            self.config,
        )
        identities += discover_dateparts(self.sample.values, self.sample.kinds, self.rows_seen, self.config)
        tied = {frozenset(p) for i in identities for p in combinations([i["target"], *i["operands"]], 2)}
        orderings = [
            o
            for o in discover_orderings(self.sample.values, self.sample.kinds, self.rows_seen, self.config)
            if frozenset((o["left"], o["right"])) not in tied
        ]
        groups = tie_groups([[i["target"], *i["operands"]] for i in identities])
        out = [r for r in self._dependency_rules() if not implied_by_identities(r.columns, identities)]
        out += [identity_rule(i) for i in identities]
        out += [ordering_rule(o) for o in orderings]
        out += self._correlation_rules(groups)
        return out

    def _dependency_rules(self) -> list[Rule]:
        found: dict[str, Rule] = {}
        need = self.config.min_confidence
        for name, (keys, counts) in self.dependencies.counts.items():
            det, dep = split_key(name)
            if any(d not in self.dependencies.columns for d in (*det, dep)):
                continue
            stats = determinant_stats(keys, counts)
            established = (stats["total"] >= MIN_DETERMINANT_ROWS) & (
                stats["top"] >= DETERMINANT_PURITY * stats["total"]
            )
            covered = int(stats["total"][established].sum())
            rows = int(stats["total"].sum())
            if covered < self.config.min_support or rows == 0 or covered < MIN_COVERAGE * rows:
                continue
            violations = int((stats["total"] - stats["top"])[established].sum())
            confidence = 1.0 - violations / covered
            mapped_deps = stats["dep"][established]
            if confidence < need or len(np.unique(mapped_deps)) < 2 or established.sum() < 2:
                continue
            if not informative(keys, counts, stats):
                continue
            order = np.argsort(-stats["total"][established], kind="stable")[:MAX_MAPPING]
            det_codes = stats["det"][established][order]
            dep_codes = mapped_deps[order]
            dep_values = self.dependencies.columns[dep].values
            mapping: list[list[Any]] = []
            for det_code, dep_code in zip(det_codes.tolist(), dep_codes.tolist(), strict=True):
                if len(det) == 1:
                    key: Any = self.dependencies.columns[det[0]].values[det_code]
                else:
                    key = [
                        self.dependencies.columns[det[0]].values[det_code >> CODE_BITS],
                        self.dependencies.columns[det[1]].values[det_code & MAX_FD_VALUES],
                    ]
                mapping.append([key, dep_values[dep_code]])
            rule = Rule(
                id=f"dependency:{'+'.join(det)}->{dep}",
                kind="dependency",
                columns=[*det, dep],
                params={
                    "determinant": list(det),
                    "dependent": dep,
                    "mapping": mapping,
                    "min_support": MIN_DETERMINANT_ROWS,
                    "purity": DETERMINANT_PURITY,
                    "coverage": round(covered / rows, 6),
                    "truncated": bool(established.sum() > MAX_MAPPING),
                    "promote_after": PROMOTE_AFTER,
                    "promote_share": PROMOTE_SHARE,
                },
                support=covered,
                confidence=round(confidence, 6),
                description=(
                    f"{dep} is determined by {' + '.join(det)} for {len(mapping)} learned values"
                    f" ({covered / rows:.1%} of rows)"
                ),
            )
            found[name] = rule
        singles = {
            (r.params["determinant"][0], r.params["dependent"])
            for r in found.values()
            if len(r.params["determinant"]) == 1
        }
        return [
            r
            for r in found.values()
            if len(r.params["determinant"]) == 1
            or not any((d, r.params["dependent"]) in singles for d in r.params["determinant"])
        ]

    def _correlation_rules(self, groups: dict[str, str]) -> list[Rule]:
        """Stable correlations, one per pair of groups of columns tied by identities (the best)."""
        sums = self.correlations
        out: list[tuple[float, Rule]] = []
        for i, j in combinations(range(len(sums.names)), 2):
            windows = int(sums.windows[i, j])
            if windows < max(MIN_CORRELATION_WINDOWS, CORRELATION_WINDOW_SHARE * sums.closed):
                continue
            mean = float(sums.mean[i, j])
            std = math.sqrt(max(float(sums.m2[i, j]), 0.0) / (windows - 1))
            if abs(mean) < MIN_CORRELATION or std > MAX_CORRELATION_STD:
                continue
            delta = max(CORRELATION_SIGMAS * std, MIN_CORRELATION_DELTA)
            a, b = sums.names[i], sums.names[j]
            rule = Rule(
                id=f"correlation:{a}~{b}",
                kind="correlation",
                columns=[a, b],
                params={
                    "baseline": round(mean, 6),
                    "std": round(std, 6),
                    "threshold": round(delta, 6),
                    "windows": windows,
                    "min_rows": MIN_CORRELATION_ROWS,
                },
                action="alert",
                severity="warning",
                support=windows * self.config.window_rows,
                confidence=None,
                description=f"Pearson r({a}, {b}) = {mean:.3f} ± {std:.3f} over {windows} windows",
            )
            out.append((abs(mean) / (std + 0.01), rule))
        out.sort(key=lambda x: -x[0])
        kept: list[Rule] = []
        pairs: set[frozenset[str]] = set()
        for _, rule in out:
            a, b = (groups.get(c, c) for c in rule.columns)
            if a == b or frozenset((a, b)) in pairs:
                continue
            pairs.add(frozenset((a, b)))
            kept.append(rule)
        return kept[:MAX_CORRELATIONS]

    def to_state(self) -> dict[str, Any]:
        return {
            "rows_seen": self.rows_seen,
            "dependencies": self.dependencies.to_state(),
            "sample": self.sample.to_state(),
            "correlations": self.correlations.to_state(),
            "last_seen": self.last_seen,
            "shift": self.shift,
            "candidates": sorted(self._candidates),
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.rows_seen = int(state["rows_seen"])
        self.dependencies.from_state(state["dependencies"])
        self.sample.from_state(state["sample"])
        self.correlations.from_state(state["correlations"])
        self.last_seen = {k: int(v) for k, v in state["last_seen"].items()}
        self.shift = float(state["shift"])
        self._candidates = set(state["candidates"])
