"""An OpenAI-compatible chat client that never makes the pipeline wait and never raises into it.

It speaks ``POST {base_url}/chat/completions`` (vLLM, Ollama, llama.cpp server, hosted APIs) with the
standard library only, and wraps every call in four guards, in this order:

1. **cache** — answers are stored in SQLite under a hash of (model, messages, parameters); a hit costs
   no request, does not touch the rate limit or the breaker, and survives restarts;
2. **circuit breaker** — after N consecutive failures calls are refused at once until a cool-down passes;
3. **rate limit** — a token bucket; a call over the limit is refused at once (``rate_limited``), not slept on;
4. **timeout** — one deadline for connect, headers and body together.

Every call returns a :class:`ChatRecord` (prompt, raw response, latency, cached flag, error) for the
audit trail. The API key is read from the environment variable the config names; it never appears in the
config, the records or the logs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from lakegate.ai.breaker import BreakerStatus, CircuitBreaker, Clock
from lakegate.ai.ratelimit import TokenBucket
from lakegate.core.config import parse_duration
from lakegate.core.errors import ConfigError

ChatMessage = Mapping[str, str]
"""``{"role": "system" | "user" | "assistant", "content": "..."}``."""

ContentValidator = Callable[[str], object]
"""Checks the assistant's content; raises ``ValueError`` (pydantic's ``ValidationError`` is one) if unusable."""

_log = logging.getLogger(__name__)
_ROLES = frozenset({"system", "user", "assistant"})
_RETRYABLE_4XX = frozenset({408, 429})
_MAX_BODY_BYTES = 8 * 1024 * 1024

PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class LLMConfig(BaseModel):
    """Where the chat endpoint is and how hard lakegate may lean on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    """Up to the API version, e.g. ``http://127.0.0.1:8000/v1`` (vLLM) or ``http://127.0.0.1:11434/v1`` (Ollama)."""
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable holding the API key; ``None`` sends no ``Authorization`` header."""
    timeout_s: PositiveDuration = 20.0
    """Deadline for one request: connect, wait and read the whole answer."""
    max_requests_per_minute: float = Field(default=30.0, gt=0)
    burst: int = Field(default=3, ge=1)
    """Requests that may go out back to back before the per-minute rate applies."""
    max_tokens: int = Field(default=1024, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    json_mode: bool = False
    """Send ``response_format: {"type": "json_object"}`` (vLLM, Ollama and llama.cpp server support it)."""
    cache_path: Path | None = None
    """SQLite file of cached answers; ``None`` keeps the cache in memory (lost on restart)."""
    breaker_failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures (timeouts, 5xx, malformed answers) that open the circuit breaker."""
    breaker_cooldown_s: Duration = 60.0
    """How long the breaker stays open before one probe request is let through."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL like 'http://127.0.0.1:8000/v1'")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r}: the base URL takes no query or fragment")
        return value.rstrip("/")

    @classmethod
    def parse(cls, data: Any, origin: str = "llm") -> LLMConfig:
        """Validate a mapping (e.g. a YAML section).

        Raises:
            ConfigError: naming ``origin`` and every invalid field.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            lines = "\n".join(
                f"  {origin}.{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
            )
            raise ConfigError(f"invalid LLM config:\n{lines}") from err


class ChatStatus(StrEnum):
    """How a call ended; only ``OK`` carries content."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    """Refused before sending: over the rate limit (``retry_after_s`` says when a token frees up)."""
    CIRCUIT_OPEN = "circuit_open"
    """Refused before sending: the breaker is open (``retry_after_s`` says when it probes again)."""
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    CONNECTION_ERROR = "connection_error"
    MALFORMED_RESPONSE = "malformed_response"
    """The body is not an OpenAI chat-completions JSON with a text message."""
    INVALID_CONTENT = "invalid_content"
    """The message arrived but the caller's validator rejected it (e.g. not the JSON asked for)."""


