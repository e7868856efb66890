"""Window-level column checks: distribution drift and bursts of nulls.

Drift compares one window of rows (``LearnConfig.window_rows``) with the learned baseline, with a
metric chosen by type:

* categorical (string, boolean): population stability index over the baseline's top categories plus
  an "other" bucket (a flood of new values lands there);
* numeric and temporal: Jensen–Shannon divergence (base 2, 0..1) over baseline quantile bins, and
  Wasserstein-1 distance between the quantile functions, divided by the baseline's interquartile range
  (a unit change ×100 moves it by about 100 IQRs, a one-sigma mean shift by about 0.74).

The baseline lives in the rule's ``params`` (bins and probabilities, or quantiles), so a checker needs
nothing else. Thresholds are calibrated in warm-up: every full window seen while learning is measured
against the baseline of the moment, and a rule's threshold is the larger of a fixed floor and
``CALIBRATION_FACTOR`` times the 95th percentile of those measurements; a field whose windows differ
by nature (a day-of-month column, a seasonal mix) thus does not alert on every window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import Alert, alerts_of_windows
from lakegate.contracts.encodings import ENCODINGS, is_string_type
from lakegate.contracts.model import Rule
from lakegate.contracts.sketches import ColumnProfile, numbers

EVENT_TIME = "_lg_event_time"
FLOORS: dict[str, float] = {"psi": 0.05, "jensen_shannon": 0.05, "wasserstein": 0.25}
"""Thresholds below which no window alerts, whatever the calibration says. PSI 0.05 warns of a slight
shift (0.1 is the customary "moderate" line, and twice the threshold is critical): a quarter of a
three-valued field's rows moving to one value scores about 0.1, while sampling noise at 10,000-row
windows stays near (categories - 1) / rows; columns that vary by nature get a higher calibrated one."""
CALIBRATION_FACTOR = 1.5
CALIBRATION_QUANTILE = 0.95
MIN_CALIBRATION_WINDOWS = 5
PSI_EPSILON = 1e-4
BODY_RANKS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
TAIL_RANKS = (0.001, 0.999)
WASSERSTEIN_RANKS: tuple[float, ...] = tuple(round(0.02 * i, 2) for i in range(1, 50))
MAX_BASELINE_CATEGORIES = 50
TOP_BINS = 5
NULL_Z = 4.0
MIN_NULLS = 5


@dataclass
class Measurement:
    """One metric on one window, with the bins that contributed most."""

    metric: str
    value: float
    window_values: int
    top_bins: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Metrics


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPSILON) -> tuple[float, np.ndarray]:
    """Population stability index and its per-bin terms (both distributions sum to 1)."""
    p = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    q = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    terms = (q - p) * np.log(q / p)
    return float(terms.sum()), terms


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """Jensen–Shannon divergence in bits (0 = same, 1 = disjoint) and its per-bin terms."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log2(p / m), 0.0)
        right = np.where(q > 0, q * np.log2(q / m), 0.0)
    terms = (left + right) / 2
    return float(max(0.0, terms.sum())), terms


def wasserstein(baseline_quantiles: np.ndarray, window_quantiles: np.ndarray, scale: float) -> float:
    """Wasserstein-1 between two quantile functions on the same rank grid, in units of ``scale``."""
    diff = np.abs(np.asarray(window_quantiles) - np.asarray(baseline_quantiles))
    return float(diff.mean() / scale)


# ---------------------------------------------------------------------------------------------------
# Baselines (JSON-able, stored in rule params)


def categorical_baseline(profile: ColumnProfile) -> dict[str, Any] | None:
    """Top categories with their probabilities and the probability of all the others."""
    if profile.categories is None or profile.values == 0:
        return None
    top = profile.categories.top(MAX_BASELINE_CATEGORIES)
    if not top:
        return None
    total = profile.values
    probs = [count / total for _, count in top]
    return {"values": [v for v, _ in top], "probs": probs, "other": max(0.0, 1.0 - sum(probs))}


