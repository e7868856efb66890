"""Contracts to and from the Open Data Contract Standard (ODCS v3) YAML.

Mapping (lakegate -> ODCS):

* the dataset is one ``schema`` object (``logicalType: object``, ``physicalType: table``); each field
  a ``property`` with ``logicalType`` (string, integer, number, boolean, date, timestamp, array),
  ``physicalType`` (the lakegate type, e.g. ``decimal(12,2)``), ``required`` (not nullable),
  ``primaryKey``/``primaryKeyPosition`` (the event keys) and ``classification: pii``;
* every rule is a ``quality`` entry of the object with ``type: custom``, ``engine: lakegate`` and the
  whole rule as YAML in ``implementation``, so an import restores it exactly;
* simple bounds are *also* written the standard way, for other tools: ``not_null`` as library metric
  ``nullValues`` ``mustBe: 0``, ``allowed_values`` as ``invalidValues`` with ``validValues``, ranges,
  lengths and formats as the property's ``logicalTypeOptions`` (``minimum``/``maximum``, ISO
  dates/timestamps for temporal fields, ``minLength``/``maxLength``, ``format``);
* metadata: ``status``, ``description.purpose``, ``tags``, owner as ``team`` member with role
  ``owner``, retention as ``slaProperties`` ``retention``; policies, provenance, the dataset name
  and the format version as top-level ``customProperties`` (``lakegate*``).

On import the lakegate custom entries win; standard entries that repeat them are skipped. A file
written by another tool, with only library metrics and logical type options, imports as declared
rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from lakegate.contracts.diff import describe_thresholds
from lakegate.contracts.model import (
    Contract,
    FieldSchema,
    Metadata,
    Policies,
    Provenance,
    Rule,
    Severity,
    Status,
)
from lakegate.contracts.registry import CONTRACT_FORMAT_VERSION, parse_contract, validation_lines
from lakegate.core.errors import ConfigError
from lakegate.core.types import type_from_str

log = logging.getLogger(__name__)

ODCS_API_VERSION = "v3.0.2"
ENGINE = "lakegate"
NESTED_SEPARATOR = "__"
"""How nested ODCS properties are named once flattened (as the normalize stage names them)."""

_DIMENSION = {
    "not_null": "completeness",
    "null_rate": "completeness",
    "volume": "completeness",
    "range": "conformity",
    "allowed_values": "conformity",
    "length": "conformity",
    "pattern": "conformity",
    "format": "conformity",
    "dependency": "consistency",
    "ordering": "consistency",
    "identity": "consistency",
    "correlation": "consistency",
    "drift": "accuracy",
    "unique_key": "uniqueness",
    "lateness": "timeliness",
    "freshness": "timeliness",
}
_FORMAT_TO_ODCS = {"email": "email", "uuid": "uuid", "url": "uri"}
_FORMAT_FROM_ODCS = {v: k for k, v in _FORMAT_TO_ODCS.items()}
_STATUS_FROM_ODCS: dict[str, Status] = {
    "draft": "draft",
    "proposed": "draft",
    "active": "active",
    "deprecated": "deprecated",
    "retired": "deprecated",
}
_SEVERITY_FROM_ODCS: dict[str, Severity] = {
    "info": "info",
    "low": "info",
    "warning": "warning",
    "warn": "warning",
    "medium": "warning",
    "error": "critical",
    "critical": "critical",
    "high": "critical",
}
_LOGICAL_TO_TYPE = {
    "integer": "long",
    "number": "double",
    "string": "string",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp",
    "time": "string",
    "object": "string",
    "map": "string",
}
_CP_FORMAT = "lakegateFormatVersion"
_CP_DATASET = "lakegateDataset"
_CP_POLICIES = "lakegatePolicies"
_CP_PROVENANCE = "lakegateProvenance"
_CP_KEYS = "lakegateKeys"
_CP_PROFILES = "lakegateProfiles"
_CP_MAPPINGS = "lakegateMappings"
_SEMVER = re.compile(r"^(\d+)\.0\.0$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- export -------------------------------------------------------------------------------------


_SPECIAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
"""Characters PyYAML may emit raw (and then read back changed) outside a double-quoted string."""


_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when built
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader


class _Dumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """Multi-line strings (rule implementations) as literal blocks; odd characters escaped."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if _SPECIAL.search(value) else ("|" if "\n" in value else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def logical_type(type_name: str) -> str:
    """The ODCS logical type of a lakegate type name."""
    t = type_name.strip().lower()
    if t in ("int", "long"):
        return "integer"
    if t in ("float", "double") or t.startswith("decimal"):
        return "number"
    if t in ("boolean", "date", "timestamp"):
        return t
    if t.startswith("list<"):
        return "array"
    if t.startswith(("struct", "map")):
        return "object"
    return "string"


