"""Property tests: whatever the mix of good and bad values, every record read is accounted for."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lakegate.core.batch import SourceBatch
from lakegate.core.config import EventTimeSpec, TableSpec
from lakegate.normalize import Normalizer, to_json

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("qty", pa.string()),
        ("ts", pa.string()),
        ("items", pa.list_(pa.struct([("k", pa.string())]))),
    ]
)
SPEC = TableSpec(
    event_time=EventTimeSpec(field="ts", max_out_of_orderness=30),
    types={"qty": "int", "items__k": "long"},
)

good_int = st.integers(-(2**40), 2**40).map(str) | st.integers(-100, 100).map(lambda i: f"{i}.0")
bad_int = st.sampled_from(["abc", "1.5", "1e400", "--1", "12,0", "99999999999999999999999"])
missing = st.sampled_from([None, "", "   "])
good_ts = st.integers(0, 10_000).map(lambda s: f"2024-06-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z")
bad_ts = st.sampled_from([None, "", "soon", "2024-13-01T00:00:00Z"])


@st.composite
def record(draw: st.DrawFn) -> tuple[dict[str, Any], bool, int]:
    """A record, whether it must land, and how many child rows it has."""
    qty_kind = draw(st.sampled_from(["good", "bad", "missing"]))
    qty = draw({"good": good_int, "bad": bad_int, "missing": missing}[qty_kind])
    ts_good = draw(st.booleans())
    ts = draw(good_ts if ts_good else bad_ts)
    items = draw(st.none() | st.lists(st.tuples(st.booleans(), good_int, bad_int), max_size=3))
    elements = None if items is None else [{"k": good if ok else bad} for ok, good, bad in items]
    lands = qty_kind != "bad" and ts_good and all(ok for ok, _, _ in items or [])
    return {"qty": qty, "ts": ts, "items": elements}, lands, len(items or [])


def make_batch(records: list[dict[str, Any]], first: int) -> SourceBatch:
    rows = [{"id": first + i, **r} for i, r in enumerate(records)]
    raw = [orjson.dumps(r) for r in rows]
    return SourceBatch(
        source="p",
        origin="x",
        records=pa.Table.from_pylist(rows, schema=SCHEMA),
        positions=pa.array([str(first + i) for i in range(len(rows))]),
        end_position={},
        raw=lambda idx: [raw[i] for i in idx],
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(record(), max_size=30), min_size=1, max_size=3))
def test_every_record_read_lands_or_is_dead_lettered_once(batches: list[list[Any]]) -> None:
    normalizer = Normalizer("p", SPEC)
    first = 0
    for drawn in batches:
        records = [r for r, _, _ in drawn]
        batch = make_batch(records, first)
        out = normalizer.process(batch)

        assert batch.records_read == out.rows.num_rows + len(out.dead_letters)
        expected_ids = [first + i for i, (_, lands, _) in enumerate(drawn) if lands]
        assert out.rows.column("_lg_position").to_pylist() == [str(i) for i in expected_ids]
        rejected = {str(first + i) for i, (_, lands, _) in enumerate(drawn) if not lands}
        assert [d["position"] for d in out.dead_letters.rows] == sorted(rejected, key=int)
        children = sum(n for _, lands, n in drawn if lands)
        items = out.children.get("p__items")
        assert (0 if items is None else items.num_rows) == children
        if items is not None:
            parents = {f"p:x#{i}" for i in expected_ids}
            assert set(items.column("_lg_parent_key").to_pylist()) <= parents
        assert out.rows.schema == normalizer.schemas["p"]
        first += len(records)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.none() | st.text(), max_size=6))
def test_json_text_round_trips_any_string(values: list[str | None]) -> None:
    arr = pa.array([values, None], pa.list_(pa.string()))
    text, null = to_json(arr).to_pylist()
    assert null is None
    assert text is not None and orjson.loads(text) == values
