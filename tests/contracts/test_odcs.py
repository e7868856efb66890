"""ODCS v3 export and import: exact round trips, standard metrics for other tools, foreign files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lakegate.contracts.model import FAMILY_OF_KIND, Contract, DatasetSchema, FieldSchema, Rule
from lakegate.contracts.odcs import ODCS_API_VERSION, export_odcs, import_odcs, read_contract_file
from lakegate.contracts.registry import ContractRegistry, contract_document
from lakegate.core.errors import ConfigError
from tests.contracts.test_registry import full_contract


def _doc(contract: Contract) -> dict[str, Any]:
    loaded = yaml.safe_load(export_odcs(contract))
    assert isinstance(loaded, dict)
    return loaded


def _props(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc["schema"][0]["properties"]}


def test_round_trip_is_exact_for_every_rule_kind() -> None:
    contract = full_contract().model_copy(update={"version": 4})
    assert {r.kind for r in contract.rules} == set(FAMILY_OF_KIND)  # every kind is covered
    back = import_odcs(export_odcs(contract))
    assert back.schema_ == contract.schema_
    assert back.rules == contract.rules
    assert back.policies == contract.policies
    assert back.metadata == contract.metadata
    assert back.provenance == contract.provenance
    assert back == contract
    assert back.fingerprint() == contract.fingerprint()


def test_export_follows_odcs_v3() -> None:
    doc = _doc(full_contract().model_copy(update={"version": 4}))
    assert doc["apiVersion"] == ODCS_API_VERSION and doc["apiVersion"].startswith("v3.0.")
    assert doc["kind"] == "DataContract"
    assert (doc["id"], doc["name"], doc["version"], doc["status"]) == (
        "urn:lakegate:contract:orders",
        "orders",
        "4.0.0",
        "active",
    )
    assert doc["description"] == {"purpose": "Orders of the shop"}
    assert doc["tags"] == ["sales", "eu"]
    assert doc["team"] == [{"username": "data-team", "role": "owner"}]
    assert doc["slaProperties"] == [{"property": "retention", "value": 30, "unit": "d"}]
    obj = doc["schema"][0]
    assert (obj["name"], obj["physicalName"], obj["physicalType"], obj["logicalType"]) == (
        "orders",
        "orders",
        "table",
        "object",
    )
    props = _props(doc)
    logical = {name: p["logicalType"] for name, p in props.items()}
    assert logical == {
        "order_id": "integer",
        "amount": "number",
        "status": "string",
        "city": "string",
        "sku": "string",
        "email": "string",
        "zip": "string",
        "order_date": "timestamp",
        "ship_date": "date",
        "total": "number",
        "qty": "integer",
        "unit_price": "number",
        "paid": "boolean",
        "tags": "array",
        "customer__address__city": "string",
    }
    assert props["amount"]["physicalType"] == "decimal(12,2)"
    assert props["tags"]["items"] == {"logicalType": "string", "physicalType": "string"}
    assert props["order_id"]["required"] is True and props["amount"]["required"] is False
    assert props["order_id"]["primaryKey"] is True and props["order_id"]["primaryKeyPosition"] == 1
    assert props["email"]["classification"] == "pii"

    # Every rule is a custom lakegate entry whose implementation is the rule itself.
    custom = obj["quality"]
    assert len(custom) == 17
    assert all(q["type"] == "custom" and q["engine"] == "lakegate" for q in custom)
    first = yaml.safe_load(custom[1]["implementation"])
    assert first == full_contract().rules[1].model_dump(mode="json")
    assert custom[1]["dimension"] == "conformity" and custom[1]["name"] == "amount.range"

    # Simple bounds are also standard ODCS, for other tools.
    assert props["order_id"]["quality"] == [
        {
            "name": "order_id.not_null",
            "type": "library",
            "metric": "nullValues",
            "mustBe": 0,
            "unit": "rows",
            "dimension": "completeness",
            "severity": "warning",
            "description": "There must be no null values (lakegate rule).",
        }
    ]
    status = props["status"]["quality"][0]
    assert status["metric"] == "invalidValues" and status["mustBe"] == 0
    assert status["arguments"] == {"validValues": ["new", "paid", "shipped", "yes", "null", "2024-01-01"]}
    assert props["amount"]["logicalTypeOptions"] == {"minimum": 0.5, "maximum": 1200.0}
    assert props["order_date"]["logicalTypeOptions"] == {"minimum": "2025-01-01T00:00:00Z"}
    assert props["city"]["logicalTypeOptions"] == {"minLength": 2, "maxLength": 40}
    assert props["email"]["logicalTypeOptions"] == {"format": "email"}
    custom_props = {c["property"]: c["value"] for c in doc["customProperties"]}
    assert custom_props["lakegateFormatVersion"] == 1 and custom_props["lakegateDataset"] == "orders"


def test_lakegate_entries_win_over_edited_standard_ones() -> None:
    contract = full_contract()
    doc = _doc(contract)
    props = _props(doc)
    props["status"]["quality"][0]["arguments"]["validValues"] = ["only-this"]
    props["amount"]["logicalTypeOptions"]["maximum"] = 5
    props["order_id"]["quality"][0]["name"] = "renamed-by-someone"
    back = import_odcs(yaml.safe_dump(doc))
    assert back.rules == contract.rules


def test_dataset_name_with_namespace_and_keys_outside_the_fields() -> None:
    contract = Contract(
        dataset="sales.orders",
        schema=DatasetSchema(fields=[FieldSchema(name="id", type="long")], keys=["id", "_lg_source"]),
    )
    doc = _doc(contract)
    assert doc["domain"] == "sales" and doc["schema"][0]["name"] == "orders"
    assert import_odcs(export_odcs(contract)) == contract


FOREIGN = """
version: 1.1.0
apiVersion: v3.0.2
kind: DataContract
id: 53581432-6c55-4ba2-a65f-72344a91553a
name: seller_payments_v1
status: proposed
domain: seller
description:
  purpose: Payments of sellers.
