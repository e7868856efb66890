"""Event time, watermark and late labels, on their own and through the stage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from lakegate.core.batch import SourceBatch
from lakegate.core.config import EventTimeSpec, TableSpec
from lakegate.core.deadletter import Reason
from lakegate.normalize import Normalizer, late_labels


def make_batch(records: list[dict[str, Any]], schema: pa.Schema | None = None, first: int = 1) -> SourceBatch:
    raw = [orjson.dumps(r) for r in records]
    return SourceBatch(
        source="clicks",
        origin="",
        records=pa.Table.from_pylist(records, schema=schema),
        positions=pa.array([str(first + i) for i in range(len(records))]),
        end_position={},
        raw=lambda idx: [raw[i] for i in idx],
    )


def at(minute: int, second: int = 0) -> str:
    return f"2024-03-01T12:{minute:02d}:{second:02d}Z"


def test_late_labels_use_the_watermark_as_it_stood_on_arrival() -> None:
    events = np.array([100, 50, 200, 139, 141, 10], dtype=np.int64)
    present = np.array([True, True, True, True, True, False])
    late, new_max = late_labels(events, present, seed_max_us=None, out_of_orderness_us=60)
    # watermark before each row: -, 40, 40, 140, 140, 140 -> 139 is late, 50 is not (40 then)
    assert late.tolist() == [False, False, False, True, False, False]
    assert new_max == 200
    seeded, new_max = late_labels(events[:2], present[:2], seed_max_us=1000, out_of_orderness_us=60)
    assert seeded.tolist() == [True, True] and new_max == 1000


def test_event_time_watermark_and_late_labels_across_two_batches() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts", max_out_of_orderness="2m"))
    normalizer = Normalizer("clicks", spec)
    first = normalizer.process(
        make_batch([{"ts": at(10)}, {"ts": at(5)}, {"ts": at(8)}, {"ts": at(7, 59)}, {"ts": at(20)}])
    )
    # watermark 12:08 after the first row: 12:08 itself is on time, one second earlier is late
    assert first.rows.column("_lg_late").to_pylist() == [False, True, False, True, False]
    assert first.late_rows == 2
    assert first.rows.column("_lg_event_time").to_pylist()[0] == datetime(2024, 3, 1, 12, 10, tzinfo=UTC)
    assert normalizer.watermark == datetime(2024, 3, 1, 12, 18, tzinfo=UTC)
    # the second batch starts from the first batch's watermark (12:18)
    second = normalizer.process(make_batch([{"ts": at(17)}, {"ts": at(19)}, {"ts": at(30)}, {"ts": at(27)}]))
    assert second.rows.column("_lg_late").to_pylist() == [True, False, False, True]
    assert second.late_rows == 2
    assert normalizer.watermark == datetime(2024, 3, 1, 12, 28, tzinfo=UTC)


def test_missing_or_unreadable_event_time_is_dead_lettered() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="meta.ts"))
    records = [
        {"id": 1, "meta": {"ts": at(1)}},
        {"id": 2, "meta": {"ts": None}},
        {"id": 3, "meta": None},
        {"id": 4, "meta": {"ts": "yesterday-ish"}},
        {"id": 5, "meta": {"ts": "2024-03-01 12:00:00"}},
    ]
    out = Normalizer("e", spec).process(make_batch(records))
    assert out.rows.column("id").to_pylist() == [1, 5]
    assert out.rows.schema.field("meta__ts").type == pa.timestamp("us", tz="UTC")
    reasons = [(d["position"], d["reason_code"], d["raw_value"]) for d in out.dead_letters.rows]
    assert reasons == [
        ("2", Reason.MISSING_EVENT_TIME, None),
        ("3", Reason.MISSING_EVENT_TIME, None),
        ("4", Reason.MISSING_EVENT_TIME, "yesterday-ish"),
    ]
    assert all(d["field"] == "meta__ts" for d in out.dead_letters.rows)


def test_missing_event_time_lands_as_null_when_configured() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts", on_missing="land"))
    out = Normalizer("e", spec).process(make_batch([{"ts": at(1)}, {"ts": None}, {"ts": "garbage"}]))
    assert out.rows.num_rows == 3 and len(out.dead_letters) == 0
    assert out.rows.column("_lg_event_time").to_pylist()[1:] == [None, None]
    assert out.rows.column("_lg_late").to_pylist() == [False, False, False]


def test_naive_event_times_use_the_configured_zone() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts", timezone="Asia/Tokyo"))
    out = Normalizer("e", spec).process(make_batch([{"ts": "2024-03-01 09:00:00"}]))
    assert out.rows.column("_lg_event_time").to_pylist() == [datetime(2024, 3, 1, 0, tzinfo=UTC)]


def test_epoch_event_times_by_magnitude() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts"))
    seconds, millis = 1_709_294_400, 1_709_294_400_250
    out = Normalizer("e", spec).process(make_batch([{"ts": seconds}, {"ts": millis}]))
    assert out.rows.column("_lg_event_time").to_pylist() == [
        datetime(2024, 3, 1, 12, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=UTC),
    ]
    assert out.rows.schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_children_carry_their_records_event_time_and_late_flag() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts", max_out_of_orderness=0))
    records = [{"ts": at(10), "items": [{"k": 1}]}, {"ts": at(9), "items": [{"k": 2}, {"k": 3}]}]
    out = Normalizer("e", spec).process(make_batch(records))
    items = out.children["e__items"]
    assert items.column("_lg_late").to_pylist() == [False, True, True]
    assert items.column("_lg_event_time").to_pylist() == [
        datetime(2024, 3, 1, 12, 10, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 9, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 9, tzinfo=UTC),
    ]


def test_rejected_rows_do_not_move_the_watermark() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts", max_out_of_orderness=0), types={"n": "int"})
    records = [{"ts": at(50), "n": "bad"}, {"ts": at(10), "n": "1"}]
    out = Normalizer("e", spec).process(make_batch(records))
    assert len(out.dead_letters) == 1
    assert out.rows.column("_lg_late").to_pylist() == [False]
    assert out.late_rows == 0
