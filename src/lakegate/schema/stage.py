"""The schema-intelligence stage: keep a table's shape through upstream renames, retypes and moves.

Between normalization and the semantic contract, every batch is compared with the active contract:

1. mappings the contract already carries (``Contract.mappings``) are applied, so a change decided once
   keeps flowing without a second look;
2. fields the contract does not know, while contract fields are missing, are *unmatched*: the matcher
   pairs them (names + values + synthesized transforms) and each pair's program is validated on the
   batch (share of rows it transforms, distance of its output from the learned profile);
3. a proposal whose every mapping is confident, unambiguous and valid is applied at once (the runtime
   registers a new contract version and records the decision); otherwise it is held for review and the
   rows of the new shape go to the dead-letter table, replayable once it is approved.

Fields only added or only removed are compatible: they flow on (the table evolves, or the field is
null) and the drift is reported. The stage never writes to the registry or the audit log: it returns
proposals and drift, and the runtime records them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.model import Contract
from lakegate.schema.drift import SchemaDrift, detect_drift
from lakegate.schema.dsl import FieldMapping, Program
from lakegate.schema.llm_proposer import FieldSummary, LLMProposer, ProposalRequest
from lakegate.schema.matching import MatchConfig, MatchResult, match_fields
from lakegate.schema.profiles import FieldProfile, profile_distance

SYSTEM_PREFIX = "_lg_"
LINK_SAMPLE_ROWS = 1000
"""Incoming rows of a change that are looked up by key (enough for row-by-row evidence)."""

KeyLookup = Callable[[pa.Table, list[str]], pa.Table | None]
"""(the incoming rows' key columns, the fields wanted) -> the stored rows with those keys, aligned row by
row with the input (nulls where no stored row has the key)."""
STATE_VERSION = 1


@dataclass(frozen=True)
class SchemaPolicy:
    """When a proposal may be applied without a person."""

    auto_apply: float = 0.9
    """Every mapping's calibrated confidence must reach this."""
    min_valid_share: float = 0.95
    """Share of the batch's non-null values each program must transform without failing."""
    max_profile_distance: float = 0.35
    """How far (0..1) a program's output may sit from the target field's learned profile."""
    min_rows: int = 20
    """Rows of the new shape needed before matching (fewer are held until more arrive)."""


@dataclass
class Proposal:
    """Mappings answering one upstream change, with everything that justified them."""

    id: str
    dataset: str
    signature: str
    contract_version: int
    mappings: list[FieldMapping]
    confidence: float
    auto: bool
    reasons: list[str]
    """Why it is held (empty when it may be applied)."""
    evidence: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {
            "mappings": [m.model_dump(mode="json") for m in self.mappings],
            "described": [m.describe() for m in self.mappings],
            "contract_version": self.contract_version,
            "auto": self.auto,
            "held_because": self.reasons,
            **self.evidence,
        }


@dataclass
class SchemaOutcome:
    """What the stage hands on for one batch."""

    rows: pa.Table
    """Rows that flow on, in the contract's shape where a mapping applied."""
    kept: np.ndarray
    """Mask over the input rows: True for the rows in ``rows`` (the others are held)."""
    held_by: dict[str, np.ndarray] = field(default_factory=dict)
    """Proposal id -> mask of the input rows held for it."""
    proposals: list[Proposal] = field(default_factory=list)
    """Proposals made on this batch (new upstream changes)."""
    drift: SchemaDrift | None = None
    mapped: dict[str, int] = field(default_factory=dict)
    """Rows transformed per mapping (``target <- sources``)."""

    @property
    def held_count(self) -> int:
        return int((~self.kept).sum())


def _data_fields(rows: pa.Table) -> list[str]:
    return [n for n in rows.column_names if not n.startswith(SYSTEM_PREFIX)]


def _present(rows: pa.Table, name: str) -> np.ndarray:
    column = rows.column(name)
    if column.null_count == 0:
        return np.ones(rows.num_rows, dtype=bool)
    return np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)


def signature_of(incoming: list[str], missing: list[str]) -> str:
    """Names one upstream change: the fields that appeared and the contract fields that went missing."""
    return f"+{','.join(sorted(incoming))} -{','.join(sorted(missing))}"


