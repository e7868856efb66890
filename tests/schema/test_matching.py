"""Field matching with the real all-MiniLM-L6-v2 model: abbreviations, ambiguity, traps, no-match."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pytest

from lakegate.ai.embeddings import cosine_matrix, embed, embedder, name_to_text
from lakegate.schema.matching import MatchConfig, MatchResult, match_fields
from lakegate.schema.profiles import FieldProfile

ROWS = 400


@pytest.fixture(scope="module")
def model() -> Iterator[None]:
    """Load the model once for the module (a few seconds)."""
    embed(["warm up"])
    yield None


def contract_table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "customer_id": rng.integers(10_000, 99_999, ROWS),
            "amount": np.round(rng.gamma(2.0, 40.0, ROWS), 2),
            "quantity": rng.integers(1, 10, ROWS),
            "email_address": [
                f"user{int(i)}@example.{d}"
                for i, d in zip(rng.integers(0, 10**6, ROWS), rng.choice(["com", "org"], ROWS), strict=True)
            ],
            "total_schedule_changes": rng.integers(0, 900, ROWS).astype(np.float64),
            "total_budget_changes": np.round(rng.normal(0, 5e6, ROWS), 2),
            "region": rng.choice(["north", "south", "east", "west"], ROWS),
        }
    )


def profiles(table: pa.Table) -> dict[str, FieldProfile]:
    return {n: FieldProfile.from_values(table.column(n), name=n) for n in table.column_names}


def pairs(result: MatchResult) -> dict[str, str]:
    return {m.incoming: m.target for m in result.matches}


def test_name_text_and_embeddings(model: None) -> None:
    assert name_to_text("customerID_2") == "customer id 2"
    assert name_to_text("tbl_school_year") == "tbl school year"
    vectors = embed(["cust_id", "customer_id", "cust_id"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert embedder() is embedder()
    cos = cosine_matrix(["customer_id", "amount"], ["cust_id", "amt", "customer_id"])
    assert cos[0, 0] > cos[1, 0] + 0.2  # customer_id~cust_id 0.57 vs amount~cust_id 0.25
    assert cos[0, 2] == pytest.approx(1.0, abs=1e-5)


def test_abbreviations_renames_and_no_counterpart(model: None) -> None:
    contract = contract_table(1)
    batch = contract_table(2)  # the same fields, other rows
    incoming = pa.table(
        {
            "cust_id": batch.column("customer_id"),
            "amt": batch.column("amount"),
            "email": batch.column("email_address"),
            "weather": np.random.default_rng(3).choice(["sunny", "rainy", "cloudy", "foggy", "windy"], ROWS),
        }
    )
    target = profiles(contract.select(["customer_id", "amount", "email_address", "region"]))
    result = match_fields(incoming, target)
    assert pairs(result) == {"cust_id": "customer_id", "amt": "amount", "email": "email_address"}
    assert result.unmatched_incoming == ["weather"]
    assert result.unmatched_contract == ["region"]
    amt = result.match_of("amt")
    assert amt is not None and amt.confidence > 0.8
    assert amt.evidence.cosine < 0.3  # the model alone misses "amt"; lexical and value evidence carry it
    assert amt.evidence.lexical > 0.7 and amt.evidence.value > 0.8
    body = orjson.loads(orjson.dumps(result.to_dict()))
    assert {m["incoming"] for m in body["matches"]} == {"cust_id", "amt", "email"}
    assert set(body["matches"][0]["evidence"]) >= {"cosine", "lexical", "raw_distance", "value", "overlap", "program"}


@pytest.mark.parametrize(
    ("source_field", "expected"),
    [("total_schedule_changes", "total_schedule_changes"), ("total_budget_changes", "total_budget_changes")],
)
def test_ambiguous_names_are_decided_by_values(model: None, source_field: str, expected: str) -> None:
    contract = contract_table(4)
    batch = contract_table(5)
    incoming = pa.table({"total_changes": batch.column(source_field)})
    target = profiles(contract.select(["total_schedule_changes", "total_budget_changes", "region"]))
    result = match_fields(incoming, target)
    (match,) = result.matches
    assert match.target == expected
    assert match.ambiguous and match.status == "review"
    (other,) = match.alternatives
    assert other.target != expected and other.value < match.evidence.value


def test_swapped_names_are_decided_by_values(model: None) -> None:
    contract = contract_table(6)
    batch = contract_table(7)
    incoming = pa.table({"amount": batch.column("quantity"), "quantity": batch.column("amount")})
    result = match_fields(incoming, profiles(contract.select(["amount", "quantity"])))
    assert pairs(result) == {"amount": "quantity", "quantity": "amount"}


def test_linked_rows_add_key_overlap(model: None) -> None:
    contract = contract_table(8)
    incoming = pa.table({"cust_no": contract.column("customer_id"), "qty": contract.column("quantity")})
    target = profiles(contract.select(["customer_id", "quantity"]))
    result = match_fields(incoming, target, linked_rows=contract.select(["customer_id", "quantity"]))
    assert pairs(result) == {"cust_no": "customer_id", "qty": "quantity"}
    assert all(m.evidence.row_match == pytest.approx(1.0) for m in result.matches)
    with pytest.raises(ValueError, match="linked_rows"):
        match_fields(incoming, target, linked_rows=contract.slice(0, 10))


def test_unrelated_fields_stay_unmatched_without_embeddings() -> None:
    contract = contract_table(9)
    incoming = pa.table(
        {
            "temperature_c": np.random.default_rng(10).normal(20, 5, ROWS),
            "colour": np.random.default_rng(11).choice(["red", "green", "blue"], ROWS),
        }
    )
    result = match_fields(
        incoming, profiles(contract.select(["customer_id", "email_address"])), config=MatchConfig(use_embeddings=False)
    )
    assert result.matches == []
    assert result.confidence.max() < 0.5


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="nope"):
        match_fields(pa.table({"a": [1]}), {}, incoming_fields=["nope"])
    assert match_fields(pa.table({"a": pa.array([], pa.int64())}), {}).matches == []
