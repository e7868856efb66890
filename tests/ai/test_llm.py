"""ChatClient against the local OpenAI-compatible STUB server (tests/ai/openai_stub.py).

The stub stands in for a remote LLM endpoint we cannot run here; these tests check the HTTP protocol,
the SQLite cache, the rate limiter, the timeout and the circuit breaker over real loopback HTTP.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lakegate.ai.llm import ChatClient, ChatRecord, ChatStatus, LLMConfig
from lakegate.core.errors import ConfigError
from tests.ai.openai_stub import OpenAIStub, StubReply

pytestmark = pytest.mark.integration

PROMPT = [{"role": "system", "content": "You answer in JSON."}, {"role": "user", "content": "map cust_id"}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


@pytest.fixture
def make_client(stub: OpenAIStub, tmp_path: Path) -> Iterator[Callable[..., ChatClient]]:
    clients: list[ChatClient] = []

    def make(clock: Callable[[], float] = time.monotonic, **overrides: Any) -> ChatClient:
        settings: dict[str, Any] = {
            "base_url": stub.base_url,
            "model": "stub-model",
            "timeout_s": 2.0,
            "max_requests_per_minute": 6000,
            "burst": 100,
            "cache_path": tmp_path / "llm-cache.db",
        }
        settings.update(overrides)
        client = ChatClient(LLMConfig(**settings), clock=clock)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def ask(client: ChatClient, text: str = "map cust_id") -> ChatRecord:
    return client.complete([{"role": "user", "content": text}])


# --- protocol ---------------------------------------------------------------------------------------------


def test_request_shape_auth_header_and_response_parsing(
    stub: OpenAIStub, make_client: Callable[..., ChatClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LG_TEST_LLM_KEY", "sk-test-secret")
    client = make_client(api_key_env="LG_TEST_LLM_KEY", max_tokens=256)
    stub.enqueue_content('{"mappings": []}')
    record = client.complete(PROMPT)

    assert record.status is ChatStatus.OK and record.ok
    assert record.content == '{"mappings": []}'
    assert json.loads(record.response_text or "")["object"] == "chat.completion"
    assert record.http_status == 200 and not record.cached and record.latency_s > 0
    assert list(record.messages) == PROMPT

    (request,) = stub.chat_requests
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test-secret"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {
        "model": "stub-model",
        "messages": PROMPT,
        "stream": False,
        "temperature": 0.0,
        "max_tokens": 256,
    }
    # the key lives only in the header: never in the config, the record, its evidence or the client's repr
    for text in (client.config.model_dump_json(), repr(record), json.dumps(record.evidence()), repr(client)):
        assert "sk-test-secret" not in text


def test_no_key_env_sends_no_authorization_and_json_mode_asks_for_json(
    stub: OpenAIStub, make_client: Callable[..., ChatClient]
) -> None:
    client = make_client(json_mode=True)
    assert ask(client).ok
    (request,) = stub.chat_requests
    assert "Authorization" not in request.headers
    assert request.body["response_format"] == {"type": "json_object"}


def test_missing_key_variable_is_a_config_error_naming_the_field(
    make_client: Callable[..., ChatClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LG_TEST_ABSENT_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"api_key_env.*LG_TEST_ABSENT_KEY"):
        make_client(api_key_env="LG_TEST_ABSENT_KEY")


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"base_url": "ftp://host/v1", "model": "m"}, "llm.base_url"),
        ({"base_url": "http://h/v1", "model": "m", "timeout_s": 0}, "llm.timeout_s"),
        ({"base_url": "http://h/v1", "model": ""}, "llm.model"),
        ({"base_url": "http://h/v1", "model": "m", "api_key": "sk-123"}, "llm.api_key"),
        ({"base_url": "http://h/v1", "model": "m", "api_key_env": "not a name"}, "llm.api_key_env"),
        ({"base_url": "http://h/v1", "model": "m", "max_requests_per_minute": -1}, "llm.max_requests_per_minute"),
    ],
)
def test_bad_config_names_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LLMConfig.parse(settings)


def test_config_accepts_durations_and_strips_the_trailing_slash() -> None:
    config = LLMConfig.parse({"base_url": "http://127.0.0.1:11434/v1/", "model": "m", "timeout_s": "500ms"})
    assert config.base_url == "http://127.0.0.1:11434/v1" and config.timeout_s == 0.5


# --- cache ------------------------------------------------------------------------------------------------


def test_identical_call_is_answered_from_cache_without_a_request(
    stub: OpenAIStub, make_client: Callable[..., ChatClient]
) -> None:
    client = make_client()
    stub.enqueue_content("first", "second")
    first = client.complete(PROMPT)
    again = client.complete(PROMPT)
    assert stub.request_count == 1
    assert again.cached and again.ok and again.content == first.content == "first"
    assert again.response_text == first.response_text and again.cache_key == first.cache_key
    other = ask(client, "another prompt")
    assert stub.request_count == 2 and other.content == "second" and not other.cached
    assert client.stats().cache_hits == 1 and client.stats().requests_sent == 2


def test_cache_survives_a_new_client_on_the_same_file(
    stub: OpenAIStub, make_client: Callable[..., ChatClient], tmp_path: Path
) -> None:
    stub.enqueue_content("remembered")
    first = make_client(cache_path=tmp_path / "shared.db")
    assert ask(first).content == "remembered"
    first.close()
    second = make_client(cache_path=tmp_path / "shared.db")
    record = ask(second)
    assert record.cached and record.content == "remembered"
    assert stub.request_count == 1


def test_cache_key_covers_model_and_parameters(stub: OpenAIStub, make_client: Callable[..., ChatClient]) -> None:
    base = make_client()
    hotter = make_client(temperature=0.7)
    other_model = make_client(model="other-model")
    keys = {c.cache_key(PROMPT) for c in (base, hotter, other_model)}
    assert len(keys) == 3
    for client in (base, hotter, other_model):
        assert not client.complete(PROMPT).cached
    assert stub.request_count == 3


def test_failed_and_rejected_answers_are_not_cached(stub: OpenAIStub, make_client: Callable[..., ChatClient]) -> None:
    client = make_client()
    stub.enqueue(StubReply(status=500), StubReply(content="not json"), StubReply(content='{"ok": true}'))
    assert ask(client).status is ChatStatus.HTTP_ERROR
    rejected = client.complete([{"role": "user", "content": "map cust_id"}], validate=json.loads)
    assert rejected.status is ChatStatus.INVALID_CONTENT and rejected.content == "not json"
    assert "unusable answer" in (rejected.error or "")
    accepted = client.complete([{"role": "user", "content": "map cust_id"}], validate=json.loads)
    assert accepted.ok and accepted.content == '{"ok": true}' and stub.request_count == 3
    assert client.complete([{"role": "user", "content": "map cust_id"}], validate=json.loads).cached


def test_unusable_cache_file_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-db.db"
    bogus.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(ConfigError, match="llm.cache_path"):
        ChatClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", cache_path=bogus))


def test_cache_broken_at_run_time_degrades_to_misses(
    stub: OpenAIStub, make_client: Callable[..., ChatClient], tmp_path: Path
) -> None:
    client = make_client(cache_path=tmp_path / "fragile.db")
    with sqlite3.connect(tmp_path / "fragile.db") as other:
        other.execute("DROP TABLE chat_cache")
    stub.enqueue_content("still answered", "answered again")
    assert ask(client).content == "still answered"
    assert ask(client).content == "answered again", "nothing cached, so asked again"
    assert client.stats().cache_errors >= 2 and stub.request_count == 2


# --- rate limit -------------------------------------------------------------------------------------------


def test_rate_limit_refuses_without_sleeping_and_recovers_as_tokens_refill(
    stub: OpenAIStub, make_client: Callable[..., ChatClient]
) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, max_requests_per_minute=60, burst=2)
    assert ask(client, "a").ok and ask(client, "b").ok
    started = time.monotonic()
    refused = ask(client, "c")
    assert time.monotonic() - started < 0.05
    assert refused.status is ChatStatus.RATE_LIMITED and not refused.sent
    assert refused.retry_after_s == pytest.approx(1.0)
    assert stub.request_count == 2
    cached = ask(client, "a")
    assert cached.cached and cached.ok, "a cached answer costs no token"
    clock.advance(1.0)
    assert ask(client, "c").ok and stub.request_count == 3
    assert ask(client, "d").status is ChatStatus.RATE_LIMITED
    assert client.stats().rate_limited == 2


# --- timeout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [StubReply(delay_s=3), StubReply(body_delay_s=3)], ids=["headers", "body"])
def test_slow_endpoint_times_out_within_the_deadline(
    stub: OpenAIStub, make_client: Callable[..., ChatClient], reply: StubReply
) -> None:
    client = make_client(timeout_s=0.3)
    stub.enqueue(reply)
    started = time.monotonic()
    record = ask(client)
    elapsed = time.monotonic() - started
    assert record.status is ChatStatus.TIMEOUT and record.content is None
    assert 0.29 <= elapsed < 0.8, elapsed
    assert client.breaker.status().consecutive_failures == 1


def test_unreachable_endpoint_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ChatClient(LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=1))
    record = ask(client)
    client.close()
    assert record.status is ChatStatus.CONNECTION_ERROR and record.error
    assert client.breaker.status().consecutive_failures == 1


# --- malformed bodies and HTTP errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_body",
    [
        "this is not json",
        '{"choices": []}',
        '{"choices": [{"message": {"role": "assistant", "content": null}}]}',
        '["choices"]',
    ],
)
def test_malformed_body_is_a_recorded_failure(
    stub: OpenAIStub, make_client: Callable[..., ChatClient], raw_body: str
) -> None:
    client = make_client()
    stub.enqueue(StubReply(raw_body=raw_body))
    record = ask(client)
    assert record.status is ChatStatus.MALFORMED_RESPONSE
    assert record.response_text == raw_body and record.error
    assert client.breaker.status().consecutive_failures == 1


@pytest.mark.parametrize(("status", "counts"), [(500, True), (503, True), (429, True), (400, False), (404, False)])
def test_http_errors_count_for_the_breaker_when_retrying_could_help(
    stub: OpenAIStub, make_client: Callable[..., ChatClient], status: int, counts: bool
) -> None:
    client = make_client()
    stub.enqueue(StubReply(status=status))
    record = ask(client)
    assert record.status is ChatStatus.HTTP_ERROR and record.http_status == status
    assert client.breaker.status().consecutive_failures == (1 if counts else 0)


# --- circuit breaker --------------------------------------------------------------------------------------


def test_breaker_opens_refuses_without_requests_probes_and_closes(
    stub: OpenAIStub, make_client: Callable[..., ChatClient]
) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, breaker_failure_threshold=2, breaker_cooldown_s=30)
    stub.enqueue(StubReply(status=500), StubReply(raw_body="{"))
    assert ask(client, "1").status is ChatStatus.HTTP_ERROR
    assert ask(client, "2").status is ChatStatus.MALFORMED_RESPONSE
    assert client.breaker.state == "open"

    started = time.monotonic()
    refused = ask(client, "3")
    assert time.monotonic() - started < 0.05
    assert refused.status is ChatStatus.CIRCUIT_OPEN and refused.retry_after_s == pytest.approx(30)
    assert stub.request_count == 2, "no request while open"

    clock.advance(30)
    assert client.breaker.state == "half_open"
    stub.enqueue(StubReply(status=502))
    assert ask(client, "probe-1").status is ChatStatus.HTTP_ERROR
    assert client.breaker.state == "open" and stub.request_count == 3

    clock.advance(30)
    stub.enqueue_content("back")
    probe = ask(client, "probe-2")
    assert probe.ok and probe.content == "back"
    assert client.breaker.state == "closed"
    stats = client.stats()
    assert stats.breaker.times_opened == 2 and stats.circuit_open == 1 and stats.requests_sent == 4


def test_cached_answers_are_served_while_the_breaker_is_open(
    stub: OpenAIStub, make_client: Callable[..., ChatClient]
) -> None:
    client = make_client(clock=FakeClock(), breaker_failure_threshold=1)
    stub.enqueue(StubReply(content="known"), StubReply(status=500))
    assert ask(client, "known prompt").ok
    assert ask(client, "new prompt").status is ChatStatus.HTTP_ERROR
    assert client.breaker.state == "open"
    assert ask(client, "known prompt").cached
    assert ask(client, "new prompt").status is ChatStatus.CIRCUIT_OPEN


def test_invalid_content_counts_for_the_breaker(stub: OpenAIStub, make_client: Callable[..., ChatClient]) -> None:
    client = make_client(clock=FakeClock(), breaker_failure_threshold=2)
    stub.enqueue_content("nope", "still nope")
    for text in ("a", "b"):
        record = client.complete([{"role": "user", "content": text}], validate=json.loads)
        assert record.status is ChatStatus.INVALID_CONTENT
    assert client.breaker.state == "open"


def test_a_crashing_validator_is_a_recorded_failure(stub: OpenAIStub, make_client: Callable[..., ChatClient]) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, breaker_failure_threshold=1, breaker_cooldown_s=5)

    def broken(_content: str) -> None:
        raise KeyError("bug in the validator")

    stub.enqueue_content("a", "b")
    record = client.complete([{"role": "user", "content": "x"}], validate=broken)
    assert record.status is ChatStatus.INVALID_CONTENT and "KeyError" in (record.error or "")
    clock.advance(5)
    assert client.complete([{"role": "user", "content": "x"}], validate=broken).status is ChatStatus.INVALID_CONTENT
    clock.advance(5)
    assert client.breaker.allow(), "the failed probe was recorded, not left taken"


def test_bad_messages_are_a_caller_bug(make_client: Callable[..., ChatClient]) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="at least one message"):
        client.complete([])
    with pytest.raises(ValueError, match="role"):
        client.complete([{"role": "robot", "content": "x"}])