tags: ['finance']
team:
  - username: ceastwood
    role: Data Scientist
  - username: mhopper
    role: owner
slaProperties:
  - property: retention
    value: 3
    unit: y
schema:
  - name: tbl
    physicalName: payments
    physicalType: table
    properties:
      - name: txn_ref_dt
        logicalType: date
        physicalType: date
        required: true
        logicalTypeOptions:
          minimum: "2020-01-01"
          maximum: "2030-12-31"
      - name: rcvr_id
        primaryKey: true
        primaryKeyPosition: 1
        logicalType: string
        physicalType: varchar(18)
        classification: pii
        quality:
          - metric: nullValues
            mustBe: 0
            description: There must be no null values in the column.
          - metric: nullValues
            mustBeLessThan: 1
            unit: percent
      - name: rcvr_cntry_code
        logicalType: string
        physicalType: varchar(2)
        logicalTypeOptions:
          minLength: 2
          maxLength: 2
        quality:
          - type: library
            name: country_codes
            metric: invalidValues
            arguments:
              validValues: ['FR', 'DE', 'NL']
            mustBe: 0
            severity: error
      - name: iban
        logicalType: string
        quality:
          - metric: invalidValues
            mustBe: 0
            arguments:
              pattern: '^[A-Z]{2}[0-9]{2}[A-Z0-9]{4}[0-9]{7}([A-Z0-9]?){0,16}$'
      - name: contact
        logicalType: string
        logicalTypeOptions:
          format: email
      - name: amount
        logicalType: number
        physicalType: DOUBLE
        logicalTypeOptions:
          minimum: 0
      - name: priority
        logicalType: integer
        enum:
          - value: 1
            label: One
          - value: 2
      - name: address
        logicalType: object
        properties:
          - name: street_lines
            logicalType: array
            items:
              logicalType: string
          - name: zip
            logicalType: string
    quality:
      - type: sql
        query: SELECT COUNT(*) FROM {object}
        mustBeGreaterThan: 100
      - type: custom
        engine: soda
        implementation: |
          type: duplicate_percent
      - type: text
        description: verified
