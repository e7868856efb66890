"""FileSource against real files: every format and compression, resume, damage, and dead letters."""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakegate.core.batch import SourceBatch
from lakegate.core.config import FileSourceSpec
from lakegate.sources.base import Source
from lakegate.sources.files import FileSource

FORMATS = ["ndjson", "json", "csv", "avro", "parquet"]
COMPRESSIONS = ["none", "gzip", "zstd"]
EXTENSIONS = {"ndjson": "ndjson", "json": "json", "csv": "csv", "avro": "avro", "parquet": "parquet"}
AVRO_SCHEMA = {
    "type": "record",
    "name": "row",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "score", "type": "double"},
    ],
}


def make_records(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "name": f'name {i}, "quoted" [x]', "score": i * 0.5} for i in range(start, start + count)]


def encode(fmt: str, records: list[dict[str, Any]]) -> bytes:
    if fmt == "ndjson":
        return b"".join(orjson.dumps(r) + b"\n" for r in records)
    if fmt == "json":
        return orjson.dumps(records, option=orjson.OPT_INDENT_2)
    if fmt == "csv":
        out = io.StringIO()
        out.write("id,name,score\n")
        for r in records:
            name = r["name"].replace('"', '""')
            out.write(f'{r["id"]},"{name}",{r["score"]}\n')
        return out.getvalue().encode()
    if fmt == "avro":
        buf = io.BytesIO()
        fastavro.writer(buf, AVRO_SCHEMA, records, sync_interval=2000)
        return buf.getvalue()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf, row_group_size=150)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def suffix(compression: str) -> str:
    return {"none": "", "gzip": ".gz", "zstd": ".zst"}[compression]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def source(directory: Path, **overrides: Any) -> FileSource:
    return FileSource(FileSourceSpec(name="src", path=directory, **overrides))


def drain(src: FileSource, limit: int = 100_000) -> list[SourceBatch]:
    batches = []
    for _ in range(limit):
        batch = src.poll()
        if batch is None:
            return batches
        batches.append(batch)
    raise AssertionError("source never ran dry")


def rows(batches: list[SourceBatch]) -> list[dict[str, Any]]:
    return [row for b in batches for row in b.records.to_pylist()]


def dead(batches: list[SourceBatch]) -> list[dict[str, Any]]:
    return [row for b in batches for row in b.dead_letters.rows]


def ids(batches: list[SourceBatch]) -> list[int]:
    return [int(row["id"]) for row in rows(batches)]


def positions(batches: list[SourceBatch]) -> list[str]:
    return [p for b in batches for p in b.positions.to_pylist()]


def total_read(batches: list[SourceBatch]) -> int:
    return sum(b.records_read for b in batches)


def test_file_source_is_a_source(tmp_path: Path) -> None:
    assert isinstance(source(tmp_path), Source)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_every_format_and_compression(tmp_path: Path, fmt: str, compression: str) -> None:
    records = make_records(1000)
    write(tmp_path / f"data.{EXTENSIONS[fmt]}{suffix(compression)}", compress(encode(fmt, records), compression))
    batches = drain(source(tmp_path, batch_rows=97, batch_bytes=4096))

    assert ids(batches) == list(range(1000))
    assert dead(batches) == []
    assert total_read(batches) == 1000
    assert all(b.records.num_rows <= 97 for b in batches)
    assert {b.origin for b in batches} == {f"data.{EXTENSIONS[fmt]}{suffix(compression)}"}
    first_row = rows(batches)[1]
    assert first_row["name"] == 'name 1, "quoted" [x]'
    assert float(first_row["score"]) == 0.5
    expected_positions = [str(i + 1) for i in range(1000)] if fmt == "ndjson" else [str(i) for i in range(1000)]
    assert positions(batches) == expected_positions
    assert json.loads(json.dumps(batches[-1].end_position)) == batches[-1].end_position


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet"])
def test_detects_compression_by_magic_bytes(tmp_path: Path, fmt: str, compression: str) -> None:
    write(tmp_path / f"data.{fmt}", compress(encode(fmt, make_records(50)), compression))
    batches = drain(source(tmp_path))
    assert ids(batches) == list(range(50))