def _property(field: FieldSchema, contract: Contract) -> dict[str, Any]:
    keys = contract.schema_.keys
    prop: dict[str, Any] = {"name": field.name, "logicalType": logical_type(field.type)}
    prop["physicalType"] = field.type
    if prop["logicalType"] == "array":
        inner = field.type.strip()[5:-1]
        prop["items"] = {"logicalType": logical_type(inner), "physicalType": inner}
    prop["required"] = not field.nullable
    if field.description is not None:
        prop["description"] = field.description
    if field.name in keys:
        prop["primaryKey"] = True
        prop["primaryKeyPosition"] = keys.index(field.name) + 1
    if field.name in contract.policies.pii:
        prop["classification"] = "pii"
    options: dict[str, Any] = {}
    quality: list[dict[str, Any]] = []
    for rule in contract.rules:
        if rule.columns == [field.name] and rule.action != "off":
            _standard_bounds(rule, prop["logicalType"], options, quality)
    if options:
        prop["logicalTypeOptions"] = options
    if quality:
        prop["quality"] = quality
    return prop


def _iso_bound(micros: float, logical: str, *, up: bool) -> str:
    """An epoch-microsecond bound as ODCS writes it: a date (rounded inward) or an ISO timestamp."""
    moment = _EPOCH + timedelta(microseconds=int(micros))
    if logical == "date":
        day = moment.date()
        if up and moment != datetime.combine(day, datetime.min.time(), UTC):
            day += timedelta(days=1)
        return day.isoformat()
    return moment.isoformat().replace("+00:00", "Z")


def _epoch_us(value: Any, where: str, origin: str) -> int:
    """An ODCS date/timestamp bound as epoch microseconds (what lakegate's temporal ranges hold)."""
    text = str(value).strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as err:
        raise ConfigError(f"{origin}: {where}: {value!r} is not an ISO date or timestamp") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _standard_bounds(rule: Rule, logical: str, options: dict[str, Any], quality: list[dict[str, Any]]) -> None:
    """The ODCS-native form of a simple single-column rule, for tools that don't run lakegate."""
    p = rule.params
    common = {"dimension": _DIMENSION[rule.kind], "severity": rule.severity}
    if rule.kind == "not_null":
        quality.append(
            {"name": rule.id, "type": "library", "metric": "nullValues", "mustBe": 0, "unit": "rows", **common}
            | {"description": "There must be no null values (lakegate rule)."}
        )
    elif rule.kind == "allowed_values" and isinstance(p.get("values"), list):
        quality.append(
            {
                "name": rule.id,
                "type": "library",
                "metric": "invalidValues",
                "arguments": {"validValues": list(p["values"])},
                "mustBe": 0,
                "unit": "rows",
                **common,
                "description": f"Values must be {describe_thresholds(rule)} (lakegate rule).",
            }
        )
    elif rule.kind == "range" and "minimum" not in options and "maximum" not in options:
        low, high = p.get("low"), p.get("high")
        if not all(_is_number(v) for v in (low, high) if v is not None):
            return
        if logical in ("integer", "number"):
            options.update({k: v for k, v in (("minimum", low), ("maximum", high)) if v is not None})
        elif logical in ("date", "timestamp") and p.get("unit") == "epoch_us":
            if low is not None:
                options["minimum"] = _iso_bound(low, logical, up=True)
            if high is not None:
                options["maximum"] = _iso_bound(high, logical, up=False)
    elif rule.kind == "length" and logical == "string" and "minLength" not in options:
        low, high = p.get("low"), p.get("high")
        if isinstance(low, int) and not isinstance(low, bool):
            options["minLength"] = low
        if isinstance(high, int) and not isinstance(high, bool):
            options["maxLength"] = high
    elif rule.kind == "format" and logical == "string" and p.get("format") in _FORMAT_TO_ODCS:
        options.setdefault("format", _FORMAT_TO_ODCS[p["format"]])