@dataclass(frozen=True)
class ChatRecord:
    """One call as the audit trail keeps it."""

    model: str
    messages: tuple[dict[str, str], ...]
    params: dict[str, Any]
    cache_key: str
    status: ChatStatus
    content: str | None = None
    """The assistant's message text (``None`` unless the endpoint answered with one)."""
    response_text: str | None = None
    """The raw HTTP body as received (or as cached)."""
    error: str | None = None
    latency_s: float = 0.0
    cached: bool = False
    http_status: int | None = None
    retry_after_s: float | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.status is ChatStatus.OK

    @property
    def sent(self) -> bool:
        """Whether a request actually went to the endpoint."""
        return not self.cached and self.status not in (ChatStatus.RATE_LIMITED, ChatStatus.CIRCUIT_OPEN)

    def evidence(self) -> dict[str, Any]:
        """JSON-ready summary for a decision's evidence: the prompt, the response and how the call went."""
        return {
            "model": self.model,
            "prompt": list(self.messages),
            "params": self.params,
            "response": self.content,
            "raw_response": self.response_text,
            "status": self.status.value,
            "error": self.error,
            "latency_s": round(self.latency_s, 4),
            "cached": self.cached,
            "cache_key": self.cache_key,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True)
class ClientStats:
    """Counters and guard states for metrics and the CLI."""

    requests_sent: int
    cache_hits: int
    cache_errors: int
    successes: int
    failures: int
    rate_limited: int
    circuit_open: int
    tokens_available: float
    breaker: BreakerStatus


