"""Volume: rows per event-time span against an hour-of-week (or hour-of-day) baseline, for one window or many at
once.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from lakegate.contracts.api import Alert, alerts_of_windows
from lakegate.contracts.model import Rule
from lakegate.contracts.temporal.times import EVENT_TIME, HOUR_US, US, event_micros, time_bounds, window_micros

MAX_BUCKETS = 24 * 7 * 60
MIN_VOLUME_HOURS = 48
WEEKLY_HOURS = 14 * 24
CORE = (0.01, 0.99)
BLOCKS = 8
MIN_BLOCK_EXPECTED = 20.0
RATIO_SIGMAS = 5.0
RATIO_MARGIN = 0.05
MIN_BLOCK_RATIO = 0.1
MAX_BLOCK_RATIO = 0.5


def _iso(micros: float) -> str:
    return datetime.fromtimestamp(int(micros) / US, tz=UTC).isoformat()


# ---------------------------------------------------------------------------------------------------
# Volume arithmetic (shared by learning and checking)


def seasonal_slots(hours: np.ndarray, weekly: bool) -> np.ndarray:
    """Seasonal slot of absolute hour indices: hour of week (Monday 00:00 = 0) or hour of day."""
    hour_of_day = hours % 24
    if not weekly:
        return np.asarray(hour_of_day)
    day_of_week = (hours // 24 + 3) % 7  # 1970-01-01 was a Thursday
    return np.asarray(day_of_week * 24 + hour_of_day)


def expected_rows(rate: np.ndarray, weekly: bool, low_us: float, high_us: float) -> float:
    """Rows the seasonal baseline expects in [low, high] (rate: rows per hour, per slot)."""
    if high_us <= low_us:
        return 0.0
    first, last = int(low_us // HOUR_US), int(high_us // HOUR_US)
    if last - first > 24 * 400:
        return math.nan
    hours = np.arange(first, last + 1, dtype=np.int64)
    start = np.maximum(hours * HOUR_US, low_us)
    end = np.minimum((hours + 1) * HOUR_US, high_us)
    overlap = np.clip(end - start, 0, None) / HOUR_US
    return float((rate[seasonal_slots(hours, weekly)] * overlap).sum())


def window_profile(times: np.ndarray) -> dict[str, Any] | None:
    """The core span of a window's event times (``CORE`` quantiles) and its rows per sub-span."""
    n = len(times)
    if n < 2 * BLOCKS:
        return None
    ordered = np.sort(times)
    low, high = int(ordered[int(CORE[0] * (n - 1))]), int(ordered[int(CORE[1] * (n - 1))])
    if high <= low:
        return None
    edges = np.linspace(low, high, BLOCKS + 1)
    positions = np.searchsorted(ordered, edges, side="left")
    positions[-1] = np.searchsorted(ordered, high, side="right")
    return {"low": low, "high": high, "edges": edges.tolist(), "counts": np.diff(positions).tolist()}


def volume_ratios(profile: dict[str, Any], rate: np.ndarray, weekly: bool) -> tuple[float, float, int, float]:
    """(observed/expected over the core span, lowest block ratio, its block, expected rows)."""
    edges = profile["edges"]
    counts = np.asarray(profile["counts"], dtype=np.float64)
    expected = np.array([expected_rows(rate, weekly, edges[i], edges[i + 1]) for i in range(len(counts))])
    total = float(expected.sum())
    if not math.isfinite(total) or total <= 0:
        return math.nan, math.nan, -1, total
    ratio = float(counts.sum()) / total
    usable = expected >= MIN_BLOCK_EXPECTED
    if not usable.any():
        return ratio, math.nan, -1, total
    block_ratios = np.where(usable, counts / np.where(usable, expected, 1.0), np.inf)
    block = int(np.argmin(block_ratios))
    return ratio, float(block_ratios[block]), block, total


SCREEN_SHARE = 0.01
"""Windows whose screened volume ratio is within this share of a bound are checked exactly."""


def cumulative_rows(rate: np.ndarray, weekly: bool, micros: np.ndarray) -> np.ndarray:
    """Rows the seasonal baseline expects from the epoch to each instant (differences give
    :func:`expected_rows` without a loop over hours)."""
    period = 168 if weekly else 24
    shift = 72 if weekly else 0  # hour 0 of the epoch is Thursday 00:00, slot 72 of the week
    per_slot = np.asarray(rate, dtype=np.float64)[:period]
    before = np.concatenate([[0.0], np.cumsum(per_slot)])
    hours = np.floor_divide(micros, HOUR_US)
    into = (micros - hours * HOUR_US) / HOUR_US
    position = hours + shift
    slot = np.mod(position, period)
    return np.asarray(np.floor_divide(position, period) * before[-1] + before[slot] + per_slot[slot] * into)


