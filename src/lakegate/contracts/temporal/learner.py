"""The temporal learner: candidate event keys with their duplicates, lateness, hourly volume and window profiles,
and freshness lags, turned into rules.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import LearnConfig
from lakegate.contracts.hashing import row_hashes
from lakegate.contracts.model import DatasetSchema, Rule
from lakegate.contracts.temporal.duplicates import (
    KEY_KEEP_ROWS,
    MAX_DUPLICATE_RATE,
    MAX_KEY_CANDIDATES,
    MIN_KEY_PROBE_ROWS,
    UNIQUE_SHARE,
    KeyWindow,
)
from lakegate.contracts.temporal.freshness import MAX_LAGS, MIN_FRESHNESS_WINDOWS
from lakegate.contracts.temporal.lateness import (
    LABELED_LATE_S,
    LATE_LABEL,
    LatenessHistogram,
    carried_watermark,
    late_labels,
    lateness_quantile,
    watermark_lateness,
)
from lakegate.contracts.temporal.times import (
    ARRIVAL_TIME,
    EVENT_TIME,
    HOUR_US,
    US,
    b64,
    column_micros,
    event_micros,
    unb64,
)
from lakegate.contracts.temporal.volume import (
    BLOCKS,
    CORE,
    MAX_BLOCK_RATIO,
    MAX_BUCKETS,
    MIN_BLOCK_RATIO,
    MIN_VOLUME_HOURS,
    RATIO_MARGIN,
    RATIO_SIGMAS,
    WEEKLY_HOURS,
    seasonal_slots,
    volume_ratios,
    window_profile,
)

SYSTEM_PREFIX = "_lg_"


def _max_of(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


class TemporalLearner:
    """Candidate event keys with their duplicates, lateness, hourly volume and window profiles."""

    def __init__(self, config: LearnConfig) -> None:
        self.config = config
        self.rows_seen = 0
        self.key_columns: dict[str, list[str]] = {}
        self.key_windows: dict[str, KeyWindow] = {}
        self.key_rows: dict[str, int] = {}
        self.key_duplicates: dict[str, int] = {}
        self.watermark: int | None = None
        """What the previous warm-up window carried over (:func:`carried_watermark`); lateness is judged
        against it and the window's own running maximum, so a stream rewound once does not stay late."""
        self.window_max: int | None = None
        self.lateness = {"watermark": LatenessHistogram(), "arrival": LatenessHistogram(), "label": LatenessHistogram()}
        self.hours: dict[int, int] = {}
        self.in_window = 0
        self.window_times: list[np.ndarray] = []
        self.profiles: deque[dict[str, Any]] = deque(maxlen=500)
        self.window_lag: list[int] = []
        self.lags: deque[float] = deque(maxlen=MAX_LAGS)
        self.shift = 1.0

    def observe(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        times = event_micros(rows)
        if not self.key_columns and (rows.num_rows >= MIN_KEY_PROBE_ROWS or self.rows_seen >= 10 * MIN_KEY_PROBE_ROWS):
            self._choose_key_candidates(rows)
        for name, columns in self.key_columns.items():
            if all(c in rows.column_names for c in columns):
                duplicate = self.key_windows[name].check(row_hashes(rows, columns), times)
                self.key_duplicates[name] += int(duplicate.sum())
                self.key_rows[name] += rows.num_rows
        if times is not None:
            arrival = column_micros(rows.column(ARRIVAL_TIME)) if ARRIVAL_TIME in rows.column_names else None
            labels = late_labels(rows) if LATE_LABEL in rows.column_names else None
            self._observe_times(times, arrival, labels)
        self.rows_seen += rows.num_rows

    def _choose_key_candidates(self, rows: pa.Table) -> None:
        data = [n for n in rows.column_names if not n.startswith(SYSTEM_PREFIX)]
        window = self.config.duplicate_window_s
        self.key_columns["row"] = data
        singles = []
        for name in data:
            data_type = rows.schema.field(name).type
            if pa.types.is_floating(data_type) or pa.types.is_boolean(data_type):
                continue
            distinct = pc.count_distinct(rows.column(name)).as_py()
            if distinct >= UNIQUE_SHARE * rows.num_rows:
                singles.append(name)
        for name in singles[:MAX_KEY_CANDIDATES]:
            self.key_columns[name] = [name]
        for name in self.key_columns:
            self.key_windows[name] = KeyWindow(window, window)
            self.key_rows[name] = 0
            self.key_duplicates[name] = 0

    def _observe_times(self, times: np.ndarray, arrival: np.ndarray | None, labels: np.ndarray | None) -> None:
        hours, counts = np.unique(times // HOUR_US, return_counts=True)
        previous_rate = self._rate()
        for hour, count in zip(hours.tolist(), counts.tolist(), strict=True):
            self.hours[hour] = self.hours.get(hour, 0) + count
        if len(self.hours) > MAX_BUCKETS:
            for hour in sorted(self.hours)[: len(self.hours) - MAX_BUCKETS]:
                del self.hours[hour]
        rate = self._rate()
        self.shift = abs(rate - previous_rate) / previous_rate if previous_rate > 0 else 1.0
        size = self.config.window_rows
        start = 0
        while start < len(times):
            take = min(size - self.in_window, len(times) - start)
            chunk = times[start : start + take]
            closes = self.in_window + take >= size
            reference = _max_of(self.watermark, self.window_max)
            self.lateness["watermark"].add(watermark_lateness(chunk, reference), closes)
            self.window_max = _max_of(self.window_max, int(chunk.max()))
            if labels is not None:
                self.lateness["label"].add(labels[start : start + take] * LABELED_LATE_S, closes)
            if arrival is not None:
                arrived = arrival[start : start + take]
                self.lateness["arrival"].add(np.clip(arrived - chunk, 0, None) / US, closes)
                lag = [int(chunk.max()), int(arrived.max())]
                self.window_lag = (
                    lag if not self.window_lag else [max(self.window_lag[0], lag[0]), max(self.window_lag[1], lag[1])]
                )
            self.window_times.append(chunk)
            self.in_window += take
            start += take
            if closes:
                profile = window_profile(np.concatenate(self.window_times))
                if profile is not None:
                    self.profiles.append(profile)
                if self.window_lag:
                    self.lags.append((self.window_lag[1] - self.window_lag[0]) / US)
                self.watermark = carried_watermark(np.concatenate(self.window_times))
                self.window_times, self.window_lag, self.in_window = [], [], 0
                self.window_max = None

    def _rate(self) -> float:
        if not self.hours:
            return 0.0
        span = max(self.hours) - min(self.hours) + 1
        return sum(self.hours.values()) / span

    def stability(self) -> float:
        return float(min(self.shift, 1.0))

    def rules(self, schema: DatasetSchema) -> list[Rule]:
        out: list[Rule] = []
        key = self._key_rule(schema)
        if key is not None:
            out.append(key)
        for basis, lateness in self.lateness.items():
            params = lateness.rule_params(basis)
            if params is None or lateness.counts.sum() < self.config.min_support:
                continue
            columns = [EVENT_TIME] + ({"arrival": [ARRIVAL_TIME], "label": [LATE_LABEL]}.get(basis, []))
            out.append(
                Rule(
                    id=f"lateness:{basis}",
                    kind="lateness",
                    columns=columns,
                    params=params,
                    action="alert",
                    severity="warning",
                    support=int(lateness.counts.sum()),
                    description=(
                        f"at most {params['allowed_share']:.1%} of a window labeled late by the normalize stage"
                        if basis == "label"
                        else f"at most {params['allowed_share']:.1%} of a window more than {params['threshold_s']:g}"
                        f" s behind the {'watermark' if basis == 'watermark' else 'arrival time'}"
                    ),
                )
            )
        volume = self._volume_rule()
        if volume is not None:
            out.append(volume)
        freshness = self._freshness_rule()
        if freshness is not None:
            out.append(freshness)
        return out

    def _key_rule(self, schema: DatasetSchema) -> Rule | None:
        window = self.config.duplicate_window_s
        p999 = lateness_quantile(self.lateness["watermark"].counts, 0.999)
        params: dict[str, Any] = {
            "window_s": window,
            "retention_s": window + p999,
            "keep_rows": KEY_KEEP_ROWS,
        }
        if schema.keys:
            return Rule(
                id="unique_key:" + "+".join(schema.keys),
                kind="unique_key",
                columns=list(schema.keys),
                params={**params, "key": "declared"},
                description=f"one event per {' + '.join(schema.keys)} within {window:g} s",
            )
        ranked = [n for n in self.key_columns if n != "row"] + ["row"]
        for name in ranked:
            rows = self.key_rows.get(name, 0)
            if rows < self.config.min_support:
                continue
            rate = self.key_duplicates[name] / rows
            if rate > MAX_DUPLICATE_RATE:
                continue
            columns = self.key_columns[name]
            label = "the whole row" if name == "row" else name
            return Rule(
                id=f"unique_key:{'row' if name == 'row' else name}",
                kind="unique_key",
                columns=columns,
                params={**params, "key": "row" if name == "row" else "column"},
                support=rows,
                confidence=round(1.0 - rate, 6),
                description=f"one event per {label} within {window:g} s (duplicates in warm-up: {rate:.4%})",
            )
        return None

    def baseline(self) -> tuple[np.ndarray, bool] | None:
        """Rows per hour per seasonal slot, and whether the slots are hours of the week."""
        if not self.hours:
            return None
        first, last = min(self.hours), max(self.hours)
        span = last - first + 1
        if span < MIN_VOLUME_HOURS:
            return None
        trim = 24 if span >= 7 * 24 else 1
        hours = np.arange(first + trim, last - trim + 1, dtype=np.int64)
        counts = np.array([self.hours.get(h, 0) for h in hours.tolist()], dtype=np.float64)
        weekly = span >= WEEKLY_HOURS
        slots = seasonal_slots(hours, weekly)
        size = 168 if weekly else 24
        seen = np.bincount(slots, minlength=size)
        rate = np.bincount(slots, weights=counts, minlength=size) / np.maximum(seen, 1)
        return rate, weekly

    def _volume_rule(self) -> Rule | None:
        baseline = self.baseline()
        if baseline is None or len(self.profiles) < 3 or self.rows_seen < self.config.min_support:
            return None
        rate, weekly = baseline
        stats = [volume_ratios(p, rate, weekly) for p in self.profiles]
        ratios = np.array([s[0] for s in stats if math.isfinite(s[0])])
        blocks = np.array([s[1] for s in stats if math.isfinite(s[1])])
        if len(ratios) < 3:
            return None
        mean, std = float(ratios.mean()), float(ratios.std())
        low = max(0.3, min(float(ratios.min()) - RATIO_MARGIN, mean - RATIO_SIGMAS * std))
        high = max(float(ratios.max()) + RATIO_MARGIN, mean + RATIO_SIGMAS * std)
        block_low = float(np.clip(0.6 * blocks.min(), MIN_BLOCK_RATIO, MAX_BLOCK_RATIO)) if len(blocks) else 0.0
        return Rule(
            id="volume:event_time",
            kind="volume",
            columns=[EVENT_TIME],
            params={
                "bucket_s": 3600,
                "seasonality": "hour_of_week" if weekly else "hour_of_day",
                "baseline": [round(float(x), 4) for x in rate],
                "low": round(low, 4),
                "high": round(high, 4),
                "block_low": round(block_low, 4),
                "blocks": BLOCKS,
                "core": list(CORE),
                "ratio_mean": round(mean, 4),
                "ratio_std": round(std, 4),
                "windows": len(ratios),
            },
            action="alert",
            severity="warning",
            support=self.rows_seen,
            description=(
                f"rows per event-time span within [{low:.2f}, {high:.2f}] x the "
                f"{'hour-of-week' if weekly else 'hour-of-day'} baseline; no sub-span below {block_low:.2f}x"
            ),
        )

    def _freshness_rule(self) -> Rule | None:
        if len(self.lags) < MIN_FRESHNESS_WINDOWS:
            return None
        lags = np.array(self.lags)
        p99 = float(np.quantile(lags, 0.99))
        threshold = max(2 * p99, p99 + 60.0)
        return Rule(
            id="freshness:arrival",
            kind="freshness",
            columns=[EVENT_TIME, ARRIVAL_TIME],
            params={"threshold_s": round(threshold, 3), "p99_s": round(p99, 3), "windows": len(lags)},
            action="alert",
            severity="warning",
            support=len(lags) * self.config.window_rows,
            description=f"newest event at most {threshold:g} s behind the newest arrival",
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "rows_seen": self.rows_seen,
            "key_columns": self.key_columns,
            "key_windows": {n: w.to_state() for n, w in self.key_windows.items()},
            "key_rows": self.key_rows,
            "key_duplicates": self.key_duplicates,
            "watermark": self.watermark,
            "window_max": self.window_max,
            "lateness": {b: lat.to_state() for b, lat in self.lateness.items()},
            "hours": [[h, c] for h, c in self.hours.items()],
            "in_window": self.in_window,
            "window_times": b64(np.concatenate(self.window_times) if self.window_times else np.zeros(0, np.int64)),
            "profiles": list(self.profiles),
            "window_lag": self.window_lag,
            "lags": list(self.lags),
            "shift": self.shift,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        window = self.config.duplicate_window_s
        self.rows_seen = int(state["rows_seen"])
        self.key_columns = {k: list(v) for k, v in state["key_columns"].items()}
        self.key_windows = {}
        for name, data in state["key_windows"].items():
            self.key_windows[name] = KeyWindow(window, window)
            self.key_windows[name].from_state(data)
        self.key_rows = {k: int(v) for k, v in state["key_rows"].items()}
        self.key_duplicates = {k: int(v) for k, v in state["key_duplicates"].items()}
        self.watermark = state["watermark"]
        self.window_max = state["window_max"]
        for basis, data in state["lateness"].items():
            self.lateness[basis].from_state(data)
        self.hours = {int(h): int(c) for h, c in state["hours"]}
        self.in_window = int(state["in_window"])
        times = unb64(state["window_times"], np.int64)
        self.window_times = [times] if len(times) else []
        self.profiles = deque(state["profiles"], maxlen=500)
        self.window_lag = list(state["window_lag"])
        self.lags = deque(state["lags"], maxlen=MAX_LAGS)
        self.shift = float(state["shift"])
