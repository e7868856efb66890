"""Ask an optional chat model to map unmatched incoming fields onto a contract's missing fields.

The model gets a few-shot prompt: the contract fields that are missing (name, type, sample values, a
profile summary), the incoming fields nobody matched (name, type, samples), the transform DSL's op
catalogue (read from the program model's JSON schema, so it never drifts from the DSL) and worked
examples. It must answer ``{"mappings": [{"source", "target", "program": [steps], "confidence"}]}``.

The answer is validated strictly — known fields only, each target once, every program a valid DSL
program, confidence in [0, 1]; anything else is a recorded failure that counts for the circuit breaker,
never an exception. Proposals then go through the same validation as synthesized ones (not here).

The pipeline never waits on a model: :meth:`LLMProposer.submit` queues a request for a background
thread and returns at once (refusing when the queue is full or the breaker is open), and
:meth:`LLMProposer.poll` collects finished results. Every result that is not ``ok`` tells the caller to
fall back to synthesis and the last-known-good contract, and says why.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from lakegate.ai.llm import ChatClient, ChatRecord, ChatStatus
from lakegate.core.errors import ConfigError
from lakegate.schema.dsl import Program
from lakegate.schema.profiles import FieldProfile

ProposalStatus = Literal["ok", "failed", "refused"]
"""``ok``: validated mappings; ``failed``: the model was asked and the call or its answer failed;
``refused``: not asked (queue full, breaker open, rate limited, proposer closed)."""

RefusalReason = Literal["circuit_open", "rate_limited", "queue_full", "closed"]

FALLBACK_HINT = "use synthesis and the last-known-good contract"

_MAX_SAMPLES = 5
_MAX_SAMPLE_CHARS = 80
_FENCED = re.compile(r"^\s*```(?:json)?\s*\n(.*)\n\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class FieldSummary:
    """What the prompt says about one field."""

    name: str
    type: str
    samples: tuple[Any, ...] = ()
    profile: str | None = None
    """A one-line profile, e.g. ``"nulls 0%, 1200 distinct, min 0.5, max 980"``."""

    @classmethod
    def from_profile(cls, profile: FieldProfile, name: str | None = None) -> FieldSummary:
        """Summarize a learned or measured :class:`FieldProfile` for the prompt."""
        return cls(
            name=name or profile.name or "?",
            type=profile.type or profile.kind,
            samples=tuple(profile.sample[:_MAX_SAMPLES]),
            profile=describe_profile(profile),
        )


@dataclass(frozen=True)
class ProposalRequest:
    """One question for the model: which incoming fields carry which missing contract fields."""

    dataset: str
    targets: tuple[FieldSummary, ...]
    """Contract fields with no match in the incoming records."""
    sources: tuple[FieldSummary, ...]
    """Incoming fields that matched no contract field."""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class WorkedExample:
    """A few-shot example: a small request and the answer the model should give."""

    targets: tuple[FieldSummary, ...]
    sources: tuple[FieldSummary, ...]
    mappings: tuple[dict[str, Any], ...]
    """``{"source", "target", "program": [steps], "confidence"}`` entries, as the model must write them."""


DEFAULT_EXAMPLES: tuple[WorkedExample, ...] = (
    WorkedExample(
        targets=(
            FieldSummary("amount", "double", (12.5, 99.0, 3.25), "nulls 0%, min 0.5, max 980"),
            FieldSummary("customer_id", "long", (1042, 77, 1203)),
        ),
        sources=(
            FieldSummary("amount_cents", "long", (1250, 9900, 325)),
            FieldSummary("customer", "string", ("C-001042", "C-000077", "C-001203")),
            FieldSummary("channel", "string", ("web", "store")),
        ),
        mappings=(
            {"source": "amount_cents", "target": "amount", "program": [{"op": "scale", "factor": 0.01}],
             "confidence": 0.9},
            {"source": "customer", "target": "customer_id",
             "program": [{"op": "remove_prefix", "text": "C-"}, {"op": "cast", "to": "long"}], "confidence": 0.8},
        ),
    ),
    WorkedExample(
        targets=(
            FieldSummary("created_at", "timestamp", ("2024-05-01T10:00:00+00:00", "2024-05-02T17:45:00+00:00")),
            FieldSummary("country", "string", ("DE", "FR", "US")),
        ),
        sources=(
            FieldSummary("created", "string", ("01/05/2024 10:00", "02/05/2024 17:45")),
            FieldSummary("country_code", "string", ("DE", "FR", "US")),
        ),
        mappings=(
            {"source": "created", "target": "created_at",
             "program": [{"op": "parse_datetime", "format": "%d/%m/%Y %H:%M"}], "confidence": 0.85},
            {"source": "country_code", "target": "country", "program": [], "confidence": 0.95},
        ),
    ),
)  # fmt: skip
"""Worked examples for the lakegate DSL: a unit change, a prefixed id, a date format and a plain rename."""


@dataclass(frozen=True)
class LLMMapping:
    """One mapping the model proposed (not yet validated against data)."""

    source: str
    target: str
    program: Any
    """The validated program (an instance of the proposer's program model)."""
    steps: tuple[dict[str, Any], ...]
    """The steps as the model wrote them (JSON), for the audit trail."""
    confidence: float


@dataclass(frozen=True)
class ProposalResult:
    """What came of a request; ``chat`` holds the prompt and response when a model was asked."""

    request: ProposalRequest
    status: ProposalStatus
    mappings: tuple[LLMMapping, ...] = ()
    reason: str | None = None
    refusal: RefusalReason | None = None
    chat: ChatRecord | None = None

    @property
    def fallback(self) -> bool:
        """Whether the caller must use synthesis and the last-known-good contract instead."""
        return self.status != "ok"

    def evidence(self) -> dict[str, Any]:
        """JSON-ready evidence for a decision record (prompt and response included when asked)."""
        evidence: dict[str, Any] = {
            "request_id": self.request.request_id,
            "status": self.status,
            "reason": self.reason,
            "refusal": self.refusal,
            "mappings": [
                {"source": m.source, "target": m.target, "program": list(m.steps), "confidence": m.confidence}
                for m in self.mappings
            ],
        }
        if self.chat is not None:
            evidence["llm"] = self.chat.evidence()
        return evidence


class _MappingAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: StrictStr
    target: StrictStr
    program: list[dict[str, Any]]
    confidence: float = Field(ge=0, le=1)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mappings: list[_MappingAnswer]


class LLMProposer:
    """Builds the few-shot prompt, asks the model through a :class:`ChatClient`, validates the answer."""

    def __init__(
        self,
        client: ChatClient,
        program_model: type[BaseModel] = Program,
        *,
        program_field: str | None = "steps",
        examples: Sequence[WorkedExample] | None = None,
        max_pending: int = 4,
    ) -> None:
        """Create a proposer; the background thread starts on the first :meth:`submit`.

        Args:
            client: the guarded chat client (cache, rate limit, timeout, breaker).
            program_model: the DSL's program class (lakegate's :class:`~lakegate.schema.dsl.Program` by
                default); its JSON schema gives the op catalogue.
            program_field: the program model's field holding the list of steps (``None``: the model is a
                ``RootModel`` over the list).
            examples: worked examples for the prompt, each checked against the program model; ``None`` means
                :data:`DEFAULT_EXAMPLES` for lakegate's DSL and none for another program model.
            max_pending: requests that may wait for the worker; more are refused at once.

        Raises:
            ConfigError: a worked example is not a valid answer, or ``max_pending`` < 1.
        """
        if max_pending < 1:
            raise ConfigError(f"max_pending must be >= 1, got {max_pending}")
        self.client = client
        self.program_model = program_model
        self.program_field = program_field
        if examples is None:
            examples = DEFAULT_EXAMPLES if program_model is Program else ()
        self.examples = tuple(examples)
        self.op_catalogue = op_catalogue(program_model)
        for index, example in enumerate(self.examples):
            try:
                self.parse(json.dumps({"mappings": list(example.mappings)}), _example_request(example))
            except ValueError as err:
                raise ConfigError(f"worked example {index} is not a valid answer: {err}") from err
        self._queue: queue.Queue[ProposalRequest | None] = queue.Queue(maxsize=max_pending)
        self._results: list[ProposalResult] = []
        self._lock = threading.Lock()
        self._closed = False
        self._worker: threading.Thread | None = None

    # --- prompt -------------------------------------------------------------------------------------------

    def build_messages(self, request: ProposalRequest) -> list[dict[str, str]]:
        """The few-shot chat: instructions and op catalogue, worked examples as turns, then the request."""
        messages = [{"role": "system", "content": self._instructions()}]
        for example in self.examples:
            messages.append({"role": "user", "content": _describe(example.targets, example.sources)})
            answer = {"mappings": list(example.mappings)}
            messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
        messages.append({"role": "user", "content": _describe(request.targets, request.sources)})
        return messages

    def _instructions(self) -> str:
        return (
            "You map fields of an incoming record stream onto the fields of a data contract.\n"
            "You get the contract fields that are missing and the incoming fields nobody matched.\n"
            "For each missing contract field that one incoming field clearly carries, write a program: a list\n"
            "of transform steps, taken only from the op catalogue below, that turns the source value into the\n"
            "target value. Use each source and each target at most once. Leave out anything you are unsure of.\n"
            "Answer with one JSON object and nothing else:\n"
            '{"mappings": [{"source": "<incoming field>", "target": "<contract field>", '
            '"program": [<steps>], "confidence": <0..1>}]}\n'
            'If nothing maps, answer {"mappings": []}.\n\n'
            f"Op catalogue (each step is a JSON object with an \"op\" key):\n{self.op_catalogue}"
        )

    # --- answer -------------------------------------------------------------------------------------------

    def parse(self, content: str, request: ProposalRequest) -> tuple[LLMMapping, ...]:
        """Validate the model's answer strictly against the request and the DSL.

        Raises:
            ValueError: not JSON, not the asked shape, unknown or repeated fields, or an invalid program.
        """
        fenced = _FENCED.match(content)
        text = fenced.group(1) if fenced else content
        try:
            answer = _Answer.model_validate_json(text)
        except ValidationError as err:
            raise ValueError(_first_errors(err)) from None
        sources = {f.name for f in request.sources}
        targets = {f.name for f in request.targets}
        used_sources: set[str] = set()
        used_targets: set[str] = set()
        mappings = []
        for index, mapping in enumerate(answer.mappings):
            where = f"mappings[{index}]"
            if mapping.source not in sources:
                raise ValueError(f"{where}.source {mapping.source!r} is not one of the unmatched incoming fields")
            if mapping.target not in targets:
                raise ValueError(f"{where}.target {mapping.target!r} is not one of the missing contract fields")
            if mapping.target in used_targets:
                raise ValueError(f"{where}: target {mapping.target!r} is mapped twice")
            if mapping.source in used_sources:
                raise ValueError(f"{where}: source {mapping.source!r} is mapped twice")
            used_sources.add(mapping.source)
            used_targets.add(mapping.target)
            program = self._program(mapping.program, where)
            mappings.append(
                LLMMapping(
                    source=mapping.source,
                    target=mapping.target,
                    program=program,
                    steps=tuple(mapping.program),
                    confidence=mapping.confidence,
                )
            )
        return tuple(mappings)

    def _program(self, steps: list[dict[str, Any]], where: str) -> BaseModel:
        payload: Any = steps if self.program_field is None else {self.program_field: steps}
        try:  # JSON mode: the steps came as JSON, and strict models accept JSON objects for nested steps
            return self.program_model.model_validate_json(json.dumps(payload))
        except ValidationError as err:
            raise ValueError(f"{where}.program: {_first_errors(err)}") from None

    # --- synchronous --------------------------------------------------------------------------------------

    def propose(self, request: ProposalRequest) -> ProposalResult:
        """Ask the model now (blocks up to the client's timeout; the pipeline uses :meth:`submit`)."""
        if not request.targets or not request.sources:
            return ProposalResult(request, "ok", reason="nothing to map: no missing or no unmatched fields")
        messages = self.build_messages(request)
        record = self.client.complete(messages, validate=lambda content: self.parse(content, request))
        if record.status is ChatStatus.OK and record.content is not None:
            return ProposalResult(request, "ok", self.parse(record.content, request), chat=record)
        if record.status is ChatStatus.CIRCUIT_OPEN:
            return _refused(request, "circuit_open", record.error, record)
        if record.status is ChatStatus.RATE_LIMITED:
            return _refused(request, "rate_limited", record.error, record)
        return ProposalResult(request, "failed", reason=f"{record.error}; {FALLBACK_HINT}", chat=record)

    # --- asynchronous -------------------------------------------------------------------------------------

    def submit(self, request: ProposalRequest) -> None:
        """Queue a request for the background thread and return at once.

        A request that cannot be taken (breaker open, queue full, proposer closed) gets a ``refused``
        result right away, collected by the next :meth:`poll`.
        """
        with self._lock:
            if self._closed:
                self._results.append(_refused(request, "closed", "the proposer is closed"))
                return
            if self.client.breaker.state == "open":
                self._results.append(_refused(request, "circuit_open", "circuit breaker open"))
                return
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                self._results.append(_refused(request, "queue_full", f"{self._queue.maxsize} requests already wait"))
                return
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="lakegate-llm-proposer", daemon=True)
                self._worker.start()

    def poll(self) -> list[ProposalResult]:
        """Results finished since the last poll, oldest first; never blocks on the model."""
        with self._lock:
            results, self._results = self._results, []
        return results

    @property
    def pending(self) -> int:
        """Requests queued and not yet started (the one being asked is not counted)."""
        return self._queue.qsize()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop taking requests; queued ones are refused; waits up to ``timeout_s`` for the call in flight."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is not None:
                    self._results.append(_refused(waiting, "closed", "the proposer closed before asking"))
            worker = self._worker
            if worker is not None:
                self._queue.put_nowait(None)
        if worker is not None:
            worker.join(timeout_s)

    def __enter__(self) -> LLMProposer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            try:
                result = self.propose(request)
            except Exception as err:  # a bug here must not kill the worker or reach the pipeline
                result = ProposalResult(request, "failed", reason=f"proposer error {type(err).__name__}: {err}")
            with self._lock:
                self._results.append(result)


