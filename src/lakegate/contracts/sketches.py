"""Per-column profiles of fixed size, mergeable and serializable, learned from Arrow batches.

One :class:`ColumnProfile` per field holds what the column rules are derived from:

* numeric and temporal values (temporal as epoch microseconds): a KLL sketch for the body of the
  distribution, two REQ sketches for its tails (KLL's rank error is additive, so with ``k = 200`` its
  0.1% quantile can land anywhere below the 1.5% quantile; REQ's error is relative to the tail it
  serves), an HLL sketch for the cardinality, exact count/mean/variance/min/max, and the co-moment of
  the value with its arrival position (a trending field such as a timestamp or a month number);
* categories (strings, integers, booleans): exact counts and first positions while the field has at
  most ``max_categories`` distinct values, then a frequent-items sketch for the heavy hitters;
* strings: exact length counts, shape counts (capped), and how many values fit each known format.

Every update is vectorized; a Python loop only ever runs over the *distinct* values of a batch, and is
bounded. State goes to JSON-able dicts with the sketches as base64 (see ``to_state``/``from_state``).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts import formats
from lakegate.contracts.hashing import hash_array, mix

Kind = Literal["numeric", "temporal", "string", "boolean", "other"]

HLL_LG_K = 12
SAMPLE_SIZE = 256
PROFILE_RANKS: tuple[float, ...] = tuple(i / 100 for i in range(101))
"""Distinct values a profile keeps as examples (for field matching and transform synthesis)."""
"""4096 registers: about 1.6% relative error on the distinct count, ~3 KB."""
REQ_K = 12
HEAVY_LG_MAP = 10
"""Frequent-items map of 1024 slots for fields past ``max_categories`` distinct values."""
HEAVY_FEED = 1024
"""Per batch, only this many most frequent values of a high-cardinality field feed its heavy hitters."""
MAX_TRACKED_LENGTH = 4096
SHAPE_CAP = 256
HISTORY = 256
"""Window metrics kept per column for calibrating window thresholds (the most recent ones)."""
FORMAT_GIVE_UP = (10_000, 0.5)
"""After this many values, formats fitting fewer than this share are no longer evaluated."""

_MICROS: dict[str, int] = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}
_DAY_US = 86_400_000_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def kind_of(t: pa.DataType) -> Kind:
    """How a column is profiled, from its Arrow type."""
    if pa.types.is_dictionary(t):
        return kind_of(t.value_type)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    return "other"


def _chunk_numbers(chunk: pa.Array) -> np.ndarray:
    """One chunk's values as numpy (nulls hold arbitrary values); temporal as epoch microseconds."""
    t = chunk.type
    if pa.types.is_dictionary(t):
        chunk, t = chunk.dictionary_decode(), t.value_type
    if pa.types.is_decimal(t) or pa.types.is_float16(t):
        chunk = pc.cast(chunk, pa.float64())
    elif pa.types.is_timestamp(t):
        raw = _chunk_numbers(chunk.view(pa.int64()))
        if t.unit == "ns":
            return raw // 1000
        return raw * _MICROS[t.unit] if t.unit != "us" else raw
    elif pa.types.is_date32(t):
        return _chunk_numbers(chunk.view(pa.int32())).astype(np.int64) * _DAY_US
    elif pa.types.is_date64(t):
        return _chunk_numbers(chunk.view(pa.int64())) * 1000
    dtype = np.dtype(chunk.type.to_pandas_dtype())
    if len(chunk) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(chunk.buffers()[1], dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize)


