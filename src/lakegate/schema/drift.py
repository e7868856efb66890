"""Schema drift: how an incoming batch's (flattened) schema differs from the active contract's.

Each difference is one :class:`SchemaChange`, classified ``compatible`` (the table can evolve and old
readers keep working: a new optional field, a widened type, a dropped optional field) or ``breaking``
(rows would not land where the contract says: a narrowed or re-typed field, a required field gone, a
field moved into or out of a struct). Type widening follows Iceberg's promotions (int -> long,
float -> double, decimal precision up at the same scale), since the sink can only evolve those.
Added/removed pairs whose names look alike are listed as rename candidates; the field matcher
(:mod:`lakegate.schema.matching`) decides them with value evidence.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from lakegate.contracts.model import Contract
from lakegate.core.types import type_to_str
from lakegate.schema.lexical import lexical_similarity

SEPARATOR = "__"
"""How nested fields are flattened (``customer__address__city``), as the normalizer does."""
SYSTEM_PREFIX = "_lg_"
RENAME_CANDIDATE_MIN = 0.5
"""Lexical similarity above which an added and a removed field are listed as a rename candidate."""

ChangeKind = Literal["added", "removed", "type_changed", "nesting_changed", "rename_candidate"]
Compatibility = Literal["compatible", "breaking"]

_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")
_PROMOTIONS: frozenset[tuple[str, str]] = frozenset({("int", "long"), ("float", "double")})


class SchemaChange(BaseModel):
    """One difference between the incoming schema and the contract, with its classification."""

    model_config = ConfigDict(frozen=True)

    kind: ChangeKind
    field: str
    """The incoming field's name (the contract's for ``removed``)."""
    compatibility: Compatibility
    reason: str
    contract_field: str | None = None
    """The contract's side of a ``type_changed``/``nesting_changed``/``rename_candidate`` change."""
    contract_type: str | None = None
    incoming_type: str | None = None
    score: float | None = None
    """Name similarity of a rename candidate."""