def test_configured_format_and_compression_override_extensions(tmp_path: Path) -> None:
    write(tmp_path / "data.bin", gzip.compress(encode("ndjson", make_records(20))))
    batches = drain(source(tmp_path, format="ndjson", compression="gzip"))
    assert ids(batches) == list(range(20))


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_resumes_mid_file_without_loss_or_duplicates(tmp_path: Path, fmt: str, compression: str) -> None:
    write(
        tmp_path / "a" / f"one.{fmt}{suffix(compression)}",
        compress(encode(fmt, make_records(500)), compression),
    )
    write(
        tmp_path / "b" / f"two.{fmt}{suffix(compression)}",
        compress(encode(fmt, make_records(300, 500)), compression),
    )
    first = source(tmp_path, batch_rows=70, batch_bytes=3000)
    before = [first.poll() for _ in range(3)]
    assert all(b is not None and b.origin.startswith("a/") for b in before)
    saved = json.loads(json.dumps(first.position()))
    first.close()

    second = source(tmp_path, batch_rows=70, batch_bytes=3000)
    second.restore(saved)
    after = drain(second)

    seen = ids([b for b in before if b is not None]) + ids(after)
    assert sorted(seen) == list(range(800))
    assert len(seen) == 800
    assert total_read([b for b in before if b is not None]) + total_read(after) == 800
    assert second.position() == {
        "done": [f"a/one.{fmt}{suffix(compression)}", f"b/two.{fmt}{suffix(compression)}"],
        "current": None,
    }


def test_done_files_are_never_read_again(tmp_path: Path) -> None:
    write(tmp_path / "a.ndjson", encode("ndjson", make_records(10)))
    write(tmp_path / "b.ndjson", encode("ndjson", make_records(10, 10)))
    src = source(tmp_path)
    src.restore({"done": ["a.ndjson"], "current": None})
    assert ids(drain(src)) == list(range(10, 20))


def test_picks_up_new_files_and_reports_idle(tmp_path: Path) -> None:
    write(tmp_path / "a.ndjson", encode("ndjson", make_records(5)))
    src = source(tmp_path)
    assert not src.is_idle()
    assert ids(drain(src)) == list(range(5))
    assert src.poll() is None
    assert src.is_idle()

    write(tmp_path / "sub" / "b.csv", encode("csv", make_records(3, 5)))
    batch = src.poll()
    assert batch is not None and batch.origin == "sub/b.csv"
    assert ids([batch]) == [5, 6, 7]
    assert src.poll() is None
    assert src.is_idle()


def test_ignores_files_not_under_their_final_name(tmp_path: Path) -> None:
    payload = encode("ndjson", make_records(2))
    for name in [
        ".hidden.ndjson",
        "_staging.ndjson",
        "part.ndjson.tmp",
        ".git/x.ndjson",
        "_tmp/y.ndjson",
        "d/.z.ndjson",
    ]:
        write(tmp_path / name, payload)
    write(tmp_path / "d" / "real.ndjson", payload)
    batches = drain(source(tmp_path))
    assert [b.origin for b in batches] == ["d/real.ndjson"]
    assert total_read(batches) == 2


def test_files_are_read_in_sorted_relative_path_order(tmp_path: Path) -> None:
    for i, name in enumerate(["b/2.ndjson", "a/9.ndjson", "a/10.ndjson", "c.ndjson"]):
        write(tmp_path / name, encode("ndjson", make_records(1, i)))
    batches = drain(source(tmp_path))
    assert [b.origin for b in batches] == ["a/10.ndjson", "a/9.ndjson", "b/2.ndjson", "c.ndjson"]


def test_pattern_without_slash_matches_at_any_depth(tmp_path: Path) -> None:
    write(tmp_path / "x" / "keep.csv", encode("csv", make_records(2)))
    write(tmp_path / "x" / "skip.ndjson", encode("ndjson", make_records(2)))
    batches = drain(source(tmp_path, pattern="*.csv"))
    assert [b.origin for b in batches] == ["x/keep.csv"]


# -- NDJSON damage ------------------------------------------------------------------------------------


