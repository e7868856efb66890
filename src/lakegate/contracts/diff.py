"""What changed between two contract versions, and how a rule's thresholds read to a person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lakegate.contracts.model import Contract, FieldSchema, Rule

_MAX_LISTED = 6


def fmt_value(value: Any, digits: int = 6) -> str:
    """A value for a terminal: floats with ``digits`` significant digits, long lists shortened."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "null"
    if isinstance(value, float):
        return format(value, f".{digits}g")
    if isinstance(value, list | tuple):
        shown = ", ".join(fmt_value(v, digits) for v in list(value)[:_MAX_LISTED])
        more = f", … (+{len(value) - _MAX_LISTED})" if len(value) > _MAX_LISTED else ""
        return f"[{shown}{more}]"
    if isinstance(value, dict):
        items = list(value.items())
        shown = ", ".join(f"{k}: {fmt_value(v, digits)}" for k, v in items[:_MAX_LISTED])
        more = f", … (+{len(items) - _MAX_LISTED})" if len(items) > _MAX_LISTED else ""
        return "{" + shown + more + "}"
    return str(value)


def _pair(old: Any, new: Any) -> tuple[str, str]:
    """Both values formatted with just enough digits to tell them apart."""
    for digits in (6, 10, 17):
        a, b = fmt_value(old, digits), fmt_value(new, digits)
        if a != b or old == new:
            return a, b
    return repr(old), repr(new)


def _bound(value: Any, temporal: bool) -> str:
    if temporal and isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))
        return moment.isoformat().replace("+00:00", "Z")
    return fmt_value(value)


def describe_thresholds(rule: Rule) -> str:
    """What ``rule`` allows, in a few words: ``[0.5, 1200]``, ``one of 14 values: a, b, …``."""
    p = rule.params
    kind = rule.kind
    if kind in ("range", "length") and ("low" in p or "high" in p):
        temporal = p.get("unit") == "epoch_us"
        low, high = p.get("low"), p.get("high")
        left = "(-∞" if low is None else "[" + _bound(low, temporal)
        right = "∞)" if high is None else _bound(high, temporal) + "]"
        return f"length {left}, {right}" if kind == "length" else f"{left}, {right}"
    if kind == "allowed_values" and "values" in p:
        values = list(p["values"])
        text = f"one of {len(values)} value{'s' if len(values) != 1 else ''}: {fmt_value(values)[1:-1]}"
        tolerance = p.get("new_value_tolerance")
        return text + (f" (new-value tolerance {fmt_value(tolerance)})" if tolerance else "")
    if kind == "pattern" and "patterns" in p:
        patterns = list(p["patterns"])
        return f"{len(patterns)} shape{'s' if len(patterns) != 1 else ''}: {fmt_value(patterns)[1:-1]}"
    if kind == "format" and "format" in p:
        return f"format {p['format']}"
    if kind == "dependency" and "mapping" in p:
        left, right = (rule.columns + ["?", "?"])[:2]
        return f"{left} → {right} ({len(p['mapping'])} mappings)"
    if kind == "ordering" and len(rule.columns) >= 2:
        slack = p.get("slack")
        return f"{rule.columns[0]} <= {rule.columns[1]}" + (f" + {fmt_value(slack)}" if slack else "")
    if kind == "identity" and "op" in p:
        symbol = {"mul": "*", "add": "+", "sub": "-", "div": "/"}.get(str(p["op"]), str(p["op"]))
        operands = [c for c in rule.columns if c != p.get("target")]
        expression = f" {symbol} ".join(operands)
        tolerances = [
            f"{name} {fmt_value(p[key])}"
            for key, name in (("rel_tolerance", "rel"), ("abs_tolerance", "abs"))
            if p.get(key) is not None
        ]
        return f"{p.get('target')} = {expression}" + (f" ± {', '.join(tolerances)}" if tolerances else "")
    if kind == "unique_key" and "window_s" in p:
        return f"unique within {fmt_value(p['window_s'])}s"
    if kind == "not_null":
        return "no nulls"
    scalars = {k: v for k, v in p.items() if isinstance(v, int | float | str | bool) or v is None}
    return ", ".join(f"{k} {fmt_value(v)}" for k, v in scalars.items()) or "-"


class FieldChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    old: FieldSchema
    new: FieldSchema


class ParamChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    old: Any = None
    new: Any = None


