"""MySQLSource against a private MariaDB (binlog ROW, binlog_row_metadata=FULL): snapshot, streaming, DDL, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from lakegate.core.batch import SourceBatch
from lakegate.core.errors import ConfigError
from lakegate.sources.base import Source
from lakegate.sources.mysql import MySQLSource, MySQLSourceSpec
from tests.cdc.mariadb_server import MariaDBServer

pytestmark = pytest.mark.integration

PASSWORD_ENV = "LG_TEST_MYSQL_PASSWORD"


@pytest.fixture(autouse=True)
def _password(mariadb: MariaDBServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, mariadb.password)


def make_source(mariadb: MariaDBServer, name: str, database: str, **options: Any) -> MySQLSource:
    spec = MySQLSourceSpec(
        name=name,
        port=mariadb.port,
        user=mariadb.user,
        password_env=PASSWORD_ENV,
        databases=[database],
        **options,
    )
    return MySQLSource(spec)


def drain(source: MySQLSource, *, limit: int = 10_000) -> list[SourceBatch]:
    """Poll until the source is idle (every change available so far handed out)."""
    batches: list[SourceBatch] = []
    for _ in range(limit):
        batch = source.poll()
        if batch is not None:
            batches.append(batch)
        elif source.is_idle():
            return batches
    raise AssertionError("source never became idle")


def rows_of(batches: list[SourceBatch], *columns: str) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for batch in batches:
        data = batch.records.select(list(columns)).to_pylist()
        out.extend(tuple(row[c] for c in columns) for row in data)
    return out


def positions_of(batches: list[SourceBatch]) -> list[str]:
    return [p for batch in batches for p in batch.positions.to_pylist()]


def mirror(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    """Apply change rows by key: the row with the highest (commit position, index) wins; a final ``d`` removes."""
    ordered = sorted(rows, key=lambda r: (r["_lg_commit_position"], int(r["position"].rsplit(":", 1)[1])))
    state: dict[Any, dict[str, Any]] = {}
    for row in ordered:
        if row["_lg_op"] == "d":
            state.pop(row[key], None)
        elif row["_lg_op"] != "t":
            state[row[key]] = row
    return state


# -- configuration ----------------------------------------------------------------------------------


def test_spec_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="databases"):
        MySQLSourceSpec(name="m", user="u", databases=[])
    with pytest.raises(ValidationError, match="port"):
        MySQLSourceSpec(name="m", user="u", databases=["a"], port=0)
    with pytest.raises(ValidationError, match="tables"):
        MySQLSourceSpec(name="m", user="u", databases=["a"], tables=["b.t"])
    with pytest.raises(ValidationError, match="position_mode"):
        MySQLSourceSpec(name="m", user="u", databases=["a"], position_mode="lsn")
    monkeypatch.delenv("LG_NOT_SET", raising=False)
    spec = MySQLSourceSpec(name="m", user="u", databases=["a"], password_env="LG_NOT_SET")
    with pytest.raises(ConfigError, match=r"sources\.m\.password_env"):
        MySQLSource(spec)
    assert isinstance(MySQLSource(MySQLSourceSpec(name="m", user="u", databases=["a"])), Source)


# -- snapshot and streaming -------------------------------------------------------------------------


def test_snapshot_then_streaming_has_no_gap_or_overlap_under_concurrent_inserts(mariadb: MariaDBServer) -> None:
    mariadb.execute(
        "CREATE DATABASE snap",
        "CREATE TABLE snap.items (id INT PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO snap.items SELECT seq, CONCAT('v', seq) FROM mysql.seq_1_to_5000",
    )
    stop = threading.Event()

    def insert_concurrently() -> None:
        with mariadb.connect() as connection, connection.cursor() as cursor:
            next_id = 100_000
            while not stop.is_set():
                cursor.execute("INSERT INTO snap.items VALUES (%s, 'c'), (%s, 'c')", (next_id, next_id + 1))
                next_id += 2

    writer = threading.Thread(target=insert_concurrently)
    writer.start()
    source = make_source(mariadb, "snap", "snap", batch_rows=400)
    try:
        time.sleep(0.05)
        source.restore(None)
        batches = [b for b in (source.poll() for _ in range(8)) if b is not None]  # snapshot chunks, inserts go on
        assert all(set(b.records.column("_lg_op").to_pylist()) == {"r"} for b in batches)
        time.sleep(0.2)
    finally:
        stop.set()
        writer.join()
    batches += drain(source)
    source.close()
    ids = [row[0] for row in rows_of(batches, "id")]
    ops = {row[1] for row in rows_of(batches, "id", "_lg_op")}
    expected = {int(str(row[0])) for row in mariadb.query("SELECT id FROM snap.items")}
    assert len(ids) == len(set(ids)), "a row was read twice (snapshot and stream overlap)"
    assert set(ids) == expected, "a row is missing (gap between snapshot and stream)"
    assert ops == {"r", "c"} and len(expected) > 5100
    snapshot_positions = {b.records.column("_lg_commit_position")[0].as_py() for b in batches if b.records.num_rows}
    assert len(positions_of(batches)) == len(set(positions_of(batches)))
    assert snapshot_positions  # every batch has a commit position


def test_types_ops_and_dead_letters(mariadb: MariaDBServer) -> None:
    mariadb.execute(
        "CREATE DATABASE typed",
        """CREATE TABLE typed.t (
            id INT PRIMARY KEY, big BIGINT, ubig BIGINT UNSIGNED, amount DECIMAL(10,2), ratio DOUBLE,
            name VARCHAR(20), note TEXT, doc JSON, happened DATETIME(3), stamped TIMESTAMP(6) NULL,
            day DATE, state ENUM('new','paid'), payload BLOB, at TIME)""",
        """INSERT INTO typed.t VALUES (1, -5, 18446744073709551615, 12.34, 1.5, 'héllo', 'text', '{"a": 1}',
            '2024-01-02 03:04:05.123', '2024-01-02 03:04:05.123456', '2024-01-02', 'new', x'00ff', '12:00:00')""",
    )
    source = make_source(mariadb, "typed", "typed")
    snapshot = drain(source)
    mariadb.execute(
        """INSERT INTO typed.t VALUES (2, 7, 1, 99999999.99, -0.25, 'x', NULL, '[1,2]',
            '2024-02-29 23:59:59', '2024-02-29 23:59:59', '2024-02-29', 'paid', x'01', '23:59:59')""",
        "UPDATE typed.t SET name = 'changed', amount = 0.01 WHERE id = 1",
        "DELETE FROM typed.t WHERE id = 2",
        "INSERT INTO typed.t (id, at) VALUES (3, '30:00:00')",
    )
    streamed = drain(source)
    source.close()
    snap_row = snapshot[0].records.to_pylist()[0]
    first = streamed[0].records
    schema = first.schema
    assert schema.field("id").type == pa.int32() and schema.field("big").type == pa.int64()
    assert schema.field("ubig").type == pa.decimal128(20, 0) and schema.field("amount").type == pa.decimal128(10, 2)
    assert schema.field("ratio").type == pa.float64() and schema.field("doc").type == pa.string()
    assert schema.field("happened").type == pa.timestamp("us")
    assert schema.field("stamped").type == pa.timestamp("us", tz="UTC")
    assert schema.field("day").type == pa.date32() and schema.field("payload").type == pa.binary()
    assert schema.field("at").type == pa.time64("us")
    assert schema.field("_lg_commit_time").type == pa.timestamp("us", tz="UTC")
    assert snapshot[0].records.schema == schema, "snapshot and binlog must decode to the same Arrow schema"
    assert snap_row["ubig"] == Decimal(18446744073709551615) and snap_row["name"] == "héllo"
    assert snap_row["stamped"].isoformat() == "2024-01-02T03:04:05.123456+00:00"
    assert snap_row["happened"].isoformat() == "2024-01-02T03:04:05.123000"
    assert snap_row["payload"] == b"\x00\xff" and json.loads(snap_row["doc"]) == {"a": 1}
    rows = [row for batch in streamed for row in batch.records.to_pylist()]
    assert [(r["id"], r["_lg_op"]) for r in rows] == [(2, "c"), (1, "u"), (2, "d")]
    update, delete = rows[1], rows[2]
    assert update["name"] == "changed" and update["amount"] == Decimal("0.01")
    assert json.loads(update["_lg_before"])["name"] == "héllo"
    assert json.loads(delete["_lg_before"])["id"] == 2 and delete["state"] == "paid"
    assert rows[0]["stamped"].isoformat() == "2024-02-29T23:59:59+00:00"
    dead = [row for batch in streamed for row in batch.dead_letters.rows]
    assert len(dead) == 1 and dead[0]["field"] == "at" and "outside 00:00:00..23:59:59" in dead[0]["message"]
    assert sum(b.records_read for b in streamed) == 4


def test_multi_row_and_multi_table_transactions_are_never_split_in_positions(mariadb: MariaDBServer) -> None:
    mariadb.execute(
        "CREATE DATABASE multi",
        "CREATE TABLE multi.a (id INT PRIMARY KEY)",
        "CREATE TABLE multi.b (id INT PRIMARY KEY)",
    )
    source = make_source(mariadb, "multi", "multi", batch_rows=100, snapshot=False)
    assert drain(source) == []
    with mariadb.connect(autocommit=False) as connection, connection.cursor() as cursor:
        cursor.execute("INSERT INTO multi.a SELECT seq FROM mysql.seq_1_to_300")  # one transaction, 3x batch_rows
        cursor.execute("INSERT INTO multi.b SELECT seq FROM mysql.seq_1_to_20")
        cursor.execute("INSERT INTO multi.a SELECT seq FROM mysql.seq_301_to_310")
        connection.commit()
    before = source.position()
    first = source.poll()
    assert first is not None and first.origin == "multi.a" and first.records.num_rows == 310
    commits = set(first.records.column("_lg_commit_position").to_pylist())
    assert len(commits) == 1, "a transaction's rows share one commit position"
    indexes = [int(p.rsplit(":", 1)[1]) for p in first.positions.to_pylist()]
    assert indexes == list(range(300)) + list(range(320, 330))
    after_a = first.end_position
    assert after_a["binlog"] == before["binlog"] and after_a["marks"]["multi.a"][2] == 329
    second = source.poll()
    assert second is not None and second.origin == "multi.b" and second.records.num_rows == 20
    assert source.poll() is None and source.is_idle()
    source.close()
    # A crash after multi.a's batch was committed: the replay hands out multi.b only, with the same positions.
    replay = make_source(mariadb, "multi", "multi", batch_rows=100, snapshot=False)
    replay.restore(after_a)
    again = drain(replay)
    replay.close()
    assert [b.origin for b in again] == ["multi.b"]
    assert again[0].positions.to_pylist() == second.positions.to_pylist()


def test_schema_changes_split_batches_and_are_seen_after_a_restart(mariadb: MariaDBServer) -> None:
    mariadb.execute(
        "CREATE DATABASE ddl",
        "CREATE TABLE ddl.t (id INT PRIMARY KEY, a INT, b VARCHAR(10), c INT)",
        "INSERT INTO ddl.t VALUES (1, 1, 'x', 1)",
    )
    source = make_source(mariadb, "ddl", "ddl")
    drain(source)
    mariadb.execute(
        "INSERT INTO ddl.t VALUES (2, 2, 'y', 2)",
        "ALTER TABLE ddl.t ADD COLUMN d INT",
        "INSERT INTO ddl.t VALUES (3, 3, 'z', 3, 3)",
        "ALTER TABLE ddl.t DROP COLUMN c",
        "INSERT INTO ddl.t VALUES (4, 4, 'w', 4)",
        "ALTER TABLE ddl.t RENAME COLUMN b TO b2",
        "INSERT INTO ddl.t VALUES (5, 5, 'v', 5)",
    )
    batches = drain(source)
    saved = source.position()
    source.close()
    assert [b.records.column("id").to_pylist() for b in batches] == [[2], [3], [4], [5]]
    kinds = [[(c.kind, c.column, c.old_name) for ch in b.schema_changes for c in ch.changes] for b in batches]
    assert kinds == [
        [],
        [("column_added", "d", None)],
        [("column_dropped", "c", None)],
        [("column_renamed", "b2", "b")],
    ]
    assert batches[1].records.schema.names[:5] == ["id", "a", "b", "c", "d"]
    assert "c" not in batches[2].records.schema.names and "b2" in batches[3].records.schema.names
    assert batches[3].schema_changes[0].detail["ddl"] == ["ALTER TABLE ddl.t RENAME COLUMN b TO b2"]
    assert batches[3].schema_changes[0].primary_key == ["id"]
    # Retype while the source is stopped: seen on restart, the row before it kept apart from the rows after.
    mariadb.execute(
        "INSERT INTO ddl.t VALUES (6, 6, 'u', 6)",
        "ALTER TABLE ddl.t MODIFY COLUMN a BIGINT",
        "INSERT INTO ddl.t VALUES (7, 7000000000, 't', 7)",
    )
    restarted = make_source(mariadb, "ddl", "ddl")
    restarted.restore(saved)
    after = drain(restarted)
    restarted.close()
    assert [b.records.column("id").to_pylist() for b in after] == [[6], [7]]
    assert after[0].schema_changes == [] and after[0].records.schema.field("a").type == pa.int32()
    (change,) = after[1].schema_changes
    assert [(c.kind, c.column, c.old_type, c.new_type) for c in change.changes] == [
        ("column_retyped", "a", "int", "bigint")
    ]
    assert change.position == after[1].records.column("_lg_commit_position")[0].as_py()
    assert after[1].records.column("a").to_pylist() == [7_000_000_000]


def test_restore_from_an_older_position_replays_without_loss(mariadb: MariaDBServer) -> None:
    mariadb.execute("CREATE DATABASE replay", "CREATE TABLE replay.t (id INT PRIMARY KEY, v INT)")
    source = make_source(mariadb, "replay", "replay", snapshot=False)
    drain(source)
    checkpoints: list[tuple[dict[str, Any], list[str]]] = []
    for round_ in range(3):
        mariadb.execute(f"INSERT INTO replay.t SELECT seq + {round_ * 100}, seq FROM mysql.seq_1_to_50")
        batches = drain(source)
        checkpoints.append((source.position(), positions_of(batches)))
    source.close()
    older, _ = checkpoints[0]
    replay = make_source(mariadb, "replay", "replay", snapshot=False)
    replay.restore(older)
    replayed = drain(replay)
    replay.close()
    assert positions_of(replayed) == checkpoints[1][1] + checkpoints[2][1]


def test_binlog_rotation_mid_stream_and_retention_status(mariadb: MariaDBServer) -> None:
    mariadb.execute("CREATE DATABASE rot", "CREATE TABLE rot.t (id INT PRIMARY KEY)")
    source = make_source(mariadb, "rot", "rot", snapshot=False)
    drain(source)
    start = source.position()
    mariadb.execute(
        "INSERT INTO rot.t SELECT seq FROM mysql.seq_1_to_10",
        "FLUSH BINARY LOGS",
        "INSERT INTO rot.t SELECT seq FROM mysql.seq_11_to_20",
        "FLUSH BINARY LOGS",
        "INSERT INTO rot.t SELECT seq FROM mysql.seq_21_to_30",
    )
    ids = [row[0] for row in rows_of(drain(source), "id")]
    assert ids == list(range(1, 31))
    end = source.position()
    assert end["binlog"]["file"] != start["binlog"]["file"]
    source.acknowledge(start)
    status = source.status()
    assert status["acknowledged_file_present"] is True and status["acknowledged_lag_bytes"] > 0
    assert status["read_lag_bytes"] == 0 and len(status["binlog_files"]) >= 3
    source.close()
    resumed = make_source(mariadb, "rot", "rot", snapshot=False)
    resumed.restore(start)
    assert [row[0] for row in rows_of(drain(resumed), "id")] == list(range(1, 31)), "resume across rotation"
    mariadb.execute(f"PURGE BINARY LOGS TO '{end['binlog']['file']}'")
    resumed.acknowledge(start)
    assert resumed.status()["acknowledged_file_present"] is False
    resumed.close()


def test_gtid_positions(mariadb: MariaDBServer) -> None:
    mariadb.execute("CREATE DATABASE gt", "CREATE TABLE gt.t (id INT PRIMARY KEY)")
    source = make_source(mariadb, "gt", "gt", snapshot=False, position_mode="gtid")
    drain(source)
    mariadb.execute("INSERT INTO gt.t VALUES (1), (2)")
    assert [row[0] for row in rows_of(drain(source), "id")] == [1, 2]
    saved = source.position()
    assert saved["binlog"]["gtid"]
    source.close()
    mariadb.execute("INSERT INTO gt.t VALUES (3)", "FLUSH BINARY LOGS", "INSERT INTO gt.t VALUES (4)")
    resumed = make_source(mariadb, "gt", "gt", snapshot=False, position_mode="gtid")
    resumed.restore(saved)
    assert [row[0] for row in rows_of(drain(resumed), "id")] == [3, 4]
    resumed.close()


# -- a kill during the snapshot ---------------------------------------------------------------------

CHILD = """
import json, os, sys, time
from lakegate.sources.mysql import MySQLSource, MySQLSourceSpec
spec = MySQLSourceSpec.model_validate_json(sys.argv[1])
log = sys.argv[2]
position = None
if os.path.exists(log):
    for line in open(log):
        if line.endswith("\\n"):
            position = json.loads(line)["position"]