def binned_baseline(profile: ColumnProfile) -> dict[str, Any] | None:
    """Bin edges at baseline quantiles (tails from the tail sketches) and each bin's probability.

    Bin ``i`` holds the values in ``(edges[i-1], edges[i]]``; the first and last bins are open.
    """
    sketch = profile.numeric
    if sketch is None or sketch.count == 0:
        return None
    low, high = sketch.tails(*TAIL_RANKS)
    body = sketch.quantiles(BODY_RANKS)
    edges = np.unique(np.asarray([low, *body, high], dtype=np.float64))
    cdf = np.asarray(sketch.cdf(edges.tolist())[:-1], dtype=np.float64)
    cdf[0] = float(sketch.lower.get_rank(edges[0], True)) if edges[0] > sketch.min else cdf[0]
    if edges[-1] < sketch.max:
        cdf[-1] = float(sketch.upper.get_rank(edges[-1], True))
    cdf = np.clip(np.maximum.accumulate(cdf), 0.0, 1.0)
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return {"edges": edges.tolist(), "probs": probs.tolist()}


def quantile_baseline(profile: ColumnProfile) -> dict[str, Any] | None:
    """The baseline quantile function on a fixed rank grid and its scale (the IQR)."""
    sketch = profile.numeric
    if sketch is None or sketch.count == 0:
        return None
    quantiles = sketch.quantiles(WASSERSTEIN_RANKS)
    q25, q75, q05, q95 = sketch.quantiles([0.25, 0.75, 0.05, 0.95])
    scale = q75 - q25
    if scale <= 0:
        scale = q95 - q05
    if scale <= 0:
        scale = sketch.std if sketch.std > 0 else max(abs(sketch.mean), 1.0)
    return {"ranks": list(WASSERSTEIN_RANKS), "quantiles": quantiles, "iqr": scale}


def baseline_for(metric: str, profile: ColumnProfile) -> dict[str, Any] | None:
    if metric == "psi":
        return categorical_baseline(profile)
    if metric == "jensen_shannon":
        return binned_baseline(profile)
    return quantile_baseline(profile)


def metrics_for(profile: ColumnProfile) -> tuple[str, ...]:
    """The drift metrics that fit a field's kind."""
    if profile.kind in ("string", "boolean"):
        return ("psi",)
    if profile.kind in ("numeric", "temporal"):
        return ("jensen_shannon", "wasserstein")
    return ()


# ---------------------------------------------------------------------------------------------------
# Measuring a window against a baseline


def measure(metric: str, baseline: dict[str, Any], column: pa.ChunkedArray) -> Measurement | None:
    """``metric`` of one window's non-null values against ``baseline``; None if it has no values."""
    if column.null_count == len(column):
        return None
    if metric == "psi":
        return _measure_psi(baseline, column)
    values, valid = numbers(column)
    x = np.asarray(values if valid is None else values[valid], dtype=np.float64)
    if metric == "jensen_shannon":
        edges = np.asarray(baseline["edges"], dtype=np.float64)
        counts = np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)
        expected = np.asarray(baseline["probs"], dtype=np.float64)
        actual = counts / len(x)
        value, terms = jensen_shannon(expected, actual)
        labels = _bin_labels(edges)
        return Measurement(metric, value, len(x), _top(labels, expected, actual, terms))
    ranks = np.asarray(baseline["ranks"], dtype=np.float64)
    window = np.quantile(x, ranks, method="inverted_cdf")
    value = wasserstein(np.asarray(baseline["quantiles"]), window, float(baseline["iqr"]))
    median = len(ranks) // 2
    evidence = [
        {"bin": f"q{ranks[i]:.2f}", "baseline": float(baseline["quantiles"][i]), "window": float(window[i])}
        for i in (0, median, len(ranks) - 1)
    ]
    return Measurement(metric, value, len(x), evidence)


SCREEN_FACTOR = 0.999
"""Windows whose screened value is within this factor of the threshold are measured exactly."""