class SchemaStage:
    """One table's schema gate (``process(rows, contract)``; state: the changes held for review)."""

    def __init__(
        self,
        dataset: str,
        policy: SchemaPolicy | None = None,
        match_config: MatchConfig | None = None,
        advisor: LLMProposer | None = None,
        lookup: KeyLookup | None = None,
    ) -> None:
        self.dataset = dataset
        self.advisor = advisor
        self.lookup = lookup
        """Fetches stored rows by key, so incoming rows that update known ones can be linked."""
        """Optional model asked about held changes, in the background; its answers are validated like ours."""
        self.fallbacks: list[dict[str, Any]] = []
        """Requests the model could not answer (breaker open, rate limit, timeout), for the audit log;
        the held change then waits for synthesis and review as if no model were configured."""
        self._asked: dict[str, tuple[str, pa.Table, int]] = {}
        """Request id -> (signature, the rows it was about, contract version), until the answer comes."""
        self.policy = policy or SchemaPolicy()
        self.match_config = match_config or MatchConfig(auto_apply=self.policy.auto_apply)
        self.held: dict[str, str] = {}
        """Signature -> id of the pending proposal that holds rows of that shape."""
        self.rejected: set[str] = set()
        """Changes a person rejected as renames: their fields flow on as new columns."""
        self.review_only: set[str] = set()
        """Changes whose automatic mapping a person reverted: proposals for them always wait for review."""

    # -- the batch ----------------------------------------------------------------------------------

    def process(self, rows: pa.Table, contract: Contract | None) -> SchemaOutcome:
        kept = np.ones(rows.num_rows, dtype=bool)
        if contract is None or not contract.schema_.fields or rows.num_rows == 0:
            return SchemaOutcome(rows=rows, kept=kept)
        advice = self._model_answers(contract)
        if any(p.auto for p in advice):  # a validated model mapping applies; the contract carries it next batch
            contract = contract.model_copy(
                update={"mappings": [*contract.mappings, *(m.model_dump(mode="json") for p in advice if p.auto
                                                           for m in p.mappings)]}
            )  # fmt: skip
        rows, mapped = apply_mappings(rows, [FieldMapping.model_validate(m) for m in contract.mappings])
        drift = detect_drift(pa.schema([rows.schema.field(n) for n in _data_fields(rows)]), contract)
        known = {f.name for f in contract.schema_.fields}
        incoming = [n for n in _data_fields(rows) if n not in known and rows.column(n).null_count < rows.num_rows]
        missing = [n for n in known if n not in rows.column_names or rows.column(n).null_count == rows.num_rows]
        outcome = SchemaOutcome(rows=rows, kept=kept, drift=drift if drift.changes else None, mapped=mapped)
        outcome.proposals.extend(advice)
        if not incoming or not missing:
            return outcome  # only added or only removed fields: compatible, they flow on
        shape = np.zeros(rows.num_rows, dtype=bool)
        for name in incoming:
            shape |= _present(rows, name)
        signature = signature_of(incoming, missing)
        if signature in self.rejected:
            return outcome
        proposal_id = self.held.get(signature)
        if proposal_id is None:
            if int(shape.sum()) < self.policy.min_rows:
                return outcome  # too few rows to judge: they flow on as they are (added fields)
            proposal = self.propose(rows.filter(pa.array(shape)), contract, incoming, missing, signature)
            if signature in self.review_only:
                proposal.reasons.append("a person reverted an automatic mapping of this change before")
                proposal.auto = False
            outcome.proposals.append(proposal)
            if proposal.auto:
                applied, more = apply_mappings(rows, proposal.mappings)
                outcome.rows = applied
                outcome.mapped.update(more)
                return outcome
            proposal_id = self.held[signature] = proposal.id
            self._ask(rows.filter(pa.array(shape)), contract, incoming, missing, signature)
        outcome.kept = ~shape
        outcome.held_by[proposal_id] = shape
        outcome.rows = rows.filter(pa.array(~shape))
        return outcome

    def propose(
        self, rows: pa.Table, contract: Contract, incoming: list[str], missing: list[str], signature: str
    ) -> Proposal:
        """Match the unmatched fields, validate every program on the batch, and judge the policy."""
        profiles = {name: FieldProfile.from_contract(contract, name) for name in missing}
        rows = rows.slice(0, LINK_SAMPLE_ROWS) if self.lookup is not None else rows
        linked = self._linked(rows, contract, missing)
        result: MatchResult = match_fields(
            rows, profiles, incoming_fields=incoming, linked_rows=linked, config=self.match_config
        )
        mappings: list[FieldMapping] = []
        reasons: list[str] = []
        validation: dict[str, Any] = {}
        for match in result.matches:
            program = match.program if isinstance(match.program, Program) else Program()
            mapping = FieldMapping(target=match.target, sources=[match.incoming], program=program)
            check = validate(rows.column(match.incoming), program, profiles[match.target])
            validation[match.target] = check
            mappings.append(mapping)
            reasons += self._policy_reasons(mapping, match.confidence, check, ambiguous=False)
            if match.ambiguous:
                rivals = [a.target for a in match.alternatives]
                reasons.append(f"{match.incoming} -> {match.target} is ambiguous with {rivals}")
        if not mappings:
            reasons.append(f"no confident match for {incoming} among the missing fields {missing}")
        unmatched = [m for m in missing if m not in {x.target for x in mappings}]
        confidence = min((m.confidence for m in result.matches), default=0.0)
        body = orjson.dumps([signature, contract.version, [m.model_dump(mode="json") for m in mappings]])
        return Proposal(
            id=hashlib.sha256(body).hexdigest()[:16],
            dataset=self.dataset,
            signature=signature,
            contract_version=contract.version,
            mappings=mappings,
            confidence=round(confidence, 4),
            auto=not reasons,
            reasons=reasons,
            evidence={
                "incoming_fields": incoming,
                "missing_fields": missing,
                "still_missing": unmatched,
                "matches": result.to_dict()["matches"],
                "unmatched_incoming": result.unmatched_incoming,
                "validation": validation,
                "rows_seen": rows.num_rows,
            },
        )

    def _linked(self, rows: pa.Table, contract: Contract, missing: list[str]) -> pa.Table | None:
        """The stored rows these incoming rows refer to, by the contract's key (an update of an order
        already landed): the strongest value evidence, row by row. ``None`` when nothing links."""
        keys = list(contract.schema_.keys)
        if self.lookup is None or not keys or not all(k in rows.column_names for k in keys):
            return None
        linked = self.lookup(rows.select(keys), missing)
        if linked is None or linked.num_rows != rows.num_rows:
            return None
        present = [c for c in missing if c in linked.column_names]
        if not present or all(linked.column(c).null_count == linked.num_rows for c in present):
            return None
        return linked

    # -- the optional model ------------------------------------------------------------------------

    def _ask(self, rows: pa.Table, contract: Contract, incoming: list[str], missing: list[str], signature: str) -> None:
        """Hand a held change to the model in the background (refused at once when it is unavailable)."""
        if self.advisor is None:
            return
        targets = tuple(FieldSummary.from_profile(FieldProfile.from_contract(contract, n), n) for n in missing)
        sources = tuple(
            FieldSummary.from_profile(FieldProfile.from_values(rows.column(n), name=n), n) for n in incoming
        )
        request = ProposalRequest(dataset=self.dataset, targets=targets, sources=sources)
        self._asked[request.request_id] = (signature, rows.slice(0, 2000), contract.version)
        self.advisor.submit(request)

    def _model_answers(self, contract: Contract) -> list[Proposal]:
        """Answers that arrived since the last batch, validated on the rows they were about."""
        if self.advisor is None:
            return []
        out: list[Proposal] = []
        for result in self.advisor.poll():
            asked = self._asked.pop(result.request.request_id, None)
            if asked is None:
                continue
            signature, rows, version = asked
            if result.fallback:
                self.fallbacks.append({"signature": signature, **result.evidence()})
                continue
            mappings = [FieldMapping(target=m.target, sources=[m.source], program=m.program) for m in result.mappings]
            reasons: list[str] = []
            validation: dict[str, Any] = {}
            for mapping, answer in zip(mappings, result.mappings, strict=True):
                profile = FieldProfile.from_contract(contract, mapping.target)
                check = validate(rows.column(mapping.sources[0]), mapping.program, profile)
                validation[mapping.target] = check
                reasons += self._policy_reasons(mapping, answer.confidence, check, ambiguous=False)
            if not mappings:
                reasons.append("the model proposed no mapping")
            if signature in self.review_only:
                reasons.append("a person reverted an automatic mapping of this change before")
            confidence = min((m.confidence for m in result.mappings), default=0.0)
            body = orjson.dumps(["llm", signature, version, [m.model_dump(mode="json") for m in mappings]])
            proposal = Proposal(
                id=hashlib.sha256(body).hexdigest()[:16],
                dataset=self.dataset,
                signature=signature,
                contract_version=version,
                mappings=mappings,
                confidence=round(confidence, 4),
                auto=not reasons,
                reasons=reasons,
                evidence={"proposer": "llm", "validation": validation, **result.evidence()},
            )
            if proposal.auto:
                self.release(self.held.get(signature, ""))
            out.append(proposal)
        return out

    def _policy_reasons(
        self, mapping: FieldMapping, confidence: float, check: dict[str, Any], *, ambiguous: bool
    ) -> list[str]:
        """Why the policy would not apply this mapping on its own (empty: it may)."""
        pair = f"{','.join(mapping.sources)} -> {mapping.target}"
        reasons = []
        if ambiguous:
            reasons.append(f"{pair} is ambiguous")
        if confidence < self.policy.auto_apply:
            reasons.append(f"{pair}: confidence {confidence:.2f} < {self.policy.auto_apply}")
        if check["valid_share"] < self.policy.min_valid_share:
            needed = self.policy.min_valid_share
            reasons.append(f"{pair}: program transforms {check['valid_share']:.1%} of values (needs {needed:.0%})")
        if check["profile_distance"] > self.policy.max_profile_distance:
            reasons.append(
                f"{pair}: output is {check['profile_distance']:.2f} from the learned profile"
                f" (at most {self.policy.max_profile_distance})"
            )
        return reasons

    # -- decisions from outside ---------------------------------------------------------------------

    def release(self, proposal_id: str) -> None:
        """A held proposal was approved: its mapping is in the contract now, stop holding its rows."""
        self.held = {s: p for s, p in self.held.items() if p != proposal_id}

    def reject(self, signature: str) -> None:
        """A person said the change is not a rename: new fields flow on as new columns from now on."""
        self.held.pop(signature, None)
        self.rejected.add(signature)

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {"version": STATE_VERSION, "dataset": self.dataset, "held": self.held, "rejected": sorted(self.rejected)}
        )

    def restore(self, data: bytes) -> None:
        state = orjson.loads(data)
        if state.get("version") == STATE_VERSION and state.get("dataset") == self.dataset:
            self.held = dict(state["held"])
            self.rejected = set(state.get("rejected", []))