source = MySQLSource(spec)
source.restore(position)
with open(log, "a") as out:
    while True:
        batch = source.poll()
        if batch is None:
            if source.is_idle() and sys.argv[3] == "drain":
                break
            continue
        rows = batch.records.select(["id", "v", "_lg_op", "_lg_commit_position"]).to_pylist()
        for row, pos in zip(rows, batch.positions.to_pylist()):
            row["position"] = pos
        # one line per "checkpoint": the rows and the position after them, made durable together
        out.write(json.dumps({"rows": rows, "position": batch.end_position}) + "\\n")
        out.flush()
        os.fsync(out.fileno())
        time.sleep(float(sys.argv[4]))
"""


def committed_rows(log: Path) -> Iterator[dict[str, Any]]:
    for line in log.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            yield from json.loads(line)["rows"]


@pytest.mark.slow
def test_sigkill_during_snapshot_then_restart_covers_every_row(mariadb: MariaDBServer, tmp_path: Path) -> None:
    mariadb.execute(
        "CREATE DATABASE killed",
        "CREATE TABLE killed.t (id INT PRIMARY KEY, v INT)",
        "INSERT INTO killed.t SELECT seq, 0 FROM mysql.seq_1_to_20000",
    )
    spec = MySQLSourceSpec(
        name="killed",
        port=mariadb.port,
        user=mariadb.user,
        password_env=PASSWORD_ENV,
        databases=["killed"],
        batch_rows=500,
    )
    log = tmp_path / "checkpoints.ndjson"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, spec.model_dump_json(), str(log), "forever", "0.05"], env=env
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 8):
        time.sleep(0.02)
    # changes during the snapshot, before and after the kill: updates on both sides of the copy, inserts, deletes
    mariadb.execute(
        "UPDATE killed.t SET v = 1 WHERE id IN (5, 19000)",
        "INSERT INTO killed.t VALUES (30001, 1)",
        "DELETE FROM killed.t WHERE id IN (6, 19001)",
    )
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    lines_before = log.read_text().count("\n")
    assert 8 <= lines_before < 40, "the kill must land during the snapshot"
    assert json.loads(log.read_text().splitlines()[-1])["position"]["snapshot"] is not None
    mariadb.execute(
        "UPDATE killed.t SET v = 2 WHERE id IN (7, 19002)",
        "INSERT INTO killed.t VALUES (30002, 2)",
        "DELETE FROM killed.t WHERE id = 8",
    )
    restarted = subprocess.run(
        [sys.executable, "-c", CHILD, spec.model_dump_json(), str(log), "drain", "0"], env=env, timeout=60
    )
    assert restarted.returncode == 0
    rows = list(committed_rows(log))
    state = mirror(rows, "id")
    expected = {int(str(i)): int(str(v)) for i, v in mariadb.query("SELECT id, v FROM killed.t")}
    assert {key: row["v"] for key, row in state.items()} == expected
    ops = {row["_lg_op"] for row in rows}
    assert ops >= {"r", "u", "c", "d"}
    copied = [row for row in rows if row["_lg_op"] == "r"]
    assert len({row["_lg_commit_position"] for row in copied}) == 2, "the restart continues in a second snapshot"
    assert len(copied) <= 20_001, "the restart resumes after the last copied key instead of copying again"
    duplicates = len(rows) - len({(row["id"], row["position"], row["_lg_commit_position"]) for row in rows})
    assert duplicates == 0, "no record is handed out twice under the same position"


# -- throughput -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_streaming_decode_throughput(mariadb: MariaDBServer) -> None:
    mariadb.execute(
        "CREATE DATABASE perf",
        """CREATE TABLE perf.t (id INT PRIMARY KEY, amount DECIMAL(10,2), name VARCHAR(40), ratio DOUBLE,
            at DATETIME(6), flag TINYINT, note TEXT)""",
    )
    source = make_source(mariadb, "perf", "perf", snapshot=False)
    drain(source)
    total = 40_000
    for start in range(0, total, 5_000):
        mariadb.execute(
            f"INSERT INTO perf.t SELECT seq, seq / 100, CONCAT('name-', seq), seq * 0.5, "
            f"'2024-01-01 00:00:00' + INTERVAL seq SECOND, seq % 2, 'some text' "
            f"FROM mysql.seq_{start + 1}_to_{start + 5_000}"
        )
    began = time.perf_counter()
    batches = drain(source)
    elapsed = time.perf_counter() - began
    source.close()
    assert sum(b.records.num_rows for b in batches) == total
    rate = total / elapsed
    print(f"\nbinlog streaming decode into Arrow: {total} rows in {elapsed:.2f} s = {rate:,.0f} rows/s")
    assert rate > 3_000