def window_values(metric: str, baseline: dict[str, Any], column: pa.Array, size: int) -> np.ndarray:
    """``metric`` for every consecutive ``size``-row window of ``column`` at once (NaN: no values).

    The same numbers :func:`measure` gives window by window, up to float rounding, computed as one
    2-D histogram or one sort per window instead of a Python call per window.
    """
    windows = len(column) // size
    if metric == "psi":
        valid = None if column.null_count == 0 else np.asarray(column.is_valid().to_numpy(zero_copy_only=False))
        return _psi_windows(baseline, column, valid, windows, size)
    ordered = sorted_windows(column, size)
    n = ordered.n
    if metric == "jensen_shannon":
        edges = np.asarray(baseline["edges"], dtype=np.float64)
        counts = np.diff(np.column_stack([np.zeros(windows), ordered.at_or_below(edges), n]), axis=1)
        return _js_rows(np.asarray(baseline["probs"], dtype=np.float64), counts)
    ranks = np.asarray(baseline["ranks"], dtype=np.float64)
    at = np.clip(np.ceil(np.outer(n, ranks)).astype(np.int64) - 1, 0, None)  # inverted_cdf
    at = np.minimum(at, np.maximum(n - 1, 0)[:, None])
    diff = np.abs(ordered.values_at(at) - np.asarray(baseline["quantiles"], dtype=np.float64))
    out = diff.mean(axis=1) / float(baseline["iqr"])
    return np.where(n > 0, out, np.nan)


@dataclass
class SortedWindows:
    """Each window's non-null values in order: sorted rows (``grid``, nulls as trailing NaN) or, for
    integers over a small span, how many values of each window are at most ``low + i`` (``cumulative``,
    a row per window), which answers the same questions without laying out every value."""

    n: np.ndarray
    """Non-null values per window."""
    grid: np.ndarray | None = None
    cumulative: np.ndarray | None = None
    low: int = 0

    def at_or_below(self, edges: np.ndarray) -> np.ndarray:
        """Values of each window at most each edge (a row per window)."""
        if self.cumulative is None:
            assert self.grid is not None
            return np.stack(
                [np.searchsorted(self.grid[w, : self.n[w]], edges, side="right") for w in range(len(self.n))]
            )
        span = self.cumulative.shape[1]
        floor = np.floor(np.nan_to_num(edges, nan=np.inf))  # integers: v <= e iff v <= floor(e)
        slot = np.clip(floor - self.low, -1, span - 1).astype(np.int64)
        padded = np.column_stack([np.zeros(len(self.n), dtype=np.int64), self.cumulative])
        return np.ascontiguousarray(padded[:, slot + 1])  # the grid's layout: sums add up alike

    def values_at(self, at: np.ndarray) -> np.ndarray:
        """Each window's ``at[w, j]``-th smallest value (0-based; at < n[w]; a window without values
        gives an arbitrary number)."""
        if self.cumulative is None:
            assert self.grid is not None
            return np.take_along_axis(self.grid, at, axis=1)
        windows, span = self.cumulative.shape
        # rows made one ascending run (row w shifted past every count of the rows before), so one
        # search finds in each window the first value whose cumulative count exceeds ``at``
        stride = int(self.n.max(initial=0)) + 1
        shift = np.arange(windows, dtype=np.int64)[:, None] * stride
        found = np.searchsorted((self.cumulative + shift).ravel(), (at + 1 + shift).ravel(), side="left")
        slot = found.reshape(at.shape) - np.arange(windows, dtype=np.int64)[:, None] * span
        return (slot + self.low).astype(np.float64)


_SORTED: dict[str, Any] = {}
"""The last column sorted per window: Jensen–Shannon and Wasserstein screen the same column in turn."""


def forget_sorted_windows() -> None:
    """Drop the memo (a batch is done)."""
    _SORTED.clear()


COUNTING_SORT_SLOTS = 1 << 24
"""Integer windows are counted per value when (value span x windows) stays within this many counters."""