def _custom_entry(rule: Rule) -> dict[str, Any]:
    body = rule.model_dump()  # python mode: YAML keeps what JSON cannot (inf)
    implementation = yaml.dump(
        body, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    )
    columns = ", ".join(rule.columns)
    return {
        "name": rule.id,
        "type": "custom",
        "engine": ENGINE,
        "description": rule.description or f"{rule.kind} on {columns}: {describe_thresholds(rule)}",
        "dimension": _DIMENSION[rule.kind],
        "severity": rule.severity,
        "implementation": implementation,
    }


def export_odcs(contract: Contract) -> str:
    """``contract`` as an ODCS v3 YAML document (see the module docstring for the mapping)."""
    dataset = contract.dataset
    meta = contract.metadata
    field_names = {f.name for f in contract.schema_.fields}
    obj: dict[str, Any] = {
        "name": dataset.rsplit(".", 1)[-1],
        "physicalName": dataset,
        "physicalType": "table",
        "logicalType": "object",
    }
    if meta.description is not None:
        obj["description"] = meta.description
    obj["properties"] = [_property(f, contract) for f in contract.schema_.fields]
    if contract.rules:
        obj["quality"] = [_custom_entry(rule) for rule in contract.rules]
    if any(key not in field_names for key in contract.schema_.keys):
        obj["customProperties"] = [{"property": _CP_KEYS, "value": list(contract.schema_.keys)}]
    doc: dict[str, Any] = {
        "apiVersion": ODCS_API_VERSION,
        "kind": "DataContract",
        "id": f"urn:lakegate:contract:{dataset}",
        "name": dataset,
        "version": f"{contract.version}.0.0",
        "status": meta.status,
    }
    if "." in dataset:
        doc["domain"] = dataset.rsplit(".", 1)[0]
    if meta.description is not None:
        doc["description"] = {"purpose": meta.description}
    if meta.tags:
        doc["tags"] = list(meta.tags)
    if meta.owner is not None:
        doc["team"] = [{"username": meta.owner, "role": "owner"}]
    if contract.policies.retention_days is not None:
        doc["slaProperties"] = [{"property": "retention", "value": contract.policies.retention_days, "unit": "d"}]
    doc["schema"] = [obj]
    doc["customProperties"] = [
        {"property": _CP_FORMAT, "value": CONTRACT_FORMAT_VERSION},
        {"property": _CP_DATASET, "value": dataset},
        {"property": _CP_POLICIES, "value": contract.policies.model_dump(mode="json")},
        {"property": _CP_PROVENANCE, "value": contract.provenance.model_dump(mode="json")},
    ]
    if contract.profiles:
        doc["customProperties"].append({"property": _CP_PROFILES, "value": contract.profiles})
    if contract.mappings:
        doc["customProperties"].append({"property": _CP_MAPPINGS, "value": contract.mappings})
    header = f"# ODCS data contract exported by lakegate: {dataset} v{contract.version}\n"
    return header + yaml.dump(
        doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    )


# -- import -------------------------------------------------------------------------------------


