"""Duplicate events: the recent keys (hash, event time) of a stream, and the checker of ``unique_key`` rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from lakegate.contracts.api import LearnConfig, RowCheck
from lakegate.contracts.hashing import row_hashes
from lakegate.contracts.model import Rule
from lakegate.contracts.temporal.times import EVENT_TIME, US, b64, event_micros, unb64

KEY_KEEP_ROWS = 100_000
MAX_KEYS = 2_000_000
MAX_KEY_CANDIDATES = 4
UNIQUE_SHARE = 0.99
MIN_KEY_PROBE_ROWS = 100
"""Key candidates (columns unique in a batch) are chosen from the first batch this large."""
MAX_DUPLICATE_RATE = 5e-4


# ---------------------------------------------------------------------------------------------------
# Duplicate state


_TOP_BIT = np.uint64(1 << 63)


PARTITION_ROWS = 1 << 20
"""From this many keys on, sort in 256 cache-sized parts split by the top byte (a radix pass first)."""


def _sorted_words(words: np.ndarray) -> np.ndarray:
    """uint64 ``words`` sorted ascending, through numpy's SIMD sort for signed integers (flipping the
    top bit makes signed order the unsigned one). A large array is first split by its top byte (a
    stable radix argsort of one byte) and the parts sorted one by one while they sit in cache."""
    if len(words) < PARTITION_ROWS:
        return np.sort((words ^ _TOP_BIT).view(np.int64)).view(np.uint64) ^ _TOP_BIT
    top = (words >> np.uint64(56)).astype(np.uint8)
    out = (words[np.argsort(top, kind="stable")] ^ _TOP_BIT).view(np.int64)
    bounds = np.r_[0, np.cumsum(np.bincount(top, minlength=256))]
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        out[start:stop].sort()
    return out.view(np.uint64) ^ _TOP_BIT


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
    packed = _sorted_words(packed)
    order = (packed & np.uint64((1 << bits) - 1)).view(np.int64)
    ordered = hashes[order]
    if n > 1 and bool((ordered[1:] < ordered[:-1]).any()):
        prefix = packed >> shift
        clash = np.flatnonzero((prefix[1:] == prefix[:-1]) & (ordered[1:] != ordered[:-1]))
        at = np.flatnonzero(np.isin(prefix, np.unique(prefix[clash])))
        fix = np.lexsort((order[at], ordered[at]))
        order[at], ordered[at] = order[at][fix], ordered[at][fix]
    return order, ordered


PREFIX_FILTER_ROWS = 1 << 16
"""From this many rows on, only rows sharing a 32-bit hash prefix are grouped (see :func:`repeat_candidates`)."""


def _maybe_in(members: np.ndarray, values: np.ndarray, bits: int) -> np.ndarray:
    """Positions of ``values`` whose top ``bits`` bits some member's share (a superset of the exact
    matches): a look-up in a table small enough to stay in cache, so an exact search runs on few rows."""
    shift = members.dtype.type(8 * members.dtype.itemsize - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[members >> shift] = True
    return np.flatnonzero(table[values >> shift])


def repeat_candidates(hashes: np.ndarray) -> np.ndarray:
    """Ascending rows that include every row whose hash occurs more than once in ``hashes``.

    In a large batch these are the rows whose top 32 bits another row shares (a few thousand in
    millions of distinct keys): sorting 32-bit prefixes, split by their top byte, costs half of
    grouping every 64-bit hash, and the other rows are keys seen once, which need no grouping.
    """
    n = len(hashes)
    if n < PREFIX_FILTER_ROWS:
        return np.arange(n)
    prefix = (hashes >> np.uint64(32)).astype(np.uint32)
    top = (prefix >> np.uint32(24)).astype(np.uint8)
    parts = prefix[np.argsort(top, kind="stable")]
    bounds = np.r_[0, np.cumsum(np.bincount(top, minlength=256))].tolist()
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        parts[start:stop].sort()  # only equal prefixes must meet: each part sorted while in cache
    repeated = np.unique(parts[1:][parts[1:] == parts[:-1]])
    maybe = _maybe_in(repeated, prefix, 20)
    return maybe[np.isin(prefix[maybe], repeated)]


class KeyWindow:
    """Keys seen recently (hash, event time), bounded by retention, row count and ``MAX_KEYS``.

    The hashes are kept sorted (a look-up in a small table of their top bits per row, a binary search
    for the few rows it lets through, a merge per batch: no hash table to rebuild for every batch),
    with the event time and the arrival sequence number of each key.
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
        # Only rows whose hash may repeat are grouped (one sort; a hash table over millions of distinct
        # 64-bit keys is slower); every other row is the first and only row of its key.
        head = np.ones(n, dtype=bool)  # a key's first row in this batch
        duplicate = np.zeros(n, dtype=bool)
        rows = repeat_candidates(hashes)
        if len(rows):
            order, ordered = grouped_order(hashes[rows])
            first = np.empty(len(rows), dtype=bool)
            first[0] = True
            np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
            if not first.all():
                members = rows[order]
                member_times = times[members]
                starts = np.flatnonzero(first)
                first_time = np.repeat(member_times[starts], np.diff(np.r_[starts, len(rows)]))
                head[members] = first
                duplicate[members] = ~first & (np.abs(member_times - first_time) <= self.window_us)
        fresh = head
        if len(self.hashes):
            bits = min(22, max(16, len(self.hashes).bit_length() + 5))  # at most 1 in 32 slots taken
            maybe = _maybe_in(self.hashes, hashes, bits)
            at = np.minimum(np.searchsorted(self.hashes, hashes[maybe]), len(self.hashes) - 1)
            found = self.hashes[at] == hashes[maybe]
            hit, at = maybe[found], at[found]
            if len(hit):
                close = np.abs(times[hit] - self.times[at]) <= self.window_us
                duplicate[hit[close]] = True
                refresh = ~close & head[hit]  # the same key again, long after: a new event
                self.times[at[refresh]] = times[hit[refresh]]
                self.seq[at[refresh]] = self.next_seq + hit[refresh]
                fresh = head.copy()
                fresh[hit] = False
        newest = int(times.max())
        self.watermark = newest if self.watermark is None else max(self.watermark, newest)
        if int(fresh.sum()) > self.keep_rows:  # only what the eviction below would keep
            recent = times >= self.watermark - self.retention_us
            recent[max(0, n - self.keep_rows) :] = True
            fresh = fresh & recent
        rows = np.flatnonzero(fresh)
        by_hash, new_hashes = grouped_order(hashes[rows])  # the state stays sorted by hash
        rows = rows[by_hash]
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
        return duplicate

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
            "hashes": b64(self.hashes),
            "times": b64(self.times),
            "seq": b64(self.seq),
            "next_seq": self.next_seq,
            "watermark": self.watermark,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.hashes = unb64(state["hashes"], np.uint64)
        self.times = unb64(state["times"], np.int64)
        self.seq = unb64(state["seq"], np.int64)
        self.next_seq = int(state["next_seq"])
        self.watermark = state["watermark"]


# ---------------------------------------------------------------------------------------------------
# Checker


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