class RuleChange(BaseModel):
    """A rule present in both versions whose thresholds or settings moved."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    columns: list[str]
    old: Rule
    new: Rule
    changes: list[ParamChange]
    """Changed params (``params.low``...) and settings (``action``, ``severity``...)."""

    @property
    def old_threshold(self) -> str:
        return describe_thresholds(self.old)

    @property
    def new_threshold(self) -> str:
        return describe_thresholds(self.new)


class ContractDiff(BaseModel):
    """Fields and rules added, removed and changed from ``old_version`` to ``new_version``."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    old_version: int
    new_version: int
    fields_added: list[FieldSchema] = Field(default_factory=list)
    fields_removed: list[FieldSchema] = Field(default_factory=list)
    fields_changed: list[FieldChange] = Field(default_factory=list)
    keys: tuple[list[str], list[str]] | None = None
    rules_added: list[Rule] = Field(default_factory=list)
    rules_removed: list[Rule] = Field(default_factory=list)
    rules_changed: list[RuleChange] = Field(default_factory=list)
    policies: list[ParamChange] = Field(default_factory=list)
    metadata: list[ParamChange] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.fields_added
            or self.fields_removed
            or self.fields_changed
            or self.keys
            or self.rules_added
            or self.rules_removed
            or self.rules_changed
            or self.policies
            or self.metadata
        )

    def render(self) -> str:
        """The diff for a terminal, one change a line, thresholds old → new."""
        out = [f"contract {self.dataset}: v{self.old_version} → v{self.new_version}"]
        if self.empty:
            out.append("  no changes")
            return "\n".join(out)
        if self.fields_added or self.fields_removed or self.fields_changed or self.keys:
            out.append("fields:")
        out += [f"  + {f.name} {_field_text(f)}" for f in self.fields_added]
        out += [f"  - {f.name} {_field_text(f)}" for f in self.fields_removed]
        out += [f"  ~ {c.name}: {_field_text(c.old)} → {_field_text(c.new)}" for c in self.fields_changed]
        if self.keys:
            out.append(f"  ~ keys: {self.keys[0]} → {self.keys[1]}")
        if self.rules_added or self.rules_removed or self.rules_changed:
            out.append("rules:")
        out += [f"  + {_rule_head(r)}: {describe_thresholds(r)}" for r in self.rules_added]
        out += [f"  - {_rule_head(r)}: {describe_thresholds(r)}" for r in self.rules_removed]
        for change in self.rules_changed:
            out.append(f"  ~ {_rule_head(change.new)}: {change.old_threshold} → {change.new_threshold}")
            for item in change.changes:
                old, new = _pair(item.old, item.new)
                out.append(f"      {item.key}: {old} → {new}")
        if self.policies:
            out.append("policies:")
            out += [f"  ~ {c.key}: {_pair(c.old, c.new)[0]} → {_pair(c.old, c.new)[1]}" for c in self.policies]
        if self.metadata:
            out.append("metadata:")
            out += [f"  ~ {c.key}: {_pair(c.old, c.new)[0]} → {_pair(c.old, c.new)[1]}" for c in self.metadata]
        return "\n".join(out)


def _field_text(f: FieldSchema) -> str:
    return f"{f.type}{'' if f.nullable else ' not null'}"


def _rule_head(rule: Rule) -> str:
    return f"{rule.kind} {','.join(rule.columns)} [{rule.id}] ({rule.action}, {rule.origin})"


def _dict_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[ParamChange]:
    changes = []
    for key in [*old, *(k for k in new if k not in old)]:
        if old.get(key) != new.get(key) or (key in old) != (key in new):
            changes.append(ParamChange(key=f"{prefix}{key}", old=old.get(key), new=new.get(key)))
    return changes


def _rule_changes(old: Rule, new: Rule) -> list[ParamChange]:
    changes = _dict_changes(old.params, new.params, prefix="params.")
    settings = ("columns", "action", "severity", "origin", "support", "confidence", "description")
    changes += [
        ParamChange(key=name, old=getattr(old, name), new=getattr(new, name))
        for name in settings
        if getattr(old, name) != getattr(new, name)
    ]
    if old.kind != new.kind:
        changes.insert(0, ParamChange(key="kind", old=old.kind, new=new.kind))
    if old.id != new.id:
        changes.insert(0, ParamChange(key="id", old=old.id, new=new.id))
    return changes


def diff_contracts(old: Contract, new: Contract) -> ContractDiff:
    """Compare two versions; rules are matched by id, then by kind and columns."""
    old_fields = {f.name: f for f in old.schema_.fields}
    new_fields = {f.name: f for f in new.schema_.fields}
    old_rules = list(old.rules)
    unmatched_new: list[Rule] = []
    pairs: list[tuple[Rule, Rule]] = []
    for rule in new.rules:
        match = next((r for r in old_rules if r.id == rule.id), None)
        if match is None:
            unmatched_new.append(rule)
        else:
            old_rules.remove(match)
            pairs.append((match, rule))
    added: list[Rule] = []
    for rule in unmatched_new:
        match = next((r for r in old_rules if r.kind == rule.kind and r.columns == rule.columns), None)
        if match is None:
            added.append(rule)
        else:
            old_rules.remove(match)
            pairs.append((match, rule))
    changed = [
        RuleChange(id=n.id, kind=n.kind, columns=n.columns, old=o, new=n, changes=_rule_changes(o, n))
        for o, n in pairs
        if o != n
    ]
    return ContractDiff(
        dataset=new.dataset,
        old_version=old.version,
        new_version=new.version,
        fields_added=[f for name, f in new_fields.items() if name not in old_fields],
        fields_removed=[f for name, f in old_fields.items() if name not in new_fields],
        fields_changed=[
            FieldChange(name=name, old=old_fields[name], new=f)
            for name, f in new_fields.items()
            if name in old_fields and old_fields[name] != f
        ],
        keys=(old.schema_.keys, new.schema_.keys) if old.schema_.keys != new.schema_.keys else None,
        rules_added=added,
        rules_removed=old_rules,
        rules_changed=changed,
        policies=_dict_changes(old.policies.model_dump(mode="json"), new.policies.model_dump(mode="json")),
        metadata=_dict_changes(old.metadata.model_dump(mode="json"), new.metadata.model_dump(mode="json")),
    )
