"""The contract model: an immutable, versioned artifact of schema, rules, policies and provenance.

A contract says what a dataset *means*, beyond its shape: the bounds a value keeps, the categories a
field takes, the fields that determine others, the order two timestamps keep, the arithmetic that
ties columns together, and the volume and lateness the stream shows over time. Rules are either
declared by a person or learned from history; every rule carries the thresholds it enforces, so a
verdict can always say "observed X, allowed Y".
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

RuleKind = Literal[
    # row level: evaluated per row, may quarantine
    "not_null",  # a field that was never null
    "range",  # numeric/temporal value within robust learned bounds
    "allowed_values",  # categorical field within its learned set (with a tolerance for new values)
    "length",  # string length within bounds
    "pattern",  # string shape (e.g. AAA-999) among the learned shapes
    "format",  # a recognized format: email, uuid, url, phone, iso_date, currency_code
    "dependency",  # functional dependency: determinant value -> dependent value
    "ordering",  # left <= right (e.g. order_date <= ship_date)
    "identity",  # target = left (op) right within tolerance (e.g. total = qty * unit_price)
    "unique_key",  # the same event key twice within a window is a duplicate
    # window level: evaluated per window of rows, alerts only
    "drift",  # distribution drift vs the baseline (PSI, Jensen-Shannon, Wasserstein)
    "null_rate",  # burst of nulls
    "correlation",  # a stable correlation between two numeric fields broke
    "volume",  # arrival volume per time bucket vs the seasonal baseline
    "lateness",  # event-time lateness distribution
    "freshness",  # time since the newest event
]
ROW_KINDS: frozenset[str] = frozenset(
    {
        "not_null",
        "range",
        "allowed_values",
        "length",
        "pattern",
        "format",
        "dependency",
        "ordering",
        "identity",
        "unique_key",
    }
)
RuleFamily = Literal["column", "relationship", "temporal", "duplicate"]
FAMILY_OF_KIND: dict[str, str] = {
    "not_null": "column",
    "range": "column",
    "allowed_values": "column",
    "length": "column",
    "pattern": "column",
    "format": "column",
    "dependency": "relationship",
    "ordering": "relationship",
    "identity": "relationship",
    "correlation": "relationship",
    "unique_key": "duplicate",
    "drift": "column",
    "null_rate": "column",
    "volume": "temporal",
    "lateness": "temporal",
    "freshness": "temporal",
}
Action = Literal["quarantine", "alert", "off"]
Severity = Literal["info", "warning", "critical"]
Status = Literal["draft", "active", "deprecated"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSchema(_Frozen):
    """One field of the dataset as the contract knows it (flattened name, Iceberg-style type)."""

    name: str
    type: str
    """int, long, double, boolean, string, date, timestamp, decimal(P,S), list<...>."""
    nullable: bool = True
    description: str | None = None


class DatasetSchema(_Frozen):
    fields: list[FieldSchema] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)
    """Fields that identify an event (for duplicate detection and row linking)."""

    def field(self, name: str) -> FieldSchema | None:
        return next((f for f in self.fields if f.name == name), None)


class Rule(_Frozen):
    """One check, with the thresholds it enforces.

    ``params`` holds what the rule compares against, by kind (all JSON-serializable):
    ``range``: low, high (and the quantiles they came from); ``allowed_values``: values,
    new_value_tolerance; ``length``: low, high; ``pattern``: patterns; ``format``: format;
    ``dependency``: mapping (determinant -> dependent), min_support; ``ordering``: (columns
    [left, right]) slack; ``identity``: op ("mul"/"add"/"sub"/"div"), target, rel_tolerance,
    abs_tolerance; ``unique_key``: window_s; ``drift``: metric, baseline (bins/probabilities),
    threshold; window kinds: baseline and threshold.
    """

    id: str
    kind: RuleKind
    columns: list[str]
    params: dict[str, Any] = Field(default_factory=dict)
    origin: Literal["declared", "learned"] = "learned"
    action: Action = "quarantine"
    severity: Severity = "warning"
    support: int | None = None
    """Rows the rule was learned from (or that matched its premise)."""
    confidence: float | None = None
    """Share of learning rows the rule held for."""
    description: str = ""

    @property
    def level(self) -> Literal["row", "window"]:
        return "row" if self.kind in ROW_KINDS else "window"

    @property
    def family(self) -> str:
        return FAMILY_OF_KIND[self.kind]


_DEFAULT_QUARANTINE: list[RuleKind] = [
    "not_null",
    "range",
    "allowed_values",
    "pattern",
    "format",
    "dependency",
    "ordering",
    "identity",
    "unique_key",
]
_DEFAULT_ALERT: list[RuleKind] = [
    "length",
    "drift",
    "null_rate",
    "correlation",
    "volume",
    "lateness",
    "freshness",
]


class Policies(_Frozen):
    """Which rules quarantine a row and which only alert, by kind; a rule's own ``action`` wins."""

    quarantine: list[RuleKind] = Field(default_factory=lambda: list(_DEFAULT_QUARANTINE))
    alert: list[RuleKind] = Field(default_factory=lambda: list(_DEFAULT_ALERT))
    pii: dict[str, str] = Field(default_factory=dict)
    retention_days: int | None = None


class Metadata(_Frozen):
    owner: str | None = None
    status: Status = "draft"
    description: str | None = None
    tags: list[str] = Field(default_factory=list)


class Provenance(_Frozen):
    """Where the learned part of a contract came from."""

    learned_from_rows: int = 0
    first_event_time: datetime | None = None
    last_event_time: datetime | None = None
    learned_at: datetime | None = None
    checkpoint_id: int | None = None
    source: str | None = None
    parent_version: int | None = None
    reason: str | None = None
    """Why this version exists (learned baseline, mapping applied, manual import...)."""


class Contract(_Frozen):
    """A dataset's contract at one version. Versions are immutable; a change makes a new version."""

    dataset: str
    version: int = 0
    """0 until the registry stores it; then 1, 2, ... per dataset."""
    schema_: DatasetSchema = Field(default_factory=DatasetSchema, alias="schema")
    rules: list[Rule] = Field(default_factory=list)
    mappings: list[dict[str, Any]] = Field(default_factory=list)
    """How incoming fields map onto this contract's fields after an upstream schema change (schema
    intelligence's ``FieldMapping`` JSON: target, sources, program), applied before the rules."""
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per field, what learning saw beyond the rules: kind, type, null rate, distinct count, quantiles,
    top values and a bounded sample of distinct values (schema intelligence matches fields with it)."""
    policies: Policies = Field(default_factory=Policies)
    metadata: Metadata = Field(default_factory=Metadata)
    provenance: Provenance = Field(default_factory=Provenance)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def action_of(self, rule: Rule) -> Action:
        """The effective action: window rules never quarantine rows."""
        if rule.level == "window":
            return "off" if rule.action == "off" else "alert"
        return rule.action

    def with_mappings(self, mappings: list[dict[str, Any]], reason: str) -> Contract:
        """The next version's body: these input mappings instead of the current ones (0 until stored)."""
        return self.model_copy(
            update={
                "version": 0,
                "mappings": mappings,
                "provenance": self.provenance.model_copy(update={"parent_version": self.version, "reason": reason}),
            }
        )

    def fingerprint(self) -> str:
        """A hash of the content (not the version number), to tell whether two versions differ."""
        body = self.model_dump(mode="json", by_alias=True, exclude={"version", "provenance", "metadata"})
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))

    @classmethod
    def from_json(cls, data: bytes | str) -> Contract:
        return cls.model_validate(orjson.loads(data))