def test_ndjson_dead_letters_bad_lines_and_keeps_good_ones(tmp_path: Path) -> None:
    lines = [
        b'{"id": 0}',
        b"",
        b"   \t",
        b'{"id": 1, "broken": }',
        b'{"id": 2}',
        b'"a string"',
        b"[1, 2]",
        b"null",
        b'{"id": 3, "bad": "\xff\xfe"}',
        b'{"id": 4} {"id": 5}',
        b'{"id": 6}',
    ]
    write(tmp_path / "mixed.ndjson", b"\n".join(lines) + b"\n")
    batches = drain(source(tmp_path))

    assert ids(batches) == [0, 2, 6]
    assert positions(batches) == ["1", "5", "11"]
    letters = dead(batches)
    assert [(d["position"], d["reason_code"]) for d in letters] == [
        ("4", "malformed_json"),
        ("6", "not_an_object"),
        ("7", "not_an_object"),
        ("8", "not_an_object"),
        ("9", "invalid_utf8"),
        ("10", "malformed_json"),
    ]
    assert letters[0]["raw_payload"] == lines[3]
    assert letters[0]["source"] == "src:mixed.ndjson"
    assert letters[0]["stage"] == "decode"
    offset = sum(len(line) + 1 for line in lines[:3])
    assert (letters[0]["byte_start"], letters[0]["byte_end"]) == (offset, offset + len(lines[3]))
    assert total_read(batches) == 9


def test_ndjson_type_conflicts_keep_every_row_as_text(tmp_path: Path) -> None:
    write(tmp_path / "c.ndjson", b'{"a": 1, "b": {"x": 1}}\n{"a": "x", "b": {"x": "y"}}\n{"a": true}\n')
    batches = drain(source(tmp_path))
    assert dead(batches) == []
    assert rows(batches) == [
        {"a": "1", "b": '{"x":1}'},
        {"a": "x", "b": '{"x":"y"}'},
        {"a": "true", "b": None},
    ]


def test_ndjson_fallback_keeps_fast_path_column_names_and_types(tmp_path: Path) -> None:
    write(tmp_path / "a.ndjson", b'{"t": "2024-01-01T00:00:00", "n": {"k": 1}}\nnope\n')
    write(tmp_path / "b.ndjson", b'{"t": "2024-01-01T00:00:00", "n": {"k": 1}}\n')
    broken, clean = drain(source(tmp_path))
    assert broken.records.schema == clean.records.schema
    assert len(broken.dead_letters) == 1


def test_ndjson_raw_returns_the_original_line(tmp_path: Path) -> None:
    lines = [b'{"id": 0}', b'{ "id" : 1 }', b'{"id":2}']
    write(tmp_path / "r.ndjson", b"\n".join(lines))
    (batch,) = drain(source(tmp_path))
    assert batch.raw([2, 0]) == [lines[2], lines[0]]