def _mapping(value: Any, where: str, origin: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{origin}: {where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _list(value: Any, where: str, origin: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{origin}: {where}: expected a list, got {type(value).__name__}")
    return value


def _custom_properties(value: Any, where: str, origin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, item in enumerate(_list(value, where, origin)):
        entry = _mapping(item, f"{where}[{i}]", origin)
        if isinstance(entry.get("property"), str):
            out[entry["property"]] = entry.get("value")
    return out


def _field_type(prop: dict[str, Any], trust_physical: bool) -> str:
    physical = prop.get("physicalType")
    if isinstance(physical, str):
        if trust_physical:
            return physical
        try:
            type_from_str(physical)
            return physical.strip().lower()
        except ValueError:
            pass
    logical = str(prop.get("logicalType") or "string").lower()
    if logical == "array":
        items = prop.get("items") if isinstance(prop.get("items"), Mapping) else {}
        return f"list<{_field_type(dict(items or {}), False)}>"
    return _LOGICAL_TO_TYPE.get(logical, "string")


def _severity(value: Any) -> Severity:
    return _SEVERITY_FROM_ODCS.get(str(value).lower(), "warning") if value is not None else "warning"


def _lakegate_rule(entry: dict[str, Any], where: str, origin: str) -> Rule:
    implementation = entry.get("implementation")
    if isinstance(implementation, str):
        try:
            data = _load(implementation)
        except yaml.YAMLError as err:
            raise ConfigError(f"{origin}: {where}.implementation: not valid YAML: {err}") from err
    else:
        data = implementation
    data = _mapping(data, f"{where}.implementation", origin)
    try:
        return Rule.model_validate(data)
    except ValidationError as err:
        name = data.get("id") or entry.get("name") or "?"
        raise ConfigError(
            f"{origin}: {where}.implementation: invalid lakegate rule {name!r}:\n{validation_lines(err)}"
        ) from err


class _Importer:
    """Reads one schema object's properties and quality entries."""

    def __init__(self, origin: str, trust_physical: bool) -> None:
        self.origin = origin
        self.trust_physical = trust_physical
        self.fields: list[FieldSchema] = []
        self.keys: list[tuple[int, str]] = []
        self.pii: dict[str, str] = {}
        self.lakegate_rules: list[Rule] = []
        self.declared: list[Rule] = []

    def quality(self, entries: Any, where: str, column: str | None) -> None:
        for i, item in enumerate(_list(entries, where, self.origin)):
            entry = _mapping(item, f"{where}[{i}]", self.origin)
            kind = str(entry.get("type") or ("library" if entry.get("metric") or entry.get("rule") else ""))
            if kind == "custom" and str(entry.get("engine", "")).lower() == ENGINE:
                self.lakegate_rules.append(_lakegate_rule(entry, f"{where}[{i}]", self.origin))
            elif kind == "library" and column is not None:
                self._library(entry, column)
            else:
                log.info("%s: %s[%d]: %s quality entry not imported", self.origin, where, i, kind or "untyped")

    def _declare(self, entry: dict[str, Any], kind: Any, column: str, params: dict[str, Any]) -> None:
        name = entry.get("name")
        self.declared.append(
            Rule(
                id=str(name) if name else f"{kind}:{column}",
                kind=kind,
                columns=[column],
                params=params,
                origin="declared",
                severity=_severity(entry.get("severity")),
                description=str(entry.get("description") or ""),
            )
        )

    def _library(self, entry: dict[str, Any], column: str) -> None:
        metric = entry.get("metric") or entry.get("rule")
        arguments = entry.get("arguments")
        if not isinstance(arguments, Mapping):
            arguments = {}
        unit = str(entry.get("unit") or "rows")
        strict = entry.get("mustBe") == 0 and unit == "rows"
        if metric == "nullValues" and strict:
            self._declare(entry, "not_null", column, {})
        elif metric == "invalidValues" and strict and isinstance(arguments.get("validValues"), list):
            self._declare(entry, "allowed_values", column, {"values": list(arguments["validValues"])})
        else:  # regexes too: lakegate's pattern rules compare shapes, not regular expressions
            log.info("%s: %s library metric %r not imported", self.origin, column, metric)

    def properties(self, props: Any, where: str, prefix: str = "") -> None:
        for i, item in enumerate(_list(props, where, self.origin)):
            here = f"{where}[{i}]"
            prop = _mapping(item, here, self.origin)
            name = prop.get("name")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{self.origin}: {here}.name: a property needs a name")
            full = f"{prefix}{name}"
            if str(prop.get("logicalType", "")).lower() == "object" and prop.get("properties"):
                self.properties(prop["properties"], f"{here}.properties", f"{full}{NESTED_SEPARATOR}")
                continue
            description = prop.get("description")
            self.fields.append(
                FieldSchema(
                    name=full,
                    type=_field_type(prop, self.trust_physical),
                    nullable=not bool(prop.get("required", False)),
                    description=str(description) if description is not None else None,
                )
            )
            if prop.get("primaryKey"):
                position = prop.get("primaryKeyPosition")
                order = position if isinstance(position, int) and position > 0 else 10_000 + len(self.keys)
                self.keys.append((order, full))
            if str(prop.get("classification", "")).lower() == "pii":
                self.pii[full] = "pii"
            self._options(prop, full, here)
            self.quality(prop.get("quality"), f"{here}.quality", full)

    def _options(self, prop: dict[str, Any], column: str, where: str) -> None:
        options = prop.get("logicalTypeOptions")
        options = dict(options) if isinstance(options, Mapping) else {}
        base: dict[str, Any] = {"name": None}
        if "minimum" in options or "maximum" in options:
            low, high = options.get("minimum"), options.get("maximum")
            params: dict[str, Any] = {"low": low, "high": high}
            if str(prop.get("logicalType", "")).lower() in ("date", "timestamp"):
                params = {
                    "low": None if low is None else _epoch_us(low, f"{where}.logicalTypeOptions.minimum", self.origin),
                    "high": None
                    if high is None
                    else _epoch_us(high, f"{where}.logicalTypeOptions.maximum", self.origin),
                    "unit": "epoch_us",
                }
            self._declare(base, "range", column, params)
        if "minLength" in options or "maxLength" in options:
            self._declare(base, "length", column, {"low": options.get("minLength"), "high": options.get("maxLength")})
        if options.get("format") in _FORMAT_FROM_ODCS:
            self._declare(base, "format", column, {"format": _FORMAT_FROM_ODCS[options["format"]]})
        enum = prop.get("enum")
        if isinstance(enum, list) and enum:
            values = [e.get("value") if isinstance(e, Mapping) else e for e in enum]
            self._declare(base, "allowed_values", column, {"values": values})

    def rules(self) -> list[Rule]:
        """lakegate's own entries first (exact); standard ones only where they add something."""
        ids = {r.id for r in self.lakegate_rules}
        covered = {(r.kind, tuple(r.columns)) for r in self.lakegate_rules}
        rules = list(self.lakegate_rules)
        for rule in self.declared:
            if rule.id in ids or (rule.kind, tuple(rule.columns)) in covered:
                continue
            if rule.id in {r.id for r in rules}:
                rule = rule.model_copy(update={"id": f"{rule.id}#{len(rules)}"})
            rules.append(rule)
        return rules


def _pick_object(objects: list[Any], dataset: str | None, origin: str) -> tuple[int, dict[str, Any]] | None:
    candidates = [(i, _mapping(o, f"schema[{i}]", origin)) for i, o in enumerate(objects)]
    if dataset is not None:
        for i, obj in candidates:
            if dataset in (obj.get("physicalName"), obj.get("name")):
                return i, obj
        if len(candidates) != 1:
            names = ", ".join(str(o.get("name")) for _, o in candidates) or "none"
            raise ConfigError(f"{origin}: schema: no object named {dataset!r} (objects: {names})")
    if not candidates:
        return None
    if len(candidates) > 1:
        names = ", ".join(str(o.get("name")) for _, o in candidates)
        raise ConfigError(f"{origin}: schema: {len(candidates)} objects ({names}); name the dataset to import")
    return candidates[0]


def import_odcs(text: str, *, dataset: str | None = None, origin: str = "<odcs>") -> Contract:
    """A contract from an ODCS v3 YAML document (the inverse of :func:`export_odcs`).

    Args:
        text: the YAML.
        dataset: which schema object to import (needed when there are several); also the
            dataset name of the result.
        origin: where the text came from, for error messages.

    Raises:
        ConfigError: not YAML, not an ODCS v3 data contract, written by a newer lakegate, or a field
            is invalid (the message names ``origin`` and the field).
    """
    try:
        raw = _load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid YAML: {err}") from err
    doc = _mapping(raw, "(top level)", origin)
    if doc.get("kind") != "DataContract":
        raise ConfigError(f"{origin}: kind: expected DataContract, got {doc.get('kind')!r}")
    api = str(doc.get("apiVersion", ""))
    if not api.startswith("v3."):
        raise ConfigError(f"{origin}: apiVersion: {api or 'missing'}; only ODCS v3.x is supported")
    custom = _custom_properties(doc.get("customProperties"), "customProperties", origin)
    format_version = custom.get(_CP_FORMAT)
    ours = format_version is not None
    if ours and (not isinstance(format_version, int) or isinstance(format_version, bool)):
        raise ConfigError(f"{origin}: customProperties.{_CP_FORMAT}: must be an integer, got {format_version!r}")
    if isinstance(format_version, int) and format_version > CONTRACT_FORMAT_VERSION:
        raise ConfigError(
            f"{origin}: customProperties.{_CP_FORMAT}: {format_version} was written by a newer lakegate"
            f" (this one reads up to {CONTRACT_FORMAT_VERSION}); upgrade lakegate to import it"
        )
    wanted = dataset or (custom.get(_CP_DATASET) if isinstance(custom.get(_CP_DATASET), str) else None)
    picked = _pick_object(_list(doc.get("schema"), "schema", origin), wanted, origin)
    importer = _Importer(origin, trust_physical=ours)
    obj: dict[str, Any] = {}
    if picked is not None:
        index, obj = picked
        importer.properties(obj.get("properties"), f"schema[{index}].properties")
        importer.quality(obj.get("quality"), f"schema[{index}].quality", None)
    name = dataset or wanted or obj.get("physicalName") or obj.get("name") or doc.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{origin}: name: cannot tell the dataset's name; pass it explicitly")
    obj_custom = _custom_properties(obj.get("customProperties"), "schema.customProperties", origin)
    keys = [k for _, k in sorted(importer.keys)]
    if isinstance(obj_custom.get(_CP_KEYS), list):
        keys = [str(k) for k in obj_custom[_CP_KEYS]]
    version = 0
    match = _SEMVER.match(str(doc.get("version", "")))
    if ours and match:
        version = int(match.group(1))
    body = {
        "dataset": name,
        "version": version,
        "schema": {"fields": importer.fields, "keys": keys},
        "rules": importer.rules(),
        "profiles": custom.get(_CP_PROFILES) if isinstance(custom.get(_CP_PROFILES), Mapping) else {},
        "mappings": custom.get(_CP_MAPPINGS) if isinstance(custom.get(_CP_MAPPINGS), list) else [],
        "policies": _policies(doc, custom, importer, origin),
        "metadata": _metadata(doc, origin),
        "provenance": custom.get(_CP_PROVENANCE)
        if _CP_PROVENANCE in custom
        else Provenance(source=origin, reason=f"imported from ODCS contract {doc.get('id')} {doc.get('version')}"),
    }
    try:
        return Contract.model_validate(body)
    except ValidationError as err:
        raise ConfigError(f"{origin}: invalid contract:\n{validation_lines(err)}") from err


def _policies(doc: dict[str, Any], custom: dict[str, Any], importer: _Importer, origin: str) -> Any:
    if _CP_POLICIES in custom:
        return custom[_CP_POLICIES]
    retention: int | None = None
    for i, item in enumerate(_list(doc.get("slaProperties"), "slaProperties", origin)):
        entry = _mapping(item, f"slaProperties[{i}]", origin)
        if entry.get("property") == "retention" and isinstance(entry.get("value"), int | float):
            factor = {"y": 365, "year": 365, "m": 30, "month": 30, "d": 1, "day": 1}
            retention = int(entry["value"] * factor.get(str(entry.get("unit", "d")).lower(), 1))
    return Policies(pii=importer.pii, retention_days=retention)


def _metadata(doc: dict[str, Any], origin: str) -> Metadata:
    description = doc.get("description")
    if isinstance(description, Mapping):
        description = description.get("purpose")
    owner: str | None = None
    team = doc.get("team")
    members = team.get("members") if isinstance(team, Mapping) else team
    for member in members if isinstance(members, list) else []:
        if isinstance(member, Mapping) and str(member.get("role", "")).lower() == "owner":
            owner = str(member.get("username") or member.get("name") or "") or None
            break
    tags = doc.get("tags")
    return Metadata(
        owner=owner,
        status=_STATUS_FROM_ODCS.get(str(doc.get("status", "draft")).lower(), "draft"),
        description=str(description) if description is not None else None,
        tags=[str(t) for t in tags] if isinstance(tags, list) else [],
    )


def read_contract_file(path: str | Path, *, dataset: str | None = None) -> Contract:
    """A contract from a file: ODCS v3 YAML, or lakegate's own JSON/YAML form of a contract.

    Raises:
        ConfigError: the file cannot be read, or is not a valid contract (names the file and field).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read contract file: {err.strerror}") from err
    try:
        data = orjson.loads(text) if path.suffix == ".json" else _load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from err
    if isinstance(data, Mapping) and data.get("kind") == "DataContract":
        return import_odcs(text, dataset=dataset, origin=str(path))
    contract = parse_contract(data, str(path))
    return contract.model_copy(update={"dataset": dataset}) if dataset else contract
