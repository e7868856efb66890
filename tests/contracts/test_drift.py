"""Window-level column checks: drift metrics against a learned baseline, and null bursts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakegate.contracts import drift
from lakegate.contracts.api import Alert, LearnConfig, WindowChecker
from lakegate.contracts.columns import COLUMN_FAMILY, ColumnLearner
from lakegate.contracts.model import DatasetSchema, Rule

WINDOW = 1000
CONFIG = LearnConfig(window_rows=WINDOW)
COUNTRIES = ["US", "DE", "FR", "GB", "ES", "IT", "NL", "SE"]
WEIGHTS = np.asarray([0.4, 0.2, 0.12, 0.1, 0.08, 0.05, 0.03, 0.02])
START = datetime(2024, 3, 1, tzinfo=UTC)


def events(n: int, seed: int, *, offset: int = 0, null_rate: float = 0.1) -> pa.Table:
    """Service events: a latency, a country, a day of month running with time, an optional coupon."""
    rng = np.random.default_rng(seed)
    coupon = rng.choice(["SPRING", "VIP", "WELCOME"], n).astype(object)
    coupon[rng.random(n) < null_rate] = None
    positions = np.arange(offset, offset + n)
    times = [START + timedelta(minutes=int(p)) for p in positions]
    return pa.table(
        {
            "latency_ms": rng.normal(100, 15, n),
            "country": rng.choice(COUNTRIES, n, p=WEIGHTS),
            "day": (positions // 300) % 28 + 1,  # ~3 windows per month: a window sees a few days only
            "coupon": pa.array(coupon, pa.string()),
            "_lg_event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture(scope="module")
def rules() -> dict[str, Rule]:
    learner = ColumnLearner(CONFIG)
    for i in range(30):
        learner.observe(events(2000, seed=i, offset=i * 2000))
    return {r.id: r for r in learner.rules(DatasetSchema()) if r.level == "window"}


def checker(rule: Rule) -> WindowChecker:
    found = COLUMN_FAMILY.window_checker(rule, CONFIG)
    assert found is not None
    return found


def alerts(rules: dict[str, Rule], window: pa.Table) -> dict[str, Alert]:
    out: dict[str, Alert] = {}
    for rule in rules.values():
        for alert in checker(rule).check(window, 7):
            out[alert.rule_id] = alert
    return out


def fresh(seed: int = 1000, **kwargs: float) -> pa.Table:
    return events(WINDOW, seed, offset=60_000 + (seed - 1000) * WINDOW, **kwargs)


# -- metrics -------------------------------------------------------------------------------------------


def test_psi() -> None:
    p = np.asarray([0.5, 0.3, 0.2])
    assert drift.psi(p, p)[0] == 0.0
    value, terms = drift.psi(p, np.asarray([0.2, 0.3, 0.5]))
    assert value == pytest.approx(2 * 0.3 * np.log(0.5 / 0.2))
    assert terms[1] == 0.0


def test_jensen_shannon_is_bounded() -> None:
    p = np.asarray([0.5, 0.5, 0.0, 0.0])
    assert drift.jensen_shannon(p, p)[0] == 0.0
    assert drift.jensen_shannon(p, p[::-1])[0] == pytest.approx(1.0)
    assert 0 < drift.jensen_shannon(p, np.asarray([0.4, 0.4, 0.2, 0.0]))[0] < 0.2


def test_wasserstein_is_in_units_of_the_scale() -> None:
    q = np.linspace(0, 10, 11)
    assert drift.wasserstein(q, q + 3, scale=2.0) == pytest.approx(1.5)


def test_calibrated_threshold() -> None:
    assert drift.calibrated_threshold("psi", [0.5] * 4) == drift.FLOORS["psi"]  # too few windows
    assert drift.calibrated_threshold("psi", [0.01] * 20) == drift.FLOORS["psi"]
    assert drift.calibrated_threshold("psi", [0.4] * 20) == pytest.approx(0.6)


# -- which rules are learned -----------------------------------------------------------------------------


def test_metric_per_type(rules: dict[str, Rule]) -> None:
    assert rules["drift:country:psi"].params["metric"] == "psi"
    assert rules["drift:latency_ms:jensen_shannon"].params["metric"] == "jensen_shannon"
    assert rules["drift:latency_ms:wasserstein"].params["metric"] == "wasserstein"
    assert not any(r.startswith("drift:_lg_event_time") for r in rules)  # trending: drifts by nature
    assert all(r.action == "alert" for r in rules.values())


def test_baselines_live_in_params(rules: dict[str, Rule]) -> None:
    psi = rules["drift:country:psi"].params["baseline"]
    assert psi["values"][:2] == ["US", "DE"]
    assert psi["probs"][0] == pytest.approx(0.4, abs=0.01) and psi["other"] == pytest.approx(0.0)
    bins = rules["drift:latency_ms:jensen_shannon"].params["baseline"]
    assert len(bins["probs"]) == len(bins["edges"]) + 1 and sum(bins["probs"]) == pytest.approx(1.0)
    assert bins["probs"][0] == pytest.approx(0.001, abs=0.001)  # below the 0.1% tail quantile
    quantiles = rules["drift:latency_ms:wasserstein"].params["baseline"]
    assert quantiles["iqr"] == pytest.approx(2 * 0.674 * 15, rel=0.1)


def test_thresholds_are_calibrated_on_warm_up_windows(rules: dict[str, Rule]) -> None:
    day = rules["drift:day:jensen_shannon"].params
    assert day["calibration_windows"] >= drift.MIN_CALIBRATION_WINDOWS
    assert day["threshold"] > 5 * day["floor"]  # a window sees a few days of the month only
    latency = rules["drift:latency_ms:jensen_shannon"].params
    assert latency["threshold"] == latency["floor"]


# -- windows ---------------------------------------------------------------------------------------------


def test_same_distribution_windows_do_not_alert(rules: dict[str, Rule]) -> None:
    for seed in range(1000, 1010):
        assert alerts(rules, fresh(seed)) == {}


def test_category_shift(rules: dict[str, Rule]) -> None:
    window = fresh()
    rng = np.random.default_rng(3)
    shifted = window.set_column(1, "country", pa.array(rng.choice(COUNTRIES, WINDOW, p=WEIGHTS[::-1])))
    found = alerts(rules, shifted)
    assert set(found) == {"drift:country:psi"}
    alert = found["drift:country:psi"]
    assert alert.metric == "psi" and alert.value > alert.threshold
    assert alert.evidence["metric"] == "psi" and alert.evidence["threshold"] == alert.threshold
    top = alert.evidence["top_bins"]
    assert top[0]["bin"] in {"US", "SE"} and top[0]["contribution"] > 0.1
    assert alert.window_index == 7


def test_new_categories_land_in_other(rules: dict[str, Rule]) -> None:
    window = fresh()
    country = window.column("country").to_pylist()
    country[:300] = ["BR"] * 200 + ["MX"] * 100
    found = alerts(rules, window.set_column(1, "country", pa.array(country)))
    evidence = found["drift:country:psi"].evidence["top_bins"]
    assert evidence[0]["bin"] == "(other)" and evidence[0]["window"] == pytest.approx(0.3)
    assert evidence[-1]["examples"] == ["BR", "MX"]


def test_mean_shift(rules: dict[str, Rule]) -> None:
    window = fresh()
    shifted = window.set_column(0, "latency_ms", pc.add(window.column("latency_ms"), 22.5))  # +1.5 sigma
    found = alerts(rules, shifted)
    assert set(found) == {"drift:latency_ms:jensen_shannon", "drift:latency_ms:wasserstein"}
    assert found["drift:latency_ms:wasserstein"].value == pytest.approx(22.5 / 20.2, rel=0.2)


def test_unit_change_of_a_whole_window(rules: dict[str, Rule]) -> None:
    window = fresh()
    scaled = window.set_column(0, "latency_ms", pc.multiply(window.column("latency_ms"), 100))
    found = alerts(rules, scaled)
    wasserstein = found["drift:latency_ms:wasserstein"]
    assert wasserstein.severity == "critical" and wasserstein.value > 100
    js = found["drift:latency_ms:jensen_shannon"]
    assert js.value > 0.9 and js.evidence["top_bins"][0]["bin"].endswith(", inf]")


def test_sawtooth_field_alerts_only_on_a_real_change(rules: dict[str, Rule]) -> None:
    window = fresh()
    assert alerts(rules, window) == {}
    scaled = window.set_column(2, "day", pc.multiply(window.column("day"), 100))
    assert "drift:day:wasserstein" in alerts(rules, scaled)


def test_null_burst(rules: dict[str, Rule]) -> None:
    rule = rules["null_rate:coupon"]
    assert rule.params["baseline_rate"] == pytest.approx(0.1, abs=0.01)
    assert 0.1 < rule.params["threshold"] < 0.2
    assert checker(rule).check(fresh(null_rate=0.1), 0) == []
    found = checker(rule).check(fresh(null_rate=0.6), 3)
    assert len(found) == 1 and found[0].kind == "null_rate" and found[0].severity == "critical"
    assert found[0].value == pytest.approx(0.6, abs=0.05) and found[0].threshold == pytest.approx(
        rule.params["threshold"]
    )
    assert found[0].evidence["nulls"] == round(found[0].value * WINDOW)
    assert found[0].window_start == START + timedelta(minutes=60_000)
    assert found[0].window_end == START + timedelta(minutes=60_000 + WINDOW - 1)


def test_nulls_in_a_never_null_field(rules: dict[str, Rule]) -> None:
    rule = rules["null_rate:latency_ms"]
    assert rule.params["baseline_rate"] == 0.0
    window = fresh()
    latency = window.column("latency_ms").to_pylist()
    assert checker(rule).check(window, 0) == []
    latency[:3] = [None] * 3
    assert checker(rule).check(window.set_column(0, "latency_ms", pa.array(latency)), 0) == []  # min 5 nulls
    latency[:20] = [None] * 20
    assert len(checker(rule).check(window.set_column(0, "latency_ms", pa.array(latency)), 0)) == 1
    assert len(checker(rule).check(window.drop_columns(["latency_ms"]), 0)) == 1  # absent = all null


@pytest.mark.parametrize("metric", ["psi", "jensen_shannon", "wasserstein"])
def test_screening_many_windows_gives_the_per_window_values(rules: dict[str, Rule], metric: str) -> None:
    """The vectorized screen computes the same metric as one measure() per window, nulls included."""
    column = {"psi": "country", "jensen_shannon": "latency_ms", "wasserstein": "latency_ms"}[metric]
    rule = next(
        r for r in rules.values() if r.kind == "drift" and r.params["metric"] == metric and r.columns == [column]
    )
    block = pa.concat_tables([fresh(1000), fresh(1001, null_rate=0.5), fresh(1002)])
    values = block.column(column).to_numpy(zero_copy_only=False).copy()
    if metric == "psi":
        values[WINDOW : 2 * WINDOW] = "XX"  # a flood of new categories in the middle window
    else:
        values[WINDOW : 2 * WINDOW] *= 100  # a unit change in the middle window
    mask = np.random.default_rng(5).random(len(values)) < 0.2  # nulls everywhere
    block = block.set_column(
        block.column_names.index(column), column, pa.array(values, mask=mask, type=block.schema.field(column).type)
    )
    screened = drift.window_values(metric, rule.params["baseline"], block.column(column).combine_chunks(), WINDOW)
    exact = [
        drift.measure(metric, rule.params["baseline"], block.column(column).slice(i * WINDOW, WINDOW)) for i in range(3)
    ]
    assert screened == pytest.approx([m.value for m in exact if m is not None], rel=1e-9, abs=1e-12)
    assert screened[1] > 10 * max(screened[0], screened[2])


def test_a_checker_raises_the_same_alerts_over_many_windows_as_window_by_window(rules: dict[str, Rule]) -> None:
    block = pa.concat_tables([fresh(1000), fresh(1001, null_rate=0.9), fresh(1002)]).combine_chunks()
    for rule in rules.values():
        one = [a for i in range(3) for a in checker(rule).check(block.slice(i * WINDOW, WINDOW), 7 + i)]
        many = checker(rule).check_windows(block, 7, WINDOW)
        assert [(a.rule_id, a.window_index, a.value) for a in many] == [
            (a.rule_id, a.window_index, a.value) for a in one
        ]
    assert any(a.window_index == 8 for a in checker(rules["null_rate:coupon"]).check_windows(block, 7, WINDOW))


@pytest.mark.parametrize(
    ("span", "windows"),
    [
        ((-300, 2400), 30),  # int16 sort
        ((-30000, 30000), 300),  # int16 sort
        ((32000, 32767), 30),  # next to the int16 null sentinel
        ((-(2**20), 2**22), 30),  # float32 sort
        ((-(2**40), 2**40), 30),  # float64 sort
    ],
)
@pytest.mark.parametrize("nulls", [False, True])
def test_windows_sort_in_a_narrow_type_exactly(span: tuple[int, int], windows: int, nulls: bool) -> None:
    """int16 and float32 sorts give exactly the float64 sort, nulls last as NaN."""
    rng = np.random.default_rng(span[1] % 97)
    grid = rng.integers(span[0], span[1], (windows, 400), dtype=np.int64)
    valid = rng.random(grid.shape) > 0.1 if nulls else None
    expected = np.sort(np.where(valid if valid is not None else True, grid.astype(np.float64), np.nan), axis=1)
    np.testing.assert_array_equal(drift._sorted_rows(grid, valid), expected)


@pytest.mark.parametrize("metric", ["jensen_shannon", "wasserstein"])
@pytest.mark.parametrize("low", [-300, 0, 2**40])
def test_counted_windows_screen_like_sorted_windows(metric: str, low: int, monkeypatch: Any) -> None:
    """Integers over a small span are counted per value, not sorted: the same numbers, bit for bit,
    with nulls, a window of nulls only, edges on, between and beyond the values, and one distinct value."""
    rng = np.random.default_rng(low % 89)
    windows, size = 12, 300
    values = low + rng.integers(0, 200, windows * size)
    values[5 * size : 6 * size] = low + 7  # one distinct value
    mask = rng.random(windows * size) < 0.15
    mask[2 * size : 3 * size] = True  # no values at all
    column = pa.array(values, mask=mask)
    if metric == "jensen_shannon":
        edges = [low - 5.0, low + 3.0, low + 3.5, low + 7.0, low + 100.25, low + 199.0, low + 500.0]
        baseline: dict[str, Any] = {"edges": edges, "probs": [1 / (len(edges) + 1)] * (len(edges) + 1)}
    else:
        ranks = list(drift.WASSERSTEIN_RANKS)
        baseline = {"ranks": ranks, "quantiles": [low + 200.0 * r for r in ranks], "iqr": 100.0}
    drift.forget_sorted_windows()
    counted = drift.window_values(metric, baseline, column, size)
    assert drift._SORTED["sorted"].cumulative is not None
    drift.forget_sorted_windows()
    monkeypatch.setattr(drift, "COUNTING_SORT_SLOTS", 0)
    sorted_ = drift.window_values(metric, baseline, column, size)
    assert drift._SORTED["sorted"].grid is not None
    drift.forget_sorted_windows()
    np.testing.assert_array_equal(counted, sorted_)
    assert np.isnan(counted[2]) and not np.isnan(counted[5])


@pytest.mark.parametrize("unsigned", [pa.uint8(), pa.uint32(), pa.uint64()])
@pytest.mark.parametrize("metric", ["jensen_shannon", "wasserstein"])
def test_unsigned_columns_screen_like_signed_ones(unsigned: pa.DataType, metric: str) -> None:
    """Unsigned integers (MySQL's UNSIGNED columns) get the windows' values of the same numbers as
    int64; uint64 arithmetic with int64 offsets turned to float once and crashed the check."""
    rng = np.random.default_rng(3)
    size = 200
    values = rng.integers(0, 200, 6 * size)
    mask = rng.random(len(values)) < 0.1
    edges = [3.0, 50.5, 120.0, 199.0]
    baseline: dict[str, Any] = {"edges": edges, "probs": [0.2] * 5}
    if metric == "wasserstein":
        ranks = list(drift.WASSERSTEIN_RANKS)
        baseline = {"ranks": ranks, "quantiles": [200.0 * r for r in ranks], "iqr": 100.0}
    drift.forget_sorted_windows()
    signed = drift.window_values(metric, baseline, pa.array(values, mask=mask), size)
    drift.forget_sorted_windows()
    got = drift.window_values(metric, baseline, pa.array(values, mask=mask, type=unsigned), size)
    drift.forget_sorted_windows()
    np.testing.assert_array_equal(got, signed)


def test_uint64_beyond_int64_is_sorted_not_counted() -> None:
    """uint64 values above 2**63 cannot be counted in int64: they take the sorting path, without error."""
    values = np.full(400, 2**63 + 10, dtype=np.uint64) + np.arange(400, dtype=np.uint64) % 7
    baseline: dict[str, Any] = {"edges": [1.0, 2.0**63 + 13], "probs": [0.3, 0.3, 0.4]}
    drift.forget_sorted_windows()
    counts = drift.window_values("jensen_shannon", baseline, pa.array(values, type=pa.uint64()), 200)
    assert drift._SORTED["sorted"].grid is not None
    drift.forget_sorted_windows()
    assert np.isfinite(counts).all()
