"""The column family: learning rules from batches, checking rows, state and eviction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakegate.contracts import sketches
from lakegate.contracts.api import Family, LearnConfig, RowCheck
from lakegate.contracts.columns import COLUMN_FAMILY, ColumnLearner
from lakegate.contracts.model import Contract, DatasetSchema, FieldSchema, Rule
from tests.contracts.flights import read_flights

CONFIG = LearnConfig(window_rows=1000)
COUNTRIES = ["US", "DE", "FR", "GB", "ES", "IT", "NL", "SE", "PL", "BE", "AT", "DK"]
STATUSES = ["new", "paid", "shipped", "delivered", "returned"]
START = datetime(2024, 1, 1, tzinfo=UTC)


def orders(n: int, seed: int, *, offset: int = 0) -> pa.Table:
    """Orders as a shop would send them (flattened), with the system columns lakegate adds."""
    rng = np.random.default_rng(seed)
    ids = [str(uuid.UUID(int=int(x))) for x in rng.integers(0, 2**62, n)]
    names = rng.choice(["ana", "bo", "chen", "dee", "eli", "fay", "gus"], n)
    emails = [f"{a}{i % 97}@example.com" for i, a in enumerate(names)]
    prefixes, digits = rng.choice(["ABC", "XYZ", "QRS", "LMN"], n), rng.integers(0, 10_000, n)
    skus = [f"{a}-{d:04d}" for a, d in zip(prefixes, digits, strict=True)]
    created = [START + timedelta(minutes=offset + i) for i in range(n)]
    return pa.table(
        {
            "order_id": ids,
            "customer__email": emails,
            "amount": np.round(rng.lognormal(3.5, 0.6, n), 2),
            "quantity": rng.integers(1, 11, n),
            "customer__address__country": rng.choice(COUNTRIES, n, p=_weights(len(COUNTRIES))),
            "status": rng.choice(STATUSES, n),
            "sku": skus,
            "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
            "_lg_source": pa.array(["file:orders.jsonl"] * n),
            "_lg_position": pa.array(np.arange(offset, offset + n)),
            "_lg_event_time": pa.array(created, pa.timestamp("us", tz="UTC")),
        }
    )


def _weights(k: int) -> np.ndarray:
    w = 1.0 / np.arange(1, k + 1)
    return w / w.sum()


def learn(batches: int = 10, rows: int = 2000, config: LearnConfig = CONFIG) -> ColumnLearner:
    learner = ColumnLearner(config)
    for i in range(batches):
        learner.observe(orders(rows, seed=i, offset=i * rows))
    return learner


@pytest.fixture(scope="module")
def learned() -> tuple[ColumnLearner, dict[str, Rule]]:
    learner = learn()
    return learner, {r.id: r for r in learner.rules(DatasetSchema())}


def check(rule: Rule, rows: pa.Table) -> RowCheck:
    checker = COLUMN_FAMILY.row_checker(rule, CONFIG)
    assert checker is not None
    return checker.check(rows)


def with_value(table: pa.Table, column: str, row: int, value: Any) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    return table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
    )


def failed_rows(result: RowCheck) -> list[int]:
    return np.flatnonzero(result.failed).tolist()


# -- the family object ---------------------------------------------------------------------------------


def test_family_implements_the_protocol() -> None:
    family: Family = COLUMN_FAMILY
    assert family.name == "column"
    assert {"not_null", "range", "allowed_values", "length", "pattern", "format", "drift", "null_rate"} == family.kinds
    learner = family.learner(CONFIG)
    learner.observe(orders(3000, seed=1))
    rules = learner.rules(DatasetSchema())
    assert all(r.family == "column" for r in rules)
    for rule in rules:
        row = family.row_checker(rule, CONFIG)
        window = family.window_checker(rule, CONFIG)
        assert (row is None) != (window is None), rule.id
        assert (row is not None) == (rule.level == "row")


def test_rules_serialize_in_a_contract(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    contract = Contract(dataset="orders", rules=list(rules.values()))
    assert Contract.from_json(contract.to_json()).rules == contract.rules


def test_system_columns_are_ignored_except_event_time(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    learner, rules = learned
    columns = {c for r in rules.values() for c in r.columns}
    assert "_lg_source" not in columns and "_lg_position" not in columns
    assert "_lg_event_time" in columns
    assert set(learner.profiles) == {
        "order_id",
        "customer__email",
        "amount",
        "quantity",
        "customer__address__country",
        "status",
        "sku",
        "created_at",
        "_lg_event_time",
    }


def test_schema_restricts_the_fields(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    learner, _ = learned
    schema = DatasetSchema(fields=[FieldSchema(name="amount", type="double")])
    assert {c for r in learner.rules(schema) for c in r.columns} == {"amount"}


# -- one test per rule kind: learned, violation caught with observed value and threshold, clean passes --


def test_not_null(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["not_null:customer__email"]
    assert rule.support == 20_000 and rule.confidence == 1.0
    clean = orders(500, seed=99)
    assert not check(rule, clean).failed.any()
    result = check(rule, with_value(clean, "customer__email", 7, None))
    assert failed_rows(result) == [7]
    assert result.threshold == "not null"
    missing = check(rule, clean.drop_columns(["customer__email"]))
    assert missing.failed.all()


def test_not_null_needs_enough_rows() -> None:
    learner = learn(batches=1, rows=1000)
    assert "not_null:customer__email" not in {r.id for r in learner.rules(DatasetSchema())}


def test_range_catches_a_unit_change(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["range:amount"]
    low, high = rule.params["low"], rule.params["high"]
    assert low == 0.0 and rule.params["nonnegative"]  # amounts were never negative
    assert 150 < high < 400
    assert rule.params["q_low"] < rule.params["q_high"] <= rule.params["observed_max"]
    clean = orders(5000, seed=99)
    assert check(rule, clean).failed.mean() < 0.001
    amount = clean.column("amount")[3].as_py()
    result = check(rule, with_value(clean.slice(0, 10), "amount", 3, amount * 100))
    assert failed_rows(result) == [3]
    assert result.observed is not None and result.observed[3].as_py() == amount * 100
    assert result.threshold == f"[{low:g}, {high:g}]"
    negative = check(rule, with_value(clean.slice(0, 10), "amount", 5, -1.0))
    assert failed_rows(negative) == [5]


def test_range_of_integers_is_rounded_outward(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["range:quantity"]
    assert rule.params["low"] == 0.0 and rule.params["high"] == 15.0
    result = check(rule, pa.table({"quantity": pa.array([1, 10, 15, 16, None], pa.int32())}))
    assert failed_rows(result) == [3]


def test_range_of_a_trending_timestamp_is_open_ahead(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["range:created_at"]
    assert rule.params["trend"] == "up" and rule.params["unit"] == "epoch_us"
    assert rule.params["high"] is None
    low = datetime.fromtimestamp(rule.params["low"] / 1e6, tz=UTC)
    assert START - timedelta(days=14) < low < START
    later = [START + timedelta(days=400), datetime(1970, 1, 1, tzinfo=UTC), None]
    result = check(rule, pa.table({"created_at": pa.array(later, pa.timestamp("us", tz="UTC"))}))
    assert failed_rows(result) == [1]
    assert result.threshold.startswith("[2023-12-") and result.threshold.endswith(", ∞)")


def test_range_of_other_timestamp_units_and_dates() -> None:
    base = np.datetime64("2024-01-01")
    days = base + np.random.default_rng(3).integers(0, 365, 5000).astype("timedelta64[D]")
    learner = ColumnLearner(CONFIG)
    learner.observe(pa.table({"d": pa.array(days, pa.date32()), "ts": pa.array(days.astype("datetime64[s]"))}))
    rules = {r.id: r for r in learner.rules(DatasetSchema())}
    for name in ("d", "ts"):
        rule = rules[f"range:{name}"]
        assert rule.params["trend"] is None
        low = datetime.fromtimestamp(rule.params["low"] / 1e6, tz=UTC)
        assert datetime(2023, 6, 1, tzinfo=UTC) < low < datetime(2024, 1, 2, tzinfo=UTC)
    probe = np.asarray(["2024-06-01", "2030-01-01"], dtype="datetime64[D]")
    assert failed_rows(check(rules["range:d"], pa.table({"d": pa.array(probe, pa.date32())}))) == [1]
    as_ms = pa.array(probe.astype("datetime64[ms]"))
    assert failed_rows(check(rules["range:ts"], pa.table({"ts": as_ms}))) == [1]


def test_calendar_fields_stay_in_their_domain_even_when_trending() -> None:
    months = np.repeat(np.arange(1, 7), 1000)  # January to June, in order: a trend
    learner = ColumnLearner(CONFIG)
    for part in np.array_split(np.stack([months, months + 100]), 6, axis=1):
        learner.observe(pa.table({"flight__month": part[0], "period": part[1]}))
    rules = {r.id: r for r in learner.rules(DatasetSchema())}
    month = rules["range:flight__month"]
    assert month.params["trend"] == "up" and month.params["domain"] == [1, 12]
    assert (month.params["low"], month.params["high"]) == (1.0, 12.0)
    result = check(month, pa.table({"flight__month": [7, 12, 13, 0, 700]}))
    assert failed_rows(result) == [2, 3, 4]
    period = rules["range:period"]  # the same numbers under another name: room to grow
    assert period.params["domain"] is None and period.params["high"] >= 10 * 106


def test_range_keeps_a_heavy_tail_inside() -> None:
    rng = np.random.default_rng(5)
    delays = np.round(rng.pareto(2.5, 50_000) * 10).astype(np.int64)
    learner = ColumnLearner(CONFIG)
    for part in np.array_split(delays, 10):
        learner.observe(pa.table({"delay": part}))
    rule = next(r for r in learner.rules(DatasetSchema()) if r.id == "range:delay")
    q_high, span = rule.params["q_high"], rule.params["q_high"] - rule.params["q_low"]
    observed_max = rule.params["observed_max"]
    assert observed_max > q_high + 0.5 * span  # the tail reaches past the widened quantile
    assert rule.params["high"] == min(observed_max, q_high + 3 * span)
    fresh = np.round(np.random.default_rng(6).pareto(2.5, 50_000) * 10).astype(np.int64)
    assert check(rule, pa.table({"delay": fresh})).failed.mean() < 0.0005


def test_allowed_values_of_a_closed_set(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["allowed_values:status"]
    assert rule.params["closed"] and rule.params["accept_after"] is None
    assert rule.params["values"] == sorted(STATUSES)
    assert rule.params["new_value_tolerance"] == 0.0
    clean = orders(1000, seed=99)
    assert not check(rule, clean).failed.any()
    result = check(rule, with_value(clean, "status", 11, "shiped"))
    assert failed_rows(result) == [11]
    assert result.observed is not None and result.observed[11].as_py() == "shiped"
    assert result.threshold == "one of 5 learned values"
    as_dictionary = clean.set_column(
        clean.schema.get_field_index("status"), "status", pc.dictionary_encode(clean.column("status"))
    )
    assert not check(rule, as_dictionary).failed.any()


def test_allowed_values_of_integers(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["allowed_values:quantity"]
    assert rule.params["values"] == list(range(1, 11))
    result = check(rule, pa.table({"quantity": pa.array([3, 0, None, 10], pa.int64())}))
    assert failed_rows(result) == [1]


def test_high_cardinality_fields_get_no_allowed_values(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    assert "allowed_values:order_id" not in rules and "allowed_values:sku" not in rules


def _routes(n: int, seed: int, codes: list[str]) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"dest": rng.choice(codes, n)})


def test_open_set_adopts_recurring_new_values_but_not_rare_ones() -> None:
    codes = [f"{a}{b}{c}" for a, b, c in zip("ABCDEFGHIJ", "KLMNOPQRST", "UVWXYZABCD", strict=True)]
    learner = ColumnLearner(CONFIG)
    for i in range(10):  # a new route opens in each batch of the second half
        learner.observe(_routes(2000, i, codes[: 5 + max(0, i - 4)]))
    rule = next(r for r in learner.rules(DatasetSchema()) if r.kind == "allowed_values")
    assert not rule.params["closed"] and rule.params["accept_after"] == 5
    assert 0 < rule.params["new_value_tolerance"] < 1e-3
    checker = COLUMN_FAMILY.row_checker(rule, CONFIG)
    assert checker is not None
    batch = pa.table({"dest": ["AKU"] * 300 + ["ZZZ"] * 8 + ["AKX"] + ["ZZZ"] * 4})
    first = checker.check(batch.slice(0, 304))  # ZZZ seen 4 times: not yet adopted
    assert failed_rows(first) == [300, 301, 302, 303]
    state = orjson.loads(orjson.dumps(checker.to_state()))
    restored = COLUMN_FAMILY.row_checker(rule, CONFIG)
    assert restored is not None
    restored.from_state(state)
    second = restored.check(batch.slice(304))  # 4 more sightings soon after: adopted; AKX stays rare
    assert failed_rows(second) == [4]
    third = restored.check(pa.table({"dest": ["ZZZ", "AKX"]}))
    assert failed_rows(third) == [1]


def test_open_set_does_not_adopt_values_that_recur_only_at_a_low_rate() -> None:
    codes = [f"{a}{b}{c}" for a, b, c in zip("ABCDEFGHIJ", "KLMNOPQRST", "UVWXYZABCD", strict=True)]
    learner = ColumnLearner(CONFIG)  # window_rows = 1000: sightings decay with a half-life of 1000 rows
    for i in range(10):
        learner.observe(_routes(2000, i, codes[: 5 + max(0, i - 4)]))
    rule = next(r for r in learner.rules(DatasetSchema()) if r.kind == "allowed_values")
    assert rule.params["accept_within_rows"] == 1000
    checker = COLUMN_FAMILY.row_checker(rule, CONFIG)
    assert checker is not None
    known = ["AKU"] * 3000
    for _ in range(8):  # 3 sightings per 3000 rows: the typo rate of a frequent value
        assert len(failed_rows(checker.check(pa.table({"dest": known + ["AUK"] * 3})))) == 3
    big = pa.table({"dest": known * 30 + ["UAK"] * 30})  # 30 in 90,000 rows: 0.3 per half-life
    assert len(failed_rows(checker.check(big))) == 30


def test_length(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["length:sku"]
    assert rule.params["low"] == 8 and rule.params["high"] == 8
    assert rule.action == "alert"
    clean = orders(1000, seed=99)
    assert not check(rule, clean).failed.any()
    result = check(rule, with_value(clean, "sku", 2, "ABC-12345"))
    assert failed_rows(result) == [2]
    assert result.threshold == "length in [8, 8]"


def test_pattern(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    rule = rules["pattern:sku"]
    assert rule.params == {"patterns": ["AAA-9999"], "collapse": False, "coverage": 1.0}
    clean = orders(1000, seed=99)
    assert not check(rule, clean).failed.any()
    broken = with_value(with_value(clean, "sku", 4, "AB1-9999"), "sku", 9, None)
    result = check(rule, broken)
    assert failed_rows(result) == [4]
    assert result.observed is not None and result.observed[4].as_py() == "AB1-9999"
    assert result.threshold == "shape one of AAA-9999"


def test_pattern_falls_back_to_collapsed_shapes() -> None:
    rng = np.random.default_rng(2)
    words = ["".join(rng.choice(list("abcdefgh"), k)) for k in rng.integers(2, 9, 5000)]
    numbers = rng.integers(1, 100_000, 5000)
    learner = ColumnLearner(CONFIG)
    learner.observe(pa.table({"ref": [f"{w}#{n}" for w, n in zip(words, numbers, strict=True)]}))
    rule = next(r for r in learner.rules(DatasetSchema()) if r.kind == "pattern")
    assert rule.params["collapse"] and rule.params["patterns"] == ["A#9"]
    result = check(rule, pa.table({"ref": ["zz#1", "zz-1", "#12"]}))
    assert failed_rows(result) == [1, 2]


def test_free_text_gets_no_pattern() -> None:
    rng = np.random.default_rng(2)
    text = [" ".join(rng.choice(["a", "B2", "c-d", "9", "x.y"], int(k))) for k in rng.integers(1, 6, 5000)]
    learner = ColumnLearner(CONFIG)
    learner.observe(pa.table({"note": text}))
    assert "pattern" not in {r.kind for r in learner.rules(DatasetSchema())}


def test_formats(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    _, rules = learned
    assert rules["format:customer__email"].params["format"] == "email"
    assert rules["format:order_id"].params["format"] == "uuid"
    assert "format:sku" not in rules and "format:status" not in rules
    clean = orders(1000, seed=99)
    rule = rules["format:customer__email"]
    assert not check(rule, clean).failed.any()
    result = check(rule, with_value(clean, "customer__email", 0, "ana at example.com"))
    assert failed_rows(result) == [0]
    assert result.threshold == "a valid email"


def test_currency_and_phone_formats_are_learned() -> None:
    rng = np.random.default_rng(4)
    table = pa.table(
        {
            "currency": rng.choice(["USD", "EUR", "GBP", "JPY"], 4000),
            "phone": [f"+1 212 555 {n:04d}" for n in rng.integers(0, 10_000, 4000)],
        }
    )
    learner = ColumnLearner(CONFIG)
    learner.observe(table)
    formats = {r.columns[0]: r.params["format"] for r in learner.rules(DatasetSchema()) if r.kind == "format"}
    assert formats == {"currency": "currency_code", "phone": "phone"}


# -- learner mechanics ---------------------------------------------------------------------------------


def test_snapshot_restore_round_trip() -> None:
    learner = learn(batches=5, rows=2500)  # 12,500 rows: half a calibration window is pending
    state = orjson.loads(orjson.dumps(learner.to_state()))
    restored = ColumnLearner(CONFIG)
    restored.from_state(state)
    assert restored.rules(DatasetSchema()) == learner.rules(DatasetSchema())
    assert restored.stability() == learner.stability()
    assert restored.pending is not None and restored.pending.equals(learner.pending)
    more = orders(2500, seed=42, offset=12_500)
    learner.observe(more)
    restored.observe(more)
    # KLL and REQ compaction is randomized, so continued sketches agree closely, not bit for bit.
    after, expected = restored.rules(DatasetSchema()), learner.rules(DatasetSchema())
    assert [r.id for r in after] == [r.id for r in expected]
    for got, want in zip(after, expected, strict=True):
        if got.kind in ("range", "length"):
            for bound in ("low", "high"):
                if want.params[bound] is None:
                    assert got.params[bound] is None
                else:
                    assert got.params[bound] == pytest.approx(want.params[bound], rel=0.05, abs=1)
        elif got.kind in ("not_null", "allowed_values", "pattern", "format", "null_rate"):
            assert got.params == want.params
    assert restored.rows == learner.rows == 15_000
    assert restored.profiles["amount"].values == learner.profiles["amount"].values


def test_fields_unseen_for_the_ttl_are_evicted() -> None:
    learner = ColumnLearner(LearnConfig(field_ttl_rows=5000, window_rows=1000))
    learner.observe(orders(2000, seed=1))
    without = orders(2000, seed=2).drop_columns(["status"])
    learner.observe(without)
    learner.observe(without)
    assert "status" in learner.profiles  # unseen for 3999 rows
    assert learner.profiles["status"].null_rate == 4000 / 6000  # an absent field is null
    learner.observe(without)
    assert "status" not in learner.profiles
    assert "status" not in {c for r in learner.rules(DatasetSchema()) for c in r.columns}
    assert "sku" in learner.profiles


def test_a_field_that_changes_kind_is_relearned() -> None:
    learner = ColumnLearner(CONFIG)
    learner.observe(pa.table({"x": pa.array(np.arange(3000))}))
    learner.observe(pa.table({"x": pa.array([f"v{i % 3}" for i in range(3000)])}))
    assert learner.profiles["x"].kind == "string" and learner.profiles["x"].rows == 3000


def test_stability_settles_and_jumps_on_a_shift() -> None:
    learner = ColumnLearner(CONFIG)
    assert learner.stability() == 1.0
    values = []
    for i in range(12):
        learner.observe(orders(2000, seed=i, offset=i * 2000))
        values.append(learner.stability())
    assert values[0] == 1.0
    assert values[-1] < 0.05
    shifted = orders(2000, seed=50, offset=24_000)
    shifted = shifted.set_column(2, "amount", pc.multiply(shifted.column("amount"), 3))
    learner.observe(shifted)
    assert learner.stability() > 3 * values[-1]


def test_profiles_merge_like_one_stream() -> None:
    first, second = orders(3000, seed=1), orders(3000, seed=2, offset=3000)
    one = sketches.ColumnProfile("amount", "numeric", "double", k=200, max_categories=1000)
    one.update(pa.concat_tables([first, second]).column("amount"), 0)
    left = sketches.ColumnProfile("amount", "numeric", "double", k=200, max_categories=1000)
    right = sketches.ColumnProfile("amount", "numeric", "double", k=200, max_categories=1000)
    left.update(first.column("amount"), 0)
    right.update(second.column("amount"), 3000)
    left.merge(right)
    assert left.numeric is not None and one.numeric is not None
    assert left.numeric.count == one.numeric.count == 6000
    assert left.numeric.mean == pytest.approx(one.numeric.mean)
    assert left.numeric.std == pytest.approx(one.numeric.std)
    assert (left.numeric.min, left.numeric.max) == (one.numeric.min, one.numeric.max)
    median = one.numeric.quantiles([0.5])[0]
    assert left.numeric.quantiles([0.5])[0] == pytest.approx(median, rel=0.05)
    assert left.numeric.distinct == pytest.approx(one.numeric.distinct, rel=0.05)


def test_distinct_counts(learned: tuple[ColumnLearner, dict[str, Rule]]) -> None:
    learner, _ = learned
    assert learner.profiles["status"].distinct == 5  # exact while categorical
    assert learner.profiles["order_id"].distinct == pytest.approx(20_000, rel=0.05)  # HLL past the cap
    assert learner.profiles["amount"].distinct > 1000


def test_category_counter_spills_to_heavy_hitters() -> None:
    counter = sketches.CategoryCounter(cap=10, heavy=True)
    counter.update([f"v{i}" for i in range(8)], [100] * 8, list(range(8)))
    counter.update([f"w{i}" for i in range(8)], [1] * 8, list(range(8, 16)))
    assert counter.overflow and not counter.counts
    assert {v for v, _ in counter.top(8)} == {f"v{i}" for i in range(8)}
    restored = sketches.CategoryCounter.from_state(orjson.loads(orjson.dumps(counter.to_state())))
    assert restored.top(3) == counter.top(3)


# -- real data -----------------------------------------------------------------------------------------


def test_nycflights_clean_months_pass_and_typos_fail() -> None:
    flights = read_flights()
    learner = ColumnLearner(LearnConfig())
    train = flights.filter(pc.less_equal(flights.column("month"), 3))
    for batch in train.to_batches(10_000):
        learner.observe(pa.Table.from_batches([batch]))
    rules = [r for r in learner.rules(DatasetSchema()) if r.level == "row" and r.action == "quarantine"]
    april = flights.filter(pc.equal(flights.column("month"), 4))
    flagged = np.zeros(april.num_rows, dtype=bool)
    for rule in rules:
        flagged |= check(rule, april).failed
    assert flagged.mean() < 0.001
    carrier = next(r for r in rules if r.id == "allowed_values:carrier")
    assert failed_rows(check(carrier, with_value(april.slice(0, 5), "carrier", 2, "UQ"))) == [2]
    distance = next(r for r in rules if r.id == "range:distance")
    value = april.column("distance")[1].as_py()
    assert failed_rows(check(distance, with_value(april.slice(0, 5), "distance", 1, value * 100))) == [1]


def test_distinct_sample_is_bounded_deterministic_and_mergeable() -> None:
    """Bottom-k by hash: the same values whatever the batching, a frequent value counts once."""
    from lakegate.contracts.sketches import DistinctSample

    values = [f"city-{i}" for i in range(5000)] + ["hot"] * 20000
    whole = DistinctSample(64)
    whole.update(pc.unique(pa.array(values)))
    left, right = DistinctSample(64), DistinctSample(64)
    for start in range(0, 2500, 500):
        left.update(pc.unique(pa.array(values[start : start + 500])))
    right.update(pc.unique(pa.array(values[2500:])))
    left.merge(right)
    assert len(whole.values) == 64
    assert sorted(whole.values) == sorted(left.values)
    assert set(whole.values) <= set(values)
    restored = DistinctSample.from_state(whole.to_state())
    assert restored.values == whole.values


def test_learned_contract_publishes_field_profiles() -> None:
    from lakegate.contracts.learn import ContractLearner

    n = 3000
    rows = pa.table(
        {
            "amount": pa.array([float(i % 500) for i in range(n)]),
            "status": [("new", "paid", "shipped")[i % 3] for i in range(n)],
        }
    )
    learner = ContractLearner("orders")
    learner.observe(rows)
    profiles = learner.build().profiles
    assert sorted(profiles["status"]["sample"]) == ["new", "paid", "shipped"]
    assert len(profiles["amount"]["sample"]) == 256
    assert profiles["amount"]["quantiles"][0] == 0.0 and profiles["amount"]["quantiles"][-1] == 499.0
    assert profiles["status"]["null_rate"] == 0.0
