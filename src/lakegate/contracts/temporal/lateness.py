"""Lateness: how far rows fall behind the watermark or their arrival (or are labeled late), as histograms while
learning and as shares per window when checking.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import Alert
from lakegate.contracts.model import Rule
from lakegate.contracts.temporal.times import (
    ARRIVAL_TIME,
    EVENT_TIME,
    US,
    column_micros,
    event_micros,
    time_bounds,
    window_micros,
)

LATE_LABEL = "_lg_late"
LABELED_LATE_S = 3600.0
"""The ``label`` basis counts a row labeled late by the normalize stage as this many seconds late."""
LATENESS_EDGES_S = np.array([0.0] + [float(x) for x in np.geomspace(1, 90 * 86400, 96)])
MIN_LATE_S = 60.0
LATE_SHARE_CAP = 0.005
MIN_LATE_SHARE = 0.01
LATE_FACTOR = 3.0
MIN_LATE_ROWS = 10
CARRY_ROWS = 100
MAX_BAND_SHARE = 0.5
BAND_STEP = 4
"""Lateness is also judged at every ``BAND_STEP``-th histogram edge whose allowed share is informative."""
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


def late_labels(rows: pa.Table) -> np.ndarray:
    """``_lg_late`` as a 0/1 float array (null: not late)."""
    return np.asarray(pc.fill_null(rows.column(LATE_LABEL), False).to_numpy(zero_copy_only=False), dtype=np.float64)


# ---------------------------------------------------------------------------------------------------
# Lateness arithmetic


def watermark_lateness(times: np.ndarray, watermark: int | None) -> np.ndarray:
    """Seconds each row is behind the newest event time seen before it (0 when not behind)."""
    if len(times) == 0:
        return np.zeros(0)
    running = np.maximum.accumulate(times)
    before = np.r_[times[0] if watermark is None else watermark, running[:-1]]
    if watermark is not None:
        before = np.maximum(before, watermark)
    return np.asarray(np.clip(before - times, 0, None) / US)


def carried_watermark(times: np.ndarray) -> int:
    """What a window hands to the next one: the newest event time among its last ``CARRY_ROWS`` rows
    (a window that rewound the stream hands on the rewound time)."""
    return int(times[-CARRY_ROWS:].max())


def _bins(lateness_s: np.ndarray) -> np.ndarray:
    index = np.searchsorted(LATENESS_EDGES_S, lateness_s, side="right") - 1
    return np.bincount(np.clip(index, 0, len(LATENESS_EDGES_S) - 1), minlength=len(LATENESS_EDGES_S))


def _share_at_least(counts: np.ndarray) -> np.ndarray:
    """For each edge e: the share of rows with lateness >= edges[e]."""
    total = counts.sum()
    if total == 0:
        return np.zeros(len(counts))
    return np.asarray(np.cumsum(counts[::-1])[::-1] / total)


def lateness_quantile(counts: np.ndarray, q: float) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    index = int(np.searchsorted(np.cumsum(counts), q * total, side="left"))
    upper = LATENESS_EDGES_S[min(index + 1, len(LATENESS_EDGES_S) - 1)]
    return float(upper if index > 0 else 0.0)


class LatenessHistogram:
    """Lateness histogram overall and per warm-up window (the largest share late beyond each edge)."""

    def __init__(self) -> None:
        size = len(LATENESS_EDGES_S)
        self.counts = np.zeros(size, dtype=np.int64)
        self.window = np.zeros(size, dtype=np.int64)
        self.max_share = np.zeros(size)
        self.windows = 0

    def add(self, lateness_s: np.ndarray, closes: bool) -> None:
        bins = _bins(lateness_s)
        self.counts += bins
        self.window += bins
        if closes:
            self.max_share = np.maximum(self.max_share, _share_at_least(self.window))
            self.window[:] = 0
            self.windows += 1

    def rule_params(self, basis: str) -> dict[str, Any] | None:
        if self.windows < 2:
            return None
        allowed = np.maximum(MIN_LATE_SHARE, LATE_FACTOR * self.max_share)
        informative = np.flatnonzero((LATENESS_EDGES_S >= MIN_LATE_S) & (allowed <= MAX_BAND_SHARE))
        primary = np.flatnonzero((LATENESS_EDGES_S >= MIN_LATE_S) & (self.max_share <= LATE_SHARE_CAP))
        if not len(primary):
            return None
        edge = int(primary[0])
        bands = sorted({int(e) for e in informative[::BAND_STEP]} | {edge})
        return {
            "basis": basis,
            "threshold_s": round(float(LATENESS_EDGES_S[edge]), 3),
            "allowed_share": round(float(allowed[edge]), 6),
            "expected_share": round(float(_share_at_least(self.counts)[edge]), 6),
            "max_window_share": round(float(self.max_share[edge]), 6),
            "bands": [[round(float(LATENESS_EDGES_S[e]), 3), round(float(allowed[e]), 6)] for e in bands],
            "min_rows": MIN_LATE_ROWS,
            "quantiles_s": {name: lateness_quantile(self.counts, q) for name, q in QUANTILES.items()},
            "windows": self.windows,
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "window": self.window.tolist(),
            "max_share": self.max_share.tolist(),
            "windows": self.windows,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.counts = np.array(state["counts"], dtype=np.int64)
        self.window = np.array(state["window"], dtype=np.int64)
        self.max_share = np.array(state["max_share"], dtype=np.float64)
        self.windows = int(state["windows"])


# ---------------------------------------------------------------------------------------------------
# Window checker


class LatenessChecker:
    """Alerts when more of a window than allowed is late beyond one of the learned thresholds.

    State: what the previous window carried over (:func:`carried_watermark`); the watermark basis
    judges each row against it and the window's own running maximum.
    """

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        params = rule.params
        self.basis = str(params.get("basis", "watermark"))
        self.bands: list[tuple[float, float]] = [(float(e), float(a)) for e, a in params.get("bands", [])] or [
            (float(params["threshold_s"]), float(params["allowed_share"]))
        ]
        self.min_rows = int(params.get("min_rows", MIN_LATE_ROWS))
        self.watermark: int | None = None

    def check_windows(self, block: pa.Table, first_index: int, size: int) -> list[Alert]:
        """Every window's lateness at once: a running maximum per window, seeded with what the previous
        window carried; alerts are built (by :meth:`check`) only for windows over a band."""
        windows = block.num_rows // size
        if EVENT_TIME not in block.column_names or windows == 0:
            return []
        times = window_micros(block.column(EVENT_TIME), windows, size)
        carried = times[:, -CARRY_ROWS:].max(axis=1)
        seeds = np.concatenate([[self.watermark if self.watermark is not None else times[0, 0]], carried[:-1]])
        # Lateness in whole microseconds; a band's edge is lowered by a microsecond so that the screen
        # counts at least the rows check() counts (windows it picks are then checked exactly).
        if self.basis == "arrival":
            if ARRIVAL_TIME not in block.column_names:
                return []
            late_us = window_micros(block.column(ARRIVAL_TIME), windows, size) - times
        elif self.basis == "label":
            if LATE_LABEL not in block.column_names:
                return []
            labels = late_labels(block)[: windows * size].reshape(windows, size)
            late_us = (labels * (LABELED_LATE_S * US)).astype(np.int64)
        else:
            late_us = np.maximum.accumulate(times, axis=1)  # the running maximum, shifted by one below
            late_us[:, 1:] = late_us[:, :-1]
            late_us[:, 0] = seeds
            np.maximum(late_us, seeds[:, None], out=late_us)
            if self.watermark is None:  # the very first window has no carried watermark
                late_us[0, 0] = times[0, 0]
                late_us[0, 1:] = np.maximum.accumulate(times[0])[:-1]
            late_us -= times
        suspect = np.zeros(windows, dtype=bool)
        edges_us = [math.floor(edge * US) - 1 for edge, _ in self.bands if edge > 0]
        if edges_us:
            # One pass over the batch finds the rows past the lowest edge (few: most rows are on time);
            # every band (up to ~20, nested) is then counted per window on those alone.
            late_window, late_row = np.nonzero(late_us >= min(edges_us))
            late_values = late_us[late_window, late_row]
        for edge, allowed in self.bands:
            if edge <= 0:
                count = np.full(windows, size)
            else:
                past_edge = late_values >= math.floor(edge * US) - 1
                count = np.bincount(late_window[past_edge], minlength=windows)
            suspect |= (count >= max(self.min_rows, allowed * size)) & (count > allowed * size)
        alerts: list[Alert] = []
        for w in np.flatnonzero(suspect).tolist():
            if self.basis == "watermark":
                self.watermark = None if (w == 0 and self.watermark is None) else int(seeds[w])
            alerts.extend(self.check(block.slice(w * size, size), first_index + w))
        if self.basis == "watermark":
            self.watermark = int(carried[-1])
        return alerts

    def check(self, window: pa.Table, index: int) -> list[Alert]:
        times = event_micros(window)
        if times is None or not len(times):
            return []
        if self.basis == "arrival":
            if ARRIVAL_TIME not in window.column_names:
                return []
            lateness = np.clip(column_micros(window.column(ARRIVAL_TIME)) - times, 0, None) / US
        elif self.basis == "label":
            if LATE_LABEL not in window.column_names:
                return []
            lateness = late_labels(window) * LABELED_LATE_S
        else:
            lateness = watermark_lateness(times, self.watermark)
            self.watermark = carried_watermark(times)
        n = len(times)
        worst: tuple[float, float, float, int] | None = None
        for edge, allowed in self.bands:
            count = int((lateness >= edge).sum())
            if count >= max(self.min_rows, allowed * n) and count > allowed * n:
                excess = count / n / allowed
                if worst is None or excess > worst[0]:
                    worst = (excess, edge, allowed, count)
        if worst is None:
            return []
        _, edge, allowed, count = worst
        share = count / n
        behind = lateness[lateness >= edge]
        start, end = time_bounds(times)
        return [
            Alert(
                rule_id=self.rule.id,
                kind="lateness",
                severity="critical" if share > 3 * allowed else "warning",
                message=(
                    f"{count} of {n} rows ({share:.1%}) are more than {edge:g} s late in window {index};"
                    f" at most {allowed:.1%} learned"
                ),
                metric="late_share",
                value=round(share, 6),
                threshold=allowed,
                window_index=index,
                window_start=start,
                window_end=end,
                evidence={
                    "basis": self.basis,
                    "late_rows": count,
                    "rows": n,
                    "threshold_s": edge,
                    "median_late_s": round(float(np.median(behind)), 3),
                    "max_late_s": round(float(behind.max()), 3),
                    "learned_quantiles_s": self.rule.params.get("quantiles_s", {}),
                },
            )
        ]

    def to_state(self) -> dict[str, Any]:
        return {"watermark": self.watermark}

    def from_state(self, state: dict[str, Any]) -> None:
        self.watermark = state.get("watermark")