def test_ndjson_line_longer_than_the_chunk(tmp_path: Path) -> None:
    big = "x" * (50 * 1024 * 1024)
    data = b'{"id": 0}\n' + orjson.dumps({"id": 1, "big": big}) + b'\n{"id": 2}\n'
    write(tmp_path / "big.ndjson", data)
    batches = drain(source(tmp_path, batch_bytes=1024 * 1024))
    assert ids(batches) == [0, 1, 2]
    assert [len(r.get("big") or "") for r in rows(batches)] == [0, len(big), 0]
    assert dead(batches) == []
    assert total_read(batches) == 3


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_ndjson_keeps_what_was_readable(tmp_path: Path, compression: str) -> None:
    original = encode("ndjson", make_records(40_000))
    packed = compress(original, compression)
    truncated = packed[: len(packed) // 2]
    # What a decompressor can recover from the truncated bytes, found independently of the source.
    if compression == "gzip":
        recovered = zlib.decompressobj(wbits=31).decompress(truncated)
    else:
        recovered = zstandard.ZstdDecompressor().decompressobj().decompress(truncated)
    complete_lines = recovered.count(b"\n")
    assert 0 < complete_lines < 40_000
    write(tmp_path / f"t.ndjson{suffix(compression)}", truncated)

    src = source(tmp_path, batch_bytes=256 * 1024)
    batches = drain(src)

    assert ids(batches) == list(range(complete_lines))
    letters = dead(batches)
    assert [d["reason_code"] for d in letters] == ["unreadable"]
    start = recovered.rfind(b"\n") + 1
    assert letters[0]["byte_start"] == start
    assert letters[0]["byte_end"] >= start
    assert letters[0]["position"] == str(complete_lines + 1)
    assert letters[0]["raw_payload"] == truncated
    assert "Error" in letters[0]["message"]
    assert total_read(batches) == complete_lines + 1
    assert src.position()["done"] == [f"t.ndjson{suffix(compression)}"]


def test_truncated_plain_ndjson_dead_letters_the_partial_last_line(tmp_path: Path) -> None:
    data = encode("ndjson", make_records(10))
    write(tmp_path / "t.ndjson", data[:-7])
    batches = drain(source(tmp_path))
    assert ids(batches) == list(range(9))
    assert [d["reason_code"] for d in dead(batches)] == ["malformed_json"]


# -- JSON documents -----------------------------------------------------------------------------------


def test_json_array_streams_across_chunks_with_tricky_strings(tmp_path: Path) -> None:
    records = [
        {
            "id": i,
            "s": ["a,b", "]", "}{", 'q"uote', "back\\slash\\", '\\"', "[[", "\n"][i % 8],
            "nested": {"l": [i, i + 1], "m": {"k": [str(i)]}},
        }
        for i in range(300)
    ]
    write(tmp_path / "arr.json", orjson.dumps(records, option=orjson.OPT_INDENT_2))
    batches = drain(source(tmp_path, batch_bytes=700, batch_rows=13))
    assert rows(batches) == records
    assert positions(batches) == [str(i) for i in range(300)]
    assert all(b.records.num_rows <= 13 for b in batches)
    assert json.loads(batches[0].raw([0])[0]) == records[0]


def test_json_single_object_counts_as_one_record(tmp_path: Path) -> None:
    write(tmp_path / "one.json", b'\n{\n  "id": 7,\n  "items": [{"k": "]"}, {"k": "["}]\n}\n')
    batches = drain(source(tmp_path, format="json"))
    assert rows(batches) == [{"id": 7, "items": [{"k": "]"}, {"k": "["}]}]
    assert dead(batches) == []


def test_json_array_bad_elements_become_dead_letters(tmp_path: Path) -> None:
    write(tmp_path / "bad.json", b'[{"id": 0}, 5, "x", [1], {"id": 1}, {"id": oops}, {"id": 2},]')
    batches = drain(source(tmp_path))
    assert ids(batches) == [0, 1, 2]
    assert [(d["position"], d["reason_code"]) for d in dead(batches)] == [
        ("1", "not_an_object"),
        ("2", "not_an_object"),
        ("3", "not_an_object"),
        ("5", "malformed_json"),
    ]
    assert total_read(batches) == 7


def test_json_array_truncated_plain_file(tmp_path: Path) -> None:
    data = encode("json", make_records(50))
    cut = data.index(b'"id": 30')
    write(tmp_path / "t.json", data[:cut])
    batches = drain(source(tmp_path, batch_bytes=500))
    assert ids(batches) == list(range(30))
    assert [d["reason_code"] for d in dead(batches)] == ["malformed_json"]
    assert total_read(batches) == 31


def test_empty_json_array_has_no_records(tmp_path: Path) -> None:
    write(tmp_path / "e.json", b"[ ]\n")
    src = source(tmp_path)
    assert drain(src) == []
    assert src.position()["done"] == ["e.json"]


# -- CSV ----------------------------------------------------------------------------------------------


def test_csv_malformed_rows_become_dead_letters_with_row_positions(tmp_path: Path) -> None:
    text = 'id;note\n0;"multi\nline"\n1\n2;ok\n3;a;b\n\n4;"x;y"\n'
    write(tmp_path / "c.csv", text.encode())
    batches = drain(source(tmp_path, csv_delimiter=";"))
    assert rows(batches) == [
        {"id": "0", "note": "multi\nline"},
        {"id": "2", "note": "ok"},
        {"id": "4", "note": "x;y"},
    ]
    assert positions(batches) == ["0", "2", "4"]
    assert [(d["position"], d["reason_code"], d["raw_payload"]) for d in dead(batches)] == [
        ("1", "malformed_row", b"1"),
        ("3", "malformed_row", b"3;a;b"),
    ]
    assert total_read(batches) == 5


def test_csv_reads_every_column_as_text_so_late_type_changes_do_not_crash(tmp_path: Path) -> None:
    lines = ["n,v"] + [f"{i},{i}" for i in range(5000)] + ["5000,abc", "5001,"]
    write(tmp_path / "t.csv", "\n".join(lines).encode())
    batches = drain(source(tmp_path, batch_bytes=4096))
    values = [r["v"] for r in rows(batches)]
    assert len(values) == 5002
    assert values[-2:] == ["abc", None]
    assert {b.records.schema.field("v").type for b in batches} == {pa.string()}


def test_csv_invalid_utf8_row_is_dead_lettered(tmp_path: Path) -> None:
    write(tmp_path / "u.csv", b"a,b\n1,ok\n2,\xff\xfe\n3,fine\n")
    batches = drain(source(tmp_path))
    assert [r["a"] for r in rows(batches)] == ["1", "3"]
    assert [(d["position"], d["reason_code"]) for d in dead(batches)] == [("1", "invalid_utf8")]
    assert total_read(batches) == 3


def test_csv_resume_accounts_for_malformed_rows(tmp_path: Path) -> None:
    lines = ["id,v"]
    bad_rows = {7, 30, 31, 80}
    for i in range(100):
        lines.append(f"{i}" if i in bad_rows else f"{i},x")
    write(tmp_path / "r.csv", ("\n".join(lines) + "\n").encode())
    first = source(tmp_path, batch_rows=10)
    before = [first.poll() for _ in range(3)]
    saved = first.position()
    second = source(tmp_path, batch_rows=10)
    second.restore(saved)
    after = drain(second)
    everything = [b for b in before if b is not None] + after
    assert sorted(ids(everything)) == sorted(set(range(100)) - bad_rows)
    assert sorted(int(d["position"]) for d in dead(everything)) == sorted(bad_rows)
    assert total_read(everything) == 100


def test_truncated_gzip_csv_does_not_emit_the_half_row(tmp_path: Path) -> None:
    original = encode("csv", make_records(30_000))
    packed = gzip.compress(original)
    truncated = packed[: len(packed) // 2]
    recovered = zlib.decompressobj(wbits=31).decompress(truncated)
    complete_rows = recovered.count(b"\n") - 1
    write(tmp_path / "t.csv.gz", truncated)
    batches = drain(source(tmp_path))
    assert ids(batches) == list(range(complete_rows))
    assert [d["reason_code"] for d in dead(batches)] == ["unreadable"]
    assert total_read(batches) == complete_rows + 1


# -- Avro and Parquet damage --------------------------------------------------------------------------


def test_truncated_avro_keeps_whole_blocks_before_the_damage(tmp_path: Path) -> None:
    data = encode("avro", make_records(3000))
    blocks = list(fastavro.block_reader(io.BytesIO(data)))
    assert len(blocks) > 4
    damaged = blocks[3]
    cut = damaged.offset + damaged.size // 2
    expected = sum(b.num_records for b in blocks[:3])
    write(tmp_path / "t.avro", data[:cut])
    batches = drain(source(tmp_path, batch_rows=100))
    assert ids(batches) == list(range(expected))
    letters = dead(batches)
    assert [d["reason_code"] for d in letters] == ["unreadable"]
    assert letters[0]["byte_start"] == damaged.offset
    assert letters[0]["byte_end"] == cut
    assert letters[0]["raw_payload"] == data[damaged.offset : cut]
    assert total_read(batches) == expected + 1


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_truncated_parquet_is_one_unreadable_dead_letter(tmp_path: Path, compression: str) -> None:
    data = encode("parquet", make_records(1000))
    damaged = compress(data[: len(data) - 100], compression)
    write(tmp_path / f"t.parquet{suffix(compression)}", damaged)
    src = source(tmp_path)
    batches = drain(src)
    assert rows(batches) == []
    letters = dead(batches)
    assert [d["reason_code"] for d in letters] == ["unreadable"]
    assert letters[0]["byte_start"] == 0
    assert letters[0]["raw_payload"] == damaged
    assert total_read(batches) == 1
    assert src.position()["done"] == [f"t.parquet{suffix(compression)}"]


def test_corrupt_parquet_row_group_keeps_the_groups_before_it(tmp_path: Path) -> None:
    data = bytearray(encode("parquet", make_records(1000)))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    group = meta.row_group(3)
    start = min(group.column(j).dictionary_page_offset or group.column(j).data_page_offset for j in range(3))
    data[start : start + 64] = b"\x00" * 64
    write(tmp_path / "c.parquet", bytes(data))
    batches = drain(source(tmp_path, batch_rows=1000))
    assert ids(batches) == list(range(450))
    letters = dead(batches)
    assert [(d["reason_code"], d["position"], d["byte_start"]) for d in letters] == [("unreadable", "450", start)]
    assert total_read(batches) == 451


def test_parquet_raw_is_the_row_as_json(tmp_path: Path) -> None:
    write(tmp_path / "p.parquet", encode("parquet", make_records(3)))
    (batch,) = drain(source(tmp_path))
    assert [orjson.loads(r) for r in batch.raw([2])] == make_records(3)[2:]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_files_are_done_with_no_records(tmp_path: Path, fmt: str, compression: str) -> None:
    write(tmp_path / f"e.{fmt}{suffix(compression)}", compress(b"", compression))
    src = source(tmp_path)
    assert drain(src) == []
    assert src.position() == {"done": [f"e.{fmt}{suffix(compression)}"], "current": None}


def test_unknown_format_is_dead_lettered_not_skipped(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", b"hello world\n")
    batches = drain(source(tmp_path))
    assert [(d["reason_code"], d["raw_payload"]) for d in dead(batches)] == [("unreadable", b"hello world\n")]
    assert total_read(batches) == 1


# -- property: counts reconcile for any mix of NDJSON lines ------------------------------------------

GOOD_LINE = st.builds(
    lambda i, v: orjson.dumps({"id": i, "v": v}),
    st.integers(0, 10**6),
    st.one_of(st.integers(-5, 5), st.text(max_size=5), st.none(), st.lists(st.integers(0, 3), max_size=2)),
)
BAD_LINES = {
    "malformed_json": st.sampled_from([b"{", b'{"a":}', b"nope", b'{"a":1}}', b'{"a" 1}']),
    "not_an_object": st.sampled_from([b"1", b'"s"', b"[1,2]", b"null", b"true"]),
    "invalid_utf8": st.sampled_from([b'{"a":"\xff"}', b"\xc3\x28", b'{"\xe2\x82":1}']),
}
LINE = st.one_of(
    st.tuples(st.just("good"), GOOD_LINE),
    st.tuples(st.just("blank"), st.sampled_from([b"", b"  ", b"\t"])),
    *[st.tuples(st.just(reason), lines) for reason, lines in BAD_LINES.items()],
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=40), batch_bytes=st.integers(1, 200), batch_rows=st.integers(1, 7))
def test_ndjson_counts_reconcile_for_any_mix(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[tuple[str, bytes]],
    batch_bytes: int,
    batch_rows: int,
) -> None:
    directory = tmp_path_factory.mktemp("mix")
    write(directory / "m.ndjson", b"\n".join(line for _, line in lines) + b"\n")
    batches = drain(source(directory, batch_bytes=batch_bytes, batch_rows=batch_rows))

    expected_good = [str(n + 1) for n, (kind, _) in enumerate(lines) if kind == "good"]
    expected_dead = Counter(kind for kind, _ in lines if kind not in ("good", "blank"))
    assert positions(batches) == expected_good
    assert [row["id"] for row in rows(batches)] == [orjson.loads(line)["id"] for kind, line in lines if kind == "good"]
    assert Counter(d["reason_code"] for d in dead(batches)) == expected_dead
    assert total_read(batches) == len(expected_good) + sum(expected_dead.values())
    for batch in batches:
        assert batch.records.num_rows <= batch_rows
        assert batch.records_read == batch.records.num_rows + len(batch.dead_letters)
        good_lines = [lines[int(p) - 1][1] for p in batch.positions.to_pylist()]
        assert batch.raw(list(range(batch.records.num_rows))) == good_lines


# -- edge cases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ndjson", "json", "csv"])
def test_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path, fmt: str) -> None:
    write(tmp_path / f"bom.{fmt}", b"\xef\xbb\xbf" + encode(fmt, make_records(5)))
    batches = drain(source(tmp_path))
    assert ids(batches) == list(range(5))
    assert dead(batches) == []


def test_pretty_printed_single_object_in_a_json_file_is_one_record(tmp_path: Path) -> None:
    write(tmp_path / "one.json", orjson.dumps({"id": 3, "deep": {"x": [1, 2]}}, option=orjson.OPT_INDENT_2))
    batches = drain(source(tmp_path))
    assert rows(batches) == [{"id": 3, "deep": {"x": [1, 2]}}]
    assert dead(batches) == []


def test_json_file_holding_ndjson_is_read_line_by_line(tmp_path: Path) -> None:
    write(tmp_path / "lines.json", encode("ndjson", make_records(4)))
    batches = drain(source(tmp_path))
    assert ids(batches) == [0, 1, 2, 3]
    assert positions(batches) == ["1", "2", "3", "4"]


def test_csv_quote_inside_a_field_is_a_character(tmp_path: Path) -> None:
    write(tmp_path / "q.csv", b'a,b\n1,ab"c\n2,x\n3,"y\nz"\n4,w\n')
    batches = drain(source(tmp_path, batch_bytes=8))
    assert rows(batches) == [
        {"a": "1", "b": 'ab"c'},
        {"a": "2", "b": "x"},
        {"a": "3", "b": "y\nz"},
        {"a": "4", "b": "w"},
    ]
    assert dead(batches) == []


def test_csv_with_only_a_header_has_no_records(tmp_path: Path) -> None:
    write(tmp_path / "h.csv", b"a,b,c")
    src = source(tmp_path)
    assert drain(src) == []
    assert src.position()["done"] == ["h.csv"]


def test_close_keeps_the_position_and_poll_continues(tmp_path: Path) -> None:
    write(tmp_path / "a.ndjson", encode("ndjson", make_records(30)))
    src = source(tmp_path, batch_rows=10)
    first = src.poll()
    src.close()
    assert src.position()["current"] == {
        "file": "a.ndjson",
        "offset": len(encode("ndjson", make_records(10))),
        "record": 10,
        "line": 10,
    }
    rest = drain(src)
    assert ids([first, *rest] if first else rest) == list(range(30))


def test_file_vanishing_after_the_scan_is_one_dead_letter(tmp_path: Path) -> None:
    write(tmp_path / "a.ndjson", encode("ndjson", make_records(2)))
    gone = write(tmp_path / "b.ndjson", encode("ndjson", make_records(2, 2)))
    src = source(tmp_path)
    assert ids([src.poll()]) == [0, 1]  # type: ignore[list-item]
    gone.unlink()
    batches = drain(src)
    assert [(b.origin, d["reason_code"]) for b in batches for d in b.dead_letters.rows] == [("b.ndjson", "unreadable")]
    assert src.position()["done"] == ["a.ndjson", "b.ndjson"]


def test_acknowledge_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path / "a.ndjson", encode("ndjson", make_records(3)))
    src = source(tmp_path, batch_rows=2)
    batch = src.poll()
    assert batch is not None
    src.acknowledge(batch.end_position)
    assert src.position() == batch.end_position
    assert ids(drain(src)) == [2]


