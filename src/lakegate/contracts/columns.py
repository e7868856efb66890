"""The column family: per-field rules learned from warm-up batches, and their vectorized checkers.

Learning keeps one :class:`~lakegate.contracts.sketches.ColumnProfile` per data field (system columns
``_lg_*`` are skipped, except ``_lg_event_time``) and proposes, per field:

==================  ================================================================================
``not_null``        never null in at least ``MIN_STRICT_ROWS`` rows
``range``           numeric/temporal: tail quantiles ``range_quantiles`` widened by ``range_margin`` ×
                    span; an observed extreme within ``TAIL_CAP`` spans is kept inside (heavy tails);
                    never-negative fields stay non-negative; a *trending* field (value correlated with
                    arrival order: timestamps, month numbers) gets room on the side it moves toward;
                    calendar fields (``month``, ``day``, ``hour``...) stay within their domain
``allowed_values``  low-cardinality string/int/bool: the learned set; *closed* when no value appeared
                    for the first time in the second half of warm-up and none was seen only once; an
                    open string field adopts a new value once it recurs (the checker remembers)
``length``          string length, bounded like ``range`` on the exact length counts
``pattern``         string shapes (``AAA-999``), when a few of them cover ≥ 99.5% of the values
``format``          email, uuid, url, phone, ISO date or currency code, when ≥ 99.9% of values fit
``drift``           window level, see :mod:`lakegate.contracts.drift`
``null_rate``       window level: an overdispersed binomial bound over the learned null rate
==================  ================================================================================

Checkers read Arrow buffers through numpy for numbers and work on the distinct values of strings (one
dictionary encoding per column and batch, shared by the rules on that column).
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts import drift, formats
from lakegate.contracts.api import LearnConfig, RowCheck, RowChecker, WindowChecker
from lakegate.contracts.encodings import ENCODINGS
from lakegate.contracts.model import DatasetSchema, Rule
from lakegate.contracts.sketches import ColumnProfile, b64, kind_of, numbers, unb64

SYSTEM_PREFIX = "_lg_"
EVENT_TIME = "_lg_event_time"
MIN_STRICT_ROWS = 3000
"""Rows before "never null" or "closed set" is believed: by the rule of three, a rate never seen in
3000 rows is below 0.1% with 95% confidence."""
TAIL_CAP = 3.0
TREND_CORRELATION = 0.7
TREND_SPANS = 3.0
TREND_MAGNITUDE = 10.0
CALENDAR_DOMAINS: dict[str, tuple[float, float]] = {
    "month": (1, 12),
    "day": (1, 31),
    "hour": (0, 23),
    "minute": (0, 59),
    "second": (0, 59),
}
"""Integer fields with these names whose values all fit the domain never leave it (bounds are clipped),
even when they trend through warm-up as a month number does."""
ACCEPT_AFTER = 5
MAX_NEW_VALUE_RATE = 1e-3
MAX_PATTERNS = 8
PATTERN_COVERAGE = 0.995
MIN_SHAPE_SHARE = 1e-4
MAX_ALLOWED_SHAPES = 32
PATTERN_MISS = 1e-3
FORMAT_SHARE = 0.999
STABILITY_RANKS = (0.05, 0.25, 0.5, 0.75, 0.95)
STABILITY_TOP = 64
MAX_PENDING_NEW = 10_000
KINDS = frozenset({"not_null", "range", "allowed_values", "length", "pattern", "format", "drift", "null_rate"})


def _data_columns(rows: pa.Table) -> pa.Table:
    keep = [n for n in rows.column_names if not n.startswith(SYSTEM_PREFIX) or n == EVENT_TIME]
    return rows.select(keep) if len(keep) != rows.num_columns else rows


def _trend(profile: ColumnProfile) -> str | None:
    if profile.numeric is None:
        return None
    trend = profile.numeric.trend
    return "up" if trend >= TREND_CORRELATION else "down" if trend <= -TREND_CORRELATION else None


# ---------------------------------------------------------------------------------------------------
# Learning


class ColumnLearner:
    """Observes warm-up batches and proposes the column family's rules (implements FamilyLearner)."""

    def __init__(self, config: LearnConfig) -> None:
        self.config = config
        self.rows = 0
        self.observations = 0
        self.profiles: dict[str, ColumnProfile] = {}
        self.pending: pa.Table | None = None
        """Rows of the calibration window in progress (fewer than ``window_rows``)."""
        self._previous: dict[str, dict[str, Any]] = {}
        self._stability = 1.0

    def observe(self, rows: pa.Table) -> None:
        data = _data_columns(rows)
        n, offset = data.num_rows, self.rows
        if n == 0:
            return
        for name in data.column_names:
            column = data.column(name)
            value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
            kind = kind_of(value_type)
            profile = self.profiles.get(name)
            if profile is None or profile.kind != kind:
                profile = ColumnProfile(
                    name,
                    kind,
                    str(value_type),
                    k=self.config.sketch_k,
                    max_categories=self.config.max_categories,
                )
                profile.last_position = offset
                self.profiles[name] = profile
            profile.update(column, offset)
        for name, profile in self.profiles.items():
            if name not in data.column_names:  # an absent field is null in these rows
                profile.rows += n
                profile.nulls += n
        self.rows += n
        self.observations += 1
        self._evict()
        self._calibrate(data)
        self._stability = self._measure_stability()

    def _evict(self) -> None:
        ttl = self.config.field_ttl_rows
        stale = [name for name, p in self.profiles.items() if self.rows - 1 - p.last_position > ttl]
        for name in stale:
            del self.profiles[name]
            self._previous.pop(name, None)

    def _calibrate(self, data: pa.Table) -> None:
        """Measure every full window against the current baselines, to calibrate window thresholds."""
        size = self.config.window_rows
        pending = data
        if self.pending is not None:
            try:
                pending = pa.concat_tables([self.pending, data], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # a field changed type: start a new window
                pending = data
        if pending.num_rows < size:
            self.pending = pending.take(pa.array(np.arange(pending.num_rows)))  # a copy, not a view
            return
        ready = [p for p in self.profiles.values() if p.values >= 5 * size and _trend(p) is None]
        baselines = {(p.name, metric): drift.baseline_for(metric, p) for p in ready for metric in drift.metrics_for(p)}
        start = 0
        while pending.num_rows - start >= size:
            window = pending.slice(start, size)
            for name, profile in self.profiles.items():
                if name in window.column_names:
                    profile.record_window("null_rate", window.column(name).null_count / size)
            for (name, metric), baseline in baselines.items():
                if baseline is None or name not in window.column_names:
                    continue
                found = drift.measure(metric, baseline, window.column(name))
                if found is not None:
                    self.profiles[name].record_window(metric, found.value)
            start += size
        rest = pending.slice(start)
        self.pending = rest.take(pa.array(np.arange(rest.num_rows))) if rest.num_rows else None

    def _measure_stability(self) -> float:
        current = {name: _snapshot(p) for name, p in self.profiles.items()}
        previous, self._previous = self._previous, current
        if not previous:
            return 1.0
        return float(max((_shift(previous.get(name), snap) for name, snap in current.items()), default=0.0))

    def stability(self) -> float:
        """The largest move of any field between the last two observations (1.0 before two).

        Per field: the total variation distance of the top category frequencies (categorical fields,
        including integers with few values), else the largest quantile shift divided by the 5–95%
        spread, and the change of the null rate. Trending fields count only with their null rate; a
        field seen for the first time counts as 1.0.
        """
        return self._stability

    # -- rules ----------------------------------------------------------------------------------------

    def rules(self, schema: DatasetSchema) -> list[Rule]:
        names = {f.name for f in schema.fields}
        out: list[Rule] = []
        for name in sorted(self.profiles):
            if names and name not in names:
                continue
            profile = self.profiles[name]
            if profile.rows < self.config.min_support:
                continue
            for build in (_not_null, _range, _allowed_values, _length, _pattern, _format, _drift, _null_rate):
                out.extend(build(profile, self.config))
        return out

    def field_profiles(self) -> dict[str, dict[str, Any]]:
        """Per-field value summaries published in the contract (``Contract.profiles``)."""
        return {name: self.profiles[name].summary() for name in sorted(self.profiles)}

    # -- state ----------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        pending = None
        if self.pending is not None:
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, self.pending.schema) as writer:
                writer.write_table(self.pending)
            pending = b64(sink.getvalue())
        return {
            "version": 1,
            "rows": self.rows,
            "observations": self.observations,
            "profiles": {name: p.to_state() for name, p in self.profiles.items()},
            "pending": pending,
            "previous": self._previous,
            "stability": self._stability,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.rows = int(state["rows"])
        self.observations = int(state["observations"])
        self.profiles = {name: ColumnProfile.from_state(p) for name, p in state["profiles"].items()}
        self.pending = None
        if state["pending"] is not None:
            self.pending = pa.ipc.open_stream(unb64(state["pending"])).read_all()
        self._previous = state["previous"]
        self._stability = float(state["stability"])


def _snapshot(profile: ColumnProfile) -> dict[str, Any]:
    snap: dict[str, Any] = {"null": profile.null_rate}
    if _trend(profile) is not None or not profile.values:
        return snap
    categories = profile.categories
    if categories is not None and (profile.kind != "numeric" or not categories.overflow):
        top = categories.top(STABILITY_TOP)
        snap["p"] = {str(v): c / profile.values for v, c in top}
        snap["complete"] = not categories.overflow and len(top) < STABILITY_TOP
    elif profile.numeric is not None:
        snap["q"] = profile.numeric.quantiles(STABILITY_RANKS)
    return snap


def _shift(before: dict[str, Any] | None, after: dict[str, Any]) -> float:
    if before is None:
        return 1.0
    shift = abs(after["null"] - before["null"])
    if "q" in before and "q" in after:
        old, new = np.asarray(before["q"]), np.asarray(after["q"])
        scale = max(old[-1] - old[0], new[-1] - new[0])
        moved = float(np.abs(new - old).max())
        shift = max(shift, float(moved / scale) if scale > 0 else float(moved > 0))
    if "p" in before and "p" in after:
        # Total variation over the listed values; a value missing from a truncated list is unknown
        # there (not zero), so it only counts when the other list is complete.
        distance = 0.0
        for key in set(before["p"]) | set(after["p"]):
            if key in before["p"] and key in after["p"]:
                distance += abs(after["p"][key] - before["p"][key])
            elif key in before["p"] and after.get("complete"):
                distance += before["p"][key]
            elif key in after["p"] and before.get("complete"):
                distance += after["p"][key]
        shift = max(shift, 0.5 * distance)
    return shift


# -- rule builders: one function per kind, each returns zero or more rules -----------------------------


def _not_null(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    if p.nulls or p.rows < max(config.min_support, MIN_STRICT_ROWS):
        return []
    return [
        Rule(
            id=f"not_null:{p.name}",
            kind="not_null",
            columns=[p.name],
            params={"null_rate": 0.0},
            support=p.rows,
            confidence=1.0,
            description=f"{p.name} was never null in {p.rows} rows",
        )
    ]


def _robust_bounds(
    q_low: float, q_high: float, low_obs: float, high_obs: float, margin: float
) -> tuple[float, float, float]:
    """Quantile bounds widened by ``margin`` × span; observed extremes within ``TAIL_CAP`` spans kept."""
    span = q_high - q_low
    if span <= 0:  # constant or zero-inflated: the quantiles collapsed, the extremes did not
        q_low, q_high, span = low_obs, high_obs, high_obs - low_obs
    low = min(q_low - margin * span, max(low_obs, q_low - TAIL_CAP * span))
    high = max(q_high + margin * span, min(high_obs, q_high + TAIL_CAP * span))
    return low, high, span


def _range(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    s = p.numeric
    if s is None or s.count < config.min_support:
        return []
    q_low, q_high = s.tails(*config.range_quantiles)
    low, high, span = _robust_bounds(q_low, q_high, s.min, s.max, config.range_margin)
    temporal = p.kind == "temporal"
    nonnegative = s.min >= 0
    trend = _trend(p)
    bound_low: float | None = low
    bound_high: float | None = high
    if trend == "up":
        bound_high = None if temporal else max(high, q_high + TREND_SPANS * span, TREND_MAGNITUDE * q_high)
    elif trend == "down":
        bound_low = None if temporal else min(low, q_low - TREND_SPANS * span)
    if nonnegative and bound_low is not None and bound_low < 0:
        bound_low = 0.0
    domain = _calendar_domain(p)
    if domain is not None:
        bound_low = domain[0] if bound_low is None else max(bound_low, domain[0])
        bound_high = domain[1] if bound_high is None else min(bound_high, domain[1])
    if temporal or s.integral:
        bound_low = None if bound_low is None else float(math.floor(bound_low))
        bound_high = None if bound_high is None else float(math.ceil(bound_high))
    if temporal:
        bound_low = None if bound_low is None else int(bound_low)
        bound_high = None if bound_high is None else int(bound_high)
    within = s.share_within(
        -math.inf if bound_low is None else bound_low, math.inf if bound_high is None else bound_high
    )
    shown = _render_range(bound_low, bound_high, temporal)
    return [
        Rule(
            id=f"range:{p.name}",
            kind="range",
            columns=[p.name],
            params={
                "low": bound_low,
                "high": bound_high,
                "quantiles": list(config.range_quantiles),
                "q_low": q_low,
                "q_high": q_high,
                "margin": config.range_margin,
                "observed_min": s.min,
                "observed_max": s.max,
                "trend": trend,
                "nonnegative": nonnegative,
                "unit": "epoch_us" if temporal else None,
                "domain": None if domain is None else list(domain),
            },
            support=s.count,
            confidence=round(within, 6),
            description=f"{p.name} within {shown}" + (f" (trending {trend})" if trend else ""),
        )
    ]


def _calendar_domain(p: ColumnProfile) -> tuple[float, float] | None:
    """The fixed domain of a calendar field (``month``, ``order__day``...) whose values all fit it."""
    s = p.numeric
    domain = CALENDAR_DOMAINS.get(p.name.rsplit("__", 1)[-1].lower())
    if s is None or domain is None or p.kind != "numeric" or not s.integral:
        return None
    return domain if domain[0] <= s.min and s.max <= domain[1] else None


def _render_value(value: float | None, temporal: bool) -> str:
    if value is None:
        return "∞"
    if temporal:
        return datetime.fromtimestamp(value / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")
    return f"{value:g}"


def _render_range(low: float | None, high: float | None, temporal: bool) -> str:
    left = "(-∞" if low is None else "[" + _render_value(low, temporal)
    right = "∞)" if high is None else _render_value(high, temporal) + "]"
    return f"{left}, {right}"


def _allowed_values(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    c = p.categories
    if c is None or c.overflow or not c.counts or p.values < max(config.min_support, MIN_STRICT_ROWS):
        return []
    if p.kind == "boolean" and len(c.counts) > 1:
        return []
    late_start = p.first_position + (p.last_position - p.first_position) / 2
    late_new = sorted(str(v) for v, first in c.first.items() if first > late_start)
    singletons = sum(1 for count in c.counts.values() if count == 1)
    # New values per row: first sightings in the second half of warm-up, or the Good-Turing estimate
    # of the unseen mass (values seen once over all values), whichever is larger.
    tolerance = max(len(late_new) / max(p.values / 2, 1), singletons / p.values)
    closed = not late_new and not singletons
    if not closed and (p.kind != "string" or tolerance > MAX_NEW_VALUE_RATE):
        return []
    values = sorted(c.counts, key=lambda v: (str(type(v)), v))
    return [
        Rule(
            id=f"allowed_values:{p.name}",
            kind="allowed_values",
            columns=[p.name],
            params={
                "values": values,
                "new_value_tolerance": tolerance,
                "closed": closed,
                "accept_after": None if closed else ACCEPT_AFTER,
                "accept_within_rows": None if closed else config.window_rows,
                "late_new_values": late_new[:20],
            },
            support=p.values,
            confidence=round(1.0 - tolerance, 6),
            description=(
                f"{p.name} is one of {len(values)} values"
                + ("" if closed else f" (open: {len(late_new)} appeared late in warm-up)")
            ),
        )
    ]


def _length(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    if p.kind != "string" or not p.lengths or p.values < config.min_support:
        return []
    lengths = np.asarray(sorted(p.lengths), dtype=np.float64)
    counts = np.asarray([p.lengths[int(k)] for k in lengths], dtype=np.float64)
    cdf = np.cumsum(counts) / counts.sum()
    q0, q1 = config.range_quantiles
    last = len(lengths) - 1
    q_low = float(lengths[min(int(np.searchsorted(cdf, q0)), last)])
    q_high = float(lengths[min(int(np.searchsorted(cdf, q1)), last)])
    low, high, _ = _robust_bounds(q_low, q_high, float(lengths[0]), float(lengths[-1]), config.range_margin)
    low_i, high_i = max(0, math.floor(low)), math.ceil(high)
    unbounded = lengths[-1] >= 4096
    within = float(counts[(lengths >= low_i) & (unbounded | (lengths <= high_i))].sum() / counts.sum())
    return [
        Rule(
            id=f"length:{p.name}",
            kind="length",
            columns=[p.name],
            params={"low": low_i, "high": None if unbounded else high_i, "q_low": q_low, "q_high": q_high},
            action="alert",
            support=p.values,
            confidence=round(within, 6),
            description=f"{p.name} length within [{low_i}, {'∞' if unbounded else high_i}]",
        )
    ]


def _pattern(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    if p.kind != "string" or p.values < config.min_support:
        return []
    total = p.values
    for counter, collapse in ((p.shapes, False), (p.collapsed, True)):
        ranked = counter.ranked()
        if sum(c for _, c in ranked[:MAX_PATTERNS]) < PATTERN_COVERAGE * total:
            continue
        allowed = [
            s
            for i, (s, c) in enumerate(ranked[:MAX_ALLOWED_SHAPES])
            if i < MAX_PATTERNS or c >= MIN_SHAPE_SHARE * total
        ]
        coverage = sum(counter.counts[s] for s in allowed) / total
        if coverage < 1 - PATTERN_MISS:
            continue
        return [
            Rule(
                id=f"pattern:{p.name}",
                kind="pattern",
                columns=[p.name],
                params={"patterns": allowed, "collapse": collapse, "coverage": round(coverage, 6)},
                support=total,
                confidence=round(coverage, 6),
                description=f"{p.name} has the shape {_render_list(allowed)}",
            )
        ]
    return []


def _render_list(items: list[Any], limit: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _format(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    if p.kind != "string" or p.format_values < config.min_support:
        return []
    fmt = formats.detect(p.formats, p.format_values, min_share=FORMAT_SHARE)
    if fmt is None:
        return []
    share = p.formats[fmt] / p.format_values
    return [
        Rule(
            id=f"format:{p.name}",
            kind="format",
            columns=[p.name],
            params={"format": fmt, "share": round(share, 6)},
            support=p.format_values,
            confidence=round(share, 6),
            description=f"{p.name} is a {fmt}",
        )
    ]


def _drift(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    if p.values < config.min_support or _trend(p) is not None:
        return []
    out = []
    for metric in drift.metrics_for(p):
        baseline = drift.baseline_for(metric, p)
        if baseline is None:
            continue
        history = p.windows.get(metric, [])
        threshold = drift.calibrated_threshold(metric, history)
        out.append(
            Rule(
                id=f"drift:{p.name}:{metric}",
                kind="drift",
                columns=[p.name],
                params={
                    "metric": metric,
                    "baseline": baseline,
                    "threshold": threshold,
                    "floor": drift.FLOORS[metric],
                    "calibration_windows": len(history),
                    "unit": "epoch_us" if p.kind == "temporal" else None,
                },
                action="alert",
                support=p.values,
                description=f"{p.name}: {metric} of a window against the baseline stays below {threshold:.3g}",
            )
        )
    return out


def _null_rate(p: ColumnProfile, config: LearnConfig) -> list[Rule]:
    if p.null_rate >= 1.0:
        return []
    floor = 1.0 / p.rows
    history = p.windows.get("null_rate", [])
    params: dict[str, Any] = {
        "baseline_rate": p.null_rate,
        "rate_floor": floor,
        "dispersion": drift.dispersion(p.null_rate, history, config.window_rows, floor),
        "z": drift.NULL_Z,
        "min_nulls": drift.MIN_NULLS,
        "window_rows": config.window_rows,
    }
    params["threshold"] = drift.null_threshold(params, config.window_rows) / config.window_rows
    return [
        Rule(
            id=f"null_rate:{p.name}",
            kind="null_rate",
            columns=[p.name],
            params=params,
            action="alert",
            support=p.rows,
            confidence=round(1.0 - p.null_rate, 6),
            description=f"{p.name}: nulls in a window stay below {params['threshold']:.2%}",
        )
    ]


# ---------------------------------------------------------------------------------------------------
# Enforcement


def _array(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _bool_mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _per_row(per_value: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A verdict per distinct value as one per row (index -1, a null, passes); no gather when no value
    fails, the usual case."""
    if not per_value.any():
        return np.zeros(len(indices), dtype=bool)
    return np.asarray(np.append(per_value, False)[indices])


class _ColumnChecker:
    """Shared plumbing: the rule, its column, the empty result."""

    kinds: tuple[str, ...] = ()

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.column = rule.columns[0]
        self.threshold = ""

    def _pass(self, rows: pa.Table) -> RowCheck:
        return RowCheck(self.rule, np.zeros(rows.num_rows, dtype=bool), None, self.threshold)

    def _strings(self, rows: pa.Table) -> pa.ChunkedArray | None:
        if self.column not in rows.column_names:
            return None
        column = rows.column(self.column)
        return column if kind_of(column.type) == "string" else None

    def _by_distinct(self, rows: pa.Table, bad: Any) -> RowCheck:
        """Evaluate ``bad(distinct values) -> numpy bool`` once per distinct value, map back to rows."""
        column = self._strings(rows)
        if column is None:
            return self._pass(rows)
        dictionary, indices = ENCODINGS.get(column)
        return RowCheck(
            self.rule, _per_row(np.asarray(bad(dictionary), dtype=bool), indices), _array(column), self.threshold
        )

    def check(self, rows: pa.Table) -> RowCheck:
        raise NotImplementedError

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None


class NotNullChecker(_ColumnChecker):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.threshold = "not null"

    def check(self, rows: pa.Table) -> RowCheck:
        if self.column not in rows.column_names:
            return RowCheck(self.rule, np.ones(rows.num_rows, dtype=bool), None, self.threshold)
        column = rows.column(self.column)
        if column.null_count == 0:
            return self._pass(rows)
        return RowCheck(self.rule, ~_bool_mask(column.is_valid()), _array(column), self.threshold)


class RangeChecker(_ColumnChecker):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        low, high = rule.params.get("low"), rule.params.get("high")
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        self.threshold = _render_range(self.low, self.high, rule.params.get("unit") == "epoch_us")

    def check(self, rows: pa.Table) -> RowCheck:
        if self.column not in rows.column_names:
            return self._pass(rows)
        column = rows.column(self.column)
        if kind_of(column.type) not in ("numeric", "temporal"):
            return self._pass(rows)
        values, valid = numbers(column)
        failed = np.zeros(len(values), dtype=bool)
        if self.low is not None:
            np.less(values, self.low, out=failed)
        if self.high is not None:
            failed |= values > self.high
        if valid is not None:
            failed &= valid
        return RowCheck(self.rule, failed, _array(column), self.threshold)


class AllowedValuesChecker(_ColumnChecker):
    """Membership in the learned set.

    In an open set a new value is adopted once it recurs: when its sightings, decaying with a
    half-life of ``accept_within_rows`` rows (and scaled to that many rows in a larger batch), reach
    ``accept_after``. A legitimate new category (a new route) arrives at a steady rate and is adopted
    after a handful of rows; a typo of a frequent value recurs too, but at the typo rate, and stays a
    violation. The adopted values and pending sightings are the checker's state.
    """

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.values: list[Any] = list(rule.params["values"])
        self.accept_after: int | None = rule.params.get("accept_after")
        self.half_life = float(rule.params.get("accept_within_rows") or 10_000)
        self.adopted: list[Any] = []
        self.sightings: dict[Any, tuple[float, int]] = {}
        """Pending new value -> (decayed sightings, at row)."""
        self.clock = 0
        """Rows checked so far (the time axis of the decay)."""
        self.threshold = f"one of {len(self.values)} learned values"
        if self.accept_after:
            self.threshold += f" (a new value recurring {self.accept_after} times is accepted)"
        self._value_set: pa.Array | None = None

    def _known(self, value_type: pa.DataType) -> pa.Array:
        if self._value_set is None or self._value_set.type != value_type:
            self._value_set = pc.cast(pa.array(self.values + self.adopted), value_type)
        return self._value_set

    def check(self, rows: pa.Table) -> RowCheck:
        if self.column not in rows.column_names:
            return self._pass(rows)
        column = rows.column(self.column)
        value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        self.clock += rows.num_rows
        if kind_of(value_type) == "string":
            dictionary, indices = ENCODINGS.get(column)
            unknown = ~_bool_mask(pc.is_in(dictionary, value_set=self._known(dictionary.type)))
            if self.accept_after and unknown.any():
                counts = np.bincount(indices[indices >= 0], minlength=len(dictionary))
                density = min(1.0, self.half_life / max(rows.num_rows, 1))  # sightings per half-life
                names = dictionary.to_pylist()
                for i in np.flatnonzero(unknown).tolist():
                    if counts[i] and self._sighted(names[i], float(counts[i]) * density):
                        unknown[i] = False
            failed = _per_row(unknown, indices)
        else:
            try:
                known = self._known(value_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return self._pass(rows)
            failed = ~_bool_mask(pc.is_in(column, value_set=known))
            if column.null_count:
                failed &= _bool_mask(column.is_valid())
        return RowCheck(self.rule, failed, _array(column), self.threshold)

    def _sighted(self, value: Any, count: float) -> bool:
        """Record sightings of a new value; True once it recurred enough to be adopted."""
        assert self.accept_after is not None
        before, at = self.sightings.pop(value, (0.0, self.clock))
        seen = before * 0.5 ** ((self.clock - at) / self.half_life) + count
        if seen >= self.accept_after:
            self.adopted.append(value)
            self._value_set = None
            return True
        self.sightings[value] = (seen, self.clock)
        if len(self.sightings) > MAX_PENDING_NEW:  # forget the least recently seen values
            recent = sorted(self.sightings.items(), key=lambda kv: -kv[1][1])
            self.sightings = dict(recent[: MAX_PENDING_NEW // 2])
        return False

    def to_state(self) -> dict[str, Any]:
        return {
            "clock": self.clock,
            "adopted": self.adopted,
            "sightings": [[v, c, at] for v, (c, at) in self.sightings.items()],
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.clock = int(state.get("clock", 0))
        self.adopted = list(state.get("adopted", []))
        self.sightings = {v: (float(c), int(at)) for v, c, at in state.get("sightings", [])}
        self._value_set = None


class LengthChecker(_ColumnChecker):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.low = int(rule.params.get("low") or 0)
        high = rule.params.get("high")
        self.high = None if high is None else int(high)
        self.threshold = f"length in [{self.low}, {'∞' if self.high is None else self.high}]"

    def _bad(self, dictionary: pa.Array) -> np.ndarray:
        lengths = np.asarray(pc.utf8_length(dictionary).to_numpy(zero_copy_only=False))
        bad = lengths < self.low
        if self.high is not None:
            bad |= lengths > self.high
        return bad

    def check(self, rows: pa.Table) -> RowCheck:
        return self._by_distinct(rows, self._bad)


class PatternChecker(_ColumnChecker):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.collapse = bool(rule.params.get("collapse", False))
        self.patterns = pa.array(list(rule.params["patterns"]), pa.string())
        self.threshold = (
            "shape " + ("(collapsed) " if self.collapse else "") + "one of " + _render_list(self.patterns.to_pylist())
        )

    def _bad(self, dictionary: pa.Array) -> np.ndarray:
        shapes = formats.shapes(dictionary, collapse=self.collapse)
        return ~_bool_mask(pc.is_in(shapes, value_set=self.patterns))

    def check(self, rows: pa.Table) -> RowCheck:
        return self._by_distinct(rows, self._bad)


class FormatChecker(_ColumnChecker):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        self.format = str(rule.params["format"])
        self.threshold = f"a valid {self.format}"

    def _bad(self, dictionary: pa.Array) -> np.ndarray:
        return ~_bool_mask(formats.matches(dictionary, self.format))

    def check(self, rows: pa.Table) -> RowCheck:
        return self._by_distinct(rows, self._bad)


_ROW_CHECKERS: dict[str, type[_ColumnChecker]] = {
    "not_null": NotNullChecker,
    "range": RangeChecker,
    "allowed_values": AllowedValuesChecker,
    "length": LengthChecker,
    "pattern": PatternChecker,
    "format": FormatChecker,
}


class ColumnFamily:
    """The column family (implements :class:`~lakegate.contracts.api.Family`)."""

    name = "column"
    kinds = KINDS

    def learner(self, config: LearnConfig) -> ColumnLearner:
        return ColumnLearner(config)

    def row_checker(self, rule: Rule, config: LearnConfig) -> RowChecker | None:
        checker = _ROW_CHECKERS.get(rule.kind)
        return None if checker is None else checker(rule)

    def window_checker(self, rule: Rule, config: LearnConfig) -> WindowChecker | None:
        if rule.kind == "drift":
            return drift.DriftChecker(rule)
        if rule.kind == "null_rate":
            return drift.NullRateChecker(rule)
        return None


COLUMN_FAMILY = ColumnFamily()
"""The family object to register in ``FAMILIES``."""
