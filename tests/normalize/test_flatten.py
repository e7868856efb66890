"""Flattening: nested columns, child tables with parent keys and positions, JSON modes."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pj
import pytest

from lakegate.core.batch import SourceBatch
from lakegate.core.config import TableSpec
from lakegate.normalize import Normalizer, flatten, to_json


def make_batch(records: list[dict[str, Any]], origin: str = "in.json") -> SourceBatch:
    raw = [orjson.dumps(r) for r in records]
    table = pj.read_json(io.BytesIO(b"\n".join(raw)))
    return SourceBatch(
        source="src",
        origin=origin,
        records=table,
        positions=pa.array([str(10 + i) for i in range(len(records))]),
        end_position={},
        raw=lambda idx: [raw[i] for i in idx],
    )


ORDERS = [
    {
        "id": 1,
        "customer": {"name": "Ada", "address": {"city": "Paris", "geo": {"lat": 48.8}}},
        "lines": [
            {"sku": "A", "qty": 1, "parts": [{"pn": "p1"}, {"pn": "p2"}]},
            {"sku": "B", "qty": 2, "parts": []},
        ],
        "tags": ["x", "y"],
    },
    {"id": 2, "customer": None, "lines": [], "tags": []},
    {
        "id": 3,
        "customer": {"name": "Bo", "address": None},
        "lines": [{"sku": "C", "qty": 3, "parts": [{"pn": "p3"}]}],
        "tags": None,
    },
    {
        "id": 4,
        "customer": {"name": "Cy", "address": {"city": "Oslo", "geo": None}},
        "lines": None,
        "tags": ["z"],
    },
]


def test_nested_objects_flatten_three_levels_deep() -> None:
    out = Normalizer("orders", TableSpec()).process(make_batch(ORDERS))
    rows = out.rows
    assert {"customer__name", "customer__address__city", "customer__address__geo__lat"} <= set(rows.column_names)
    assert "customer" not in rows.column_names
    assert rows.column("customer__address__geo__lat").to_pylist() == [48.8, None, None, None]
    assert rows.column("customer__address__city").to_pylist() == ["Paris", None, None, "Oslo"]
    assert rows.column("customer__name").to_pylist() == ["Ada", None, "Bo", "Cy"]
    # arrays of scalars stay list columns; arrays of objects leave the parent
    assert rows.schema.field("tags").type == pa.list_(pa.string())
    assert rows.column("tags").to_pylist() == [["x", "y"], [], None, ["z"]]
    assert "lines" not in rows.column_names


def test_child_tables_have_parent_keys_positions_and_counts() -> None:
    out = Normalizer("orders", TableSpec()).process(make_batch(ORDERS, origin="day1/a.json"))
    assert set(out.children) == {"orders__lines", "orders__lines__parts"}
    lines = out.children["orders__lines"]
    assert lines.num_rows == 3  # 2 + 0 + 1 + (null list) 0
    assert lines.column("_lg_parent_key").to_pylist() == [
        "src:day1/a.json#10",
        "src:day1/a.json#10",
        "src:day1/a.json#12",
    ]
    assert lines.column("_lg_position").to_pylist() == ["10/lines[0]", "10/lines[1]", "12/lines[0]"]
    assert lines.column("_lg_source").to_pylist() == ["src:day1/a.json"] * 3
    assert lines.column("sku").to_pylist() == ["A", "B", "C"]
    assert lines.column("qty").to_pylist() == [1, 2, 3]
    assert "parts" not in lines.column_names
    # the parent keys point at real parent rows
    parent_keys = {
        f"{s}#{p}"
        for s, p in zip(out.rows["_lg_source"].to_pylist(), out.rows["_lg_position"].to_pylist(), strict=True)
    }
    assert set(lines.column("_lg_parent_key").to_pylist()) <= parent_keys


def test_grandchildren_point_at_their_child_rows() -> None:
    out = Normalizer("orders", TableSpec()).process(make_batch(ORDERS))
    parts = out.children["orders__lines__parts"]
    assert parts.column("pn").to_pylist() == ["p1", "p2", "p3"]
    assert parts.column("_lg_position").to_pylist() == [
        "10/lines[0]/parts[0]",
        "10/lines[0]/parts[1]",
        "12/lines[0]/parts[0]",
    ]
    assert parts.column("_lg_parent_key").to_pylist() == [
        "src:in.json#10/lines[0]",
        "src:in.json#10/lines[0]",
        "src:in.json#12/lines[0]",
    ]
    lines = out.children["orders__lines"]
    line_keys = {
        f"{s}#{p}" for s, p in zip(lines["_lg_source"].to_pylist(), lines["_lg_position"].to_pylist(), strict=True)
    }
    assert set(parts.column("_lg_parent_key").to_pylist()) <= line_keys


def test_positions_are_the_same_on_replay() -> None:
    first = Normalizer("orders", TableSpec()).process(make_batch(ORDERS))
    again = Normalizer("orders", TableSpec()).process(make_batch(ORDERS))
    for name, table in first.children.items():
        assert table.column("_lg_position").equals(again.children[name].column("_lg_position"))


def test_flatten_reports_parent_root_and_element_indices() -> None:
    tables = flatten(make_batch(ORDERS).records, "orders")
    names = [t.name for t in tables]
    assert names == ["orders", "orders__lines", "orders__lines__parts"]
    parts = tables[2]
    assert parts.parent_index is not None and parts.root_index is not None
    assert parts.parent_index.tolist() == [0, 0, 2]
    assert parts.root_index.tolist() == [0, 0, 2]
    assert parts.element_path(1) == "lines[0].parts[1]"
    assert parts.path == "lines__parts"


def test_arrays_of_objects_as_json_text() -> None:
    spec = TableSpec(arrays_of_objects="json")
    out = Normalizer("orders", spec).process(make_batch(ORDERS))
    assert out.children == {}
    assert out.rows.schema.field("lines").type == pa.string()
    texts = out.rows.column("lines").to_pylist()
    assert texts[3] is None  # a null array stays null
    assert [orjson.loads(t) for t in texts[:3]] == [r["lines"] for r in ORDERS[:3]]


def test_arrays_of_scalars_as_json_text() -> None:
    spec = TableSpec(arrays_of_scalars="json")
    out = Normalizer("orders", spec).process(make_batch(ORDERS))
    assert out.rows.schema.field("tags").type == pa.string()
    assert out.rows.column("tags").to_pylist() == ['["x","y"]', "[]", None, '["z"]']
    assert "orders__lines" in out.children  # arrays of objects still make child tables


@pytest.mark.parametrize(
    "value",
    [
        'quote " and backslash \\ and newline \n tab \t cr \r',
        "control \x01 \x1f chars",
        "unicode é 日本 🚀",
        "",
    ],
)
def test_json_text_escapes_strings_like_a_json_encoder(value: str) -> None:
    arr = pa.array([[{"s": value, "n": 1.5, "b": True, "z": None}], [value, "x"]][:1])
    text = to_json(arr).to_pylist()[0]
    assert orjson.loads(text) == [{"s": value, "n": 1.5, "b": True, "z": None}]
    scalars = to_json(pa.array([[value, None]])).to_pylist()[0]
    assert orjson.loads(scalars) == [value, None]


def test_list_of_null_elements_is_dropped_until_known() -> None:
    normalizer = Normalizer("t", TableSpec())
    first = normalizer.process(make_batch([{"id": 1, "items": [{"a": 1}]}]))
    assert first.children["t__items"].num_rows == 1
    # JSON `[null]` reads as list<null>: the table already knows items are objects
    second = normalizer.process(make_batch([{"id": 2, "items": [None, None]}]))
    assert second.children["t__items"].num_rows == 2
    assert second.children["t__items"].column("a").to_pylist() == [None, None]
    fresh = Normalizer("t", TableSpec()).process(make_batch([{"id": 2, "items": [None]}]))
    assert fresh.children == {} and "items" not in fresh.rows.column_names


def test_maps_and_arrays_of_arrays_of_objects_become_json_text() -> None:
    maps = pa.array([[("k", 1), ('q"', None)], None, []], pa.map_(pa.string(), pa.int64()))
    nested = pa.array([[[{"a": 1}], []], None, [[{"a": None}]]])
    records = pa.table({"m": maps, "n": nested})
    batch = SourceBatch(source="s", origin="", records=records, positions=pa.array(["1", "2", "3"]), end_position={})
    out = Normalizer("t", TableSpec()).process(batch)
    assert out.rows.column("m").to_pylist() == ['{"k":1,"q\\"":null}', None, "{}"]
    assert [None if t is None else orjson.loads(t) for t in out.rows.column("n").to_pylist()] == [
        [[{"a": 1}], []],
        None,
        [[{"a": None}]],
    ]
    assert out.children == {}


def test_chunked_and_dictionary_columns_flatten_like_plain_ones() -> None:
    part = pa.table({"d": pa.array(["x", "y"]).dictionary_encode(), "s": pa.array([{"q": [1]}, None])})
    records = pa.concat_tables([part, part])
    assert records.column("d").num_chunks == 2
    batch = SourceBatch(
        source="s", origin="", records=records, positions=pa.array(["1", "2", "3", "4"]), end_position={}
    )
    out = Normalizer("t", TableSpec()).process(batch)
    assert out.rows.schema.field("d").type == pa.string()
    assert out.rows.column("d").to_pylist() == ["x", "y", "x", "y"]
    assert out.rows.column("s__q").to_pylist() == [[1], None, [1], None]
