"""Bad input never crashes a pipeline and never loses data.

Every expected number here comes from what the test wrote (never from landed + dead-lettered), and
every table is read back through DuckDB, an independent reader.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakegate.runtime.pipeline import Pipeline
from tests.runtime.helpers import read_back

START = datetime(2026, 3, 1, tzinfo=UTC)


def record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "ts": (START + timedelta(minutes=i)).isoformat(),
        "amount": round(i * 1.25, 2),
        "name": f"name-{i}",
        "nested": {"x": i % 7, "y": {"z": f"z{i % 3}"}},
    }


def line(i: int) -> bytes:
    return orjson.dumps(record(i))


def spec_for(tmp_path: Path, sources: list[dict[str, Any]]) -> Path:
    spec = {
        "pipeline": "bad",
        "namespace": "t",
        "data_dir": str(tmp_path / "data"),
        "sources": sources,
        "tables": {s["name"]: {"event_time": {"field": "ts"}} for s in sources},
        "checkpoint": {"interval": "60s", "max_rows": 100_000},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def count(tmp_path: Path, table: str) -> int:
    return int(read_back(tmp_path / "data", f"SELECT count(*) AS n FROM t.{table}").column("n")[0].as_py())


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    return read_back(
        tmp_path / "data",
        "SELECT source, position, reason_code, field, payload_size, payload_sha256, raw_payload,"
        " byte_start, byte_end FROM t.bad__dead_letter ORDER BY source, position",
    ).to_pylist()


def test_every_kind_of_bad_input_is_dead_lettered_and_the_rest_lands(tmp_path: Path) -> None:
    # NDJSON: 200 good lines, 5 truncated, 3 invalid UTF-8, 4 non-numeric amounts, 1 non-object,
    # 2 blank lines (not records).
    nd = tmp_path / "nd"
    nd.mkdir()
    lines = [line(i) for i in range(200)]
    bad = [line(900 + i)[:-9] for i in range(5)]
    bad += [line(910 + i).replace(b"name-", b"na\xff\xfeme-") for i in range(3)]
    bad += [orjson.dumps({**record(920 + i), "amount": "abc"}) for i in range(4)]
    bad += [b"[1, 2, 3]", b"", b"   "]
    mixed = lines[:100] + bad + lines[100:]
    (nd / "a.ndjson").write_bytes(b"\n".join(mixed) + b"\n")

    # gzip NDJSON truncated half-way: what zlib can recover is what must land.
    gz = tmp_path / "gz"
    gz.mkdir()
    packed = gzip.compress(b"\n".join(line(i) for i in range(5000)) + b"\n")
    truncated = packed[: len(packed) // 2]
    recoverable = zlib.decompressobj(wbits=31).decompress(truncated).count(b"\n")
    (gz / "a.ndjson.gz").write_bytes(truncated)

    # Avro in 10 blocks of 100 records, cut inside block 7: six whole blocks are readable.
    av = tmp_path / "av"
    av.mkdir()
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "r",
            "fields": [
                {"name": "id", "type": "long"},
                {"name": "ts", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "name", "type": "string"},
            ],
        }
    )
    buffer = io.BytesIO()
    writer = fastavro.write.Writer(buffer, schema)
    block_ends = []
    for block in range(10):
        for i in range(block * 100, block * 100 + 100):
            r = record(i)
            writer.write({k: r[k] for k in ("id", "ts", "amount", "name")})
        writer.flush()
        block_ends.append(buffer.tell())
    avro_bytes = buffer.getvalue()
    (av / "a.avro").write_bytes(avro_bytes[: (block_ends[5] + block_ends[6]) // 2])

    # Parquet without its footer: nothing readable, one dead letter.
    pqdir = tmp_path / "pq"
    pqdir.mkdir()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([record(i) for i in range(300)]), sink)
    (pqdir / "a.parquet").write_bytes(sink.getvalue()[:-100])

    # A 50 MB single field: that record is dead-lettered with its size and sha256, the others land.
    big = tmp_path / "big"
    big.mkdir()
    huge = orjson.dumps({**record(5), "name": "x" * (50 * 1024 * 1024)})
    (big / "a.ndjson").write_bytes(line(1) + b"\n" + huge + b"\n" + line(2) + b"\n")

    # Empty files of every kind.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.ndjson").write_bytes(b"")
    (empty / "b.ndjson.gz").write_bytes(gzip.compress(b""))

    # CSV with 50 good rows and 2 rows of the wrong width.
    csvdir = tmp_path / "csv"
    csvdir.mkdir()
    rows = ["id,ts,amount,name"] + [f"{i},{record(i)['ts']},{i * 1.5},n{i}" for i in range(50)]
    rows[10:10] = ["1,2", "1,2,3,4,5,6"]
    (csvdir / "a.csv").write_text("\n".join(rows) + "\n")

    sources = [
        {"name": "nd", "path": str(nd), "format": "ndjson"},
        {"name": "gz", "path": str(gz), "format": "ndjson"},
        {"name": "av", "path": str(av), "format": "avro"},
        {"name": "pq", "path": str(pqdir), "format": "parquet"},
        {"name": "big", "path": str(big), "format": "ndjson"},
        {"name": "empty", "path": str(empty), "format": "ndjson"},
        {"name": "csv", "path": str(csvdir), "format": "csv"},
    ]
    with Pipeline.from_yaml(spec_for(tmp_path, sources)) as pipeline:
        summary = pipeline.run(until_idle=True)

    expected_landed = {"nd": 200, "gz": recoverable, "av": 600, "big": 2, "csv": 50}
    expected_dead = {"nd": 13, "gz": 1, "av": 1, "pq": 1, "big": 1, "csv": 2}
    assert summary.counts.rows_landed == sum(expected_landed.values())
    assert summary.counts.dead_lettered == sum(expected_dead.values())
    for table, rows_expected in expected_landed.items():
        assert count(tmp_path, table) == rows_expected, table
    letters = dead_letters(tmp_path)
    by_source: dict[str, list[str]] = {}
    for letter in letters:
        by_source.setdefault(letter["source"].split(":")[0], []).append(letter["reason_code"])
    assert {k: len(v) for k, v in by_source.items()} == expected_dead
    assert sorted(by_source["nd"]) == sorted(
        ["malformed_json"] * 5 + ["invalid_utf8"] * 3 + ["type_mismatch"] * 4 + ["not_an_object"]
    )
    assert by_source["gz"] == by_source["av"] == by_source["pq"] == ["unreadable"]
    assert sorted(by_source["csv"]) == ["malformed_row", "malformed_row"]
    (oversized,) = [d for d in letters if d["source"].startswith("big:")]
    assert oversized["reason_code"] == "field_too_large"
    assert oversized["field"] == "name"
    assert oversized["payload_size"] == len(huge)
    assert oversized["payload_sha256"] == hashlib.sha256(huge).hexdigest()
    assert oversized["raw_payload"] is None
    mismatches = read_back(
        tmp_path / "data",
        "SELECT field, raw_value FROM t.bad__dead_letter WHERE reason_code = 'type_mismatch'",
    ).to_pylist()
    assert mismatches == [{"field": "amount", "raw_value": "abc"}] * 4


GOOD = st.integers(min_value=0, max_value=10_000).map(lambda i: ("good", line(i)))
BROKEN = st.sampled_from(
    [
        ("bad", b'{"id": 1, "ts": "2026-03-01T00:00:00+00:00"'),
        ("bad", b'{"id": 1, "ts": "2026-03-01T00:00:00+00:00", "name": "\xff"}'),
        ("bad", b"not json at all"),
        ("bad", b"42"),
        ("blank", b""),
    ]
)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(GOOD, GOOD, GOOD, BROKEN), min_size=1, max_size=400))
def test_random_mixes_reconcile_exactly(
    tmp_path_factory: pytest.TempPathFactory, lines: list[tuple[str, bytes]]
) -> None:
    tmp_path = tmp_path_factory.mktemp("mix")
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.ndjson").write_bytes(b"\n".join(payload for _, payload in lines) + b"\n")
    good = sum(kind == "good" for kind, _ in lines)
    broken = sum(kind == "bad" for kind, _ in lines)
    with Pipeline.from_yaml(spec_for(tmp_path, [{"name": "mix", "path": str(source), "format": "ndjson"}])) as p:
        summary = p.run(until_idle=True)
    assert (summary.counts.rows_landed, summary.counts.dead_lettered) == (good, broken)
    if good:
        assert count(tmp_path, "mix") == good
    if broken:
        assert len(dead_letters(tmp_path)) == broken