def test_two_objects_on_one_line_is_malformed_even_when_every_line_looks_like_an_object(
    tmp_path: Path,
) -> None:
    write(tmp_path / "two.ndjson", b'{"id": 0}\n{"id": 1} {"id": 2}\n{"id": 3}\n')
    batches = drain(source(tmp_path))
    assert ids(batches) == [0, 3]
    assert [(d["position"], d["reason_code"]) for d in dead(batches)] == [("2", "malformed_json")]
    assert total_read(batches) == 3


def peak_python_memory(directory: Path, **spec: Any) -> tuple[int, int]:
    """Records read and the peak of Python-allocated memory (bytes buffers, numpy arrays) meanwhile."""
    src = source(directory, **spec)
    tracemalloc.start()
    try:
        seen = 0
        while (batch := src.poll()) is not None:
            seen += batch.records_read
            del batch
        return seen, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_does_not_grow_with_the_file(tmp_path: Path, fmt: str, compression: str) -> None:
    name = f"{fmt}{suffix(compression)}"
    count = {"avro": 10_000, "parquet": 100_000}.get(fmt, 30_000)  # 1x is larger than one 1 MiB read
    peaks = []
    for scale in (1, 4):
        directory = tmp_path / f"x{scale}"
        write(directory / f"data.{name}", compress(encode(fmt, make_records(scale * count)), compression))
        if scale == 1:  # warm up: imports and one-time caches are not what this test is about
            peak_python_memory(directory, batch_bytes=64 * 1024)
        seen, peak = peak_python_memory(directory, batch_bytes=64 * 1024)
        assert seen == scale * count
        peaks.append(peak)
    assert peaks[1] < 1.3 * peaks[0] + 256 * 1024, f"peak at 1x {peaks[0]:,} B, at 4x {peaks[1]:,} B"


