"""Freshness: how far the newest event of a window lags the newest arrival."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from lakegate.contracts.api import Alert, alerts_of_windows
from lakegate.contracts.model import Rule
from lakegate.contracts.temporal.times import (
    ARRIVAL_TIME,
    EVENT_TIME,
    US,
    as_datetime,
    column_micros,
    event_micros,
    time_bounds,
    window_micros,
)

MAX_LAGS = 1000
MIN_FRESHNESS_WINDOWS = 3


class FreshnessChecker:
    """Alerts when the newest event of a window lags the newest arrival by more than learned."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.threshold_s = float(rule.params["threshold_s"])

    def check_windows(self, block: pa.Table, first_index: int, size: int) -> list[Alert]:
        windows = block.num_rows // size
        if EVENT_TIME not in block.column_names or ARRIVAL_TIME not in block.column_names or windows == 0:
            return []
        newest_event = window_micros(block.column(EVENT_TIME), windows, size).max(axis=1)
        newest_arrival = window_micros(block.column(ARRIVAL_TIME), windows, size).max(axis=1)
        suspects = np.flatnonzero((newest_arrival - newest_event) / US > self.threshold_s * 0.999)
        return alerts_of_windows(self, block, suspects, first_index, size)

    def check(self, window: pa.Table, index: int) -> list[Alert]:
        times = event_micros(window)
        if times is None or ARRIVAL_TIME not in window.column_names or not len(times):
            return []
        arrival = column_micros(window.column(ARRIVAL_TIME))
        lag = (int(arrival.max()) - int(times.max())) / US
        if lag <= self.threshold_s:
            return []
        start, end = time_bounds(times)
        return [
            Alert(
                rule_id=self.rule.id,
                kind="freshness",
                severity="critical" if lag > 3 * self.threshold_s else "warning",
                message=f"newest event is {lag:g} s behind the newest arrival in window {index}",
                metric="lag_s",
                value=round(lag, 3),
                threshold=self.threshold_s,
                window_index=index,
                window_start=start,
                window_end=end,
                evidence={
                    "newest_event": as_datetime(int(times.max())),
                    "newest_arrival": as_datetime(int(arrival.max())),
                },
            )
        ]

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None
