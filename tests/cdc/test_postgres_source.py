"""PostgresSource against a private PostgreSQL: snapshot + stream, types, TOAST, DDL, acknowledge, kills."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from pydantic import ValidationError

from lakegate.core.batch import SourceBatch
from lakegate.core.cdc import BEFORE, COMMIT_POSITION, OP
from lakegate.sources.base import Source
from lakegate.sources.postgres import UNCHANGED_COLUMN, PostgresSource, PostgresSourceSpec, drop_slot, slot_status

pytestmark = pytest.mark.integration
BIG = "(SELECT string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 400) i)"
REPO = Path(__file__).resolve().parents[2]


def sql(dsn: str, *statements: str) -> list[Any]:
    """Run statements in autocommit; the rows of the last one that returns rows."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    rows: list[Any] = []
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                if cur.description is not None:
                    rows = cur.fetchall()
    finally:
        conn.close()
    return rows


def make_source(dsn: str, name: str, tables: list[str], **options: Any) -> PostgresSource:
    return PostgresSource(PostgresSourceSpec(name=name, dsn=dsn, tables=tables, **options))


def collect(source: PostgresSource, rows: int, timeout: float = 30.0) -> list[SourceBatch]:
    """Poll until ``rows`` records (and dead letters) arrived, then make sure nothing more comes."""
    batches: list[SourceBatch] = []
    deadline = time.monotonic() + timeout
    while sum(b.records_read for b in batches) < rows:
        assert time.monotonic() < deadline, f"only {sum(b.records_read for b in batches)} of {rows} rows arrived"
        batch = source.poll()
        if batch is not None:
            batches.append(batch)
    for _ in range(3):
        batch = source.poll()
        if batch is not None:
            batches.append(batch)
    assert sum(b.records_read for b in batches) == rows, "more rows than expected"
    return batches


def rows_of(batches: list[SourceBatch], origin: str | None = None) -> list[dict[str, Any]]:
    return [row for b in batches if origin in (None, b.origin) for row in b.records.to_pylist()]


@pytest.fixture
def closing() -> Iterator[Callable[[PostgresSource], PostgresSource]]:
    opened: list[PostgresSource] = []

    def register(source: PostgresSource) -> PostgresSource:
        opened.append(source)
        return source

    yield register
    for source in opened:
        source.close()


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="tables"):
        PostgresSourceSpec(name="pg", dsn="host=x", tables=[])
    with pytest.raises(ValidationError, match="tables"):
        PostgresSourceSpec(name="pg", dsn="host=x", tables=["bad name"])
    with pytest.raises(ValidationError, match="slot"):
        PostgresSourceSpec(name="pg", dsn="host=x", tables=["t"], slot="Bad-Slot")
    spec = PostgresSourceSpec(name="pg", dsn="host=x", tables=["t"])
    assert (spec.slot, spec.publication) == ("lakegate_pg", "lakegate_pg")


@pytest.mark.slow
def test_snapshot_then_stream_has_no_gap_and_no_overlap(pg_server: str, closing: Callable[..., Any]) -> None:
    sql(
        pg_server,
        "CREATE TABLE gap_t (id int PRIMARY KEY, v text)",
        "INSERT INTO gap_t SELECT g, 'v' || g FROM generate_series(1, 20000) g",
    )
    source = closing(make_source(pg_server, "gap", ["gap_t"], batch_rows=2000))
    assert isinstance(source, Source)
    stop = threading.Event()
    inserted: list[int] = []

    def writer() -> None:  # inserts and updates while the snapshot is copied and the stream starts
        conn = psycopg2.connect(pg_server)
        conn.autocommit = True
        with conn.cursor() as cur:
            next_id = 20001
            while not stop.is_set() and next_id < 20600:
                cur.execute("INSERT INTO gap_t VALUES (%s, 'new')", (next_id,))
                inserted.append(next_id)
                next_id += 1
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    source.restore(None)
    seen: list[dict[str, Any]] = []
    while source.position().get("phase") != "stream" or len(inserted) < 300:
        batch = source.poll()
        if batch is not None:
            seen += batch.records.to_pylist()
    stop.set()
    thread.join()
    expected = 20000 + len(inserted)
    seen += rows_of(collect(source, expected - len(seen)))
    ids = [row["id"] for row in seen]
    assert len(ids) == len(set(ids)) == expected  # no overlap, no gap
    assert set(ids) == set(range(1, 20001)) | set(inserted)
    snapshot = [row for row in seen if row[OP] == "r"]
    assert {row["id"] for row in snapshot} >= set(range(1, 20001))
    assert len({row[COMMIT_POSITION] for row in snapshot}) == 1
    assert all(row[OP] == "c" for row in seen if row["id"] > 20000 and row not in snapshot)