def validate(values: pa.ChunkedArray | pa.Array, program: Program, target: FieldProfile) -> dict[str, Any]:
    """How well ``program`` carries these values into the target field: on every row of the batch."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    applied = program.apply(array)
    present = len(array) - array.null_count
    valid_share = 1.0 - applied.failures / present if present else 0.0
    distance = profile_distance(applied.values, target) if len(applied.values) > applied.values.null_count else 1.0
    before = array.slice(0, 3).to_pylist()
    after = applied.values.slice(0, 3).to_pylist()
    return {
        "program": program.describe(),
        "rows": len(array),
        "valid_share": round(valid_share, 6),
        "failures": applied.failures,
        "profile_distance": round(float(distance), 4),
        "sample": [{"before": _plain(b), "after": _plain(a)} for b, a in zip(before, after, strict=True)],
        "errors": applied.errors[:3],
    }


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def apply_mappings(rows: pa.Table, mappings: list[FieldMapping]) -> tuple[pa.Table, dict[str, int]]:
    """Apply the mappings whose sources are in the batch; a target already present keeps its values
    where they are set (a batch mixing old-shape and new-shape rows), and the sources are dropped."""
    mapped: dict[str, int] = {}
    for mapping in mappings:
        if not all(s in rows.column_names for s in mapping.sources):
            continue
        source = rows.column(mapping.sources[0])
        if len(mapping.sources) > 1:
            parts = [pc.cast(rows.column(s), pa.string()) for s in mapping.sources]
            source = pc.binary_join_element_wise(*parts, mapping.separator)
        result = mapping.program.apply(source)
        values: pa.Array | pa.ChunkedArray = result.values
        if mapping.target in rows.column_names:
            existing = rows.column(mapping.target)
            if existing.type != values.type:
                try:
                    values = pc.cast(values, existing.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    values = pc.cast(values, existing.type, safe=False)
            values = pc.coalesce(existing, values)
            rows = rows.set_column(rows.column_names.index(mapping.target), mapping.target, values)
        else:
            rows = rows.append_column(mapping.target, values)
        keep = [n for n in rows.column_names if n not in mapping.sources or n == mapping.target]
        rows = rows.select(keep)
        mapped[mapping.describe()] = int(len(source) - source.null_count)
    return rows, mapped