def test_stray_quote_in_csv_does_not_make_the_chunk_grow_to_the_file(tmp_path: Path) -> None:
    peaks = []
    for scale in (1, 4):
        lines = [b"id,note", b'0,say "hi'] + [b"%d,plain text here" % i for i in range(1, scale * 100_000)]
        write(tmp_path / f"x{scale}" / "stray.csv", b"\n".join(lines) + b"\n")
        (batch,) = drain(source(tmp_path / f"x{scale}", batch_bytes=1 << 30))
        assert batch.records.column("id").to_pylist() == [str(i) for i in range(scale * 100_000)]
        assert len(batch.dead_letters) == 0
        if scale == 1:
            peak_python_memory(tmp_path / "x1", batch_bytes=64 * 1024)
        seen, peak = peak_python_memory(tmp_path / f"x{scale}", batch_bytes=64 * 1024)
        assert seen == scale * 100_000
        peaks.append(peak)
    assert peaks[1] < 1.3 * peaks[0] + 256 * 1024, f"peak at 1x {peaks[0]:,} B, at 4x {peaks[1]:,} B"


@pytest.mark.parametrize("quoted", [True, False])
def test_csv_row_longer_than_the_growth_limit_is_read_whole(tmp_path: Path, quoted: bool) -> None:
    big = "x" * (3 * 1024 * 1024)
    cell = f'"{big}"' if quoted else big
    write(tmp_path / "wide.csv", f"a,b\n1,{cell}\n2,y".encode())
    batches = drain(source(tmp_path, batch_bytes=64 * 1024))
    assert [(r["a"], len(r["b"])) for r in rows(batches)] == [("1", len(big)), ("2", 1)]
    assert dead(batches) == []