class SchemaDrift(BaseModel):
    """Every change of one batch's schema against one contract version; JSON-serializable for the audit."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    contract_version: int
    changes: list[SchemaChange] = Field(default_factory=list)

    @property
    def compatibility(self) -> Compatibility:
        """``breaking`` as soon as one change is."""
        return "breaking" if any(c.compatibility == "breaking" for c in self.changes) else "compatible"

    @property
    def drifted(self) -> bool:
        return any(c.kind != "rename_candidate" for c in self.changes)

    def of_kind(self, kind: ChangeKind) -> list[SchemaChange]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def added(self) -> list[str]:
        return [c.field for c in self.of_kind("added")]

    @property
    def removed(self) -> list[str]:
        return [c.field for c in self.of_kind("removed")]

    def to_dict(self) -> dict[str, Any]:
        body = self.model_dump(mode="json")
        body["compatibility"] = self.compatibility
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def canonical_type(data_type: pa.DataType) -> str:
    """The lakegate type name an Arrow type lands as (narrow ints are ``int``, any timestamp is ``timestamp``)."""
    if pa.types.is_null(data_type):
        return "null"
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_integer(data_type):
        if data_type.bit_width < 32 or (data_type.bit_width == 32 and pa.types.is_signed_integer(data_type)):
            return "int"
        return "long"
    if pa.types.is_floating(data_type):
        return "double" if data_type.bit_width == 64 else "float"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type):
        return "string"
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return "binary"
    if pa.types.is_date(data_type):
        return "date"
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    if pa.types.is_dictionary(data_type):
        return canonical_type(data_type.value_type)
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return f"list<{canonical_type(data_type.value_type)}>"
    try:
        return type_to_str(data_type)
    except ValueError:
        return str(data_type)


def flatten_schema(schema: pa.Schema) -> dict[str, str]:
    """Leaf fields of a possibly nested schema as ``parent__child`` -> lakegate type name."""
    out: dict[str, str] = {}

    def visit(prefix: str, data_type: pa.DataType, name: str) -> None:
        full = f"{prefix}{name}"
        if pa.types.is_struct(data_type):
            for child in data_type:
                visit(f"{full}{SEPARATOR}", child.type, child.name)
        else:
            out[full] = canonical_type(data_type)

    for schema_field in schema:
        if not schema_field.name.startswith(SYSTEM_PREFIX):
            visit("", schema_field.type, schema_field.name)
    return out


def _decimal(type_name: str) -> tuple[int, int] | None:
    match = _DECIMAL.match(type_name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def classify_type_change(contract_type: str, incoming_type: str) -> tuple[Compatibility, str]:
    """Whether values of ``incoming_type`` can land in a ``contract_type`` column as the contract evolves."""
    if incoming_type == "null":
        return "compatible", "the batch has only nulls here; nothing to type"
    if (contract_type, incoming_type) in _PROMOTIONS:
        return "compatible", f"widening {contract_type} -> {incoming_type}"
    if (incoming_type, contract_type) in _PROMOTIONS:
        return "breaking", f"narrowing {contract_type} -> {incoming_type}"
    old, new = _decimal(contract_type), _decimal(incoming_type)
    if old and new:
        if new[1] == old[1] and new[0] >= old[0]:
            return "compatible", f"decimal widening {contract_type} -> {incoming_type}"
        return "breaking", f"decimal {contract_type} -> {incoming_type} changes the scale or narrows"
    numeric = {"int", "long", "float", "double"}
    if (contract_type in numeric or old) and incoming_type == "string":
        return "breaking", f"number -> string ({contract_type} -> {incoming_type})"
    if contract_type == "string" and (incoming_type in numeric or new):
        return "breaking", f"string -> number ({contract_type} -> {incoming_type})"
    return "breaking", f"{contract_type} -> {incoming_type} is not a type promotion the table can evolve"


def _leaf(name: str) -> str:
    return name.rsplit(SEPARATOR, 1)[-1]


def detect_drift(incoming: pa.Schema, contract: Contract) -> SchemaDrift:
    """Compare a batch's schema (nested structs are flattened) with the contract's fields."""
    fields = flatten_schema(incoming)
    expected = {f.name: f for f in contract.schema_.fields if not f.name.startswith(SYSTEM_PREFIX)}
    changes: list[SchemaChange] = []
    for name in fields.keys() & expected.keys():
        contract_type, incoming_type = expected[name].type, fields[name]
        if contract_type != incoming_type:
            compatibility, reason = classify_type_change(contract_type, incoming_type)
            changes.append(
                SchemaChange(
                    kind="type_changed",
                    field=name,
                    contract_field=name,
                    contract_type=contract_type,
                    incoming_type=incoming_type,
                    compatibility=compatibility,
                    reason=reason,
                )
            )
    added = [n for n in fields if n not in expected]
    removed = [n for n in expected if n not in fields]
    added, removed = _nesting_changes(added, removed, fields, expected, changes)
    for name in added:
        changes.append(
            SchemaChange(
                kind="added",
                field=name,
                incoming_type=fields[name],
                compatibility="compatible",
                reason="a new field becomes a new optional column",
            )
        )
    for name in removed:
        required = not expected[name].nullable
        changes.append(
            SchemaChange(
                kind="removed",
                field=name,
                contract_type=expected[name].type,
                compatibility="breaking" if required else "compatible",
                reason="a required field is missing" if required else "an optional field is missing (read as null)",
            )
        )
    changes.extend(_rename_candidates(added, removed, fields, expected))
    order = {"type_changed": 0, "nesting_changed": 1, "removed": 2, "added": 3, "rename_candidate": 4}
    changes.sort(key=lambda c: (order[c.kind], c.field))
    return SchemaDrift(dataset=contract.dataset, contract_version=contract.version, changes=changes)


def _nesting_changes(
    added: list[str],
    removed: list[str],
    fields: dict[str, str],
    expected: dict[str, Any],
    changes: list[SchemaChange],
) -> tuple[list[str], list[str]]:
    """Pair an added and a removed field that share a leaf name but not a path (``a__b`` vs ``b``)."""
    by_leaf: dict[str, list[str]] = {}
    for name in removed:
        by_leaf.setdefault(_leaf(name), []).append(name)
    paired_added: set[str] = set()
    paired_removed: set[str] = set()
    for name in added:
        candidates = [r for r in by_leaf.get(_leaf(name), []) if r not in paired_removed]
        if not candidates:
            continue
        old = candidates[0]
        paired_added.add(name)
        paired_removed.add(old)
        incoming_type, contract_type = fields[name], expected[old].type
        detail = "" if incoming_type == contract_type else f"; type {contract_type} -> {incoming_type}"
        changes.append(
            SchemaChange(
                kind="nesting_changed",
                field=name,
                contract_field=old,
                contract_type=contract_type,
                incoming_type=incoming_type,
                compatibility="breaking",
                reason=f"moved from {old!r} to {name!r}{detail}; needs a field mapping",
            )
        )
    return [a for a in added if a not in paired_added], [r for r in removed if r not in paired_removed]


def _rename_candidates(
    added: list[str], removed: list[str], fields: dict[str, str], expected: dict[str, Any]
) -> list[SchemaChange]:
    """Added/removed pairs with alike names, best first, each field at most once (a hint, not a decision)."""
    scored = sorted(
        ((lexical_similarity(a, r).score, a, r) for a in added for r in removed),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    used: set[str] = set()
    out: list[SchemaChange] = []
    for score, new, old in scored:
        if score < RENAME_CANDIDATE_MIN:
            break
        if new in used or old in used:
            continue
        used.update((new, old))
        out.append(
            SchemaChange(
                kind="rename_candidate",
                field=new,
                contract_field=old,
                contract_type=expected[old].type,
                incoming_type=fields[new],
                score=round(score, 4),
                compatibility="breaking",
                reason=f"{new!r} may be {old!r} renamed (name similarity {score:.2f}); the matcher decides",
            )
        )
    return out
