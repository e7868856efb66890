"""Correlations: Pearson r of a pair per window, summed during warm-up and checked per window."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import Alert, alerts_of_windows
from lakegate.contracts.model import Rule
from lakegate.contracts.relationships.arrays import ROW_BLOCK, floats

MIN_CORRELATION = 0.5
MAX_CORRELATION_STD = 0.05
CORRELATION_SIGMAS = 6.0
MIN_CORRELATION_DELTA = 0.1
MIN_CORRELATION_WINDOWS = 3
CORRELATION_WINDOW_SHARE = 0.8
"""A pair must have a defined r in this share of the warm-up windows (not only where both vary)."""
MIN_CORRELATION_ROWS = 30
MAX_CORRELATIONS = 12


# ---------------------------------------------------------------------------------------------------
# Learning: sums per window


class CorrelationSums:
    """Pairwise-complete Pearson sums per window, and Welford moments of r across windows."""

    def __init__(self, window_rows: int) -> None:
        self.window_rows = window_rows
        self.names: list[str] = []
        self.in_window = 0
        self.closed = 0
        k = 0
        self.sums = np.zeros((4, k, k))
        self.windows = np.zeros((k, k))
        self.mean = np.zeros((k, k))
        self.m2 = np.zeros((k, k))

    def _grow(self, names: list[str], limit: int) -> None:
        new = [n for n in names if n not in self.names][: max(0, limit - len(self.names))]
        if not new:
            return
        k_old, k = len(self.names), len(self.names) + len(new)
        self.names.extend(new)

        def pad(m: np.ndarray) -> np.ndarray:
            out = np.zeros((*m.shape[:-2], k, k))
            out[..., :k_old, :k_old] = m
            return out

        self.sums, self.windows, self.mean, self.m2 = pad(self.sums), pad(self.windows), pad(self.mean), pad(self.m2)

    def observe(self, rows: pa.Table, names: list[str], limit: int) -> None:
        self._grow(names, limit)
        if not self.names:
            return
        present = [n in rows.column_names for n in self.names]
        columns = [
            floats(rows.column(n)) if ok else np.full(rows.num_rows, math.nan)
            for n, ok in zip(self.names, present, strict=True)
        ]
        x = np.column_stack(columns)
        start = 0
        while start < rows.num_rows:
            take = min(self.window_rows - self.in_window, rows.num_rows - start)
            self._add(x[start : start + take])
            start += take
            self.in_window += take
            if self.in_window >= self.window_rows:
                self._close_window()

    def _add(self, x: np.ndarray) -> None:
        mask = (~np.isnan(x)).astype(np.float64)
        z = np.where(mask > 0, x, 0.0)
        self.sums[0] += mask.T @ mask
        self.sums[1] += z.T @ mask
        self.sums[2] += (z * z).T @ mask
        self.sums[3] += z.T @ z

    def _close_window(self) -> None:
        n, sx, sxx, sxy = self.sums[0], self.sums[1], self.sums[2], self.sums[3]
        r = pearson(n, sx, sx.T, sxx, sxx.T, sxy)
        ok = np.isfinite(r) & (n >= MIN_CORRELATION_ROWS)
        self.windows[ok] += 1
        self.closed += 1
        delta = np.where(ok, r - self.mean, 0.0)
        self.mean += np.where(ok, delta / np.maximum(self.windows, 1), 0.0)
        self.m2 += np.where(ok, delta * (np.where(ok, r, 0.0) - self.mean), 0.0)
        self.sums[:] = 0.0
        self.in_window = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "in_window": self.in_window,
            "closed": self.closed,
            "sums": self.sums.tolist(),
            "windows": self.windows.tolist(),
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.names = list(state["names"])
        k = len(self.names)
        self.in_window = int(state["in_window"])
        self.closed = int(state["closed"])
        self.sums = np.array(state["sums"], dtype=np.float64).reshape(4, k, k)
        self.windows = np.array(state["windows"], dtype=np.float64).reshape(k, k)
        self.mean = np.array(state["mean"], dtype=np.float64).reshape(k, k)
        self.m2 = np.array(state["m2"], dtype=np.float64).reshape(k, k)


def pearson(
    n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray
) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = n * sxy - sx * sy
        var = (n * sxx - sx * sx) * (n * syy - sy * sy)
        return np.asarray(np.where(var > 0, cov / np.sqrt(np.where(var > 0, var, 1.0)), math.nan))


# ---------------------------------------------------------------------------------------------------
# Window checker


def _window_bounds(window: pa.Table) -> tuple[Any, Any]:
    if "_lg_event_time" not in window.column_names:
        return None, None
    column = window.column("_lg_event_time")
    return pc.min(column).as_py(), pc.max(column).as_py()


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows where both are finite, Pearson r; 0 without spread) of each row of ``x`` and ``y``."""
    ok = np.isfinite(x) & np.isfinite(y)
    n = ok.sum(axis=1)
    xs, ys = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = xs.sum(axis=1) / n, ys.sum(axis=1) / n
        dx, dy = np.where(ok, xs - mx[:, None], 0.0), np.where(ok, ys - my[:, None], 0.0)
        sxx, syy, sxy = (dx * dx).sum(axis=1), (dy * dy).sum(axis=1), (dx * dy).sum(axis=1)
        r = np.where((sxx > 0) & (syy > 0), sxy / np.sqrt(sxx * syy), 0.0)
    return n, r