TYPES_TABLE = """
CREATE TYPE ty_mood AS ENUM ('sad', 'happy');
CREATE TABLE ty_t (
    id int PRIMARY KEY, amount numeric(12,3), free numeric, at timestamptz, naive timestamp, day date,
    doc json, docb jsonb, ints int[], texts text[], uid uuid, blob bytea, mood ty_mood, flag bool,
    ratio float8, small int2, large int8, note varchar(20)
)
"""


def test_types_inserts_updates_deletes_truncate(pg_server: str, closing: Callable[..., Any]) -> None:
    sql(pg_server, TYPES_TABLE)
    source = closing(make_source(pg_server, "types", ["ty_t"], snapshot=False))
    source.restore(None)
    sql(
        pg_server,
        """INSERT INTO ty_t VALUES (1, 12345.678, 1e40, '2024-03-01 12:30:00.123456+02', '2024-03-01 01:02:03',
           '2024-02-29', '{"a": [1, 2]}', '{"b": {"c": null}}', '{1,NULL,3}', '{"x y",NULL,"q\\"z"}',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', 'happy', true, 0.25, -7, 9007199254740993,
           'hello')""",
        "INSERT INTO ty_t (id) VALUES (2)",
        "UPDATE ty_t SET amount = -1.5, mood = 'sad', flag = false WHERE id = 1",
        "UPDATE ty_t SET id = 3 WHERE id = 2",
        "DELETE FROM ty_t WHERE id = 3",
        "INSERT INTO ty_t (id, amount, day) VALUES (4, 'NaN', '2024-01-01'), (5, 1, 'infinity'), (6, 2, '2024-01-02')",
        "TRUNCATE ty_t",
    )
    batches = collect(source, 9)
    assert {b.origin for b in batches} == {"public.ty_t"}
    rows = rows_of(batches)
    assert [r[OP] for r in rows] == ["c", "c", "u", "u", "d", "c", "t"]
    first = rows[0]
    assert first["amount"] == Decimal("12345.678")
    assert first["free"] == "10000000000000000000000000000000000000000"  # unbounded numeric stays a string
    assert first["at"] == dt.datetime(2024, 3, 1, 10, 30, 0, 123456, tzinfo=dt.UTC)
    assert first["naive"] == dt.datetime(2024, 3, 1, 1, 2, 3, tzinfo=dt.UTC)
    assert first["day"] == dt.date(2024, 2, 29)
    assert json.loads(first["doc"]) == {"a": [1, 2]} and json.loads(first["docb"]) == {"b": {"c": None}}
    assert first["ints"] == [1, None, 3] and first["texts"] == ["x y", None, 'q"z']
    assert first["uid"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert first["blob"] == b"\x00\xff\x10" and first["mood"] == "happy" and first["flag"] is True
    assert (first["ratio"], first["small"], first["large"], first["note"]) == (0.25, -7, 9007199254740993, "hello")
    assert first[BEFORE] is None
    update = rows[2]
    assert (update["amount"], update["mood"], update["flag"]) == (Decimal("-1.500"), "sad", False)
    assert update[BEFORE] is None  # REPLICA IDENTITY DEFAULT, key unchanged: no before image
    key_update, delete = rows[3], rows[4]
    assert key_update["id"] == 3 and json.loads(key_update[BEFORE]) == {"id": "2"}
    assert delete["id"] == 3 and json.loads(delete[BEFORE]) == {"id": "3"}
    assert rows[5]["id"] == 6 and rows[6]["id"] is None
    schema = batches[0].records.schema
    assert str(schema.field("amount").type) == "decimal128(12, 3)"
    assert str(schema.field("ints").type) == "list<item: int32>"
    dead = [d for b in batches for d in b.dead_letters.rows]
    assert sorted((d["field"], d["raw_value"]) for d in dead) == [("amount", "NaN"), ("day", "infinity")]
    assert all(d["reason_code"] == "type_mismatch" and d["target_table"] == "public.ty_t" for d in dead)
    assert sum(b.records_read for b in batches) == sum(b.records.num_rows + len(b.dead_letters) for b in batches)


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
def test_unchanged_toast_is_never_overwritten(pg_server: str, identity: str, closing: Callable[..., Any]) -> None:
    table = f"toast_{identity.lower()}"
    sql(
        pg_server,
        f"CREATE TABLE {table} (id int PRIMARY KEY, note text, big text)",
        f"ALTER TABLE {table} REPLICA IDENTITY {identity}",
    )
    source = closing(make_source(pg_server, table, [table], snapshot=False))
    source.restore(None)
    big = sql(pg_server, f"INSERT INTO {table} VALUES (1, 'a', {BIG}) RETURNING big")[0][0]
    sql(pg_server, f"UPDATE {table} SET note = 'b' WHERE id = 1")
    rows = rows_of(collect(source, 2))
    assert rows[0]["big"] == big
    update = rows[1]
    assert update["note"] == "b"
    if identity == "DEFAULT":  # not sent: null, and listed so a merge keeps the stored value
        assert update["big"] is None and update[UNCHANGED_COLUMN] == ["big"]
        assert rows[0].get(UNCHANGED_COLUMN) is None  # the column is only present in batches that need it
    else:  # FULL: filled from the old row the server sends
        assert update["big"] == big and UNCHANGED_COLUMN not in update
        assert json.loads(update[BEFORE])["note"] == "a"


def test_schema_changes_split_batches(pg_server: str, closing: Callable[..., Any]) -> None:
    sql(pg_server, "CREATE TABLE ddl_t (id int PRIMARY KEY, a int, b text, c int)")
    source = closing(make_source(pg_server, "ddl", ["ddl_t"], snapshot=False))
    source.restore(None)
    sql(
        pg_server,
        "BEGIN; INSERT INTO ddl_t VALUES (1, 1, 'x', 1); ALTER TABLE ddl_t ADD COLUMN d date;"
        " INSERT INTO ddl_t VALUES (2, 2, 'y', 2, '2024-01-01'); COMMIT",
        "ALTER TABLE ddl_t DROP COLUMN c",
        "INSERT INTO ddl_t VALUES (3, 3, 'z', '2024-01-02')",
        "ALTER TABLE ddl_t ALTER COLUMN a TYPE bigint",
        "INSERT INTO ddl_t VALUES (4, 4, 'w', NULL)",
        "ALTER TABLE ddl_t RENAME COLUMN b TO label",
        "INSERT INTO ddl_t VALUES (5, 5, 'v', NULL)",
        "INSERT INTO ddl_t VALUES (6, 6, 'u', NULL)",
    )
    batches = collect(source, 6)
    shapes: list[tuple[list[str], list[int]]] = []
    for batch in batches:
        columns, ids = batch.records.column_names[:-4], [r["id"] for r in batch.records.to_pylist()]
        if shapes and shapes[-1][0] == columns and not batch.schema_changes:
            shapes[-1][1].extend(ids)  # one shape that two polls happened to read (timing, not DDL)
        else:
            shapes.append((columns, ids))
    assert shapes == [
        (["id", "a", "b", "c"], [1]),
        (["id", "a", "b", "c", "d"], [2]),
        (["id", "a", "b", "d"], [3]),
        (["id", "a", "b", "d"], [4]),
        (["id", "a", "label", "d"], [5, 6]),
    ]
    assert batches[0].schema_changes == []
    changed = [b for b in batches if b.schema_changes]
    assert [[r["id"] for r in b.records.to_pylist()][0] for b in changed] == [2, 3, 4, 5]
    added, dropped, retyped, renamed = (b.schema_changes[0] for b in changed)
    assert [(c.kind, c.column, c.new_type) for c in added.changes] == [("column_added", "d", "date")]
    assert added.position == changed[0].records.column(COMMIT_POSITION)[0].as_py()  # same transaction as row 1
    assert [(c.kind, c.column, c.old_type) for c in dropped.changes] == [("column_dropped", "c", "int")]
    assert [(c.kind, c.column, c.old_type, c.new_type) for c in retyped.changes] == [
        ("column_retyped", "a", "int", "long")
    ]
    assert changed[2].records.schema.field("a").type == "int64"
    assert [(c.kind, c.column, c.old_name) for c in renamed.changes] == [("column_renamed", "label", "b")]
    assert renamed.primary_key == ["id"] and renamed.before["b"] == "string" and "label" in renamed.after


def _confirmed(dsn: str, slot: str) -> str:
    return str(slot_status(dsn, slot).confirmed_flush_lsn)


def test_acknowledge_confirms_only_when_called_and_restore_replays(pg_server: str, closing: Callable[..., Any]) -> None:
    sql(pg_server, "CREATE TABLE ack_t (id int PRIMARY KEY)")
    source = closing(make_source(pg_server, "ack", ["ack_t"], snapshot=False))
    source.restore(None)
    initial = _confirmed(pg_server, "lakegate_ack")
    sql(pg_server, "INSERT INTO ack_t VALUES (1)", "INSERT INTO ack_t VALUES (2)")
    collect(source, 2)
    first = source.position()
    sql(pg_server, "INSERT INTO ack_t VALUES (3)")
    collect(source, 1)
    time.sleep(1.2)
    assert _confirmed(pg_server, "lakegate_ack") == initial  # read, never acknowledged
    source.acknowledge(first)
    deadline = time.monotonic() + 5
    while _confirmed(pg_server, "lakegate_ack") != first["lsn"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    source.close()
    replayed = closing(make_source(pg_server, "ack", ["ack_t"], snapshot=False))
    replayed.restore(first)  # the last committed position: row 3 was read but not committed
    assert [r["id"] for r in rows_of(collect(replayed, 1))] == [3]
    status = slot_status(pg_server, "lakegate_ack")
    assert status.exists and status.active and status.lag_bytes is not None and status.lag_bytes >= 0
    replayed.close()
    assert drop_slot(pg_server, "lakegate_ack") and not slot_status(pg_server, "lakegate_ack").exists
    assert not drop_slot(pg_server, "lakegate_ack")


def test_checkpoint_between_batches_of_one_window_resumes_exactly(pg_server: str, closing: Callable[..., Any]) -> None:
    """A position taken after one table's batch of a multi-table window skips exactly what was returned."""
    sql(pg_server, "CREATE TABLE win_a (id int PRIMARY KEY)", "CREATE TABLE win_b (id int PRIMARY KEY)")
    source = closing(make_source(pg_server, "win", ["win_a", "win_b"], snapshot=False))
    source.restore(None)
    sql(
        pg_server,
        "BEGIN; INSERT INTO win_a SELECT generate_series(1, 5); INSERT INTO win_b SELECT generate_series(1, 5); COMMIT",
        "BEGIN; INSERT INTO win_b VALUES (6); INSERT INTO win_a VALUES (6); COMMIT",
    )
    time.sleep(0.5)
    first = source.poll()
    assert first is not None and first.origin == "public.win_a" and first.records.num_rows == 6
    checkpoint = source.position()
    assert checkpoint["emitted"] and checkpoint["lsn"] != first.records.column(COMMIT_POSITION)[-1].as_py()
    rest = collect(source, 6)
    assert {b.origin for b in rest} == {"public.win_b"}
    source.close()
    resumed = closing(make_source(pg_server, "win", ["win_a", "win_b"], snapshot=False))
    resumed.restore(checkpoint)
    again = collect(resumed, 6)
    assert {b.origin for b in again} == {"public.win_b"}
    assert sorted(r["id"] for r in rows_of(again)) == [1, 2, 3, 4, 5, 6]
    assert [p for b in again for p in b.positions.to_pylist()] == [p for b in rest for p in b.positions.to_pylist()]


KILLED_READER = """
import json, os, sys
from lakegate.sources.postgres import PostgresSource, PostgresSourceSpec
dsn, out, state = sys.argv[1], sys.argv[2], sys.argv[3]
position = json.load(open(state)) if os.path.exists(state) else None
source = PostgresSource(PostgresSourceSpec(name="kill", dsn=dsn, tables=["kill_t"], batch_rows=500))
source.restore(position)
with open(out, "a") as sink:
    while True:
        batch = source.poll()
        if batch is None:
            if source.is_idle():
                break
            continue
        for row in batch.records.select(["id", "_lg_op", "_lg_commit_position"]).to_pylist():
            sink.write(json.dumps(row) + "\\n")
        sink.flush()
        os.fsync(sink.fileno())  # the "commit" of this batch, then its position (as the runtime does)
        with open(state + ".tmp", "w") as handle:
            json.dump(source.position(), handle)
        os.replace(state + ".tmp", state)
        print("batch", flush=True)
print("done", flush=True)
"""


@pytest.mark.slow
def test_killed_during_snapshot_redoes_it(pg_server: str, tmp_path: Path) -> None:
    sql(
        pg_server,
        "CREATE TABLE kill_t (id int PRIMARY KEY, pad text)",
        "INSERT INTO kill_t SELECT g, repeat('p', 200) FROM generate_series(1, 30000) g",
    )
    out, state = tmp_path / "rows.ndjson", tmp_path / "position.json"
    script = tmp_path / "reader.py"
    script.write_text(KILLED_READER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(script), pg_server, str(out), str(state)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    for _ in range(5):  # let five snapshot batches land, then kill without warning
        assert process.stdout.readline().startswith("batch")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())
    assert killed_at["phase"] == "snapshot" and 0 < killed_at["rows"] < 30000
    sql(pg_server, "INSERT INTO kill_t VALUES (30001, 'after the kill')", "DELETE FROM kill_t WHERE id = 1")
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    attempts = sorted({r["_lg_commit_position"] for r in rows if r["_lg_op"] == "r"})
    assert len(attempts) == 2  # the killed snapshot and the redone one, told apart by commit position
    redone = [r["id"] for r in rows if r["_lg_op"] == "r" and r["_lg_commit_position"] == attempts[-1]]
    first_try = [r for r in rows if r["_lg_op"] == "r" and r["_lg_commit_position"] == attempts[0]]
    assert len(first_try) == killed_at["rows"]
    # The redo is complete on its own (no gap) and holds every row once (duplicates only across attempts).
    assert sorted(redone) == list(range(2, 30002))
    assert {r["id"] for r in rows} >= set(range(1, 30002))
    assert sql(pg_server, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lakegate_kill'") == [(1,)]


class _Replay:
    """Fault injection: replays message bytes captured from the real server, some of them damaged."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.messages = [type("Message", (), {"payload": p})() for p in payloads]
        self.never_readable, self.writer = os.pipe()

    def close(self) -> None:
        os.close(self.never_readable)
        os.close(self.writer)

    def read_message(self) -> Any:
        return self.messages.pop(0) if self.messages else None

    def fileno(self) -> int:
        return self.never_readable


def test_damaged_messages_become_dead_letters(pg_server: str) -> None:
    from tests.cdc.test_pgoutput import _capture

    payloads = _capture(
        pg_server,
        [
            "INSERT INTO cap_t VALUES (1, 1.5, 'a', 'sad', NULL)",
            "INSERT INTO cap_t VALUES (2, 2.5, 'b', 'happy', NULL)",
            "INSERT INTO cap_t VALUES (3, 3.5, 'c', 'happy', NULL)",
            "DELETE FROM cap_t WHERE id = 3",
        ],
        expected_commits=4,
    )
    inserts = [i for i, p in enumerate(payloads) if p[:1] == b"I"]
    delete = next(i for i, p in enumerate(payloads) if p[:1] == b"D")
    payloads[inserts[1]] = payloads[inserts[1]][:-3]  # truncated insert (bulk path, then per message)
    payloads[delete] = payloads[delete][:9]  # truncated delete (per-message path)
    source = make_source(pg_server, "replay", ["cap_t"], snapshot=False)
    source._cursor = replay = _Replay(payloads)
    source._phase = "stream"
    batches = []
    while (batch := source.poll()) is not None:
        batches.append(batch)
    replay.close()
    rows = rows_of(batches)
    assert [(r["id"], r[OP]) for r in rows] == [(1, "c"), (3, "c")]
    dead = [d for b in batches for d in b.dead_letters.rows]
    assert sorted(d["reason_code"] for d in dead) == ["malformed_row", "malformed_row"]
    assert {d["raw_payload"] for d in dead} == {payloads[inserts[1]], payloads[delete]}
    assert sum(b.records_read for b in batches) == 4