def op_catalogue(program_model: type[BaseModel]) -> str:
    """One line per DSL op (``name(arg: type, ...) — description``) from the program model's JSON schema.

    Ops are the schema definitions whose ``op`` property is a constant; when there are none, the whole
    schema is given so the model still sees what a valid program is.
    """
    schema = program_model.model_json_schema()
    definitions: dict[str, Any] = schema.get("$defs", {})
    lines = []
    for definition in definitions.values():
        op = _const(definition.get("properties", {}).get("op", {}))
        if op is None:
            continue
        required = set(definition.get("required", ()))
        args = []
        for name, prop in definition.get("properties", {}).items():
            if name == "op":
                continue
            arg = f"{name}: {_json_type(prop)}"
            if name not in required:
                arg += f" = {json.dumps(prop.get('default'))}" if "default" in prop else "?"
            args.append(arg)
        description = " ".join(str(definition.get("description", "")).replace("``", "`").split())
        lines.append(f"- {op}({', '.join(args)})" + (f" — {description}" if description else ""))
    if not lines:
        return json.dumps(schema, separators=(",", ":"))
    return "\n".join(sorted(lines))


def describe_profile(profile: FieldProfile) -> str:
    """A one-line summary of a profile: nulls, distinct values, range or lengths, shapes, format."""
    parts = [f"nulls {profile.null_rate:.0%}"]
    if profile.distinct is not None:
        parts.append(f"{profile.distinct} distinct")
    if profile.low is not None and profile.high is not None:
        if profile.kind == "temporal":
            parts.append(f"from {_epoch_us(profile.low)} to {_epoch_us(profile.high)}")
        else:
            parts.append(f"min {profile.low:g}, max {profile.high:g}")
            if profile.integral:
                parts.append("whole numbers")
    if profile.length_low is not None and profile.length_high is not None:
        parts.append(f"length {profile.length_low}-{profile.length_high}")
    shapes = sorted(profile.patterns.items(), key=lambda item: -item[1])[:2]
    if shapes:
        parts.append("shapes " + ", ".join(f"{shape} {share:.0%}" for shape, share in shapes))
    if profile.format:
        parts.append(f"format {profile.format}")
    if profile.datetime_format:
        parts.append(f"datetime format {profile.datetime_format}")
    return ", ".join(parts)


