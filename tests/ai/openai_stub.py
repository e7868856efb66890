"""STUB — a local stand-in for a remote OpenAI-compatible LLM endpoint that we cannot run here.

This is NOT a model. It is a small ``http.server`` on loopback (free port, background thread) that speaks
the OpenAI chat-completions HTTP API (``POST /v1/chat/completions``, ``GET /v1/models``) so the LLM path
(protocol, caching, rate limiting, timeouts, circuit breaker, fallback) is tested against real HTTP. A test
scripts what it answers:

* ``stub.enqueue(StubReply(content='{"mappings": []}'))`` — the next request gets this assistant message;
* ``StubReply(delay_s=2)`` — wait before answering (forces client timeouts);
* ``StubReply(status=500)`` — an HTTP error;
* ``StubReply(raw_body="not json")`` — a malformed body;
* ``stub.responder = fn`` — answers computed from the request body once the queue is empty.

It counts requests and records each one (path, headers, parsed JSON body) in ``stub.requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class StubReply:
    """One scripted answer."""

    content: str | None = "{}"
    """The assistant message text (ignored when ``raw_body`` is set or ``status`` >= 400)."""
    status: int = 200
    delay_s: float = 0.0
    raw_body: str | None = None
    """Sent verbatim instead of a chat-completions JSON body."""
    body_delay_s: float = 0.0
    """Wait between the headers and the body (a slow stream: the client's deadline must cover the body too)."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """Parsed JSON, or the raw text when the body is not JSON."""


@dataclass
class OpenAIStub:
    """The stub server; use as a context manager (``with OpenAIStub() as stub:``)."""

    responder: Callable[[Any], StubReply] = field(default=lambda _body: StubReply())
    requests: list[RecordedRequest] = field(default_factory=list)
    _queue: deque[StubReply] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def request_count(self) -> int:
        return len(self.chat_requests)

    def enqueue(self, *replies: StubReply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def enqueue_content(self, *contents: str) -> None:
        self.enqueue(*(StubReply(content=c) for c in contents))

    def start(self) -> OpenAIStub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping on a delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _next_reply(self, body: Any) -> StubReply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.responder(body)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


def chat_completion_body(model: str, content: str | None, serial: int) -> dict[str, Any]:
    """The shape of an OpenAI ``chat.completion`` response."""
    return {
        "id": f"chatcmpl-stub-{serial}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _handler_for(stub: OpenAIStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the default stderr access log."""

        def do_GET(self) -> None:
            stub._record(RecordedRequest("GET", self.path, dict(self.headers.items()), None))
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, json.dumps({"object": "list", "data": [{"id": "stub-model", "object": "model"}]}))
            else:
                self._send(404, json.dumps({"error": {"message": "not found"}}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", errors="replace")
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            stub._record(RecordedRequest("POST", self.path, dict(self.headers.items()), body))
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, json.dumps({"error": {"message": "not found"}}))
                return
            reply = stub._next_reply(body)
            if reply.delay_s > 0 and stub._stopping.wait(reply.delay_s):
                return
            if reply.raw_body is not None:
                self._send(reply.status, reply.raw_body)
            elif reply.status >= 400:
                self._send(reply.status, json.dumps({"error": {"message": f"stub error {reply.status}"}}))
            else:
                model = body.get("model", "") if isinstance(body, dict) else ""
                body_text = json.dumps(chat_completion_body(model, reply.content, stub.request_count))
                self._send(200, body_text, reply.body_delay_s)

        def _send(self, status: int, text: str, body_delay_s: float = 0.0) -> None:
            data = text.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                if body_delay_s > 0 and stub._stopping.wait(body_delay_s):
                    return
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and hung up

    return Handler
