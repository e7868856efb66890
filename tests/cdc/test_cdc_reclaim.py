"""A PostgreSQL CDC pipeline reclaims the storage of its expired snapshots.

Updates stream into a mirror while the pipeline checkpoints every 0.2 s and compacts every 2 checkpoints
in its compaction process; both tables keep 2 snapshots and reclaim with no grace. Afterwards the data
files, manifest lists and manifests on disk are exactly those the tables' metadata reaches, and the
always-current read path equals the source table.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

import lakegate.runtime.cdc as runtime_cdc
import lakegate.sinks.cdc as sinks_cdc
from lakegate.core.config import load_spec
from lakegate.query.cdc_views import read_current
from lakegate.runtime.pipeline import Pipeline
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.commit import EXPIRE_BATCH, PIPELINE_PROPERTY, expirable_snapshots, newest_first
from lakegate.sinks.reclaim import RECLAIM_GRACE_PROPERTY
from tests.cdc.test_cdc_pipeline import database, fetch, sql, write_spec
from tests.sinks.test_reclaim import metadata_files, metadata_in_log, on_disk, reachable

pytestmark = pytest.mark.integration

TABLES = ("m", "m__changes")


def _update_until(dsn: str, stop: threading.Event) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    rng = random.Random(1)
    with conn.cursor() as cur:
        while not stop.is_set():
            cur.execute("UPDATE m SET v = v + 1 WHERE id = %s", (rng.randrange(1, 501),))
            if rng.random() < 0.1:
                cur.execute("INSERT INTO m SELECT max(id) + 1, 0 FROM m")
            stop.wait(0.01)
    conn.close()


def _set_grace(catalog: Catalog, namespace: str, seconds: str) -> None:
    for name in TABLES:
        table = catalog.load_table(f"{namespace}.{name}")
        with table.transaction() as txn:
            txn.set_properties({RECLAIM_GRACE_PROPERTY: seconds})


def _after_last_checkpoint(table: Table) -> int:
    """How many snapshots are newer than the newest one a checkpoint committed."""
    count = 0
    for snapshot in newest_first(table.metadata):
        if snapshot.summary is not None and snapshot.summary.get(PIPELINE_PROPERTY) is not None:
            return count
        count += 1
    return count


def test_a_streaming_pipeline_keeps_only_the_files_its_tables_reach(
    pg_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAKEGATE_FAULT", raising=False)
    monkeypatch.setattr(sinks_cdc, "KEEP_SNAPSHOTS", 2)  # expiry after a few checkpoints, not 20
    monkeypatch.setattr(runtime_cdc, "RECLAIM_EVERY_S", 0.0)
    dsn = database(pg_server, "reclaim")
    sql(dsn, "CREATE TABLE m (id int PRIMARY KEY, v int)", "INSERT INTO m SELECT g, 0 FROM generate_series(1, 500) g")
    spec = load_spec(write_spec(tmp_path, dsn, ["m"], checkpoint={"interval": "0.2s", "compact_every": 2}))
    catalog = open_catalog(spec.catalog, spec.data_dir)

    with Pipeline(spec) as pipeline:  # the snapshot: a few checkpoints, nothing expired yet
        pipeline.run(until_idle=True)
        assert pipeline.cdc is not None and pipeline.cdc.compactor is not None
        pipeline.cdc.compactor.wait()
        assert not pipeline.cdc.compactor.awaiting_reclaim
    _set_grace(catalog, spec.namespace, "0")

    stop = threading.Event()
    writer = threading.Thread(target=_update_until, args=(dsn, stop), daemon=True)
    with Pipeline(spec) as pipeline:
        writer.start()
        assert pipeline.cdc is not None and pipeline.cdc.compactor is not None
        compactor = pipeline.cdc.compactor
        checkpoints = 0
        deadline = time.monotonic() + 60  # the compactor runs at nice 10: a busy machine slows it down
        try:
            while time.monotonic() < deadline and (checkpoints < 20 or len(compactor.results) < 5):
                checkpoints += pipeline.run(until_idle=False, max_seconds=2).checkpoints
        finally:
            stop.set()
            writer.join()
        compactor.wait()
        compactor.reclaim_now()  # what the last pass left (the pipeline's own passes ran in its worker)
        assert not compactor.awaiting_reclaim and not compactor.errors, compactor.errors
        assert checkpoints >= 20 and len(compactor.results) >= 5, (checkpoints, compactor.results)
        assert compactor.reclaimed.files > 0 and compactor.reclaimed.bytes > 0

    for name in TABLES:
        table = catalog.load_table(f"{spec.namespace}.{name}")
        if name.endswith("__changes"):
            # A checkpoint's commit expires once EXPIRE_BATCH are expirable, so after it at most the 2 kept
            # and EXPIRE_BATCH more remain; the trims after it (they carry no expiry) add to that.
            assert len(table.metadata.snapshots) <= 2 + EXPIRE_BATCH + _after_last_checkpoint(table), name
        else:  # every compaction expires all its base can spare: at most the one it pushed out of the 2 kept
            assert len(expirable_snapshots(table.metadata, 2)) <= 1, name
        assert on_disk(table) == reachable(table), name
        # The catalog's metadata file of a refused commit (a trim racing a checkpoint) is the one leak.
        assert metadata_in_log(table) <= metadata_files(table), name
        assert len(metadata_files(table) - metadata_in_log(table)) <= 5, name

    with Pipeline(spec) as pipeline:  # catch up with the last updates
        pipeline.run(until_idle=True)
    current = read_current(catalog, spec.namespace, "m").select(["id", "v"]).to_pylist()
    assert sorted((row["id"], row["v"]) for row in current) == sorted(fetch(dsn, "SELECT id, v FROM m"))


def test_expiries_still_in_their_grace_at_close_are_reclaimed_by_the_next_start(
    pg_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline that stops (or dies) before an expiry's grace is over leaves its files: the next start
    takes them back from the checkpointed state and the tables' metadata logs, and reclaims them.
    The logs keep 3 versions here: the older expiries come back only through the state."""
    monkeypatch.delenv("LAKEGATE_FAULT", raising=False)
    monkeypatch.setattr(sinks_cdc, "KEEP_SNAPSHOTS", 2)
    monkeypatch.setattr(sinks_cdc, "METADATA_VERSIONS_KEPT", 3)
    monkeypatch.setattr(runtime_cdc, "RECLAIM_EVERY_S", 0.0)
    dsn = database(pg_server, "reclaim_restart")
    sql(dsn, "CREATE TABLE m (id int PRIMARY KEY, v int)", "INSERT INTO m SELECT g, 0 FROM generate_series(1, 500) g")
    spec = load_spec(write_spec(tmp_path, dsn, ["m"], checkpoint={"interval": "0.2s", "compact_every": 2}))
    catalog = open_catalog(spec.catalog, spec.data_dir)
    with Pipeline(spec) as pipeline:
        pipeline.run(until_idle=True)
    _set_grace(catalog, spec.namespace, "3600")  # nothing is reclaimed while the next pipeline runs

    stop = threading.Event()
    writer = threading.Thread(target=_update_until, args=(dsn, stop), daemon=True)
    with Pipeline(spec) as pipeline:
        writer.start()
        try:
            checkpoints = 0
            while checkpoints < 25:
                checkpoints += pipeline.run(until_idle=False, max_seconds=2).checkpoints
        finally:
            stop.set()
            writer.join()
        assert pipeline.cdc is not None and pipeline.cdc.compactor is not None
        pipeline.cdc.compactor.wait()
        waiting = pipeline.cdc.compactor.awaiting_reclaim
        assert waiting and pipeline.cdc.compactor.reclaimed.files == 0
    leaked = {name: catalog.load_table(f"{spec.namespace}.{name}") for name in TABLES}
    assert all(on_disk(t) - reachable(t) for t in leaked.values()), "expired files wait on disk"

    with Pipeline(spec) as pipeline:  # a new process would do the same: nothing of the first is in memory
        pipeline.run(until_idle=True)
        assert pipeline.cdc is not None and pipeline.cdc.compactor is not None
        compactor = pipeline.cdc.compactor
        compactor.wait()
        assert compactor.awaiting_reclaim, "the waiting expiries came back"
        compactor.reclaim_now(time.monotonic() + 3600)  # their grace over
        assert not compactor.awaiting_reclaim and not compactor.errors, compactor.errors
        assert compactor.reclaimed.files > 0
    for name in TABLES:
        table = catalog.load_table(f"{spec.namespace}.{name}")
        assert on_disk(table) == reachable(table), name
    current = read_current(catalog, spec.namespace, "m").select(["id", "v"]).to_pylist()
    assert sorted((row["id"], row["v"]) for row in current) == sorted(fetch(dsn, "SELECT id, v FROM m"))
