"""MariaDB CDC through the whole pipeline: a scripted mixed workload, SIGKILLs, a column added mid-stream.

The mirror (read through the always-current view) must equal the source table row for row, the changelog
table must hold every insert exactly once, and the schema change must be decided and recorded.
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
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakegate.contracts.registry import ContractRegistry
from lakegate.core.config import load_spec
from lakegate.query.cdc_views import read_current
from lakegate.runtime.state import StateStore
from lakegate.sinks.catalog import open_catalog
from tests.cdc.mariadb_server import MariaDBServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PASSWORD_ENV = "LG_TEST_MYSQL_PASSWORD"


@pytest.fixture(autouse=True)
def _password(mariadb: MariaDBServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, mariadb.password)
    monkeypatch.delenv("LAKEGATE_FAULT", raising=False)


def write_spec(tmp_path: Path, mariadb: MariaDBServer, database: str, tables: list[str]) -> Path:
    data = {
        "pipeline": "mycdc",
        "data_dir": str(tmp_path / "data"),
        "sources": [
            {
                "type": "mysql",
                "name": "my",
                "port": mariadb.port,
                "user": mariadb.user,
                "password_env": PASSWORD_ENV,
                "databases": [database],
                "tables": tables,
                "batch_rows": 2000,
            }
        ],
        "checkpoint": {"interval": "1s", "max_rows": 5000, "compact_every": 3},
    }
    path = tmp_path / "mycdc.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_pipeline(spec: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.Popen(
        [sys.executable, "-m", "lakegate.cli.main", "run", str(spec), "-q", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_until_idle(spec: Path) -> None:
    process = start_pipeline(spec, "--until-idle")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-3000:]


def last_checkpoint(spec_path: Path) -> tuple[int, bool] | None:
    """The last committed checkpoint and whether the source was still in its snapshot then."""
    spec = load_spec(spec_path)
    if not (spec.state_dir / "state.db").exists():
        return None
    store = StateStore(spec.state_dir)
    try:
        record = store.latest()
    finally:
        store.close()
    if record is None or record.status != "committed":
        return None
    position = record.source_positions.get("my")
    return record.checkpoint_id, isinstance(position, dict) and position.get("snapshot") is not None


class Workload(threading.Thread):
    """Inserts, updates and deletes in small transactions (some touching both tables) until stopped;
    adds a column to ``orders`` halfway."""

    def __init__(self, mariadb: MariaDBServer, database: str, first_id: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.mariadb, self.database, self.next_id, self.seconds = mariadb, database, first_id, seconds
        self.rng = random.Random(11)
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # surfaced by the test
            self.error = err

    def _run(self) -> None:
        connection = self.mariadb.connect(self.database, autocommit=False)
        cursor = connection.cursor()
        started = time.monotonic()
        altered = False
        while time.monotonic() - started < self.seconds:
            if not altered and time.monotonic() - started > self.seconds / 2:
                cursor.execute("ALTER TABLE orders ADD COLUMN note VARCHAR(20) NULL")
                altered = True
            for _ in range(self.rng.randint(1, 5)):
                action = self.rng.random()
                key = self.rng.randint(1, self.next_id - 1)
                if action < 0.4:
                    self.next_id += 1
                    cursor.execute(
                        "INSERT INTO orders (id, customer, amount, updated) VALUES (%s, %s, %s, NOW(6))",
                        (self.next_id - 1, f"c{self.rng.randint(1, 50)}", round(self.rng.uniform(1, 999), 2)),
                    )
                    cursor.execute("INSERT INTO events (order_id, what) VALUES (%s, 'created')", (self.next_id - 1,))
                elif action < 0.8:
                    if altered:
                        cursor.execute(
                            "UPDATE orders SET amount = amount + 1, note = %s, updated = NOW(6) WHERE id = %s",
                            (f"n{key % 7}", key),
                        )
                    else:
                        cursor.execute("UPDATE orders SET amount = amount + 1, updated = NOW(6) WHERE id = %s", (key,))
                else:
                    cursor.execute("DELETE FROM orders WHERE id = %s", (key,))
                    cursor.execute("INSERT INTO events (order_id, what) VALUES (%s, 'deleted')", (key,))
            connection.commit()
            self.transactions += 1
            time.sleep(0.005)
        connection.close()


@pytest.mark.slow
def test_mariadb_mirror_with_mixed_workload_and_sigkills(mariadb: MariaDBServer, tmp_path: Path) -> None:
    mariadb.execute(
        "CREATE DATABASE shop",
        "CREATE TABLE shop.orders (id INT PRIMARY KEY, customer VARCHAR(40), amount DECIMAL(10,2),"
        " updated DATETIME(6))",
        "INSERT INTO shop.orders SELECT seq, CONCAT('c', seq % 50), seq / 10, '2026-01-01 00:00:00'"
        " FROM mysql.seq_1_to_20000",
        "CREATE TABLE shop.events (order_id INT, what VARCHAR(20))",  # no primary key: a changelog
    )
    spec = write_spec(tmp_path, mariadb, "shop", ["orders", "events"])
    workload = Workload(mariadb, "shop", 20001, seconds=20)
    workload.start()
    rng = random.Random(3)
    for kill in range(5):
        # the first run dies right after a checkpoint inside the snapshot; the others a random moment
        # after committing something while the workload streams
        process = start_pipeline(spec, "--max-seconds", "600")
        before = last_checkpoint(spec)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            latest = last_checkpoint(spec)
            if latest is not None and latest[0] != (before[0] if before else None):
                break
            time.sleep(0.02)
        time.sleep(0 if kill == 0 else rng.uniform(0.2, 2.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-3000:] if process.stderr else ""
        if kill == 0:
            assert last_checkpoint(spec) == (1, True), "the first kill must land inside the snapshot"
    workload.join(timeout=120)
    assert workload.error is None, workload.error
    run_until_idle(spec)

    loaded = load_spec(spec)
    catalog = open_catalog(loaded.catalog, loaded.data_dir)
    columns = ["id", "customer", "amount", "updated", "note"]
    mirrored = sorted(
        (r["id"], r["customer"], r["amount"], r["updated"].replace(tzinfo=None), r["note"])
        for r in read_current(catalog, loaded.namespace, "orders").to_pylist()
    )
    source = sorted(tuple(row) for row in mariadb.query(f"SELECT {', '.join(columns)} FROM shop.orders"))
    assert len(mirrored) == len(source) and mirrored == source
    events = catalog.load_table(f"{loaded.namespace}.events").scan().to_arrow().to_pylist()
    # events: the snapshot's rows (the workload runs from the start) plus every streamed insert. A snapshot
    # resumed after a kill re-reads what was committed between its two start points (sources/mysql), so
    # extra copies are allowed only for rows the snapshot read.
    landed: Counter[tuple[Any, ...]] = Counter((e["order_id"], e["what"]) for e in events if e["_lg_op"] in "rc")
    source_events = Counter(tuple(row) for row in mariadb.query("SELECT order_id, what FROM shop.events"))
    assert not source_events - landed, "an insert is missing"
    snapshot_read = {(e["order_id"], e["what"]) for e in events if e["_lg_op"] == "r"}
    assert set(landed - source_events) <= snapshot_read
    streamed = [e["_lg_position"] for e in events if e["_lg_op"] == "c"]
    assert len(streamed) == len(set(streamed)) and len(streamed) > 500
    assert workload.transactions > 100
    decisions = ContractRegistry(loaded.registry_url).decisions(dataset="orders", kind="schema.cdc_change")
    added = [d for d in decisions if d.evidence["change"]["kind"] == "column_added"]
    assert [d.evidence["change"]["column"] for d in added] == ["note"]