def volume_windows(grid: np.ndarray, rate: np.ndarray, weekly: bool) -> tuple[np.ndarray, np.ndarray]:
    """(observed/expected over the core span, lowest usable block ratio) of every window (a row of
    ``grid``, event times in microseconds) at once; NaN where :func:`window_profile` gives no profile
    or the span is too long to price. Screening numbers: a window near a bound is re-checked exactly.
    """
    windows, n = grid.shape
    k_low, k_high = int(CORE[0] * (n - 1)), int(CORE[1] * (n - 1))
    parted = np.partition(grid, [k_low, k_high], axis=1)
    low, high = parted[:, k_low], parted[:, k_high]
    profiled = high > low
    edges = np.linspace(low.astype(np.float64), high.astype(np.float64), BLOCKS + 1, axis=1)
    # rows under each edge (under or at ``high`` for the last), as window_profile's searches count them
    below = np.empty((windows, BLOCKS + 1), dtype=np.int64)
    for j in range(BLOCKS):
        below[:, j] = np.count_nonzero(grid < edges[:, j : j + 1], axis=1)
    below[:, BLOCKS] = np.count_nonzero(grid <= high[:, None], axis=1)
    counts = np.diff(below, axis=1).astype(np.float64)
    at_edges = cumulative_rows(rate, weekly, edges.astype(np.int64))
    expected = np.diff(np.where(np.isfinite(edges), at_edges, np.nan), axis=1)
    expected = np.maximum(expected, 0.0)
    total = expected.sum(axis=1)
    too_long = (high - low) // HOUR_US > 24 * 400
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(profiled & ~too_long & (total > 0), counts.sum(axis=1) / total, np.nan)
        usable = expected >= MIN_BLOCK_EXPECTED
        block = np.where(usable, counts / np.where(usable, expected, 1.0), np.inf).min(axis=1)
    block_ratio = np.where(np.isfinite(ratio) & usable.any(axis=1), block, np.nan)
    return ratio, block_ratio


# ---------------------------------------------------------------------------------------------------
# Window checker


class VolumeChecker:
    """Alerts when a window's rows per event-time span leave the seasonal baseline's band."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        params = rule.params
        self.rate = np.asarray(params["baseline"], dtype=np.float64)
        self.weekly = params.get("seasonality") == "hour_of_week"
        self.low, self.high = float(params["low"]), float(params["high"])
        self.block_low = float(params.get("block_low", 0.0))

    def check_windows(self, block: pa.Table, first_index: int, size: int) -> list[Alert]:
        """Every window's volume ratios at once; alerts built (by :meth:`check`) for the windows near or
        past a bound."""
        windows = block.num_rows // size
        if EVENT_TIME not in block.column_names or windows == 0 or size < 2 * BLOCKS:
            return []
        grid = window_micros(block.column(EVENT_TIME), windows, size)
        ratio, block_ratio = volume_windows(grid, self.rate, self.weekly)
        margin = SCREEN_SHARE
        with np.errstate(invalid="ignore"):
            suspects = np.flatnonzero(
                ~np.isfinite(ratio)  # a span the screen cannot price: the exact check decides
                | (ratio < self.low * (1 + margin))
                | (ratio > self.high * (1 - margin))
                | (block_ratio < self.block_low * (1 + margin))
            )
        return alerts_of_windows(self, block, suspects, first_index, size)

    def check(self, window: pa.Table, index: int) -> list[Alert]:
        times = event_micros(window)
        if times is None:
            return []
        profile = window_profile(times)
        if profile is None:
            return []
        ratio, block_ratio, block, expected = volume_ratios(profile, self.rate, self.weekly)
        if not math.isfinite(ratio):
            return []
        edges = profile["edges"]
        evidence: dict[str, Any] = {
            "observed_rows": int(sum(profile["counts"])),
            "expected_rows": round(expected, 1),
            "span_start": _iso(profile["low"]),
            "span_end": _iso(profile["high"]),
            "ratio": round(ratio, 4),
            "band": [self.low, self.high],
        }
        start, end = time_bounds(times)
        alerts = []
        if ratio < self.low or ratio > self.high:
            drop = ratio < self.low
            bound = self.low if drop else self.high
            far = ratio < self.low * 0.7 if drop else ratio > self.high * 1.5
            alerts.append(
                Alert(
                    rule_id=self.rule.id,
                    kind="volume",
                    severity="critical" if far else "warning",
                    message=(
                        f"volume {'drop' if drop else 'spike'} in window {index}: {ratio:.2f}x the seasonal"
                        f" baseline (allowed {self.low:.2f}-{self.high:.2f}x)"
                    ),
                    metric="volume_ratio",
                    value=round(ratio, 6),
                    threshold=bound,
                    window_index=index,
                    window_start=start,
                    window_end=end,
                    evidence=evidence,
                )
            )
        elif math.isfinite(block_ratio) and block_ratio < self.block_low:
            evidence.update(
                {
                    "block_ratio": round(block_ratio, 4),
                    "block_start": _iso(edges[block]),
                    "block_end": _iso(edges[block + 1]),
                }
            )
            alerts.append(
                Alert(
                    rule_id=self.rule.id,
                    kind="volume",
                    severity="critical" if block_ratio < self.block_low / 2 else "warning",
                    message=(
                        f"volume drop in window {index}: {block_ratio:.2f}x the baseline between"
                        f" {evidence['block_start']} and {evidence['block_end']} (at least {self.block_low:.2f}x)"
                    ),
                    metric="volume_block_ratio",
                    value=round(block_ratio, 6),
                    threshold=self.block_low,
                    window_index=index,
                    window_start=start,
                    window_end=end,
                    evidence=evidence,
                )
            )
        return alerts

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None
