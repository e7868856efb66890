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

import base64
import math
from collections import deque
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import (
    Alert,
    LearnConfig,
    RowCheck,
    RowChecker,
    WindowChecker,
    alerts_of_windows,
)
from lakegate.contracts.hashing import row_hashes
from lakegate.contracts.model import DatasetSchema, Rule

SYSTEM_PREFIX = "_lg_"
EVENT_TIME = "_lg_event_time"
ARRIVAL_TIME = "_lg_ingested_at"
LATE_LABEL = "_lg_late"
LABELED_LATE_S = 3600.0
"""The ``label`` basis counts a row labeled late by the normalize stage as this many seconds late."""
KINDS = frozenset({"unique_key", "lateness", "volume", "freshness"})
US = 1_000_000
HOUR_US = 3600 * US

# duplicates
KEY_KEEP_ROWS = 100_000
MAX_KEYS = 2_000_000
MAX_KEY_CANDIDATES = 4
UNIQUE_SHARE = 0.99
MIN_KEY_PROBE_ROWS = 100
"""Key candidates (columns unique in a batch) are chosen from the first batch this large."""
MAX_DUPLICATE_RATE = 5e-4

# lateness
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

# volume
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

# freshness
MAX_LAGS = 1000
MIN_FRESHNESS_WINDOWS = 3


# ---------------------------------------------------------------------------------------------------
# Hashing