HOSTILE_TEXT = st.text(
    alphabet=st.sampled_from(list('ab,[]{}":\\\n\t é😀')) | st.characters(codec="utf-8"), max_size=12
)
JSON_RECORD = st.fixed_dictionaries(
    {
        "id": st.integers(-(2**53), 2**53),
        "s": HOSTILE_TEXT,
        "l": st.lists(st.integers(0, 9), min_size=1, max_size=3),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(JSON_RECORD, max_size=30),
    indent=st.sampled_from([None, 0, 2]),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
    batch_bytes=st.integers(1, 300),
    batch_rows=st.integers(1, 9),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_json_array_round_trips_any_text_and_layout(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[dict[str, Any]],
    indent: int | None,
    separators: tuple[str, str],
    batch_bytes: int,
    batch_rows: int,
    compression: str,
) -> None:
    directory = tmp_path_factory.mktemp("arr")
    text = json.dumps(records, indent=indent, separators=separators, ensure_ascii=False)
    write(directory / f"a.json{suffix(compression)}", compress(text.encode(), compression))
    batches = drain(source(directory, batch_bytes=batch_bytes, batch_rows=batch_rows))
    assert rows(batches) == records
    assert positions(batches) == [str(i) for i in range(len(records))]
    assert dead(batches) == []
    assert all(b.records.num_rows <= batch_rows for b in batches)
    assert [json.loads(raw) for b in batches for raw in b.raw(range(b.records.num_rows))] == records