"""


def test_a_foreign_contract_imports_as_declared_rules() -> None:
    contract = import_odcs(FOREIGN, origin="payments.odcs.yaml")
    assert contract.dataset == "payments" and contract.version == 0
    fields = {f.name: (f.type, f.nullable) for f in contract.schema_.fields}
    assert fields == {
        "txn_ref_dt": ("date", False),
        "rcvr_id": ("string", True),
        "rcvr_cntry_code": ("string", True),
        "iban": ("string", True),
        "contact": ("string", True),
        "amount": ("double", True),
        "priority": ("long", True),
        "address__street_lines": ("list<string>", True),
        "address__zip": ("string", True),
    }
    assert contract.schema_.keys == ["rcvr_id"]
    rules = {(r.kind, tuple(r.columns)): r for r in contract.rules}
    assert all(r.origin == "declared" for r in contract.rules)
    assert rules[("range", ("txn_ref_dt",))].params == {
        "low": 1_577_836_800_000_000,  # 2020-01-01 as epoch microseconds, like learned temporal ranges
        "high": 1_924_905_600_000_000,
        "unit": "epoch_us",
    }
    assert rules[("range", ("txn_ref_dt",))].id == "range:txn_ref_dt"
    assert rules[("not_null", ("rcvr_id",))].description == "There must be no null values in the column."
    assert rules[("length", ("rcvr_cntry_code",))].params == {"low": 2, "high": 2}
    country = rules[("allowed_values", ("rcvr_cntry_code",))]
    assert (country.id, country.params, country.severity) == (
        "country_codes",
        {"values": ["FR", "DE", "NL"]},
        "critical",
    )
    assert rules[("format", ("contact",))].params == {"format": "email"}
    assert rules[("range", ("amount",))].params == {"low": 0, "high": None}
    assert rules[("allowed_values", ("priority",))].params == {"values": [1, 2]}
    # Not rules: the percent null metric, the regex (lakegate patterns are shapes), sql, soda, text.
    assert len(contract.rules) == 7
    assert len({r.id for r in contract.rules}) == 7
    assert contract.metadata.owner == "mhopper"
    assert contract.metadata.status == "draft"
    assert contract.metadata.description == "Payments of sellers."
    assert contract.metadata.tags == ["finance"]
    assert contract.policies.pii == {"rcvr_id": "pii"}
    assert contract.policies.retention_days == 3 * 365
    assert contract.provenance.source == "payments.odcs.yaml"
    assert "53581432" in (contract.provenance.reason or "")

    # Once in lakegate's hands, it round-trips exactly.
    assert import_odcs(export_odcs(contract)) == contract


def _edit(text: str, change: Any) -> str:
    doc = yaml.safe_load(text)
    change(doc)
    return yaml.safe_dump(doc, sort_keys=False)


def test_incompatible_documents_name_the_file_and_field() -> None:
    text = export_odcs(full_contract())
    cases: list[tuple[Any, str]] = [
        (lambda d: d.update(kind="DataProduct"), "contract.yaml: kind: expected DataContract"),
        (lambda d: d.update(apiVersion="v2.2.2"), "contract.yaml: apiVersion: v2.2.2; only ODCS v3.x"),
        (
            lambda d: d["customProperties"][0].update(value=2),
            "contract.yaml: customProperties.lakegateFormatVersion: 2 was written by a newer lakegate",
        ),
        (
            lambda d: d["schema"][0]["quality"][1].update(
                implementation="id: amount.range\nkind: range\ncolumns: [amount]\ncolour: red\n"
            ),
            "contract.yaml: schema[0].quality[1].implementation: invalid lakegate rule 'amount.range':\n"
            "  colour: unknown field",
        ),
        (
            lambda d: d["schema"][0]["quality"][0].update(implementation="id: x\nkind: not_null\ncolumns: id\n"),
            "schema[0].quality[0].implementation: invalid lakegate rule 'x':\n  columns: Input should be a valid list",
        ),
        (
            lambda d: d["schema"][0]["quality"][0].update(implementation="id: [unclosed"),
            "schema[0].quality[0].implementation: not valid YAML",
        ),
        (
            lambda d: d["schema"][0]["properties"][0].pop("name"),
            "schema[0].properties[0].name: a property needs a name",
        ),
        (lambda d: d["schema"][0].update(properties={"a": 1}), "schema[0].properties: expected a list, got dict"),
        (
            lambda d: d["customProperties"][2]["value"].update(retention_days="forever"),
            "contract.yaml: invalid contract:\n  policies.retention_days: Input should be a valid integer",
        ),
        (
            lambda d: (d["schema"].append({"name": "other"}), d["customProperties"][1].update(value="refunds")),
            "contract.yaml: schema: no object named 'refunds' (objects: orders, other)",
        ),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError) as info:
            import_odcs(_edit(text, change), origin="contract.yaml")
        assert message in str(info.value), (message, str(info.value))
    with pytest.raises(ConfigError, match="contract.yaml: not valid YAML"):
        import_odcs("a: [", origin="contract.yaml")
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping"):
        import_odcs("- 1", origin="contract.yaml")


def test_several_objects_need_a_dataset_name() -> None:
    two = _edit(FOREIGN, lambda d: d["schema"].append({"name": "refunds", "properties": [{"name": "id"}]}))
    with pytest.raises(ConfigError, match=r"schema: 2 objects \(tbl, refunds\); name the dataset"):
        import_odcs(two)
    refunds = import_odcs(two, dataset="refunds")
    assert refunds.dataset == "refunds" and [f.name for f in refunds.schema_.fields] == ["id"]
    assert import_odcs(two, dataset="payments").schema_.keys == ["rcvr_id"]


def test_contract_files_in_either_form(tmp_path: Path) -> None:
    contract = full_contract()
    odcs = tmp_path / "orders.odcs.yaml"
    odcs.write_text(export_odcs(contract))
    assert read_contract_file(odcs) == contract
    native = tmp_path / "orders.json"
    native.write_bytes(orjson.dumps(contract_document(contract)))
    assert read_contract_file(native) == contract
    assert read_contract_file(native, dataset="orders_copy").dataset == "orders_copy"

    native.write_bytes(orjson.dumps({**contract_document(contract), "format_version": 9}))
    with pytest.raises(ConfigError, match=rf"{native}: format_version: 9 was written by a newer lakegate"):
        read_contract_file(native)
    document = contract_document(contract)
    document["schema"]["fields"][1]["nullable"] = "sometimes"
    native.write_bytes(orjson.dumps(document))
    with pytest.raises(ConfigError, match=r"schema.fields.1.nullable: Input should be a valid boolean"):
        read_contract_file(native)
    native.write_text("{")
    with pytest.raises(ConfigError, match=f"{native}: not valid JSON"):
        read_contract_file(native)
    with pytest.raises(ConfigError, match="cannot read contract file"):
        read_contract_file(tmp_path / "missing.yaml")


def test_an_exported_version_registers_as_the_same_version(tmp_path: Path) -> None:
    registry = ContractRegistry(f"sqlite:///{tmp_path / 'contracts.db'}")
    stored = registry.register(full_contract())
    assert registry.register(import_odcs(export_odcs(stored))) == stored
    registry.close()


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["yes", "no", "null", "~", "2024-01-01", "1e3", "0x1F", "#", "a: b", "- x", "\n", " ", "'", '"']),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(
    params=st.dictionaries(st.text(max_size=10), _json, max_size=5),
    rule_id=st.text(min_size=1, max_size=12),
    columns=st.lists(st.text(min_size=1, max_size=8), max_size=3),
    description=st.text(max_size=30),
    kind=st.sampled_from(sorted(FAMILY_OF_KIND)),
)
def test_any_rule_survives_the_round_trip(
    params: dict[str, Any], rule_id: str, columns: list[str], description: str, kind: str
) -> None:
    rule = Rule.model_validate(
        {"id": rule_id, "kind": kind, "columns": columns, "params": params, "description": description}
    )
    contract = Contract(
        dataset="d",
        schema=DatasetSchema(fields=[FieldSchema(name=c, type="string") for c in dict.fromkeys(columns)]),
        rules=[rule],
    )
    assert import_odcs(export_odcs(contract)) == contract


def test_a_learned_contract_round_trips() -> None:
    """Real learned rules (the column family) survive export and import exactly."""
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa

    from lakegate.contracts.columns import COLUMN_FAMILY
    from lakegate.contracts.learn import ContractLearner

    n = 4000
    start = datetime(2025, 1, 1, tzinfo=UTC)
    times = pa.array([start + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC"))
    rows = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": [f"user{i}@example.com" for i in range(n)],
            "status": [("new", "paid", "shipped")[i % 3] for i in range(n)],
            "amount": [(i * 7919) % 1000 / 10 for i in range(n)],
            "created": times,
            "day": pa.array([(start + timedelta(days=i % 30)).date() for i in range(n)], pa.date32()),
            "sku": [f"AB-{1000 + (i * 31) % 9000}" for i in range(n)],
            "_lg_event_time": times,
        }
    )
    learner = ContractLearner("orders", families=[COLUMN_FAMILY])
    learner.observe(rows)
    contract = learner.build()
    assert {"not_null", "range", "allowed_values", "length", "pattern", "format"} <= {r.kind for r in contract.rules}
    assert import_odcs(export_odcs(contract)) == contract
    props = _props(_doc(contract))
    assert props["email"]["logicalTypeOptions"]["format"] == "email"
    assert props["day"]["logicalTypeOptions"]["minimum"] <= "2025-01-01"
    assert str(props["created"]["logicalTypeOptions"]["minimum"]).endswith("Z")
