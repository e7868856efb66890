"""PostgreSQL CDC through the whole pipeline: snapshot + stream into mirror and changelog tables, SIGKILLs,
schema changes, the slot's acknowledgement, and the CLI (init, status, query, cdc drop-slot).

Every test uses its own database on the session's private server (``pg_server``) and its own data dir.
The always-current read path (``query.cdc_views``) is what is compared with the source tables.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest
import yaml

from lakegate.cli.main import main as lakegate
from lakegate.contracts.registry import ContractRegistry
from lakegate.core.config import load_spec
from lakegate.query.cdc_views import read_current
from lakegate.runtime.pipeline import Pipeline
from lakegate.runtime.state import StateStore
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.commit import last_committed_checkpoint
from lakegate.sources.postgres import slot_status
from lakegate.sources.postgres.pgoutput import lsn_from_str
from tests.cdc.pg_server import find_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------------


def database(server_dsn: str, name: str) -> str:
    """A fresh database on the session's server; returns its DSN."""
    conn = psycopg2.connect(server_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return server_dsn.replace("dbname=postgres", f"dbname={name}")


def sql(dsn: str, *statements: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def fetch(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(statement)
        rows = list(cur.fetchall())
    conn.close()
    return rows


def write_spec(path: Path, dsn: str, source_tables: list[str], **extra: Any) -> Path:
    source = {"type": "postgres", "name": "pg", "dsn": dsn, "tables": source_tables, **extra.pop("source", {})}
    data = {
        "pipeline": "cdc",
        "data_dir": str(path / "data"),
        "sources": [source],
        "checkpoint": {"interval": "1s", "compact_every": 3},
        **extra,
    }
    spec = path / "cdc.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def start_pipeline(spec: Path, *args: str, fault: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("LAKEGATE_FAULT", None)
    if fault:
        env["LAKEGATE_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "lakegate.cli.main", "run", str(spec), "-q", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_until_idle(spec: Path) -> str:
    process = start_pipeline(spec, "--until-idle")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode()


def current(spec_path: Path, table: str) -> list[dict[str, Any]]:
    spec = load_spec(spec_path)
    rows = read_current(open_catalog(spec.catalog, spec.data_dir), spec.namespace, table).to_pylist()
    return rows


def changelog(spec_path: Path, table: str) -> list[dict[str, Any]]:
    spec = load_spec(spec_path)
    table_ = open_catalog(spec.catalog, spec.data_dir).load_table(f"{spec.namespace}.{table}")
    return list(table_.scan().to_arrow().to_pylist())


def project(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    return sorted(tuple(row[c] for c in columns) for row in rows)


def committed_lsn(spec_path: Path) -> int | None:
    """The highest stream LSN this pipeline committed to any of its Iceberg tables (from snapshot summaries)."""
    spec = load_spec(spec_path)
    catalog = open_catalog(spec.catalog, spec.data_dir)
    best: int | None = None
    for identifier in catalog.list_tables(spec.namespace):
        table = catalog.load_table(identifier)
        for snapshot in table.metadata.snapshots:
            summary = snapshot.summary
            text = summary.get("lakegate.source-positions") if summary is not None else None
            position = orjson.loads(text).get("pg") if text else None
            if isinstance(position, dict) and position.get("phase") == "stream":
                lsn = lsn_from_str(position["lsn"])
                best = lsn if best is None else max(best, lsn)
    return best


def pgbench(dsn_port: int, database_name: str, *args: str, background: bool = False) -> Any:
    command = [find_binary("pgbench"), "-h", "127.0.0.1", "-p", str(dsn_port), "-U", "postgres", *args, database_name]
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def port_of(dsn: str) -> int:
    return int(dsn.split("port=")[1].split()[0])


class AckWatch:
    """Samples the slot's confirmed_flush_lsn, then what Iceberg holds; the first may never pass the second."""

    def __init__(self, dsn: str, slot: str, spec: Path) -> None:
        self.dsn, self.slot, self.spec = dsn, slot, spec
        self.samples = 0
        self.violations: list[tuple[int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            status = slot_status(self.dsn, self.slot)
            if status.exists and status.confirmed_flush_lsn and (self.spec.parent / "data").exists():
                confirmed = lsn_from_str(status.confirmed_flush_lsn)
                committed = committed_lsn(self.spec)
                if committed is not None:  # before the first stream commit the slot sits at its consistent point
                    self.samples += 1
                    if confirmed > committed:
                        self.violations.append((confirmed, committed))
            self._stop.wait(max(0.05, 0.3 - (time.monotonic() - started)))

    def __enter__(self) -> AckWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- pgbench mirror with SIGKILLs -----------------------------------------------------------------

PGBENCH_TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
MIRRORS = {
    "pgbench_accounts": ["aid", "bid", "abalance", "filler"],
    "pgbench_branches": ["bid", "bbalance", "filler"],
    "pgbench_tellers": ["tid", "bid", "tbalance", "filler"],
}


@pytest.mark.slow
def test_pgbench_mirror_survives_five_sigkills(pg_server: str, tmp_path: Path) -> None:
    """pgbench -i, the pipeline takes its snapshot, then pgbench -T 30 -c 4 (unthrottled) while the pipeline
    streams and is SIGKILLed 5 times at random moments (once right after an Iceberg commit, before the
    slot is acknowledged); kills inside a snapshot are the next test's subject."""
    dsn = database(pg_server, "bench_kill")
    pgbench(port_of(dsn), "bench_kill", "-i", "-q", "-s", "1")
    spec = write_spec(tmp_path, dsn, PGBENCH_TABLES)
    run_until_idle(spec)
    rng = random.Random(5)
    load = pgbench(port_of(dsn), "bench_kill", "-T", "30", "-c", "4", "-j", "2", background=True)
    with AckWatch(dsn, "lakegate_pg", spec) as watch:
        for kill in range(5):
            process = start_pipeline(spec, "--max-seconds", "600", fault="after_commit@2" if kill == 2 else None)
            try:
                process.wait(timeout=rng.uniform(2.0, 5.5))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
            assert process.returncode == -signal.SIGKILL, (
                process.stderr.read().decode()[-3000:] if process.stderr else ""
            )
        run_until_idle(spec)  # streams while pgbench still runs, stops once drained
        output, errors = load.communicate(timeout=120)
        assert load.returncode == 0, errors[-2000:]
        run_until_idle(spec)
    assert watch.samples >= 1 and not watch.violations, watch.violations[:5]

    for table, columns in MIRRORS.items():
        source = fetch(dsn, f"SELECT {', '.join(columns)} FROM {table}")
        mirrored = project(current(spec, table), columns)
        assert mirrored == sorted(source), f"{table} differs from its source"
    history_columns = ["tid", "bid", "aid", "delta", "mtime"]
    landed = sorted(changelog(spec, "pgbench_history"), key=lambda row: row["_lg_change_seq"])
    assert len({row["_lg_position"] for row in landed}) == len(landed), "a change landed twice"
    truncates = [i for i, row in enumerate(landed) if row["_lg_op"] == "t"]
    assert len(truncates) == 1  # the TRUNCATE a pgbench run starts with
    inserts = [row for row in landed[truncates[-1] + 1 :] if row["_lg_op"] in ("r", "c")]
    source_history = fetch(dsn, f"SELECT {', '.join(history_columns)} FROM pgbench_history")
    landed_history = [(*row[:4], row[4].replace(tzinfo=None)) for row in project(inserts, history_columns)]
    assert Counter(landed_history) == Counter(tuple(r) for r in source_history)  # mtime is a naive timestamp
    assert all(row["_lg_op"] == "c" for row in inserts) and len(inserts) > 1000
    tps = float(output.split("tps = ")[1].split()[0])
    print(f"pgbench with the pipeline attached and killed 5 times: {tps:.0f} tps, {len(inserts)} history rows,"
          f" {watch.samples} acknowledgement samples")  # fmt: skip


# -- kills during the initial snapshot ------------------------------------------------------------


def snapshot_committed(spec_path: Path) -> bool:
    spec = load_spec(spec_path)
    if not (spec.state_dir / "state.db").exists():
        return False
    store = StateStore(spec.state_dir)
    try:
        record = store.latest()
    finally:
        store.close()
    position = record.source_positions.get("pg") if record is not None and record.status == "committed" else None
    return isinstance(position, dict) and position.get("phase") == "snapshot"


@pytest.mark.slow
def test_kills_during_the_snapshot_leave_no_duplicate_and_no_gap(pg_server: str, tmp_path: Path) -> None:
    dsn = database(pg_server, "snap_kill")
    sql(
        dsn,
        "CREATE TABLE big (id int PRIMARY KEY, v int, note text)",
        "INSERT INTO big SELECT g, g % 97, 'n' || g FROM generate_series(1, 150000) g",
        "CREATE TABLE events (k int, what text)",  # no primary key: a changelog
        "INSERT INTO events SELECT g, 'e' || g FROM generate_series(1, 30000) g",
    )
    spec = write_spec(
        tmp_path,
        dsn,
        ["big", "events"],
        source={"batch_rows": 5000},
        checkpoint={"interval": "30s", "max_rows": 20000, "compact_every": 2},
    )
    for attempt in range(2):
        process = start_pipeline(spec, "--max-seconds", "600")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not snapshot_committed(spec) and process.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2 * attempt)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert snapshot_committed(spec), "the kill must land after a checkpoint inside the snapshot"
        # between the attempts: rows copied by the killed attempt go away or change, new rows arrive
        sql(
            dsn,
            f"DELETE FROM big WHERE id BETWEEN {1 + attempt * 100} AND {50 + attempt * 100}",
            f"UPDATE big SET v = -1 WHERE id BETWEEN {1000 + attempt * 100} AND {1050 + attempt * 100}",
            f"INSERT INTO big SELECT g, 0, 'new' FROM generate_series({200001 + attempt * 10}, {200005 + attempt * 10})"
            " g",
            f"INSERT INTO events VALUES ({90000 + attempt}, 'between attempts')",
        )
    run_until_idle(spec)
    sql(dsn, "UPDATE big SET note = 'streamed' WHERE id % 1000 = 0", "INSERT INTO events VALUES (99999, 'streamed')")
    run_until_idle(spec)
    columns = ["id", "v", "note"]
    mirrored = project(current(spec, "big"), columns)
    assert len(mirrored) == len({row[0] for row in mirrored}), "duplicate keys in the mirror"
    assert mirrored == sorted(fetch(dsn, "SELECT id, v, note FROM big"))
    landed = changelog(spec, "events")
    snapshot_rows = [(row["k"], row["what"]) for row in landed if row["_lg_op"] == "r"]
    streamed = [(row["k"], row["what"]) for row in landed if row["_lg_op"] == "c"]
    assert Counter(snapshot_rows + streamed) == Counter(fetch(dsn, "SELECT k, what FROM events"))
    assert len({row["_lg_commit_position"] for row in landed if row["_lg_op"] == "r"}) == 1, "superseded r rows"


# -- schema changes -------------------------------------------------------------------------------


def run_in_process(spec_path: Path) -> Any:
    with Pipeline(load_spec(spec_path)) as pipeline:
        summary = pipeline.run(until_idle=True)
        assert pipeline.cdc is not None and pipeline.cdc.compactor is not None
        pipeline.cdc.compactor.wait()
    return summary


@pytest.mark.slow
def test_schema_changes_are_decided_recorded_and_lose_nothing(pg_server: str, tmp_path: Path) -> None:
    dsn = database(pg_server, "schema_changes")
    sql(
        dsn,
        "CREATE TABLE acct (id int PRIMARY KEY, a int, b text, c int, d text)",
        "INSERT INTO acct SELECT g, g, 'b' || g, g * 10, 'd' || g FROM generate_series(1, 200) g",
    )
    spec = write_spec(tmp_path, dsn, ["acct"], checkpoint={"interval": "30s", "compact_every": 1})
    run_in_process(spec)
    # add a column; old-shape and new-shape rows in one checkpoint
    sql(
        dsn,
        "UPDATE acct SET b = 'before-add' WHERE id <= 5",
        "ALTER TABLE acct ADD COLUMN e bigint",
        "UPDATE acct SET e = id * 100, b = 'after-add' WHERE id <= 10",
        "INSERT INTO acct VALUES (201, 201, 'b201', 2010, 'd201', 20100)",
    )
    run_in_process(spec)
    # drop a column while rows flow
    sql(dsn, "ALTER TABLE acct DROP COLUMN d", "UPDATE acct SET c = -c WHERE id BETWEEN 11 AND 20")
    run_in_process(spec)
    # the pipeline is stopped during these: a rename, a widening, a retype to text
    sql(
        dsn,
        "UPDATE acct SET b = 'before-rename' WHERE id = 21",
        "ALTER TABLE acct RENAME COLUMN b TO b_renamed",
        "UPDATE acct SET b_renamed = 'after-rename' WHERE id BETWEEN 22 AND 30",
        "ALTER TABLE acct ALTER COLUMN c TYPE bigint",
        "UPDATE acct SET c = 5000000000 WHERE id = 31",
        "ALTER TABLE acct ALTER COLUMN a TYPE text",
        "UPDATE acct SET a = '4242' WHERE id = 32",
        "INSERT INTO acct (id, a, b_renamed, c) VALUES (300, 'not a number', 'held', 1)",
    )
    summary = run_in_process(spec)
    assert summary.counts.dead_lettered == 1

    rows = {row["id"]: row for row in current(spec, "acct")}
    source = {r[0]: r for r in fetch(dsn, "SELECT id, a, b_renamed, c, e FROM acct")}
    assert set(rows) == set(source) - {300}, "only the held row is missing"
    for key, (_, a, b, c, e) in source.items():
        if key == 300:
            continue
        row = rows[key]
        assert (row["a"], row["b"], row["c"], row["e"]) == (int(a), b, c, e), key
        assert "b_renamed" not in row and "d" in row
    assert rows[31]["c"] == 5_000_000_000 and rows[32]["a"] == 4242
    assert rows[15]["d"] is None and rows[150]["d"] == "d150"  # dropped: null from then on, earlier values kept

    spec_ = load_spec(spec)
    decisions = ContractRegistry(spec_.registry_url).decisions(dataset="acct", kind="schema.cdc_change")
    kinds = Counter(d.evidence["change"]["kind"] for d in decisions)
    assert kinds == {"column_added": 1, "column_dropped": 1, "column_renamed": 1, "column_retyped": 2}, kinds
    retype_a = next(d for d in decisions if d.evidence["change"] == {**d.evidence["change"], "column": "a"}
                    and d.evidence["change"]["kind"] == "column_retyped")  # fmt: skip
    assert "cast back to int" in retype_a.summary and retype_a.reversal
    rename = next(d for d in decisions if d.evidence["change"]["kind"] == "column_renamed")
    assert "Iceberg column b" in rename.summary
    dead = query_rows(spec, "SELECT reason_code, field FROM lakegate.cdc__dead_letter")
    assert dead == [("schema_held", "a")]


def query_rows(spec_path: Path, statement: str) -> list[tuple[Any, ...]]:
    from lakegate.query.duckdb_reader import query

    spec = load_spec(spec_path)
    return [tuple(r.values()) for r in query(open_catalog(spec.catalog, spec.data_dir), statement).to_pylist()]


# -- acknowledgement ------------------------------------------------------------------------------


def test_slot_is_acknowledged_only_up_to_what_iceberg_holds(pg_server: str, tmp_path: Path) -> None:
    dsn = database(pg_server, "ack")
    sql(dsn, "CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
    spec_path = write_spec(tmp_path, dsn, ["t"])
    seen: list[tuple[int, int]] = []

    class Watched(Pipeline):
        def _acknowledge_positions(self) -> None:
            super()._acknowledge_positions()
            confirmed = lsn_from_str(slot_status(dsn, "lakegate_pg").confirmed_flush_lsn or "0/0")
            committed = committed_lsn(spec_path)
            if committed is not None:
                seen.append((confirmed, committed))

    for round_ in range(3):
        sql(dsn, f"UPDATE t SET v = {round_ + 1} WHERE id % 3 = {round_}", "INSERT INTO t VALUES (1000 + 1, 1)"
            if round_ == 0 else "SELECT 1")  # fmt: skip
        with Watched(load_spec(spec_path)) as pipeline:
            pipeline.run(until_idle=True)
    assert len(seen) >= 3
    assert all(confirmed <= committed for confirmed, committed in seen), seen
    assert seen[-1][0] == seen[-1][1], "after the last commit the slot is confirmed up to it"
    # a crash after the Iceberg commit and before the acknowledgement replays; nothing lands twice
    sql(dsn, "UPDATE t SET v = 99 WHERE id <= 10")
    before = slot_status(dsn, "lakegate_pg").confirmed_flush_lsn
    process = start_pipeline(spec_path, "--until-idle", fault="after_commit")
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert slot_status(dsn, "lakegate_pg").confirmed_flush_lsn == before
    run_until_idle(spec_path)
    assert project(current(spec_path, "t"), ["id", "v"]) == sorted(fetch(dsn, "SELECT id, v FROM t"))
    spec = load_spec(spec_path)
    changes = open_catalog(spec.catalog, spec.data_dir).load_table("lakegate.t__changes")
    positions = changes.scan().to_arrow().column("_lg_position").to_pylist()
    assert len(positions) == len(set(positions))
    assert last_committed_checkpoint(changes, "cdc") is not None


# -- the CLI --------------------------------------------------------------------------------------


def test_init_writes_a_spec_that_runs_and_status_query_drop_slot_work(
    pg_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = database(pg_server, "cli_init")
    sql(
        dsn,
        "CREATE TABLE shop (id int PRIMARY KEY, price numeric(8,2), tags text[])",
        "INSERT INTO shop SELECT g, g + 0.5, ARRAY['x', g::text] FROM generate_series(1, 50) g",
        "CREATE TABLE audit (msg text)",
        "INSERT INTO audit VALUES ('hello')",
    )
    monkeypatch.chdir(tmp_path)
    assert lakegate(["init", "shop", "--source", "postgres", "--dsn", dsn, "--tables", "shop,audit"]) == 0
    assert lakegate(["run", "shop.yaml", "--until-idle", "-q"]) == 0
    sql(dsn, "UPDATE shop SET price = 1 WHERE id = 1", "DELETE FROM shop WHERE id = 2")
    assert lakegate(["run", "shop.yaml", "--until-idle", "-q"]) == 0
    capsys.readouterr()
    query = "SELECT count(*) AS n, sum(price) AS total FROM lakegate.shop"
    assert lakegate(["query", query, "--spec", "shop.yaml", "--format", "csv"]) == 0
    total = fetch(dsn, "SELECT sum(price) FROM shop")[0][0]
    count, landed_total = capsys.readouterr().out.splitlines()[1].split(",")
    assert (int(count), Decimal(landed_total)) == (49, total)
    assert lakegate(["status", "shop.yaml"]) == 0
    out = capsys.readouterr().out
    assert "slot lakegate_shop: inactive" in out and "replication lag" in out
    assert lakegate(["cdc", "drop-slot", "shop.yaml"]) == 0
    assert "dropped" in capsys.readouterr().out
    assert not slot_status(dsn, "lakegate_shop").exists


def test_a_mirror_needs_a_primary_key(pg_server: str, tmp_path: Path) -> None:
    dsn = database(pg_server, "no_key")
    sql(dsn, "CREATE TABLE nokey (v int)", "INSERT INTO nokey VALUES (1)")
    spec = write_spec(tmp_path, dsn, ["nokey"], tables={"nokey": {"mode": "mirror"}})
    with pytest.raises(Exception, match=r"tables\.nokey\.mode: mirror needs a primary key"):
        run_in_process(spec)


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("LAKEGATE_FAULT", raising=False)
    yield


def test_a_kill_inside_a_compaction_leaves_mirror_and_read_path_right(
    pg_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = database(pg_server, "compaction_kill")
    sql(
        dsn,
        "CREATE TABLE m (id int PRIMARY KEY, v text)",
        "INSERT INTO m SELECT g, 'a' FROM generate_series(1, 3000) g",
    )
    spec_path = write_spec(tmp_path, dsn, ["m"], checkpoint={"interval": "1s", "compact_every": 1})
    process = start_pipeline(spec_path, "--max-seconds", "120", fault="compact_before_commit")
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "the first compaction must run (and be killed)"
    sql(dsn, "UPDATE m SET v = 'b' WHERE id % 2 = 0", "DELETE FROM m WHERE id % 5 = 0")
    run_until_idle(spec_path)
    expected = sorted(fetch(dsn, "SELECT id, v FROM m"))
    assert project(current(spec_path, "m"), ["id", "v"]) == expected
    assert lakegate(["cdc", "compact", str(spec_path)]) == 0
    assert capsys.readouterr().out.startswith("m: ")
    spec = load_spec(spec_path)
    compacted = open_catalog(spec.catalog, spec.data_dir).load_table("lakegate.m").scan().to_arrow().to_pylist()
    assert project(compacted, ["id", "v"]) == expected
    assert project(current(spec_path, "m"), ["id", "v"]) == expected
