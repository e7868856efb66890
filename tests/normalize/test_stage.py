"""The Normalizer stage: dead letters per record, schema evolution, state round trip."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest

from lakegate.core.batch import SourceBatch
from lakegate.core.config import EventTimeSpec, TableSpec
from lakegate.core.deadletter import DeadLetters, Reason
from lakegate.core.errors import ConfigError, TerminalError
from lakegate.normalize import NormalizedBatch, Normalizer


def make_batch(
    records: list[dict[str, Any]],
    schema: pa.Schema | None = None,
    first: int = 1,
    dead_letters: DeadLetters | None = None,
) -> SourceBatch:
    raw = [orjson.dumps(r) for r in records]
    return SourceBatch(
        source="shop",
        origin="orders.csv",
        records=pa.Table.from_pylist(records, schema=schema),
        positions=pa.array([str(first + i) for i in range(len(records))]),
        end_position={},
        dead_letters=dead_letters or DeadLetters(),
        raw=lambda idx: [raw[i] for i in idx],
    )


def check_counts(out: NormalizedBatch, batch: SourceBatch) -> None:
    assert batch.records_read == out.rows.num_rows + len(out.dead_letters)


def test_csv_strings_are_typed_by_the_first_batch() -> None:
    records = [
        {"id": "1", "price": "9.5", "paid": "true", "day": "2024-01-02", "at": "2024-01-02T03:04:05+01:00"},
        {"id": "2", "price": "10", "paid": "false", "day": "2024-01-03", "at": "2024-01-02T05:00:00Z"},
    ]
    normalizer = Normalizer("orders", TableSpec())
    out = normalizer.process(make_batch(records))
    schema = normalizer.schemas["orders"]
    assert [(f.name, f.type) for f in schema][4:] == [
        ("id", pa.int32()),
        ("price", pa.float64()),
        ("paid", pa.bool_()),
        ("day", pa.date32()),
        ("at", pa.timestamp("us", tz="UTC")),
    ]
    assert out.rows.schema == schema
    assert out.rows.column("at").to_pylist()[0] == datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert [f.name for f in schema][:4] == ["_lg_source", "_lg_position", "_lg_event_time", "_lg_late"]
    assert out.rows.column("_lg_source").to_pylist() == ["shop:orders.csv"] * 2


def test_misfits_dead_letter_exactly_the_bad_records() -> None:
    normalizer = Normalizer("orders", TableSpec())
    normalizer.process(make_batch([{"qty": "1", "ok": "true", "name": "a"}]))
    records = [
        {"qty": "2", "ok": "false", "name": "b"},
        {"qty": "abc", "ok": "true", "name": "c"},
        {"qty": "12.0", "ok": "TRUE", "name": "d"},
        {"qty": "12.5", "ok": "true", "name": "e"},
        {"qty": "3", "ok": "yes-ish", "name": "f"},
        {"qty": None, "ok": None, "name": None},
    ]
    batch = make_batch(records, first=100)
    out = normalizer.process(batch)
    check_counts(out, batch)
    assert out.rows.column("name").to_pylist() == ["b", "d", None]
    assert out.rows.column("qty").to_pylist() == [2, 12, None]
    letters = out.dead_letters.rows
    assert [(d["position"], d["field"], d["raw_value"]) for d in letters] == [
        ("101", "qty", "abc"),
        ("103", "qty", "12.5"),
        ("104", "ok", "yes-ish"),
    ]
    assert {d["reason_code"] for d in letters} == {Reason.TYPE_MISMATCH}
    assert letters[0]["raw_payload"] == orjson.dumps(records[1])
    assert letters[0]["target_table"] == "orders" and letters[0]["stage"] == "normalize"
    assert letters[0]["source"] == "shop:orders.csv"
    assert orjson.loads(letters[0]["detail"])["expected"] == "int"


def test_outliers_in_the_first_sample_are_dead_lettered_not_typed_as_text() -> None:
    amounts = [f"{i}.5" for i in range(60)]
    amounts[7], amounts[42] = "twelve", "n/a"
    batch = make_batch([{"amount": a} for a in amounts])
    normalizer = Normalizer("orders", TableSpec())
    out = normalizer.process(batch)
    check_counts(out, batch)
    assert normalizer.schemas["orders"].field("amount").type == pa.float64()
    assert [(d["position"], d["raw_value"]) for d in out.dead_letters.rows] == [
        ("8", "twelve"),
        ("43", "n/a"),
    ]
    later = normalizer.process(make_batch([{"amount": "1"}, {"amount": "12,50 EUR"}]))
    assert [d["raw_value"] for d in later.dead_letters.rows] == ["12,50 EUR"]


def test_a_record_is_dead_lettered_once_with_its_first_reason() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts"), types={"a": "int", "b": "int"})
    records = [
        {"a": "x", "b": "y", "ts": None},
        {"a": "1", "b": "y", "ts": None},
        {"a": "1", "b": "2", "ts": None},
    ]
    out = Normalizer("t", spec).process(make_batch(records))
    assert [(d["field"], d["reason_code"]) for d in out.dead_letters.rows] == [
        ("a", Reason.TYPE_MISMATCH),
        ("b", Reason.TYPE_MISMATCH),
        ("ts", Reason.MISSING_EVENT_TIME),
    ]
    assert out.rows.num_rows == 0


def test_promotions_evolve_the_established_schema() -> None:
    spec = TableSpec(types={"f": "float", "d": "decimal(5,2)"})
    normalizer = Normalizer("m", spec)
    normalizer.process(make_batch([{"i": 1, "f": 0.5, "d": "1.25"}]))
    before = normalizer.schemas["m"]
    assert (before.field("i").type, before.field("f").type, before.field("d").type) == (
        pa.int32(),
        pa.float32(),
        pa.decimal128(5, 2),
    )
    out = normalizer.process(make_batch([{"i": 5_000_000_000, "f": 0.1, "d": "123456.78"}]))
    after = normalizer.schemas["m"]
    assert after.field("i").type == pa.int64()
    assert after.field("f").type == pa.float64()
    assert after.field("d").type == pa.decimal128(8, 2)
    assert out.rows.schema == after
    assert out.rows.to_pylist()[0] | {"_lg_source": None} == {
        "_lg_source": None,
        "_lg_position": "1",
        "_lg_event_time": None,
        "_lg_late": False,
        "i": 5_000_000_000,
        "f": 0.1,
        "d": Decimal("123456.78"),
    }
    assert len(out.dead_letters) == 0
    # a scale change is not a promotion
    bad = normalizer.process(make_batch([{"i": 1, "f": 1.0, "d": "1.234"}]))
    assert [d["field"] for d in bad.dead_letters.rows] == ["d"]


def test_a_rejected_child_element_dead_letters_its_record_and_all_children() -> None:
    spec = TableSpec(types={"lines__qty": "int"})
    records = [
        {"id": "1", "lines": [{"qty": "1", "parts": [{"p": "a"}]}, {"qty": "2", "parts": []}]},
        {
            "id": "2",
            "lines": [{"qty": "3", "parts": [{"p": "b"}, {"p": "c"}]}, {"qty": "x", "parts": [{"p": "d"}]}],
        },
        {"id": "3", "lines": [{"qty": "4", "parts": [{"p": "e"}]}]},
    ]
    batch = make_batch(records)
    out = Normalizer("o", spec).process(batch)
    check_counts(out, batch)
    assert out.rows.column("id").to_pylist() == [1, 3]
    lines = out.children["o__lines"]
    parts = out.children["o__lines__parts"]
    assert lines.column("qty").to_pylist() == [1, 2, 4]
    assert lines.num_rows == 2 + 1  # the landed parents' array lengths
    assert parts.column("p").to_pylist() == ["a", "e"]
    assert set(lines.column("_lg_parent_key").to_pylist()) == {"shop:orders.csv#1", "shop:orders.csv#3"}
    [letter] = out.dead_letters.rows
    assert letter["position"] == "2"
    assert letter["field"] == "lines[1].qty"
    assert letter["raw_value"] == "x"
    assert letter["raw_payload"] == orjson.dumps(records[1])


def test_a_rejected_grandchild_dead_letters_the_top_level_record() -> None:
    spec = TableSpec(types={"lines__parts__n": "long"})
    records = [
        {"id": 1, "lines": [{"parts": [{"n": "1"}]}]},
        {"id": 2, "lines": [{"parts": [{"n": "2"}]}, {"parts": [{"n": "3"}, {"n": "oops"}]}]},
    ]
    out = Normalizer("o", spec).process(make_batch(records))
    assert out.rows.column("id").to_pylist() == [1]
    assert out.children["o__lines"].num_rows == 1
    assert out.children["o__lines__parts"].column("n").to_pylist() == [1]
    assert [d["field"] for d in out.dead_letters.rows] == ["lines[1].parts[1].n"]


def test_field_too_large_is_dead_lettered_with_size_and_hash() -> None:
    spec = TableSpec(max_field_bytes=16)
    big = "x" * 40
    records = [{"note": "short", "tags": None}, {"note": big}, {"note": "tiny", "tags": ["ok", "y" * 17]}]
    batch = make_batch(records)
    out = Normalizer("n", spec).process(batch)
    check_counts(out, batch)
    assert out.rows.column("note").to_pylist() == ["short"]
    first, second = out.dead_letters.rows
    assert first["reason_code"] == Reason.FIELD_TOO_LARGE and first["field"] == "note"
    detail = orjson.loads(first["detail"])
    assert detail["size"] == 40
    assert detail["sha256"] == hashlib.sha256(big.encode()).hexdigest()
    assert second["field"] == "tags" and orjson.loads(second["detail"])["size"] == 17


def test_huge_payloads_keep_only_preview_and_hash() -> None:
    spec = TableSpec(max_field_bytes=1024)
    records = [{"blob": "z" * 5000}]
    out = Normalizer("n", spec, max_payload_bytes=2048).process(make_batch(records))
    [letter] = out.dead_letters.rows
    assert letter["raw_payload"] is None
    assert letter["payload_size"] == len(orjson.dumps(records[0]))
    assert letter["payload_sha256"] == hashlib.sha256(orjson.dumps(records[0])).hexdigest()


def test_decoder_dead_letters_are_carried_and_counted() -> None:
    decoder = DeadLetters()
    decoder.add(
        source="shop:orders.csv",
        position="7",
        stage="decode",
        reason=Reason.MALFORMED_ROW,
        message="bad row",
        payload=b"1,2,3,4",
    )
    batch = make_batch([{"a": "1"}], dead_letters=decoder)
    out = Normalizer("t", TableSpec()).process(batch)
    assert out.records_read == 2
    check_counts(out, batch)
    assert out.dead_letters.rows[0]["stage"] == "decode"


def test_null_columns_wait_for_a_value_and_absent_columns_are_null() -> None:
    normalizer = Normalizer("t", TableSpec())
    schema = pa.schema([("a", pa.int64()), ("later", pa.null())])
    first = normalizer.process(make_batch([{"a": 1, "later": None}], schema=schema))
    assert "later" not in first.rows.column_names
    second = normalizer.process(make_batch([{"later": "now"}]))
    assert second.rows.column("a").to_pylist() == [None]
    assert second.rows.column("later").to_pylist() == ["now"]
    assert normalizer.schemas["t"].names[-2:] == ["a", "later"]


def test_snapshot_restore_keeps_types_and_watermark() -> None:
    spec = TableSpec(event_time=EventTimeSpec(field="ts", max_out_of_orderness=60))
    original = Normalizer("t", spec)
    original.process(make_batch([{"ts": "2024-05-01T10:00:00Z", "n": "1", "items": [{"k": "1"}]}]))
    original.process(make_batch([{"ts": "2024-05-01T10:05:00Z", "n": "3000000000", "items": []}]))
    state = original.snapshot()
    assert orjson.loads(state)["watermark"]["max_event_time_us"] == 1714557900000000

    restored = Normalizer("t", spec)
    restored.restore(state)
    assert restored.schemas == original.schemas
    assert restored.watermark == original.watermark == datetime(2024, 5, 1, 10, 4, tzinfo=UTC)
    later = [
        {"ts": "2024-05-01T10:03:00Z", "n": "4", "items": [{"k": "7"}]},
        {"ts": "2024-05-01T10:04:30Z", "n": "x", "items": []},
    ]
    a, b = original.process(make_batch(later)), restored.process(make_batch(later))
    for out in (a, b):
        assert out.rows.column("_lg_late").to_pylist() == [True]  # 10:03 < 10:04
        assert out.rows.schema.field("n").type == pa.int64()  # not re-inferred from "4"
        assert [d["field"] for d in out.dead_letters.rows] == ["n"]
        assert out.children["t__items"].schema.field("k").type == pa.int32()
        assert out.children["t__items"].column("k").to_pylist() == [7]
    assert a.rows.equals(b.rows)


def test_restore_rejects_state_of_another_table() -> None:
    state = Normalizer("a", TableSpec()).snapshot()
    with pytest.raises(TerminalError, match="cannot restore"):
        Normalizer("b", TableSpec()).restore(state)
    with pytest.raises(TerminalError):
        Normalizer("b", TableSpec()).restore(b"not json")


def test_bad_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tables.t.types.x"):
        Normalizer("t", TableSpec(types={"x": "varchar"}))
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        Normalizer("t", TableSpec(event_time=EventTimeSpec(field="ts", timezone="Mars/Olympus")))


def test_empty_batch() -> None:
    batch = SourceBatch(
        source="s",
        origin="",
        records=pa.table({"a": pa.array([], pa.int64())}),
        positions=pa.array([], pa.string()),
        end_position={},
    )
    out = Normalizer("t", TableSpec(event_time=EventTimeSpec(field="a"))).process(batch)
    assert out.rows.num_rows == 0 and len(out.dead_letters) == 0 and out.late_rows == 0
