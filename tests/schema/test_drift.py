"""Schema drift: every kind of change, its classification, and the JSON the audit stores."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from lakegate.contracts.model import Contract, DatasetSchema, FieldSchema
from lakegate.schema.drift import canonical_type, classify_type_change, detect_drift, flatten_schema


def contract(*fields: tuple[str, str, bool]) -> Contract:
    return Contract(
        dataset="orders",
        version=3,
        schema=DatasetSchema(fields=[FieldSchema(name=n, type=t, nullable=nullable) for n, t, nullable in fields]),
    )


BASE = contract(
    ("order_id", "long", False),
    ("amount", "double", True),
    ("qty", "int", True),
    ("price", "decimal(10,2)", True),
    ("status", "string", True),
)


def test_same_schema_has_no_drift() -> None:
    schema = pa.schema(
        [
            ("order_id", pa.int64()),
            ("amount", pa.float64()),
            ("qty", pa.int32()),
            ("price", pa.decimal128(10, 2)),
            ("status", pa.string()),
            ("_lg_event_time", pa.timestamp("us", tz="UTC")),
        ]
    )
    drift = detect_drift(schema, BASE)
    assert drift.changes == []
    assert drift.compatibility == "compatible"
    assert not drift.drifted


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("int", "long", "compatible"),
        ("float", "double", "compatible"),
        ("decimal(10,2)", "decimal(12,2)", "compatible"),
        ("long", "int", "breaking"),
        ("double", "float", "breaking"),
        ("decimal(12,2)", "decimal(10,2)", "breaking"),
        ("decimal(10,2)", "decimal(12,3)", "breaking"),
        ("long", "string", "breaking"),
        ("string", "double", "breaking"),
        ("long", "double", "breaking"),
        ("date", "timestamp", "breaking"),
        ("long", "null", "compatible"),
    ],
)
def test_type_changes_follow_iceberg_promotions(old: str, new: str, expected: str) -> None:
    assert classify_type_change(old, new)[0] == expected


def test_added_removed_and_type_changes_are_classified() -> None:
    schema = pa.schema(
        [
            ("order_id", pa.int64()),
            ("amount", pa.float64()),
            ("qty", pa.int64()),  # widened: compatible
            ("price", pa.string()),  # number -> string: breaking
            ("coupon", pa.string()),  # new optional field: compatible
        ]
    )
    drift = detect_drift(schema, BASE)
    kinds = {(c.kind, c.field): c.compatibility for c in drift.changes}
    assert kinds == {
        ("type_changed", "qty"): "compatible",
        ("type_changed", "price"): "breaking",
        ("added", "coupon"): "compatible",
        ("removed", "status"): "compatible",
    }
    assert drift.compatibility == "breaking"
    assert drift.added == ["coupon"]
    assert drift.removed == ["status"]


def test_missing_required_field_is_breaking() -> None:
    schema = pa.schema([("amount", pa.float64()), ("qty", pa.int32()), ("price", pa.decimal128(10, 2))])
    drift = detect_drift(schema.append(pa.field("status", pa.string())), BASE)
    (change,) = drift.changes
    assert (change.kind, change.field, change.compatibility) == ("removed", "order_id", "breaking")


def test_nesting_change_pairs_a_flattened_path_with_its_leaf() -> None:
    nested = contract(("order_id", "long", False), ("customer__city", "string", True), ("zip", "string", True))
    schema = pa.schema(
        [
            ("order_id", pa.int64()),
            ("city", pa.string()),  # was customer__city
            ("customer", pa.struct([("zip", pa.string())])),  # zip moved into a struct
        ]
    )
    assert flatten_schema(schema) == {"order_id": "long", "city": "string", "customer__zip": "string"}
    drift = detect_drift(schema, nested)
    pairs = {(c.field, c.contract_field) for c in drift.of_kind("nesting_changed")}
    assert pairs == {("city", "customer__city"), ("customer__zip", "zip")}
    assert drift.added == [] and drift.removed == []
    assert drift.compatibility == "breaking"


def test_rename_candidates_pair_alike_names_once() -> None:
    base = contract(("customer_id", "long", True), ("amount", "double", True), ("note", "string", True))
    schema = pa.schema([("cust_id", pa.int64()), ("amt", pa.float64()), ("weather", pa.string())])
    drift = detect_drift(schema, base)
    renames = {(c.field, c.contract_field) for c in drift.of_kind("rename_candidate")}
    assert renames == {("cust_id", "customer_id"), ("amt", "amount")}
    # candidates are hints: the added/removed changes stay listed
    assert sorted(drift.added) == ["amt", "cust_id", "weather"]


def test_drift_is_json_for_the_audit() -> None:
    schema = pa.schema([("order_id", pa.int32()), ("amount", pa.float64())])
    drift = detect_drift(schema, BASE)
    body = orjson.loads(drift.to_json())
    assert body["dataset"] == "orders" and body["contract_version"] == 3
    assert body["compatibility"] == "breaking"  # long -> int narrows
    assert {c["kind"] for c in body["changes"]} == {"type_changed", "removed"}


def test_canonical_type_names() -> None:
    assert canonical_type(pa.int16()) == "int"
    assert canonical_type(pa.uint32()) == "long"
    assert canonical_type(pa.large_string()) == "string"
    assert canonical_type(pa.timestamp("ms")) == "timestamp"
    assert canonical_type(pa.dictionary(pa.int32(), pa.string())) == "string"
    assert canonical_type(pa.list_(pa.int64())) == "list<long>"