def sorted_windows(column: pa.Array, size: int) -> SortedWindows:
    """Each ``size``-row window's values in order.

    Memoized for the last column: the memo holds the array, so its buffer (the key) stays alive.
    """
    buffers = column.buffers()
    key = (buffers[-1].address if buffers[-1] is not None else 0, column.offset, len(column), str(column.type), size)
    if _SORTED.get("key") == key:
        return _SORTED["sorted"]
    windows = len(column) // size
    values, valid = numbers(column)
    raw = values[: windows * size].reshape(windows, size)
    mask = None if valid is None else valid[: windows * size].reshape(windows, size)
    out = _counted_rows(raw, mask)
    if out is None:
        grid = _sorted_rows(raw, mask)  # NaN (null) last
        out = SortedWindows(n=np.sum(~np.isnan(grid), axis=1), grid=grid)
    _SORTED.update(key=key, column=column, sorted=out)
    return out


def _counted_rows(grid: np.ndarray, valid: np.ndarray | None) -> SortedWindows | None:
    """Integers over a small span (clock times, delays, distances): one count per (window, value),
    cumulated; None for other columns."""
    if not grid.size or grid.dtype.kind not in "iu":
        return None
    low, high = int(grid.min()), int(grid.max())  # null slots' arbitrary values included: still safe
    windows, _ = grid.shape
    span = high - low + 2  # every value in [low, high], and a last slot for null
    if span * windows > COUNTING_SORT_SLOTS or high > np.iinfo(np.int64).max:
        return None
    grid = grid.astype(np.int64, copy=False)  # unsigned: int64 arithmetic below (uint64 + int64 is float)
    first = (np.arange(windows, dtype=np.int64) * span)[:, None]  # each window's first counter
    slots = grid + (first - low)
    if valid is not None:
        np.copyto(slots, first + (span - 1), where=~valid)
    counts = np.bincount(slots.ravel(), minlength=windows * span).reshape(windows, span)
    cumulative = np.cumsum(counts[:, :-1], axis=1)
    return SortedWindows(n=cumulative[:, -1].copy(), cumulative=cumulative, low=low)