class CorrelationChecker:
    """Alerts when a window's Pearson r of the pair moves more than the threshold off the baseline."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.a, self.b = rule.columns[0], rule.columns[1]
        self.baseline = float(rule.params["baseline"])
        self.threshold = float(rule.params["threshold"])
        self.min_rows = int(rule.params.get("min_rows", MIN_CORRELATION_ROWS))

    def check_windows(self, block: pa.Table, first_index: int, size: int) -> list[Alert]:
        """Pearson r of every window at once (sums per window); alerts built for the windows that fail."""
        windows = block.num_rows // size
        n = np.zeros(windows, dtype=np.int64)
        r = np.zeros(windows, dtype=np.float64)
        step = max(1, ROW_BLOCK // size)  # windows at a time: a group's temporaries stay in cache
        for first in range(0, windows, step):
            last = min(first + step, windows)
            rows = block.slice(first * size, (last - first) * size)
            x = floats(rows.column(self.a)).reshape(last - first, size)
            y = floats(rows.column(self.b)).reshape(last - first, size)
            n[first:last], r[first:last] = _pearson_rows(x, y)
        suspects = np.flatnonzero((n >= self.min_rows) & (np.abs(r - self.baseline) > self.threshold * 0.999))
        return alerts_of_windows(self, block, suspects, first_index, size)

    def check(self, window: pa.Table, index: int) -> list[Alert]:
        x, y = floats(window.column(self.a)), floats(window.column(self.b))
        ok = np.isfinite(x) & np.isfinite(y)
        n = int(ok.sum())
        if n < self.min_rows:
            return []
        xs, ys = x[ok], y[ok]
        if xs.std() == 0 or ys.std() == 0:
            r = 0.0
        else:
            r = float(np.corrcoef(xs, ys)[0, 1])
        deviation = abs(r - self.baseline)
        if deviation <= self.threshold:
            return []
        start, end = _window_bounds(window)
        return [
            Alert(
                rule_id=self.rule.id,
                kind="correlation",
                severity="critical" if deviation > 2 * self.threshold else "warning",
                message=(
                    f"correlation of {self.a} and {self.b} is {r:.3f} in window {index},"
                    f" learned {self.baseline:.3f} ± {self.threshold:.3f}"
                ),
                metric="abs_delta_pearson_r",
                value=round(deviation, 6),
                threshold=self.threshold,
                window_index=index,
                window_start=start,
                window_end=end,
                evidence={"pearson_r": round(r, 6), "baseline": self.baseline, "rows": n},
            )
        ]

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None