def event_micros(rows: pa.Table) -> np.ndarray | None:
    """``_lg_event_time`` as int64 microseconds (nulls: the newest event time of the batch)."""
    if EVENT_TIME not in rows.column_names:
        return None
    return _micros(rows.column(EVENT_TIME))


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if pa.types.is_timestamp(array.type) and array.type.unit != "us":
        array = pc.cast(array, pa.timestamp("us", array.type.tz))
    values = pc.fill_null(array.view(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        fill = int(values[valid].max()) if valid.any() else 0
        values = np.where(valid, values, fill)
    return np.asarray(values)


def window_micros(column: pa.ChunkedArray, windows: int, size: int) -> np.ndarray:
    """A timestamp column as int64 microseconds, one row per window; nulls take their window's newest
    value (what :func:`_micros` does for one window)."""
    array = column.combine_chunks()
    if pa.types.is_timestamp(array.type) and array.type.unit != "us":
        array = pc.cast(array, pa.timestamp("us", array.type.tz))
    values = pc.fill_null(array.view(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    grid = values[: windows * size].reshape(windows, size)  # read-only when it is Arrow's buffer
    if not array.null_count:
        return grid
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False))[: windows * size].reshape(windows, size)
    newest = np.where(valid, grid, np.iinfo(np.int64).min).max(axis=1)
    return np.where(valid, grid, np.where(newest == np.iinfo(np.int64).min, 0, newest)[:, None])


def _labels(rows: pa.Table) -> np.ndarray:
    """``_lg_late`` as a 0/1 float array (null: not late)."""
    return np.asarray(pc.fill_null(rows.column(LATE_LABEL), False).to_numpy(zero_copy_only=False), dtype=np.float64)


def _max_of(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _unb64(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


def _as_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / US, tz=UTC)


def _iso(micros: float) -> str:
    return datetime.fromtimestamp(int(micros) / US, tz=UTC).isoformat()


# ---------------------------------------------------------------------------------------------------
# Duplicate state


_TOP_BIT = np.uint64(1 << 63)


def grouped_order(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The permutation that sorts uint64 ``hashes`` ascending, equal hashes by row (each key's rows
    together, its first occurrence first), and the sorted hashes.

    Sorting values is twice as fast as numpy's argsort, so each row's index is packed into the low bits
    of its hash (the top bits kept) and the packed words sorted as signed integers (numpy's SIMD path;
    flipping the top bit makes signed order the unsigned one). Different hashes whose top bits agree (a
    handful in millions) can come out of order; those runs are re-sorted on the full hash.
    """
    n = len(hashes)
    bits = max(1, (n - 1).bit_length())
    if bits > 40:
        order = np.lexsort((np.arange(n), hashes))
        return order, hashes[order]
    shift = np.uint64(bits)
    packed = hashes >> shift
    packed <<= shift
    packed |= np.arange(n, dtype=np.uint64)
    packed ^= _TOP_BIT
    packed = np.sort(packed.view(np.int64)).view(np.uint64)
    order = (packed & np.uint64((1 << bits) - 1)).view(np.int64)
    ordered = hashes[order]
    if n > 1 and bool((ordered[1:] < ordered[:-1]).any()):
        prefix = packed >> shift
        clash = np.flatnonzero((prefix[1:] == prefix[:-1]) & (ordered[1:] != ordered[:-1]))
        at = np.flatnonzero(np.isin(prefix, np.unique(prefix[clash])))
        fix = np.lexsort((order[at], ordered[at]))
        order[at], ordered[at] = order[at][fix], ordered[at][fix]
    return order, ordered


class KeyWindow:
    """Keys seen recently (hash, event time), bounded by retention, row count and ``MAX_KEYS``.

    The hashes are kept sorted (a binary search per row, a merge per batch: no hash table to rebuild
    for every batch), with the event time and the arrival sequence number of each key.
    """

    def __init__(self, window_s: float, retention_s: float, keep_rows: int = KEY_KEEP_ROWS) -> None:
        self.window_us = int(window_s * US)
        self.retention_us = int(max(retention_s, window_s) * US)
        self.keep_rows = keep_rows
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.times = np.zeros(0, dtype=np.int64)
        self.seq = np.zeros(0, dtype=np.int64)
        self.next_seq = 0
        self.watermark: int | None = None

    def check(self, hashes: np.ndarray, times: np.ndarray | None) -> np.ndarray:
        """Mask of rows repeating a key seen earlier (before, or earlier in this batch) within the
        window; then remember the batch's keys."""
        n = len(hashes)
        if n == 0:
            return np.zeros(0, dtype=bool)
        if times is None:
            times = np.zeros(n, dtype=np.int64)
        # One sort groups equal keys (a hash table over millions of distinct 64-bit keys is slower),
        # and everything after works in that order: lookups in the sorted state become a merge.
        order, ordered = grouped_order(hashes)
        head = np.empty(n, dtype=bool)  # a key's first row in this batch
        head[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=head[1:])
        duplicate: np.ndarray | None = None  # in sorted order; None: no row repeats
        if not head.all():
            starts = np.flatnonzero(head)
            sorted_times = times[order]
            first_time = np.repeat(sorted_times[starts], np.diff(np.r_[starts, n]))
            duplicate = ~head & (np.abs(sorted_times - first_time) <= self.window_us)
        fresh = head
        if len(self.hashes):
            at = np.minimum(np.searchsorted(self.hashes, ordered), len(self.hashes) - 1)
            found = self.hashes[at] == ordered
            hit = np.flatnonzero(found)
            if len(hit):
                hit_times = times[order[hit]]
                close = np.abs(hit_times - self.times[at[hit]]) <= self.window_us
                if duplicate is None:
                    duplicate = np.zeros(n, dtype=bool)
                duplicate[hit[close]] = True
                refresh = hit[~close & head[hit]]  # the same key again, long after: a new event
                self.times[at[refresh]] = times[order[refresh]]
                self.seq[at[refresh]] = self.next_seq + order[refresh]
                fresh = head & ~found
        newest = int(times.max())
        self.watermark = newest if self.watermark is None else max(self.watermark, newest)
        if int(fresh.sum()) > self.keep_rows:  # only what the eviction below would keep
            recent = times >= self.watermark - self.retention_us
            recent[max(0, n - self.keep_rows) :] = True
            fresh = fresh & recent[order]
        positions = np.flatnonzero(fresh)  # sorted order: the new keys come out in hash order
        new_hashes, rows = ordered[positions], order[positions]
        new_times = times[rows]
        if len(self.hashes):
            slots = np.searchsorted(self.hashes, new_hashes)
            self.hashes = np.insert(self.hashes, slots, new_hashes)
            self.times = np.insert(self.times, slots, new_times)
            self.seq = np.insert(self.seq, slots, self.next_seq + rows)
        else:
            self.hashes, self.times, self.seq = new_hashes, new_times, self.next_seq + rows
        self.next_seq += n
        self._evict()
        out = np.zeros(n, dtype=bool)
        if duplicate is not None:
            out[order] = duplicate
        return out

    def _evict(self) -> None:
        if len(self.hashes) <= self.keep_rows or self.watermark is None:
            return
        keep = (self.times >= self.watermark - self.retention_us) | (self.seq >= self.next_seq - self.keep_rows)
        if keep.sum() > MAX_KEYS:
            keep &= self.seq >= np.sort(self.seq[keep])[-MAX_KEYS]
        if not keep.all():
            self.hashes, self.times, self.seq = self.hashes[keep], self.times[keep], self.seq[keep]

    def to_state(self) -> dict[str, Any]:
        return {
            "hashes": _b64(self.hashes),
            "times": _b64(self.times),
            "seq": _b64(self.seq),
            "next_seq": self.next_seq,
            "watermark": self.watermark,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.hashes = _unb64(state["hashes"], np.uint64)
        self.times = _unb64(state["times"], np.int64)
        self.seq = _unb64(state["seq"], np.int64)
        self.next_seq = int(state["next_seq"])
        self.watermark = state["watermark"]


# ---------------------------------------------------------------------------------------------------
# Volume arithmetic (shared by learning and checking)


def _slots(hours: np.ndarray, weekly: bool) -> np.ndarray:
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
    return float((rate[_slots(hours, weekly)] * overlap).sum())


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


SCREEN_MARGIN = 0.01
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
    step = np.where(profiled, (high - low) / BLOCKS, 1.0)
    inside = (grid >= low[:, None]) & (grid <= high[:, None])
    guess = np.clip(np.floor((grid - low[:, None]) / step[:, None]), 0, BLOCKS - 1).astype(np.int64)
    rows = np.arange(windows)[:, None]
    guess -= grid < edges[rows, guess]  # float rounding at a block's edge: the edges decide
    guess = np.clip(guess, 0, BLOCKS - 1)
    guess += (guess < BLOCKS - 1) & (grid >= edges[rows, np.minimum(guess + 1, BLOCKS)])
    flat = (rows * BLOCKS + guess)[inside]
    counts = np.bincount(flat, minlength=windows * BLOCKS).reshape(windows, BLOCKS).astype(np.float64)
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


def _quantile(counts: np.ndarray, q: float) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    index = int(np.searchsorted(np.cumsum(counts), q * total, side="left"))
    upper = LATENESS_EDGES_S[min(index + 1, len(LATENESS_EDGES_S) - 1)]
    return float(upper if index > 0 else 0.0)


class _Lateness:
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
            "quantiles_s": {name: _quantile(self.counts, q) for name, q in QUANTILES.items()},
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
# The learner


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
        self.lateness = {"watermark": _Lateness(), "arrival": _Lateness(), "label": _Lateness()}
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
            arrival = _micros(rows.column(ARRIVAL_TIME)) if ARRIVAL_TIME in rows.column_names else None
            labels = _labels(rows) if LATE_LABEL in rows.column_names else None
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
        p999 = _quantile(self.lateness["watermark"].counts, 0.999)
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
        slots = _slots(hours, weekly)
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
            "window_times": _b64(np.concatenate(self.window_times) if self.window_times else np.zeros(0, np.int64)),
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
        times = _unb64(state["window_times"], np.int64)
        self.window_times = [times] if len(times) else []
        self.profiles = deque(state["profiles"], maxlen=500)
        self.window_lag = list(state["window_lag"])
        self.lags = deque(state["lags"], maxlen=MAX_LAGS)
        self.shift = float(state["shift"])


# ---------------------------------------------------------------------------------------------------
# Checkers


class DuplicateChecker:
    """Rows repeating an event key within the window (state: the keys of the recent past)."""

    def __init__(self, rule: Rule, config: LearnConfig) -> None:
        self.rule = rule
        params = rule.params
        window = float(params.get("window_s", config.duplicate_window_s))
        self.keys = KeyWindow(
            window, float(params.get("retention_s", window)), int(params.get("keep_rows", KEY_KEEP_ROWS))
        )
        self.window = window

    def check(self, rows: pa.Table) -> RowCheck:
        columns = self.rule.columns
        failed = self.keys.check(row_hashes(rows, columns), event_micros(rows))
        if not failed.any():
            return RowCheck(rule=self.rule, failed=failed)
        shown = list(columns[:6]) + ([EVENT_TIME] if EVENT_TIME in rows.column_names else [])
        observed = pa.StructArray.from_arrays([rows.column(c).combine_chunks() for c in shown], names=shown)
        key = "the whole row" if self.rule.params.get("key") == "row" else " + ".join(columns)
        return RowCheck(
            rule=self.rule,
            failed=failed,
            observed=observed,
            threshold=f"one event per {key} within {self.window:g} s of event time",
        )

    def to_state(self) -> dict[str, Any]:
        return self.keys.to_state()

    def from_state(self, state: dict[str, Any]) -> None:
        if state:
            self.keys.from_state(state)


def _bounds(times: np.ndarray) -> tuple[datetime | None, datetime | None]:
    if not len(times):
        return None, None
    return _as_datetime(int(times.min())), _as_datetime(int(times.max()))


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
            late_us = (_labels(block)[: windows * size].reshape(windows, size) * (LABELED_LATE_S * US)).astype(np.int64)
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
        for edge, allowed in self.bands:
            if edge <= 0:
                count = np.full(windows, size)
            else:
                count = (late_us >= math.floor(edge * US) - 1).sum(axis=1)
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
            lateness = np.clip(_micros(window.column(ARRIVAL_TIME)) - times, 0, None) / US
        elif self.basis == "label":
            if LATE_LABEL not in window.column_names:
                return []
            lateness = _labels(window) * LABELED_LATE_S
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
        start, end = _bounds(times)
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
        margin = SCREEN_MARGIN
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
        start, end = _bounds(times)
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
        arrival = _micros(window.column(ARRIVAL_TIME))
        lag = (int(arrival.max()) - int(times.max())) / US
        if lag <= self.threshold_s:
            return []
        start, end = _bounds(times)
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
                    "newest_event": _as_datetime(int(times.max())),
                    "newest_arrival": _as_datetime(int(arrival.max())),
                },
            )
        ]

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None


# ---------------------------------------------------------------------------------------------------
# The family


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
