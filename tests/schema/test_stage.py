"""The schema gate on its own: carried mappings, held changes, and the optional model's answers.

The model is the labeled OpenAI-compatible stub (tests/ai/openai_stub.py): a remote LLM cannot run
here; matching and synthesis are the real ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lakegate.ai.llm import ChatClient, LLMConfig
from lakegate.contracts.learn import ContractLearner
from lakegate.contracts.model import Contract
from lakegate.schema.dsl import FieldMapping, Program, Scale
from lakegate.schema.llm_proposer import LLMProposer
from lakegate.schema.stage import SchemaPolicy, SchemaStage, apply_mappings
from tests.ai.openai_stub import OpenAIStub

RNG = np.random.default_rng(3)
N = 1500


def old_rows(n: int = N) -> pa.Table:
    return pa.table(
        {
            "order_id": [f"ORD-{i:06d}" for i in range(n)],
            "customer_id": RNG.integers(1000, 9999, n),
            "amount": np.round(RNG.uniform(5, 500, n), 2),
            "status": RNG.choice(["new", "paid", "shipped"], n),
        }
    )


def new_rows(n: int = 400) -> pa.Table:
    old = old_rows(n)
    return pa.table(
        {
            "order_id": old.column("order_id"),
            "client_ref": old.column("customer_id"),  # no name evidence at all: values alone
            "amt_cents": [str(round(a * 100)) for a in old.column("amount").to_pylist()],
            "status": old.column("status"),
        }
    )


@pytest.fixture(scope="module")
def contract() -> Contract:
    learner = ContractLearner("orders")
    learner.observe(old_rows())
    return learner.build().model_copy(update={"version": 1})


def test_mappings_carried_by_the_contract_apply_to_new_and_mixed_rows() -> None:
    rows = pa.table({"customer_id": pa.array([1, None], pa.int64()), "cust_id": pa.array([None, 7], pa.int64())})
    mapped, counts = apply_mappings(rows, [FieldMapping(target="customer_id", sources=["cust_id"])])
    assert mapped.column_names == ["customer_id"]
    assert mapped.column("customer_id").to_pylist() == [1, 7]
    assert counts == {"customer_id ← cust_id": 1}
    cents = pa.table({"amount_cents": pa.array([1999, 250])})
    out, _ = apply_mappings(cents, [FieldMapping(target="amount", sources=["amount_cents"],
                                                 program=Program(steps=[Scale(factor=0.01)]))])  # fmt: skip
    assert out.column("amount").to_pylist() == pytest.approx([19.99, 2.5])


def test_an_unsure_change_is_held_and_stays_held_across_a_restart(contract: Contract) -> None:
    stage = SchemaStage("orders", SchemaPolicy(auto_apply=0.999))
    outcome = stage.process(new_rows(), contract)
    assert outcome.held_count == 400 and outcome.rows.num_rows == 0
    assert len(outcome.proposals) == 1 and not outcome.proposals[0].auto
    assert outcome.proposals[0].reasons  # the policy says why

    restarted = SchemaStage("orders", SchemaPolicy(auto_apply=0.999))
    restarted.restore(stage.snapshot())
    again = restarted.process(new_rows(), contract)
    assert again.held_count == 400 and again.proposals == []  # held by the same proposal, not proposed anew


def _wait_for_answers(proposer: LLMProposer, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while proposer.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)


def test_a_models_mapping_is_validated_on_the_held_rows_and_applied_when_it_passes(
    contract: Contract, tmp_path: Path
) -> None:
    answer = {
        "mappings": [
            {"source": "client_ref", "target": "customer_id", "program": [], "confidence": 0.999},
            {"source": "amt_cents", "target": "amount", "confidence": 0.999,
             "program": [{"op": "cast", "to": "double"}, {"op": "scale", "factor": 0.01}]},
        ]
    }  # fmt: skip
    with OpenAIStub() as stub:
        stub.enqueue_content(json.dumps(answer))
        proposer = LLMProposer(ChatClient(LLMConfig(base_url=stub.base_url, model="m", cache_path=None)))
        stage = SchemaStage("orders", SchemaPolicy(auto_apply=0.995), advisor=proposer)
        first = stage.process(new_rows(), contract)
        assert first.held_count == 400  # synthesis alone is not sure enough at this threshold
        _wait_for_answers(proposer)
        batch = new_rows()
        second = stage.process(batch, contract)
        proposer.close()
    model = [p for p in second.proposals if p.evidence.get("proposer") == "llm"]
    assert len(model) == 1 and model[0].auto, model[0].reasons if model else second.proposals
    assert model[0].evidence["validation"]["amount"]["valid_share"] == 1.0
    assert model[0].evidence["llm"]["prompt"] and model[0].evidence["llm"]["response"]
    assert second.held_count == 0 and second.rows.num_rows == 400
    cents = batch.column("amt_cents").to_pylist()
    assert second.rows.column("amount").to_pylist() == pytest.approx([int(c) / 100 for c in cents])
    assert second.rows.column("customer_id").to_pylist() == batch.column("client_ref").to_pylist()
    assert stub.request_count == 1


def test_a_wrong_model_mapping_fails_validation_and_is_only_held(contract: Contract) -> None:
    wrong = {"mappings": [{"source": "amt_cents", "target": "customer_id", "program": [{"op": "cast", "to": "long"}],
                           "confidence": 0.999}]}  # fmt: skip
    with OpenAIStub() as stub:
        stub.enqueue_content(json.dumps(wrong))
        proposer = LLMProposer(ChatClient(LLMConfig(base_url=stub.base_url, model="m", cache_path=None)))
        stage = SchemaStage("orders", SchemaPolicy(auto_apply=0.995), advisor=proposer)
        stage.process(new_rows(), contract)
        _wait_for_answers(proposer)
        second = stage.process(new_rows(), contract)
        proposer.close()
    model = [p for p in second.proposals if p.evidence.get("proposer") == "llm"]
    assert len(model) == 1 and not model[0].auto
    assert any("profile" in r for r in model[0].reasons)
    assert second.held_count == 400


def test_an_unreachable_model_falls_back_without_blocking(contract: Contract) -> None:
    config = LLMConfig(base_url="http://127.0.0.1:9", model="m", cache_path=None, timeout_s=0.5)
    proposer = LLMProposer(ChatClient(config))
    stage = SchemaStage("orders", SchemaPolicy(auto_apply=0.999), advisor=proposer)
    started = time.monotonic()
    stage.process(new_rows(), contract)
    assert time.monotonic() - started < 5  # matching only; the model call runs in the background
    _wait_for_answers(proposer)
    second = stage.process(new_rows(), contract)
    proposer.close()
    assert second.held_count == 400
    assert len(stage.fallbacks) == 1 and stage.fallbacks[0]["status"] != "ok"