def _sorted_rows(grid: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Each row sorted, as float64 with nulls (``valid`` False) as trailing NaN.

    Integers are sorted in the narrowest type that holds them exactly (numpy's SIMD sorts: int16 ~2.5x,
    float32 ~2x float64), nulls as a sentinel above them.
    """
    if grid.size and grid.dtype.kind in "iu":
        low, high = int(grid.min()), int(grid.max())  # null slots' arbitrary values included: still safe
        for narrow, top in ((np.int16, 2**15 - 1), (np.float32, 2**24)):
            if -top <= low and high < top:
                packed = grid.astype(narrow)
                if valid is not None:
                    np.copyto(packed, narrow(top), where=~valid)
                packed.sort(axis=1)
                out = packed.astype(np.float64)
                if valid is not None:
                    out[packed == narrow(top)] = np.nan
                return out
    out = np.array(grid, dtype=np.float64)
    if valid is not None:
        out[~valid] = np.nan
    out.sort(axis=1)
    return out


def _window_histogram(bins: np.ndarray, width: int, valid: np.ndarray | None, windows: int, size: int) -> np.ndarray:
    """How many rows of each window fall in each of ``width`` bins; rows in bin ``width`` or not
    ``valid`` are not counted."""
    first = (np.arange(windows, dtype=np.int64) * (width + 1))[:, None]  # each window's first counter
    slots = bins[: windows * size].reshape(windows, size) + first
    if valid is not None:
        np.copyto(slots, first + width, where=~valid[: windows * size].reshape(windows, size))
    counts = np.bincount(slots.ravel(), minlength=windows * (width + 1))
    return counts.reshape(windows, width + 1)[:, :width]


def _psi_windows(
    baseline: dict[str, Any], column: pa.Array, valid: np.ndarray | None, windows: int, size: int
) -> np.ndarray:
    known = list(baseline["values"])
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    try:
        value_set = pa.array(known, type=column.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        value_set = pa.array([str(v) for v in known])
        column = pc.cast(column, pa.string())
    if is_string_type(column.type) and len(column) > len(known):
        # each distinct string looked up once, through the batch's shared encoding of the column
        dictionary, indices = ENCODINGS.get(pa.chunked_array([column]))
        codes = pc.fill_null(pc.index_in(dictionary, value_set=value_set), len(known))
        per_value = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)
        bins = np.append(per_value, len(known) + 1)[indices]  # index -1 (null): a bin that is not counted
        valid = None
    else:
        codes = pc.fill_null(pc.index_in(column, value_set=value_set), len(known))
        bins = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)
    counts = _window_histogram(bins, len(known) + 1, valid, windows, size)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        actual = counts / totals
    expected = np.asarray([*baseline["probs"], baseline["other"]], dtype=np.float64)
    p = np.maximum(expected, PSI_EPSILON)
    q = np.maximum(actual, PSI_EPSILON)
    out = ((q - p) * np.log(q / p)).sum(axis=1)
    return np.where(totals[:, 0] > 0, out, np.nan)


def _js_rows(expected: np.ndarray, counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = counts / totals
        m = (expected + q) / 2
        left = np.where(expected > 0, expected * np.log2(expected / m), 0.0)
        right = np.where(q > 0, q * np.log2(q / m), 0.0)
    out = np.maximum(0.0, ((left + right) / 2).sum(axis=1))
    return np.where(totals[:, 0] > 0, out, np.nan)


def _measure_psi(baseline: dict[str, Any], column: pa.ChunkedArray) -> Measurement:
    counts = pc.value_counts(column.combine_chunks())
    observed = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))
    observed.pop(None, None)
    total = sum(observed.values())
    values = list(baseline["values"])
    known = [observed.pop(v, 0) for v in values]
    expected = np.asarray([*baseline["probs"], baseline["other"]], dtype=np.float64)
    actual = np.asarray([*known, sum(observed.values())], dtype=np.float64) / total
    value, terms = psi(expected, actual)
    labels = [str(v) for v in values] + ["(other)"]
    top = _top(labels, expected, actual, terms)
    if observed:
        newest = sorted(observed.items(), key=lambda kv: -kv[1])[:TOP_BINS]
        top.append({"bin": "(other)", "examples": [str(v) for v, _ in newest]})
    return Measurement("psi", value, total, top)


def _bin_labels(edges: np.ndarray) -> list[str]:
    bounds = [-math.inf, *edges.tolist(), math.inf]
    return [f"({bounds[i]:g}, {bounds[i + 1]:g}]" for i in range(len(bounds) - 1)]


def _top(labels: list[str], expected: np.ndarray, actual: np.ndarray, terms: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(-np.abs(terms))[:TOP_BINS]
    return [
        {
            "bin": labels[i],
            "baseline": round(float(expected[i]), 6),
            "window": round(float(actual[i]), 6),
            "contribution": round(float(terms[i]), 6),
        }
        for i in order.tolist()
        if terms[i] != 0
    ]


def calibrated_threshold(metric: str, history: list[float]) -> float:
    """The larger of the metric's floor and a margin over what warm-up windows showed."""
    floor = FLOORS[metric]
    if len(history) < MIN_CALIBRATION_WINDOWS:
        return floor
    return max(floor, CALIBRATION_FACTOR * float(np.quantile(history, CALIBRATION_QUANTILE)))


def null_threshold(params: dict[str, Any], n: int) -> float:
    """Nulls in a window of ``n`` rows above which the null rate is a burst (overdispersed binomial)."""
    p = float(params["baseline_rate"])
    p_var = max(p, float(params["rate_floor"]))
    spread = math.sqrt(float(params["dispersion"]) * n * p_var * (1 - min(p_var, 0.999999)))
    return max(n * p + float(params["z"]) * spread, float(params["min_nulls"]) - 1)


def dispersion(rate: float, window_rates: list[float], window_rows: int, floor: float) -> float:
    """How much more window null rates varied in warm-up than a binomial would (>= 1)."""
    if len(window_rates) < MIN_CALIBRATION_WINDOWS:
        return 1.0
    p = max(rate, floor)
    binomial = p * (1 - min(p, 0.999999)) / window_rows
    observed = float(np.mean((np.asarray(window_rates) - rate) ** 2))
    return max(1.0, observed / binomial)


# ---------------------------------------------------------------------------------------------------
# Window checkers


def _window_bounds(window: pa.Table) -> tuple[datetime | None, datetime | None]:
    if EVENT_TIME not in window.column_names:
        return None, None
    bounds = pc.min_max(window.column(EVENT_TIME)).as_py()
    return bounds["min"], bounds["max"]


def _severity(rule: Rule, value: float, threshold: float) -> Any:
    return "critical" if value >= 2 * threshold else rule.severity


class DriftChecker:
    """Alerts when one column's distribution in a window drifts past the rule's threshold."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.column = rule.columns[0]
        self.metric = str(rule.params["metric"])
        self.threshold = float(rule.params["threshold"])

    def check(self, window: pa.Table, index: int) -> list[Alert]:
        if self.column not in window.column_names:
            return []
        found = measure(self.metric, self.rule.params["baseline"], window.column(self.column))
        if found is None or found.value <= self.threshold:
            return []
        start, end = _window_bounds(window)
        return [
            Alert(
                rule_id=self.rule.id,
                kind="drift",
                severity=_severity(self.rule, found.value, self.threshold),
                message=(
                    f"{self.column}: {self.metric} {found.value:.3g} over {found.window_values} values "
                    f"exceeds {self.threshold:.3g}"
                ),
                metric=self.metric,
                value=found.value,
                threshold=self.threshold,
                window_index=index,
                window_start=start,
                window_end=end,
                evidence={
                    "metric": self.metric,
                    "value": found.value,
                    "threshold": self.threshold,
                    "window_values": found.window_values,
                    "top_bins": found.top_bins,
                },
            )
        ]

    def check_windows(self, block: pa.Table, first_index: int, size: int) -> list[Alert]:
        if self.column not in block.column_names:
            return []
        column = block.column(self.column)
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # same buffer: memo hits
        screened = window_values(self.metric, self.rule.params["baseline"], array, size)
        suspects = np.flatnonzero(np.nan_to_num(screened, nan=-np.inf) > self.threshold * SCREEN_FACTOR)
        return alerts_of_windows(self, block, suspects, first_index, size)

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None


class NullRateChecker:
    """Alerts when a window holds far more nulls than the learned rate allows."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.column = rule.columns[0]

    def check(self, window: pa.Table, index: int) -> list[Alert]:
        n = window.num_rows
        if n == 0:
            return []
        nulls = window.column(self.column).null_count if self.column in window.column_names else n
        limit = null_threshold(self.rule.params, n)
        if nulls <= limit:
            return []
        rate, threshold = nulls / n, limit / n
        start, end = _window_bounds(window)
        baseline = float(self.rule.params["baseline_rate"])
        return [
            Alert(
                rule_id=self.rule.id,
                kind="null_rate",
                severity=_severity(self.rule, rate, max(threshold, 1 / n)),
                message=(
                    f"{self.column}: {nulls} nulls in {n} rows ({rate:.2%}), "
                    f"learned rate {baseline:.2%}, allowed up to {threshold:.2%}"
                ),
                metric="null_rate",
                value=rate,
                threshold=threshold,
                window_index=index,
                window_start=start,
                window_end=end,
                evidence={
                    "metric": "null_rate",
                    "value": rate,
                    "threshold": threshold,
                    "nulls": nulls,
                    "rows": n,
                    "baseline_rate": baseline,
                },
            )
        ]

    def check_windows(self, block: pa.Table, first_index: int, size: int) -> list[Alert]:
        windows = block.num_rows // size
        if self.column in block.column_names:
            column = block.column(self.column)
            if column.null_count == 0:
                return []
            valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False))[: windows * size]
            nulls = size - valid.reshape(windows, size).sum(axis=1)
        else:
            nulls = np.full(windows, size)
        suspects = np.flatnonzero(nulls > null_threshold(self.rule.params, size))
        return alerts_of_windows(self, block, suspects, first_index, size)

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None