def numbers(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric or temporal column as (values, validity); validity is None when nothing is null.

    Integers and floats are zero-copy views for single-chunk columns; timestamps and dates come as
    epoch microseconds (int64); decimals as float64. Null slots hold arbitrary values.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not chunks:
        return np.empty(0, dtype=np.float64), None
    parts = [_chunk_numbers(c) for c in chunks]
    values = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if column.null_count == 0:
        return values, None
    valid = [np.asarray(c.is_valid().to_numpy(zero_copy_only=False), dtype=bool) for c in chunks]
    return values, (valid[0] if len(valid) == 1 else np.concatenate(valid))


class NumericSketch:
    """Quantiles (KLL body, REQ tails), cardinality (HLL) and exact moments of a numeric stream."""

    def __init__(self, k: int = 200) -> None:
        self.kll = ds.kll_doubles_sketch(k)
        self.upper = ds.req_floats_sketch(REQ_K, True)
        self.lower = ds.req_floats_sketch(REQ_K, False)
        self.hll = ds.hll_sketch(HLL_LG_K)
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.integral = True
        """Every value so far was a whole number."""
        self.pos_mean = 0.0
        self.pos_m2 = 0.0
        self.co_moment = 0.0
        """Sum of (position - mean position) * (value - mean value): the trend's covariance."""

    def update(self, values: np.ndarray, positions: np.ndarray) -> None:
        """Add non-null values (float64) seen at the given arrival positions."""
        n = len(values)
        if n == 0:
            return
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            values, positions = values[finite], positions[finite]
            n = len(values)
            if n == 0:
                return
        self.kll.update(values)
        as_float32 = values.astype(np.float32)
        self.upper.update(as_float32)
        self.lower.update(as_float32)
        for value in np.unique(values).tolist():
            self.hll.update(value)
        self.integral = self.integral and bool(np.all(values == np.floor(values)))
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        pos = np.asarray(positions, dtype=np.float64)
        mean, pos_mean = float(values.mean()), float(pos.mean())
        dv, dp = values - mean, pos - pos_mean
        self._combine(n, mean, float(dv @ dv), pos_mean, float(dp @ dp), float(dp @ dv))

    def _combine(self, n: int, mean: float, m2: float, pos_mean: float, pos_m2: float, co: float) -> None:
        """Chan et al.'s pairwise update of count, means, second moments and co-moment."""
        total = self.count + n
        delta, delta_pos = mean - self.mean, pos_mean - self.pos_mean
        weight = self.count * n / total
        self.m2 += m2 + delta * delta * weight
        self.pos_m2 += pos_m2 + delta_pos * delta_pos * weight
        self.co_moment += co + delta * delta_pos * weight
        self.mean += delta * n / total
        self.pos_mean += delta_pos * n / total
        self.count = total

    def merge(self, other: NumericSketch) -> None:
        if other.count == 0:
            return
        self.kll.merge(other.kll)
        self.upper.merge(other.upper)
        self.lower.merge(other.lower)
        union = ds.hll_union(HLL_LG_K)
        union.update(self.hll)
        union.update(other.hll)
        self.hll = union.get_result(ds.tgt_hll_type.HLL_4)
        self.integral = self.integral and other.integral
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self._combine(other.count, other.mean, other.m2, other.pos_mean, other.pos_m2, other.co_moment)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    @property
    def distinct(self) -> float:
        return float(self.hll.get_estimate())

    @property
    def trend(self) -> float:
        """Correlation of the value with its arrival position (-1..1; 0 for a stationary field)."""
        if self.m2 <= 0 or self.pos_m2 <= 0:
            return 0.0
        return float(self.co_moment / math.sqrt(self.m2 * self.pos_m2))

    def quantiles(self, ranks: Iterable[float]) -> list[float]:
        """Quantiles of the body of the distribution (KLL)."""
        return [float(q) for q in self.kll.get_quantiles(list(ranks))] if self.count else []

    def cdf(self, points: Iterable[float]) -> list[float]:
        """P(X <= point) for each point, plus 1.0 at the end (KLL)."""
        return [float(p) for p in self.kll.get_cdf(list(points), True)]

    def tails(self, low: float, high: float) -> tuple[float, float]:
        """The ``low`` and ``high`` quantiles from the tail sketches, within the exact min and max."""
        q_low = float(self.lower.get_quantile(low))
        q_high = float(self.upper.get_quantile(high, True))
        return min(max(q_low, self.min), self.max), max(min(q_high, self.max), self.min)

    def share_within(self, low: float, high: float) -> float:
        """Estimated share of values in [low, high]."""
        if not self.count:
            return 1.0
        below = float(self.lower.get_rank(low)) if low > self.min else 0.0
        above = 1.0 - float(self.upper.get_rank(high, True)) if high < self.max else 0.0
        return max(0.0, 1.0 - below - above)

    def to_state(self) -> dict[str, Any]:
        return {
            "kll": b64(self.kll.serialize()),
            "upper": b64(self.upper.serialize()),
            "lower": b64(self.lower.serialize()),
            "hll": b64(self.hll.serialize_compact()),
            "moments": [self.count, self.mean, self.m2, *((self.min, self.max) if self.count else (None, None))],
            "trend": [self.pos_mean, self.pos_m2, self.co_moment],
            "integral": self.integral,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NumericSketch:
        sketch = cls()
        sketch.kll = ds.kll_doubles_sketch.deserialize(unb64(state["kll"]))
        sketch.upper = ds.req_floats_sketch.deserialize(unb64(state["upper"]))
        sketch.lower = ds.req_floats_sketch.deserialize(unb64(state["lower"]))
        sketch.hll = ds.hll_sketch.deserialize(unb64(state["hll"]))
        count, sketch.mean, sketch.m2, low, high = state["moments"]
        sketch.count = int(count)
        sketch.min = math.inf if low is None else float(low)
        sketch.max = -math.inf if high is None else float(high)
        sketch.pos_mean, sketch.pos_m2, sketch.co_moment = state["trend"]
        sketch.integral = bool(state["integral"])
        return sketch


class CategoryCounter:
    """Exact counts and first positions of a field's values, up to ``cap`` distinct ones.

    Past the cap the exact part is dropped (``overflow``); string fields then keep their heavy hitters
    in a frequent-items sketch, so memory never depends on the number of rows or distinct values.
    """

    def __init__(self, cap: int, *, heavy: bool) -> None:
        self.cap = cap
        self.counts: dict[Hashable, int] = {}
        self.first: dict[Hashable, int] = {}
        self.overflow = False
        self.heavy = ds.frequent_strings_sketch(HEAVY_LG_MAP) if heavy else None

    def update(self, values: list[Any], counts: list[int], first: list[int]) -> None:
        """Add a batch summarized as its distinct values, their counts and first positions."""
        if not self.overflow:
            for value, count, position in zip(values, counts, first, strict=True):
                if value in self.counts:
                    self.counts[value] += count
                else:
                    self.counts[value] = count
                    self.first[value] = position
            if len(self.counts) > self.cap:
                self._spill()
            return
        if self.heavy is not None:
            order = np.argsort(np.asarray(counts))[::-1][:HEAVY_FEED]
            for i in order.tolist():
                self.heavy.update(str(values[i]), int(counts[i]))

    def _spill(self) -> None:
        self.overflow = True
        if self.heavy is not None:
            for value, count in sorted(self.counts.items(), key=lambda kv: -kv[1])[:HEAVY_FEED]:
                self.heavy.update(str(value), count)
        self.counts, self.first = {}, {}

    def top(self, n: int) -> list[tuple[Any, int]]:
        """The ``n`` most frequent values with their (estimated) counts."""
        if not self.overflow:
            return sorted(self.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]
        if self.heavy is None:
            return []
        items = self.heavy.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_POSITIVES)
        return [(item[0], int(item[1])) for item in items[:n]]

    def merge(self, other: CategoryCounter) -> None:
        if other.overflow:
            if not self.overflow:
                self._spill()
            if self.heavy is not None and other.heavy is not None:
                self.heavy.merge(other.heavy)
            return
        values = list(other.counts)
        self.update(values, [other.counts[v] for v in values], [other.first[v] for v in values])
        for value in values:
            if value in self.first:
                self.first[value] = min(self.first[value], other.first[value])

    def to_state(self) -> dict[str, Any]:
        return {
            "cap": self.cap,
            "overflow": self.overflow,
            "values": [[v, c, self.first[v]] for v, c in self.counts.items()],
            "heavy": None if self.heavy is None else b64(self.heavy.serialize()),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CategoryCounter:
        counter = cls(int(state["cap"]), heavy=state["heavy"] is not None)
        counter.overflow = bool(state["overflow"])
        for value, count, position in state["values"]:
            counter.counts[value] = int(count)
            counter.first[value] = int(position)
        if state["heavy"] is not None:
            counter.heavy = ds.frequent_strings_sketch.deserialize(unb64(state["heavy"]))
        return counter


@dataclass
class CountMap:
    """Counts of at most ``cap`` keys; the smallest are dropped (and tallied) when it overflows."""

    cap: int = SHAPE_CAP
    counts: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    def add(self, items: Iterable[tuple[str, int]]) -> None:
        for key, count in items:
            self.counts[key] = self.counts.get(key, 0) + count
        if len(self.counts) > self.cap:
            ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])
            keep = ranked[: self.cap // 2]
            self.dropped += sum(c for _, c in ranked[self.cap // 2 :])
            self.counts = dict(keep)

    def ranked(self) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def to_state(self) -> dict[str, Any]:
        return {"cap": self.cap, "counts": self.counts, "dropped": self.dropped}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CountMap:
        return cls(int(state["cap"]), {str(k): int(v) for k, v in state["counts"].items()}, int(state["dropped"]))


def _distinct_with_counts(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Distinct non-null values of a column, their counts and first positions (vectorized)."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    indices = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    size = len(encoded.dictionary)
    present = indices >= 0
    idx = indices[present]
    pos = np.flatnonzero(present)
    counts = np.bincount(idx, minlength=size)
    first = np.full(size, len(indices), dtype=np.int64)
    first[idx[::-1]] = pos[::-1]  # repeated indices: the last assignment wins, i.e. the first row
    return encoded.dictionary, counts, first


class DistinctSample:
    """A uniform sample of a field's *distinct* values: the ``size`` values with the smallest hash.

    Bottom-k by hash is deterministic, mergeable across partitions and independent of how often a
    value repeats, so a frequent value cannot crowd out the rest; it is what schema intelligence
    compares an incoming field's values with.
    """

    def __init__(self, size: int = SAMPLE_SIZE) -> None:
        self.size = size
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.values: list[Any] = []

    def update(self, distinct: pa.Array) -> None:
        """Add a batch's distinct non-null values (any Arrow type; temporal values kept as ISO text)."""
        distinct = distinct.drop_null()
        if len(distinct) == 0:
            return
        hashes = mix(hash_array(distinct))
        if len(self.hashes) >= self.size:
            keep = hashes < self.hashes.max()
            if not keep.any():
                return
            distinct, hashes = distinct.filter(pa.array(keep)), hashes[keep]
        if len(hashes) > self.size:
            chosen = np.argpartition(hashes, self.size - 1)[: self.size]
            distinct, hashes = distinct.take(pa.array(chosen)), hashes[chosen]
        self._merge(hashes, _jsonable_values(distinct))

    def _merge(self, hashes: np.ndarray, values: list[Any]) -> None:
        all_hashes = np.concatenate([self.hashes, hashes])
        all_values = self.values + values
        unique, first = np.unique(all_hashes, return_index=True)  # sorted, one entry per value
        first = first[: self.size]
        self.hashes = unique[: self.size]
        self.values = [all_values[i] for i in first.tolist()]

    def merge(self, other: DistinctSample) -> None:
        self._merge(other.hashes, list(other.values))

    def to_state(self) -> dict[str, Any]:
        return {"size": self.size, "hashes": b64(self.hashes.tobytes()), "values": self.values}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DistinctSample:
        sample = cls(int(state["size"]))
        sample.hashes = np.frombuffer(unb64(state["hashes"]), dtype=np.uint64).copy()
        sample.values = list(state["values"])
        return sample


def _jsonable_values(array: pa.Array) -> list[Any]:
    if pa.types.is_temporal(array.type) or pa.types.is_decimal(array.type):
        array = pc.cast(array, pa.string())
    elif pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        return [v.hex() for v in array.to_pylist()]
    return array.to_pylist()



class ColumnProfile:
    """Everything learned about one field; sizes are fixed by the config, not by the data."""

    def __init__(self, name: str, kind: Kind, type_name: str, *, k: int, max_categories: int) -> None:
        self.name = name
        self.kind: Kind = kind
        self.type_name = type_name
        self.rows = 0
        self.nulls = 0
        self.first_position = -1
        self.last_position = -1
        """Arrival positions (learner rows) where the field was first and last seen with a value."""
        self.numeric = NumericSketch(k) if kind in ("numeric", "temporal") else None
        categorical = kind in ("string", "boolean") or (kind == "numeric" and "int" in type_name)
        self.categories = CategoryCounter(max_categories, heavy=kind == "string") if categorical else None
        self.lengths: dict[int, int] = {}
        self.shapes = CountMap()
        self.collapsed = CountMap()
        self.long_values = 0
        """Strings too long to have a tracked shape."""
        self.hll = ds.hll_sketch(HLL_LG_K) if kind == "string" else None
        """Distinct strings (numeric fields keep theirs in ``numeric``)."""
        self.formats: dict[str, int] = dict.fromkeys(formats.FORMATS, 0) if kind == "string" else {}
        self.format_values = 0
        self.sample = DistinctSample()
        self.windows: dict[str, list[float]] = {}
        """Window metrics seen while learning (most recent ``HISTORY``), to calibrate thresholds."""

    @property
    def values(self) -> int:
        return self.rows - self.nulls

    @property
    def null_rate(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0

    @property
    def distinct(self) -> float:
        """Distinct non-null values: exact while the categories are, else the HLL estimate."""
        if self.categories is not None and not self.categories.overflow:
            return float(len(self.categories.counts))
        if self.numeric is not None:
            return self.numeric.distinct
        return float(self.hll.get_estimate()) if self.hll is not None else 0.0

    def update(self, column: pa.ChunkedArray, offset: int) -> None:
        """Add one batch of this field; ``offset`` is the arrival position of its first row."""
        n = len(column)
        nulls = column.null_count
        self.rows += n
        self.nulls += nulls
        if nulls == n:
            return
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        if self.first_position < 0:
            self.first_position = offset
        self.last_position = offset + n - 1
        self.sample.update(pc.unique(column.combine_chunks()))
        if self.numeric is not None:
            values, valid = numbers(column)
            positions = np.arange(offset, offset + n, dtype=np.float64)
            if valid is not None:
                values, positions = values[valid], positions[valid]
            self.numeric.update(values.astype(np.float64), positions)
            if self.categories is not None and not self.categories.overflow:
                uniq, first, counts = np.unique(values, return_index=True, return_counts=True)
                self.categories.update(
                    [int(v) for v in uniq.tolist()], counts.tolist(), (positions[first].astype(np.int64)).tolist()
                )
        elif self.kind in ("string", "boolean"):
            dictionary, counts, first = _distinct_with_counts(column)
            assert self.categories is not None
            self.categories.update(dictionary.to_pylist(), counts.tolist(), (first + offset).tolist())
            if self.kind == "string":
                self._update_strings(dictionary, counts)

    def _update_strings(self, dictionary: pa.Array, counts: np.ndarray) -> None:
        assert self.hll is not None
        for value in dictionary.to_pylist():
            self.hll.update(value)
        lengths = np.asarray(pc.utf8_length(dictionary).to_numpy(zero_copy_only=False), dtype=np.int64)
        per_length = np.bincount(np.minimum(lengths, MAX_TRACKED_LENGTH), weights=counts)
        for length in np.flatnonzero(per_length).tolist():
            self.lengths[length] = self.lengths.get(length, 0) + int(per_length[length])
        short = lengths <= formats.MAX_SHAPE_LENGTH
        self.long_values += int(counts[~short].sum())
        short_values, short_counts = dictionary.filter(pa.array(short)), counts[short]
        for target, collapse in ((self.shapes, False), (self.collapsed, True)):
            target.add(_grouped(formats.shapes(short_values, collapse=collapse), short_counts))
        total = int(counts.sum())
        alive = [f for f in formats.FORMATS if f in self.formats]
        if alive:
            weights = pa.array(counts)
            for fmt in alive:
                ok = formats.matches(dictionary, fmt).fill_null(False)
                self.formats[fmt] += int(pc.sum(pc.if_else(ok, weights, 0)).as_py() or 0)
            self.format_values += total
            min_values, min_share = FORMAT_GIVE_UP
            if self.format_values >= min_values:
                self.formats = {f: c for f, c in self.formats.items() if c >= min_share * self.format_values}

    def record_window(self, metric: str, value: float) -> None:
        history = self.windows.setdefault(metric, [])
        history.append(float(value))
        if len(history) > HISTORY:
            del history[: len(history) - HISTORY]

    def merge(self, other: ColumnProfile) -> None:
        """Fold another profile of the same field (e.g. from another partition) into this one."""
        self.rows += other.rows
        self.nulls += other.nulls
        if other.first_position >= 0:
            firsts = [p for p in (self.first_position, other.first_position) if p >= 0]
            self.first_position = min(firsts)
            self.last_position = max(self.last_position, other.last_position)
        if self.numeric is not None and other.numeric is not None:
            self.numeric.merge(other.numeric)
        if self.categories is not None and other.categories is not None:
            self.categories.merge(other.categories)
        for length, count in other.lengths.items():
            self.lengths[length] = self.lengths.get(length, 0) + count
        self.shapes.add(other.shapes.counts.items())
        self.shapes.dropped += other.shapes.dropped
        self.collapsed.add(other.collapsed.counts.items())
        self.collapsed.dropped += other.collapsed.dropped
        self.long_values += other.long_values
        if self.hll is not None and other.hll is not None:
            union = ds.hll_union(HLL_LG_K)
            union.update(self.hll)
            union.update(other.hll)
            self.hll = union.get_result(ds.tgt_hll_type.HLL_4)
        self.formats = {f: c + other.formats[f] for f, c in self.formats.items() if f in other.formats}
        self.format_values += other.format_values
        self.sample.merge(other.sample)
        for metric, history in other.windows.items():
            for value in history:
                self.record_window(metric, value)

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "type": self.type_name,
            "rows": self.rows,
            "nulls": self.nulls,
            "positions": [self.first_position, self.last_position],
            "numeric": None if self.numeric is None else self.numeric.to_state(),
            "categories": None if self.categories is None else self.categories.to_state(),
            "lengths": [[k, v] for k, v in self.lengths.items()],
            "shapes": self.shapes.to_state(),
            "collapsed": self.collapsed.to_state(),
            "long_values": self.long_values,
            "hll": None if self.hll is None else b64(self.hll.serialize_compact()),
            "formats": self.formats,
            "format_values": self.format_values,
            "windows": self.windows,
            "sample": self.sample.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ColumnProfile:
        profile = cls(state["name"], state["kind"], state["type"], k=8, max_categories=1)
        profile.rows, profile.nulls = int(state["rows"]), int(state["nulls"])
        profile.first_position, profile.last_position = (int(p) for p in state["positions"])
        numeric, categories = state["numeric"], state["categories"]
        profile.numeric = None if numeric is None else NumericSketch.from_state(numeric)
        profile.categories = None if categories is None else CategoryCounter.from_state(categories)
        profile.lengths = {int(k): int(v) for k, v in state["lengths"]}
        profile.shapes = CountMap.from_state(state["shapes"])
        profile.collapsed = CountMap.from_state(state["collapsed"])
        profile.long_values = int(state["long_values"])
        profile.hll = None if state["hll"] is None else ds.hll_sketch.deserialize(unb64(state["hll"]))
        profile.formats = {str(k): int(v) for k, v in state["formats"].items()}
        profile.format_values = int(state["format_values"])
        profile.windows = {str(k): [float(x) for x in v] for k, v in state["windows"].items()}
        if "sample" in state:
            profile.sample = DistinctSample.from_state(state["sample"])
        return profile

    def summary(self) -> dict[str, Any]:
        """What a contract publishes about the field's values beyond its rules (JSON-able)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "type": self.type_name,
            "rows": self.rows,
            "null_rate": round(self.null_rate, 6),
            "distinct": round(self.distinct, 1),
            "sample": list(self.sample.values),
        }
        if self.numeric is not None and self.numeric.count:
            quantiles = self.numeric.quantiles(PROFILE_RANKS)
            quantiles[0], quantiles[-1] = self.numeric.min, self.numeric.max  # exact ends (KLL's are not)
            out["quantiles"] = quantiles
            out["mean"], out["std"] = self.numeric.mean, self.numeric.std
            out["min"], out["max"] = self.numeric.min, self.numeric.max
        if self.categories is not None:
            out["top"] = [[value, count] for value, count in self.categories.top(20)]
        return out


def _grouped(keys: pa.Array, counts: np.ndarray) -> list[tuple[str, int]]:
    """Sum ``counts`` by key; at most ``SHAPE_CAP`` keys, the most frequent."""
    encoded = pc.dictionary_encode(keys)
    indices = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    keep = indices >= 0
    sums = np.bincount(indices[keep], weights=counts[keep], minlength=len(encoded.dictionary))
    order = np.argsort(sums)[::-1][:SHAPE_CAP]
    names = encoded.dictionary.to_pylist()
    return [(str(names[i]), int(sums[i])) for i in order.tolist() if sums[i] > 0]
