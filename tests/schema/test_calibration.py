"""The matcher's confidence is calibrated: checked on synthetic upstream changes the weights were not fitted on.

``bench/calibrate_matching.py`` fitted :data:`DEFAULT_WEIGHTS` on tasks of seed 0; these tests generate
fresh tasks (another seed: other synthetic tables, other samples, other renames and value changes) with
the same generator and the real embedding model, and check what auto-apply relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from bench.calibrate_matching import assignment_scores, demo_orders, design, fit_weights, generate_records

from lakegate.ai.embeddings import embed
from lakegate.schema.matching import DEFAULT_WEIGHTS, FEATURES, logistic, match_fields, weight_vector
from lakegate.schema.profiles import FieldProfile

SEED = 7
"""Not the fit's seed (0)."""
TASKS = 12
AUTO_APPLY = 0.9


@pytest.fixture(scope="module")
def model() -> Iterator[None]:
    """Load the model once for the module (a few seconds)."""
    embed(["warm up"])
    yield None


@pytest.fixture(scope="module")
def fresh(model: None) -> list[dict[str, Any]]:
    """Every pair of :data:`TASKS` fresh synthetic upstream changes, with evidence and label."""
    return generate_records(TASKS, SEED, jobs=1, workdir=None)


@pytest.mark.slow
def test_confident_pairs_are_right(fresh: list[dict[str, Any]]) -> None:
    x, y, _ = design(fresh)
    p = logistic(x, weight_vector(DEFAULT_WEIGHTS))
    sure = p >= AUTO_APPLY
    assert y.sum() >= 30 and sure.sum() >= 20, "too few pairs to judge"
    assert y[sure].mean() >= 0.95
    assert p[y == 1].mean() >= 0.6
    assert p[y == 0].mean() <= 0.1
    assert p[y == 1].mean() - p[y == 0].mean() >= 0.5
    assert float(np.mean((p - y) ** 2)) < 0.06  # Brier score


@pytest.mark.slow
def test_auto_applied_matches_are_right(fresh: list[dict[str, Any]]) -> None:
    """After ambiguity and the one-to-one assignment, what would be applied without review is right."""
    scores = assignment_scores(fresh, DEFAULT_WEIGHTS)
    assert scores["auto_applied"] >= 15
    assert scores["auto_precision"] >= 0.95
    assert scores["precision"] >= 0.85


def test_fit_recovers_known_weights() -> None:
    """The fit is maximum likelihood: on data drawn from a logistic model it finds that model's weights."""
    rng = np.random.default_rng(0)
    truth = np.linspace(-4.0, 4.0, len(FEATURES) + 1)
    x = rng.random((40_000, len(FEATURES)))
    x[:, -1] -= 0.5
    y = (rng.random(len(x)) < logistic(x, truth)).astype(np.float64)
    fitted = fit_weights(x, y, l2=0.0)
    assert list(fitted) == ["bias", *FEATURES]
    assert np.allclose(weight_vector(fitted), truth, atol=0.35)


@pytest.mark.slow
def test_demo_change_is_applied(model: None) -> None:
    """The demo's upstream change: renamed id, amount in cents as text, a moved nested field."""
    orders = demo_orders()
    contract_rows, batch = orders.slice(0, 1_000), orders.slice(1_000, 400)
    contract = {
        "customer_id": contract_rows.column("customer__id"),
        "amount": contract_rows.column("amount"),
        "shipping__city": contract_rows.column("customer__address__city"),
        "status": contract_rows.column("status"),
        "currency": contract_rows.column("currency"),
    }
    cents = pc.cast(pc.round(pc.multiply(batch.column("amount"), 100.0)), pa.int64())
    incoming = pa.table(
        {
            "cust_id": batch.column("customer__id"),
            "amount_cents": pc.cast(cents, pa.string()),
            "delivery__city": batch.column("customer__address__city"),
            "status": batch.column("status"),
            "currency": batch.column("currency"),
        }
    )
    missing = {n: FieldProfile.from_values(v, name=n) for n, v in contract.items() if n not in incoming.column_names}
    result = match_fields(incoming, missing, incoming_fields=["cust_id", "amount_cents", "delivery__city"])
    got = {m.incoming: (m.target, m.confidence, m.status) for m in result.matches}
    assert {k: v[0] for k, v in got.items()} == {
        "cust_id": "customer_id",
        "amount_cents": "amount",
        "delivery__city": "shipping__city",
    }
    assert all(confidence >= AUTO_APPLY and status == "auto" for _, confidence, status in got.values()), got
    amount = result.match_of("amount_cents")
    assert amount is not None and amount.evidence.fit == "standard"  # cents are a standard unit, not fitted
    out = amount.program.apply(incoming.column("amount_cents").combine_chunks()).values
    assert np.allclose(out.to_numpy(zero_copy_only=False), batch.column("amount").to_numpy(), atol=1e-9)
