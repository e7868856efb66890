"""Dependencies (``zip -> city``): co-occurrence counting while learning, and the checker of learned mappings."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.api import RowCheck
from lakegate.contracts.model import Rule
from lakegate.contracts.relationships.arrays import (
    ROW_BLOCK,
    BlockCodes,
    IntegerIndex,
    b64,
    codes_of,
    group_rank,
    struct_of,
    unb64,
    values_array,
)

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
DENSE_LIMIT = 1 << 22


# ---------------------------------------------------------------------------------------------------
# Learning: counting co-occurrences


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
        known = codes_of(dictionary, self._array()) if self.values else np.full(len(dictionary), -1)
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
            self._cached = values_array(self.values)
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


def determinant_stats(keys: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
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


def informative(keys: np.ndarray, counts: np.ndarray, stats: dict[str, np.ndarray]) -> bool:
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


class DependencyCounter:
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
        self.counts = {k: v for k, v in self.counts.items() if name not in split_key(k)[0] + (split_key(k)[1],)}

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
            "buffer": [{n: b64(codes) for n, codes in batch.items()} for batch in self.buffer],
            "buffered": self.buffered,
            "columns": {n: {"values": c.values, "overflow": c.overflow} for n, c in self.columns.items()},
            "considered": self.considered,
            "candidates": [[list(det), deps] for det, deps in self.candidates.items()],
            "counts": {k: [b64(v[0]), b64(v[1])] for k, v in self.counts.items()},
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
        self.counts = {k: (unb64(v[0], np.int64), unb64(v[1], np.int64)) for k, v in state.get("counts", {}).items()}
        self.rows = dict(state.get("rows", {}))
        self.buffer = [{n: unb64(c, np.int32) for n, c in b.items()} for b in state.get("buffer", [])]
        self.buffered = int(state.get("buffered", 0))


def _rows_of(codes: dict[str, np.ndarray]) -> int:
    return len(next(iter(codes.values())))


def split_key(name: str) -> tuple[tuple[str, ...], str]:
    det, dep = name.split("\x1e")
    return tuple(det.split("\x1f")), dep


# ---------------------------------------------------------------------------------------------------
# Row checker


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


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
            self.det_values.append(values_array(values))
            self.det_lists.append(values)
            self.sizes.append(len(values))
        self.dep_list: list[Any] = list(dict.fromkeys(entry[1] for entry in mapping))
        dep_index = {v: j for j, v in enumerate(self.dep_list)}
        self.dep_values = values_array(self.dep_list)
        self.dep_index = IntegerIndex(self.dep_values) if IntegerIndex.usable(self.dep_values) else None
        self.det_index = [IntegerIndex(v) if IntegerIndex.usable(v) else None for v in self.det_values]
        expected = np.array([dep_index[entry[1]] for entry in mapping], dtype=np.int64)
        total = int(np.prod(self.sizes)) if self.sizes else 0
        self.table: np.ndarray | None = None
        self.padded_table: np.ndarray | None = None  # the table and a -1 that code -1 (unmapped) takes
        if total <= DENSE_LIMIT:
            self.table = np.full(total, -1, dtype=np.int64)
            self.table[combined] = expected
            self.padded_table = np.append(self.table, -1)
        order = np.argsort(combined)
        self.sorted_keys, self.sorted_expected = combined[order], expected[order]
        self.pairs: dict[tuple[int, Any], list[int]] = {}
        self.det_rows: dict[int, int] = {}

    def _expected(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(each row's determinant code, -1 where unmapped; the dependent code learned for it or -1)."""
        columns = zip(self.determinant, self.det_values, self.det_index, strict=True)
        return self._lookup([codes_of(rows.column(name), values, index) for name, values, index in columns])

    def _lookup(self, codes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_expected` from the determinant columns' value codes."""
        if len(codes) == 1 and self.padded_table is not None:
            return codes[0], self.padded_table[codes[0]]  # one gather; code -1 takes the -1
        n = len(codes[0])
        code = np.zeros(n, dtype=np.int64)
        valid = np.ones(n, dtype=bool)
        for c, size in zip(codes, self.sizes, strict=True):
            valid &= c >= 0
            code = code * size + np.maximum(c, 0)
        if self.table is not None:
            expected = np.where(valid, self.table[np.where(valid, code, 0)] if len(self.table) else -1, -1)
        else:
            pos = np.clip(np.searchsorted(self.sorted_keys, code), 0, max(len(self.sorted_keys) - 1, 0))
            hit = valid & (self.sorted_keys[pos] == code) if len(self.sorted_keys) else np.zeros(n, dtype=bool)
            expected = np.where(hit, self.sorted_expected[pos] if len(self.sorted_keys) else -1, -1)
        return code, np.asarray(expected, dtype=np.int64)

    def _mismatch(self, rows: pa.Table) -> np.ndarray:
        """Rows with a mapped determinant and another dependent than the learned one, a block of rows at
        a time (codes and look-ups stay in cache)."""
        determinants = [
            BlockCodes(rows.column(name), values, index)
            for name, values, index in zip(self.determinant, self.det_values, self.det_index, strict=True)
        ]
        dependent = rows.column(self.dependent)
        dependents = BlockCodes(dependent, self.dep_values, self.dep_index)
        present = None  # a missing dependent is the null-rate rules' business
        if dependent.null_count:
            present = np.asarray(dependent.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        mismatch = np.empty(rows.num_rows, dtype=bool)
        for start in range(0, rows.num_rows, ROW_BLOCK):
            stop = min(start + ROW_BLOCK, rows.num_rows)
            _, expected = self._lookup([d.block(start, stop) for d in determinants])
            block = (expected >= 0) & (dependents.block(start, stop) != expected)
            if present is not None:
                block &= present[start:stop]
            mismatch[start:stop] = block
        return mismatch

    def check(self, rows: pa.Table) -> RowCheck:
        mismatch = self._mismatch(rows)
        if not mismatch.any() and not self.det_rows:
            return RowCheck(rule=self.rule, failed=mismatch)
        code, expected = self._expected(rows)
        failed = self._promote(rows, code, expected >= 0, mismatch)
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
            observed=struct_of(rows, [*self.determinant, self.dependent]),
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
