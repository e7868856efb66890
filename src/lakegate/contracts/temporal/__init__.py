"""The temporal family: duplicate events, lateness, volume with seasonality, freshness.

==============  ====================================================================================
``unique_key``  row level, stateful: a row whose key (declared, a column that was unique during
                warm-up, or else the whole row) was already seen with an event time within
                ``window_s`` is a duplicate. State: 64-bit key hashes with their event times, kept
                while within ``retention_s`` of the watermark *or* among the last ``keep_rows`` keys,
                and never more than ``MAX_KEYS``
``lateness``    window level: the share of rows more than a threshold behind the watermark (the
                newest event time before them in the window, or handed on by the previous window's
                tail), or behind their arrival time when rows carry ``_lg_ingested_at``, or labeled
                late (``_lg_late``) by the normalize stage, vs the largest share seen in a warm-up
                window, judged at several thresholds (``bands``)
``volume``      window level: rows per event-time span vs an hour-of-week (or hour-of-day) baseline
                rate; the window's core span (1%-99% of its event times) and each of ``BLOCKS`` sub-
                spans are compared with what the baseline expects there (a drop or a spike)
``freshness``   window level, with arrival times only: how far the newest event of a window lags the
                newest arrival, vs the warm-up windows
==============  ====================================================================================

Rule params (JSON): ``unique_key``: window_s, retention_s, keep_rows, key (column, row, declared);
``lateness``: basis (watermark, arrival, label), threshold_s, allowed_share, expected_share,
max_window_share, bands (``[[threshold_s, allowed_share], ...]``), min_rows, quantiles_s (p50, p90,
p99, p999), windows; ``volume``: bucket_s, seasonality (hour_of_week, hour_of_day), baseline (rows
per hour per slot), low, high, block_low, blocks, core, ratio_mean, ratio_std, windows;
``freshness``: threshold_s, p99_s, windows.

Event time is ``_lg_event_time`` (``timestamp[us, UTC]``); without it only ``unique_key`` is learned.
Key hashes are computed with numpy over the Arrow buffers (strings byte-wise, numbers by bit pattern),
so that they are the same in every process and survive a restore.
"""

from __future__ import annotations

from lakegate.contracts.api import LearnConfig, RowChecker, WindowChecker
from lakegate.contracts.hashing import row_hashes
from lakegate.contracts.model import Rule
from lakegate.contracts.temporal.duplicates import DuplicateChecker, KeyWindow, grouped_order
from lakegate.contracts.temporal.freshness import FreshnessChecker
from lakegate.contracts.temporal.lateness import LatenessChecker
from lakegate.contracts.temporal.learner import TemporalLearner
from lakegate.contracts.temporal.volume import VolumeChecker, volume_ratios, volume_windows, window_profile

__all__ = [
    "KINDS",
    "TEMPORAL_FAMILY",
    "DuplicateChecker",
    "FreshnessChecker",
    "KeyWindow",
    "LatenessChecker",
    "TemporalFamily",
    "TemporalLearner",
    "VolumeChecker",
    "grouped_order",
    "row_hashes",
    "volume_ratios",
    "volume_windows",
    "window_profile",
]

KINDS = frozenset({"unique_key", "lateness", "volume", "freshness"})


class TemporalFamily:
    """Duplicate events (row level) and lateness, volume, freshness (window level)."""

    name = "temporal"
    kinds = KINDS

    def learner(self, config: LearnConfig) -> TemporalLearner:
        return TemporalLearner(config)

    def row_checker(self, rule: Rule, config: LearnConfig) -> RowChecker | None:
        return DuplicateChecker(rule, config) if rule.kind == "unique_key" else None

    def window_checker(self, rule: Rule, config: LearnConfig) -> WindowChecker | None:
        if rule.kind == "lateness":
            return LatenessChecker(rule)
        if rule.kind == "volume":
            return VolumeChecker(rule)
        if rule.kind == "freshness":
            return FreshnessChecker(rule)
        return None


TEMPORAL_FAMILY = TemporalFamily()
