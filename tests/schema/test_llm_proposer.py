"""LLMProposer against the local OpenAI-compatible STUB server (tests/ai/openai_stub.py).

The stub stands in for a remote LLM endpoint we cannot run here; the programs are lakegate's real DSL
(``lakegate.schema.dsl.Program``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import RootModel

from lakegate.ai.llm import ChatClient, ChatStatus, LLMConfig
from lakegate.core.errors import ConfigError
from lakegate.schema.dsl import Program, Scale
from lakegate.schema.llm_proposer import (
    DEFAULT_EXAMPLES,
    FieldSummary,
    LLMProposer,
    ProposalRequest,
    ProposalResult,
    WorkedExample,
    op_catalogue,
)
from lakegate.schema.profiles import FieldProfile
from tests.ai.openai_stub import OpenAIStub, StubReply

pytestmark = pytest.mark.integration


class ToyProgram(RootModel[list[dict[str, int]]]):
    """Another program model: a root list of steps and no ``op`` discriminator."""


TARGETS = (
    FieldSummary("amount_usd", "double", (12.5, 99.0, 3.25), "nulls 0%, min 0.5, max 980"),
    FieldSummary("customer_id", "long", (1001, 1002, 1003)),
)
SOURCES = (
    FieldSummary("amount_cents", "long", (1250, 9900, 325)),
    FieldSummary("cust", "string", ("1001", "1002")),
    FieldSummary("note", "string", ("gift",)),
)
GOOD_ANSWER = {
    "mappings": [
        {"source": "amount_cents", "target": "amount_usd", "program": [{"op": "scale", "factor": 0.01}],
         "confidence": 0.9},
        {"source": "cust", "target": "customer_id", "program": [{"op": "cast", "to": "long"}], "confidence": 0.75},
    ]
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def request() -> ProposalRequest:
    return ProposalRequest(dataset="orders", targets=TARGETS, sources=SOURCES)


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


@pytest.fixture
def make_proposer(stub: OpenAIStub, tmp_path: Path) -> Iterator[Callable[..., LLMProposer]]:
    made: list[LLMProposer] = []

    def make(max_pending: int = 4, **client_settings: Any) -> LLMProposer:
        settings: dict[str, Any] = {
            "base_url": stub.base_url,
            "model": "stub-model",
            "timeout_s": 2.0,
            "max_requests_per_minute": 6000,
            "burst": 100,
            "cache_path": tmp_path / "cache.db",
            "breaker_failure_threshold": 2,
        }
        settings.update(client_settings)
        client = ChatClient(LLMConfig(**settings), clock=FakeClock())
        proposer = LLMProposer(client, max_pending=max_pending)
        made.append(proposer)
        return proposer

    yield make
    for proposer in made:
        proposer.close(timeout_s=3)
        proposer.client.close()


def wait_for_results(proposer: LLMProposer, count: int, within_s: float = 5.0) -> list[ProposalResult]:
    results: list[ProposalResult] = []
    deadline = time.monotonic() + within_s
    while len(results) < count and time.monotonic() < deadline:
        results.extend(proposer.poll())
        time.sleep(0.01)
    return results


# --- prompt -----------------------------------------------------------------------------------------------


def test_op_catalogue_is_read_from_the_program_schema() -> None:
    lines = op_catalogue(Program).splitlines()
    assert any(line.startswith("- scale(factor: number) — Multiply by a constant") for line in lines)
    assert any(line.startswith('- parse_datetime(format: string) — Read date/time strings') for line in lines)
    assert any(line.startswith('- round(digits: integer = 0)') for line in lines)
    ops = {line[2:].split("(", 1)[0] for line in lines}
    assert "scale" in ops and "cast" in ops and len(ops) == len(lines) >= 20


def test_default_worked_examples_are_right_under_the_real_dsl() -> None:
    """Each example program turns the source samples into the target samples."""
    for example in DEFAULT_EXAMPLES:
        sources = {f.name: f for f in example.sources}
        targets = {f.name: f for f in example.targets}
        for entry in example.mappings:
            program = Program.model_validate_json(json.dumps({"steps": entry["program"]}))
            applied = program.apply(pa.array(sources[entry["source"]].samples))
            assert applied.failures == 0, applied.errors
            expected = targets[entry["target"]].samples
            got = applied.values.to_pylist()
            if pa.types.is_timestamp(applied.values.type):
                got = [value.isoformat() for value in got]
            assert got == list(expected), entry


def test_another_program_model_can_be_passed_in(stub: OpenAIStub, tmp_path: Path) -> None:
    client = ChatClient(LLMConfig(base_url=stub.base_url, model="m", cache_path=tmp_path / "c.db"))
    proposer = LLMProposer(client, ToyProgram, program_field=None)
    assert proposer.examples == ()
    assert '"type":"array"' in proposer.op_catalogue, "no ops found: the whole schema is shown"
    answer = {"mappings": [{"source": "cust", "target": "customer_id", "program": [{"add": 1}], "confidence": 1}]}
    (found,) = proposer.parse(json.dumps(answer), request())
    assert found.program == ToyProgram([{"add": 1}])
    with pytest.raises(ValueError, match="program"):
        proposer.parse(json.dumps(answer).replace("1}]", '"one"}]', 1), request())
    client.close()


def test_prompt_has_fields_samples_catalogue_and_worked_examples(make_proposer: Callable[..., LLMProposer]) -> None:
    messages = make_proposer().build_messages(request())
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    system, example_question, example_answer = (m["content"] for m in messages[:3])
    question = messages[-1]["content"]
    assert '{"mappings": [' in system and "- scale(factor: number)" in system
    assert "amount_cents (long)" in example_question
    assert json.loads(example_answer)["mappings"][0]["program"] == [{"op": "scale", "factor": 0.01}]
    assert "- amount_usd (double): samples [12.5, 99.0, 3.25]; profile: nulls 0%, min 0.5, max 980" in question
    assert '- cust (string): samples ["1001", "1002"]' in question
    missing, unmatched = question.split("Unmatched incoming fields:")
    assert "customer_id" in missing and "amount_cents" in unmatched and "note" in unmatched


def test_samples_are_capped_and_truncated(make_proposer: Callable[..., LLMProposer]) -> None:
    long = FieldSummary("blob", "string", tuple("x" * 500 for _ in range(20)))
    question = make_proposer().build_messages(ProposalRequest("t", TARGETS, (long,)))[-1]["content"]
    blob_line = next(line for line in question.splitlines() if line.startswith("- blob"))
    assert blob_line.count("…") == 5 and len(blob_line) < 500


def test_summaries_from_measured_profiles() -> None:
    cents = FieldSummary.from_profile(FieldProfile.from_values(pa.array([1250, 9900, 325, None]), name="amount_cents"))
    assert cents.name == "amount_cents" and cents.type == "long" and set(cents.samples) == {1250, 9900, 325}
    assert cents.profile == "nulls 25%, 3 distinct, min 325, max 9900, whole numbers"
    created = FieldSummary.from_profile(
        FieldProfile.from_values(pa.array(["01/05/2024 10:00", "02/05/2024 17:45"])), name="created"
    )
    assert "shapes 99/99/9999 99:99 100%" in (created.profile or "")
    assert "datetime format %d/%m/%Y %H:%M" in (created.profile or "")
    when = pa.array([datetime(2024, 5, 1, 10, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)])
    stamps = FieldSummary.from_profile(FieldProfile.from_values(when, name="created_at"))
    assert "from 2024-05-01T10:00:00+00:00 to 2024-06-01T00:00:00+00:00" in (stamps.profile or "")


def test_invalid_worked_example_is_a_config_error(stub: OpenAIStub, tmp_path: Path) -> None:
    wrong = {"source": "cust", "target": "customer_id", "program": [{"op": "upper"}], "confidence": 0.5}
    bad = WorkedExample(TARGETS, SOURCES, (wrong,))
    client = ChatClient(LLMConfig(base_url=stub.base_url, model="m", cache_path=tmp_path / "c.db"))
    with pytest.raises(ConfigError, match="worked example 0"):
        LLMProposer(client, examples=[bad])
    client.close()


# --- answers ----------------------------------------------------------------------------------------------


def test_valid_answer_becomes_validated_proposals_with_prompt_and_response(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]
) -> None:
    proposer = make_proposer()
    stub.enqueue_content(json.dumps(GOOD_ANSWER))
    result = proposer.propose(request())
    assert result.status == "ok" and not result.fallback
    by_target = {m.target: m for m in result.mappings}
    assert by_target["amount_usd"].source == "amount_cents"
    assert isinstance(by_target["amount_usd"].program, Program)
    assert by_target["amount_usd"].program.steps[0] == Scale(op="scale", factor=0.01)
    assert by_target["customer_id"].confidence == 0.75
    assert result.chat is not None and result.chat.messages == tuple(proposer.build_messages(request()))
    evidence = result.evidence()
    assert evidence["llm"]["response"] == json.dumps(GOOD_ANSWER)
    assert evidence["llm"]["prompt"][-1]["role"] == "user"
    assert evidence["mappings"][0]["program"] == [{"op": "scale", "factor": 0.01}]
    json.dumps(evidence)  # JSON-ready for a decision record


def test_fenced_json_and_empty_answer_are_accepted(stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]) -> None:
    proposer = make_proposer()
    assert len(proposer.parse("```json\n" + json.dumps(GOOD_ANSWER) + "\n```", request())) == 2
    assert proposer.parse('{"mappings": []}', request()) == ()


def mapping(**changes: Any) -> str:
    entry = {"source": "cust", "target": "customer_id", "program": [{"op": "cast", "to": "long"}], "confidence": 0.5}
    entry.update(changes)
    return json.dumps({"mappings": [entry]})


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("Sure! cust maps to customer_id.", "Invalid JSON"),
        ('{"mappings": [', "EOF while parsing"),
        ("[]", "should be an object"),
        ('{"mapping": []}', "mappings: Field required"),
        (mapping(program=[{"op": "uppercase"}]), "does not match any of the expected tags"),
        (mapping(program=[{"op": "cast", "to": "int128"}]), "program: steps.0.cast.to"),
        (mapping(program=[{"op": "scale"}]), "factor: Field required"),
        (mapping(source="customer"), "not one of the unmatched incoming fields"),
        (mapping(target="order_id"), "not one of the missing contract fields"),
        (mapping(confidence=1.5), "less than or equal to 1"),
        (mapping(confidence="high"), "confidence"),
        (mapping(why="looks similar"), "Extra inputs are not permitted"),
        (json.dumps({"mappings": [json.loads(mapping())["mappings"][0]] * 2}), "mapped twice"),
    ],
)
def test_parse_rejects_anything_but_the_asked_shape(
    make_proposer: Callable[..., LLMProposer], content: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        make_proposer().parse(content, request())


@pytest.mark.parametrize(
    "content", ["no JSON here", mapping(program=[{"op": "uppercase"}])], ids=["prose", "unknown-op"]
)
def test_malformed_model_output_is_a_recorded_failure_counting_for_the_breaker(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer], content: str
) -> None:
    proposer = make_proposer()
    stub.enqueue_content(content, content)
    first = proposer.propose(request())
    assert first.status == "failed" and first.fallback and first.mappings == ()
    assert first.chat is not None and first.chat.status is ChatStatus.INVALID_CONTENT
    assert first.chat.content == content, "the bad response is kept for the audit trail"
    assert "last-known-good contract" in (first.reason or "")
    assert proposer.client.breaker.status().consecutive_failures == 1
    assert proposer.propose(request()).status == "failed"
    assert proposer.client.breaker.state == "open" and stub.request_count == 2


def test_open_breaker_gives_a_fallback_without_asking(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]
) -> None:
    proposer = make_proposer()
    stub.enqueue(StubReply(status=500), StubReply(status=500))
    assert proposer.propose(request()).status == "failed"
    assert proposer.propose(request()).status == "failed"
    result = proposer.propose(request())
    assert result.status == "refused" and result.refusal == "circuit_open" and result.fallback
    assert "synthesis and the last-known-good contract" in (result.reason or "")
    assert stub.request_count == 2


def test_timeout_is_a_failed_result_not_an_exception(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]
) -> None:
    proposer = make_proposer(timeout_s=0.2)
    stub.enqueue(StubReply(delay_s=2))
    result = proposer.propose(request())
    assert result.status == "failed" and result.chat is not None and result.chat.status is ChatStatus.TIMEOUT


def test_cached_answer_is_reused_without_a_request(stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]) -> None:
    proposer = make_proposer()
    stub.enqueue_content(json.dumps(GOOD_ANSWER))
    proposer.propose(request())
    again = proposer.propose(request())
    assert again.status == "ok" and again.chat is not None and again.chat.cached
    assert len(again.mappings) == 2 and stub.request_count == 1


def test_nothing_to_map_asks_nothing(stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]) -> None:
    result = make_proposer().propose(ProposalRequest("orders", TARGETS, ()))
    assert result.status == "ok" and result.mappings == () and result.chat is None
    assert stub.request_count == 0


# --- asynchronous use -------------------------------------------------------------------------------------


def test_submit_returns_at_once_and_poll_collects_the_result(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]
) -> None:
    proposer = make_proposer()
    stub.enqueue(StubReply(content=json.dumps(GOOD_ANSWER), delay_s=0.3))
    started = time.monotonic()
    proposer.submit(request())
    submitted_in = time.monotonic() - started
    polled = proposer.poll()
    assert submitted_in < 0.05 and polled == []
    (result,) = wait_for_results(proposer, 1)
    assert result.status == "ok" and len(result.mappings) == 2


def test_full_queue_refuses_immediately_while_the_worker_is_busy(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]
) -> None:
    proposer = make_proposer(max_pending=2)
    stub.responder = lambda _body: StubReply(content='{"mappings": []}', delay_s=0.4)
    durations = []
    for index in range(6):
        started = time.monotonic()
        proposer.submit(ProposalRequest("orders", TARGETS, SOURCES, request_id=f"r{index}"))
        durations.append(time.monotonic() - started)
        if index == 0:
            deadline = time.monotonic() + 2
            while proposer.pending and time.monotonic() < deadline:  # the worker took r0
                time.sleep(0.005)
    assert max(durations) < 0.05, durations
    refused = proposer.poll()
    assert [r.request.request_id for r in refused] == ["r3", "r4", "r5"]
    assert all(r.status == "refused" and r.refusal == "queue_full" and r.fallback for r in refused)
    done = wait_for_results(proposer, 3)
    assert sorted(r.request.request_id for r in done) == ["r0", "r1", "r2"]
    assert all(r.status == "ok" for r in done)


def test_submit_while_breaker_open_is_refused_with_a_fallback_reason(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]
) -> None:
    proposer = make_proposer()
    stub.enqueue(StubReply(raw_body="<html>"), StubReply(raw_body="<html>"))
    proposer.submit(request())
    proposer.submit(request())
    failures = wait_for_results(proposer, 2)
    assert [r.status for r in failures] == ["failed", "failed"]
    assert proposer.client.breaker.state == "open"
    started = time.monotonic()
    proposer.submit(request())
    assert time.monotonic() - started < 0.05
    (fallback,) = proposer.poll()
    assert fallback.status == "refused" and fallback.refusal == "circuit_open"
    assert "last-known-good contract" in (fallback.reason or "") and stub.request_count == 2


def test_close_refuses_queued_requests_and_later_submits(
    stub: OpenAIStub, make_proposer: Callable[..., LLMProposer]
) -> None:
    proposer = make_proposer(max_pending=3)
    stub.responder = lambda _body: StubReply(content='{"mappings": []}', delay_s=0.3)
    for index in range(3):
        proposer.submit(ProposalRequest("orders", TARGETS, SOURCES, request_id=f"r{index}"))
    proposer.close(timeout_s=2)
    proposer.submit(ProposalRequest("orders", TARGETS, SOURCES, request_id="late"))
    results = {r.request.request_id: r for r in proposer.poll()}
    assert results["late"].refusal == "closed"
    refused_on_close = [rid for rid, r in results.items() if r.refusal == "closed" and rid != "late"]
    assert len(refused_on_close) >= 1
    assert len(results) == 4, "every request gets exactly one result"