class ResponseCache:
    """Answers by prompt hash in SQLite, so a restart does not pay for the same prompt twice.

    A cache that breaks while running (disk full, file removed) degrades to misses instead of failing the call.
    """

    def __init__(self, path: Path | None) -> None:
        """Open (creating if needed) the cache file; ``None`` keeps it in memory.

        Raises:
            ConfigError: the file cannot be created or is not an SQLite database.
        """
        self._lock = threading.Lock()
        self.errors = 0
        """Cache reads and writes that failed at run time (each became a miss or a skipped write)."""
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False, timeout=5)
            with self._db:
                if path is not None:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS chat_cache ("
                    " key TEXT PRIMARY KEY, model TEXT NOT NULL, response_text TEXT NOT NULL,"
                    " content TEXT NOT NULL, created_at TEXT NOT NULL)"
                )
        except (OSError, sqlite3.Error) as err:
            raise ConfigError(f"llm.cache_path: cannot use {str(path)!r} as the LLM cache: {err}") from err

    def get(self, key: str) -> tuple[str, str] | None:
        """``(response_text, content)`` for a key, or ``None``."""
        try:
            with self._lock:
                row = self._db.execute("SELECT response_text, content FROM chat_cache WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as err:
            self._failed("read", err)
            return None
        return None if row is None else (str(row[0]), str(row[1]))

    def put(self, key: str, model: str, response_text: str, content: str) -> None:
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO chat_cache (key, model, response_text, content, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (key, model, response_text, content, datetime.now(UTC).isoformat()),
                )
        except sqlite3.Error as err:
            self._failed("write", err)

    def delete(self, key: str) -> None:
        try:
            with self._lock, self._db:
                self._db.execute("DELETE FROM chat_cache WHERE key = ?", (key,))
        except sqlite3.Error as err:
            self._failed("delete", err)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chat_cache").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _failed(self, action: str, err: sqlite3.Error) -> None:
        self.errors += 1
        _log.warning("LLM cache %s failed (treated as a miss): %s", action, err)


class _CallFailed(Exception):
    """Internal: a sent request did not produce usable content."""

    def __init__(
        self,
        status: ChatStatus,
        error: str,
        *,
        http_status: int | None = None,
        response_text: str | None = None,
        content: str | None = None,
        counts_for_breaker: bool = True,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.http_status = http_status
        self.response_text = response_text
        self.content = content
        self.counts_for_breaker = counts_for_breaker


class ChatClient:
    """Chat completions behind a cache, a circuit breaker, a rate limiter and a timeout.

    ``complete`` never raises for anything the endpoint does; it returns a :class:`ChatRecord`.
    """

    def __init__(
        self, config: LLMConfig, *, clock: Clock = time.monotonic, environ: Mapping[str, str] | None = None
    ) -> None:
        """Build the client; ``clock`` drives the breaker and rate limiter (tests inject one).

        Raises:
            ConfigError: ``api_key_env`` names an environment variable that is not set.
        """
        self.config = config
        env = os.environ if environ is None else environ
        self._api_key: str | None = None
        if config.api_key_env is not None:
            key = env.get(config.api_key_env)
            if not key:
                raise ConfigError(
                    f"llm.api_key_env: environment variable {config.api_key_env!r} is not set"
                    " (it should hold the API key)"
                )
            self._api_key = key
        parts = urlsplit(config.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = f"{parts.path}/chat/completions"
        self._clock = clock
        self.breaker = CircuitBreaker(config.breaker_failure_threshold, config.breaker_cooldown_s, clock)
        self.limiter = TokenBucket(config.max_requests_per_minute, config.burst, clock)
        self.cache = ResponseCache(config.cache_path)
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "hits": 0, "ok": 0, "failed": 0, "rate_limited": 0, "circuit_open": 0}

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.cache.close()

    def params(self) -> dict[str, Any]:
        """The request parameters besides model and messages (part of the cache key)."""
        params: dict[str, Any] = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        if self.config.json_mode:
            params["response_format"] = {"type": "json_object"}
        return params

    def cache_key(self, messages: Sequence[ChatMessage]) -> str:
        """SHA-256 of (model, messages, parameters) in canonical JSON."""
        payload = {"model": self.config.model, "messages": [dict(m) for m in messages], "params": self.params()}
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def complete(self, messages: Sequence[ChatMessage], *, validate: ContentValidator | None = None) -> ChatRecord:
        """Ask the model; answer from the cache when possible; refuse at once when a guard says no.

        Args:
            messages: the prompt as chat messages.
            validate: checks the content before it is cached or returned as ``ok``; a ``ValueError`` from it
                makes the call an ``invalid_content`` failure that counts for the breaker.

        Raises:
            ValueError: ``messages`` is empty or a message is not ``{"role": ..., "content": str}`` (a bug in
                the caller, not something the endpoint did).
        """
        prompt = _check_messages(messages)
        key = self.cache_key(prompt)
        started = time.monotonic()
        base = ChatRecord(self.config.model, prompt, self.params(), key, status=ChatStatus.OK)

        hit = self.cache.get(key)
        if hit is not None:
            response_text, content = hit
            problem = _validation_error(validate, content)
            if problem is None:
                self._count("hits")
                return replace(
                    base,
                    status=ChatStatus.OK,
                    content=content,
                    response_text=response_text,
                    latency_s=time.monotonic() - started,
                    cached=True,
                )
            self.cache.delete(key)  # the validator changed since this was cached; ask again

        if not self.breaker.allow():
            self._count("circuit_open")
            return replace(
                base,
                status=ChatStatus.CIRCUIT_OPEN,
                error="circuit breaker open: the endpoint failed repeatedly; not asking until the cool-down ends",
                retry_after_s=self.breaker.status().retry_in_s,
            )
        if not self.limiter.try_acquire():
            self.breaker.release()
            self._count("rate_limited")
            retry = self.limiter.retry_after_s()
            return replace(
                base,
                status=ChatStatus.RATE_LIMITED,
                error=f"rate limited: {self.config.max_requests_per_minute:g} requests/minute; next in {retry:.2f}s",
                retry_after_s=retry,
            )

        self._count("sent")
        try:
            http_status, response_text = self._post(self._request_body(prompt), started)
            content = _assistant_content(http_status, response_text)
            problem = _validation_error(validate, content)
            if problem is not None:
                raise _CallFailed(
                    ChatStatus.INVALID_CONTENT,
                    problem,
                    http_status=http_status,
                    response_text=response_text,
                    content=content,
                )
        except _CallFailed as failure:
            if failure.counts_for_breaker:
                self.breaker.record_failure()
            else:
                self.breaker.release()
            self._count("failed")
            _log.warning("LLM call to %s failed (%s): %s", self.config.model, failure.status.value, failure.error)
            return replace(
                base,
                status=failure.status,
                content=failure.content,
                response_text=failure.response_text,
                error=failure.error,
                latency_s=time.monotonic() - started,
                http_status=failure.http_status,
            )
        self.breaker.record_success()
        self.cache.put(key, self.config.model, response_text, content)
        self._count("ok")
        return replace(
            base,
            status=ChatStatus.OK,
            content=content,
            response_text=response_text,
            latency_s=time.monotonic() - started,
            http_status=http_status,
        )

    def stats(self) -> ClientStats:
        with self._lock:
            counts = dict(self._counts)
        return ClientStats(
            requests_sent=counts["sent"],
            cache_hits=counts["hits"],
            cache_errors=self.cache.errors,
            successes=counts["ok"],
            failures=counts["failed"],
            rate_limited=counts["rate_limited"],
            circuit_open=counts["circuit_open"],
            tokens_available=self.limiter.available(),
            breaker=self.breaker.status(),
        )

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _request_body(self, messages: tuple[dict[str, str], ...]) -> bytes:
        body = {"model": self.config.model, "messages": list(messages), "stream": False, **self.params()}
        return json.dumps(body, ensure_ascii=False).encode()

    def _post(self, body: bytes, started: float) -> tuple[int, str]:
        """Send the request under one deadline; returns (HTTP status, body text).

        Raises:
            _CallFailed: timeout, connection error, HTTP error status, or a body too large / not UTF-8.
        """
        deadline = started + self.config.timeout_s
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "lakegate"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(self._host, self._port, timeout=self.config.timeout_s)
        try:
            connection.timeout = _remaining(deadline)
            connection.request("POST", self._path, body=body, headers=headers)
            sock = connection.sock
            if sock is not None:
                sock.settimeout(_remaining(deadline))
            response = connection.getresponse()
            chunks: list[bytes] = []
            size = 0
            while True:
                if sock is not None:
                    sock.settimeout(_remaining(deadline))
                chunk = response.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > _MAX_BODY_BYTES:
                    raise _CallFailed(ChatStatus.MALFORMED_RESPONSE, f"response body over {_MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
        except TimeoutError:
            raise _CallFailed(
                ChatStatus.TIMEOUT, f"no complete answer within {self.config.timeout_s:g}s"
            ) from None
        except (OSError, http.client.HTTPException) as err:
            raise _CallFailed(ChatStatus.CONNECTION_ERROR, f"{type(err).__name__}: {err}") from None
        finally:
            connection.close()
        try:
            text = b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise _CallFailed(
                ChatStatus.MALFORMED_RESPONSE, "response body is not UTF-8", http_status=response.status
            ) from None
        if response.status >= 400:
            raise _CallFailed(
                ChatStatus.HTTP_ERROR,
                f"HTTP {response.status} {response.reason}: {text[:300]}",
                http_status=response.status,
                response_text=text,
                counts_for_breaker=response.status >= 500 or response.status in _RETRYABLE_4XX,
            )
        return response.status, text


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def _check_messages(messages: Sequence[ChatMessage]) -> tuple[dict[str, str], ...]:
    if not messages:
        raise ValueError("a chat needs at least one message")
    checked = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES or not isinstance(content, str):
            raise ValueError(f"message {index} must be {{'role': one of {sorted(_ROLES)}, 'content': str}}")
        checked.append({"role": role, "content": content})
    return tuple(checked)


def _assistant_content(http_status: int, response_text: str) -> str:
    """``choices[0].message.content`` of an OpenAI chat-completions body.

    Raises:
        _CallFailed: the body is not that shape.
    """
    try:
        body = json.loads(response_text)
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise _CallFailed(
            ChatStatus.MALFORMED_RESPONSE,
            f"not a chat-completions response ({type(err).__name__}: {err})",
            http_status=http_status,
            response_text=response_text,
        ) from None
    if not isinstance(content, str):
        raise _CallFailed(
            ChatStatus.MALFORMED_RESPONSE,
            f"choices[0].message.content is {type(content).__name__}, not text",
            http_status=http_status,
            response_text=response_text,
        )
    return content


def _validation_error(validate: ContentValidator | None, content: str) -> str | None:
    if validate is None:
        return None
    try:
        validate(content)
    except ValueError as err:
        return f"unusable answer: {err}"
    except Exception as err:  # a validator bug must not leave the breaker's probe taken or reach the pipeline
        return f"validator failed: {type(err).__name__}: {err}"
    return None
