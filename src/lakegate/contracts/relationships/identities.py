"""Identities (``total = quantity * unit_price``, clock and calendar arithmetic): found on a uniform sample of
rows, then checked per row.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from lakegate.contracts.api import LearnConfig, RowCheck
from lakegate.contracts.model import Rule
from lakegate.contracts.relationships.arrays import (
    MAX_VIOLATION_RATE,
    ROW_BLOCK,
    SYSTEM_PREFIX,
    b64,
    floats,
    struct_of,
    unb64,
)

SAMPLE_ROWS = 20_000
SCREEN_ROWS = 256
SCREEN_SHARE = 0.9
CLOSE_FRACTION = 1e-3
DIVISORS = (10, 60, 100, 1000)
CLOCK_MODULUS = 1440
MAX_IDENTITIES_PER_TARGET = 2

_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%"}


# ---------------------------------------------------------------------------------------------------
# The sample behind identities and orderings


class UniformSample:
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
            "priority": b64(self.priority),
            "values": {n: b64(v) for n, v in self.values.items()},
            "kinds": self.kinds,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.priority = unb64(state["priority"], np.float64)
        self.values = {n: unb64(v, np.float64) for n, v in state["values"].items()}
        self.kinds = dict(state["kinds"])


# ---------------------------------------------------------------------------------------------------
# Expression arithmetic and discovery on the sample


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


def discover_dateparts(
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


def discover_identities(
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


def _nice(value: float) -> float:
    """Round a tolerance up to two significant digits."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value)) - 1
    step = 10.0**exponent
    return float(round(math.ceil(value / step) * step, max(0, -exponent)))


# ---------------------------------------------------------------------------------------------------
# Rules


def tie_groups(ties: list[list[str]]) -> dict[str, str]:
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


def implied_by_identities(columns: list[str], identities: list[dict[str, Any]]) -> bool:
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


def identity_rule(identity: dict[str, Any]) -> Rule:
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


# ---------------------------------------------------------------------------------------------------
# Row checker


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

    def _failed(self, rows: pa.Table) -> np.ndarray:
        target = floats(rows.column(self.target))
        a = floats(rows.column(self.operands[0]))
        b = floats(rows.column(self.operands[1])) if len(self.operands) > 1 else None
        if self.op == "datepart":
            value = datepart(a + self.offset_us, self.part)
        else:
            value = _expression_value(self.op, a, b, self.k)
        off = residual(self.op, target, value, self.k)
        with np.errstate(invalid="ignore"):
            return np.asarray(off > self.abs_tolerance + self.rel_tolerance * np.abs(value))

    def check(self, rows: pa.Table) -> RowCheck:
        failed = np.zeros(rows.num_rows, dtype=bool)
        for start in range(0, rows.num_rows, ROW_BLOCK):  # row by row arithmetic: a block stays in cache
            failed[start : start + ROW_BLOCK] = self._failed(rows.slice(start, ROW_BLOCK))
        if not failed.any():
            return RowCheck(rule=self.rule, failed=failed)
        return RowCheck(
            rule=self.rule,
            failed=failed,
            observed=struct_of(rows, [self.target, *self.operands]),
            threshold=_identity_text(self.rule.params),
        )

    def to_state(self) -> dict[str, Any]:
        return {}

    def from_state(self, state: dict[str, Any]) -> None:
        return None
