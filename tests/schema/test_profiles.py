"""FieldProfile from values and from a contract, and profile_distance on realistic fields."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakegate.contracts.model import Contract, DatasetSchema, FieldSchema, Rule
from lakegate.schema.profiles import FieldProfile, detect_datetime_format, parse_datetimes, profile_distance

RNG = np.random.default_rng(7)


def test_numeric_profile_has_quantiles_and_stats() -> None:
    values = pa.array(np.concatenate([RNG.normal(100, 10, 5000), [np.nan]]).tolist() + [None])
    p = FieldProfile.from_values(values, name="amount")
    assert p.kind == "numeric" and p.type == "double" and p.count == 5002
    assert len(p.quantiles) == 101 and 95 < p.quantiles[50] < 105
    assert p.null_rate == 1 / 5002


def test_string_profile_has_shapes_format_and_sample() -> None:
    codes = pa.array([f"AB-{i:03d}" for i in RNG.integers(0, 999, 2000)])
    p = FieldProfile.from_values(codes)
    assert p.patterns == {"AA-999": 1.0}
    assert p.length_low == p.length_high == 6
    assert len(p.sample) <= 256 and 0 < p.sample_coverage <= 1
    emails = FieldProfile.from_values(pa.array([f"u{i}@example.com" for i in range(50)]))
    assert emails.format == "email"
    dates = FieldProfile.from_values(pa.array(["24/06/1901", "13/01/2000", "01/02/2003"]))
    assert dates.datetime_format == "%d/%m/%Y"


def test_datetime_detection_rejects_impossible_days() -> None:
    assert detect_datetime_format(pa.array(["2020-01-31", "2021-12-01"])) == "%Y-%m-%d"
    parsed = parse_datetimes(pa.array(["31/02/2000", "28/02/2000"]), "%d/%m/%Y")
    assert parsed.to_pylist()[0] is None and parsed.to_pylist()[1] is not None


def test_distance_tells_same_from_shifted_and_scaled() -> None:
    target = FieldProfile.from_values(pa.array(RNG.normal(50, 5, 4000)))
    same = profile_distance(pa.array(RNG.normal(50, 5, 4000)), target)
    shifted = profile_distance(pa.array(RNG.normal(60, 5, 4000)), target)
    scaled = profile_distance(pa.array(RNG.normal(5000, 500, 4000)), target)
    assert same < 0.1 < shifted < scaled <= 1.0


def test_distance_on_strings_uses_membership_and_shape() -> None:
    cities = ["Brooklyn", "Queens", "Bronx", "Manhattan", "Staten Island"]
    target = FieldProfile.from_values(pa.array(RNG.choice(cities, 1000).tolist()))
    assert profile_distance(pa.array(RNG.choice(cities, 300).tolist()), target) < 0.05
    upper = profile_distance(pa.array([c.upper() for c in RNG.choice(cities, 300)]), target)
    other = profile_distance(pa.array([f"X{i}" for i in range(300)]), target)
    assert 0.3 < upper and 0.5 < other


def test_distance_of_number_like_strings_pays_a_type_penalty() -> None:
    target = FieldProfile.from_values(pa.array(RNG.integers(0, 100, 1000)))
    as_text = pa.array([str(v) for v in RNG.integers(0, 100, 1000)])
    d = profile_distance(as_text, target)
    assert 0.25 <= d < 0.35
    assert profile_distance(pa.array(["a", "b"]), target) == 1.0
    assert profile_distance(pa.array([None, None], pa.int64()), target) == 1.0


def test_from_contract_reads_rules_and_stored_sample() -> None:
    contract = Contract(
        dataset="orders",
        schema=DatasetSchema(fields=[FieldSchema(name="status", type="string"), FieldSchema(name="qty", type="long")]),
        rules=[
            Rule(id="a", kind="allowed_values", columns=["status"], params={"values": ["new", "paid"], "closed": True}),
            Rule(id="p", kind="pattern", columns=["status"], params={"patterns": ["AAA", "AAAA"], "collapse": False}),
            Rule(id="n", kind="not_null", columns=["qty"]),
            Rule(
                id="r",
                kind="range",
                columns=["qty"],
                params={"low": 0, "high": 20, "quantiles": [0.01, 0.99], "q_low": 1, "q_high": 10},
            ),
        ],
    )
    status = FieldProfile.from_contract(contract, "status")
    assert status.origin == "contract" and status.sample == ["new", "paid"] and status.sample_coverage == 1.0
    assert status.patterns_exhaustive
    assert profile_distance(pa.array(["new", "paid", "new"]), status) < 0.1
    assert profile_distance(pa.array(["NEW", "PAID"]), status) > 0.4
    qty = FieldProfile.from_contract(contract, "qty")
    assert qty.kind == "numeric" and qty.null_rate == 0 and qty.low == 0 and qty.high == 20
    assert profile_distance(pa.array([1, 5, 10]), qty) < profile_distance(pa.array([100, 500, 1000]), qty)
    # a stored sample (contract.profiles) is used when the contract carries it
    stored = contract.model_copy()
    object.__setattr__(stored, "profiles", {"status": {"sample": ["new", "paid", "void"]}})
    assert "void" in FieldProfile.from_contract(stored, "status").sample


def test_profile_round_trips_json() -> None:
    p = FieldProfile.from_values(pa.array(["a", "b", None]))
    assert FieldProfile.model_validate_json(p.model_dump_json()) == p