def _epoch_us(micros: float) -> str:
    try:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)).isoformat()
    except OverflowError:
        return f"{micros:g} µs since 1970"


def _const(prop: dict[str, Any]) -> str | None:
    if isinstance(prop.get("const"), str):
        return str(prop["const"])
    enum = prop.get("enum")
    if isinstance(enum, list) and len(enum) == 1 and isinstance(enum[0], str):
        return enum[0]
    return None


def _json_type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    for union in ("anyOf", "oneOf"):
        if union in prop:
            return " | ".join(_json_type(p) for p in prop[union])
    kind = prop.get("type")
    if kind == "array":
        return f"list[{_json_type(prop.get('items', {}))}]"
    if kind == "object":
        return "object"
    return str(kind) if kind else "any"


def _describe(targets: Iterable[FieldSummary], sources: Iterable[FieldSummary]) -> str:
    return (
        "Missing contract fields:\n"
        + "\n".join(_field_line(f) for f in targets)
        + "\n\nUnmatched incoming fields:\n"
        + "\n".join(_field_line(f) for f in sources)
    )


def _field_line(summary: FieldSummary) -> str:
    samples = ", ".join(_sample(v) for v in summary.samples[:_MAX_SAMPLES])
    line = f"- {summary.name} ({summary.type}): samples [{samples}]"
    return line + (f"; profile: {summary.profile}" if summary.profile else "")


def _sample(value: Any) -> str:
    if isinstance(value, datetime | date):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        value = str(value)
    elif isinstance(value, bytes):
        value = value.hex()
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure
        text = json.dumps(str(value))
    return text if len(text) <= _MAX_SAMPLE_CHARS else text[: _MAX_SAMPLE_CHARS - 1] + "…"


def _first_errors(err: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in err.errors()[:limit]:
        location = ".".join(str(p) for p in error["loc"])
        parts.append(f"{location or 'answer'}: {error['msg']}")
    more = len(err.errors()) - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _example_request(example: WorkedExample) -> ProposalRequest:
    return ProposalRequest(dataset="example", targets=example.targets, sources=example.sources, request_id="example")


def _refused(
    request: ProposalRequest, why: RefusalReason, detail: str | None, chat: ChatRecord | None = None
) -> ProposalResult:
    return ProposalResult(request, "refused", reason=f"{detail or why}; {FALLBACK_HINT}", refusal=why, chat=chat)
