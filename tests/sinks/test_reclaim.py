"""Reclaiming the files of expired snapshots (``lakegate.sinks.reclaim``) on real SQLite-catalog tables.

Checkpoints go through the runtime's protocol (``run_protocol``) into a CDC changes table, compactions
overwrite the mirror and trim the changes, and both tables expire snapshots. What is on disk is compared
with what the current metadata reaches, computed here independently with pyiceberg: after any number of
checkpoints, storage holds exactly the reachable files plus those of expiries still waiting for their
grace, never less (a reachable file deleted) and never more (a leak).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.manifest import read_manifest_list
from pyiceberg.table import Table, TableProperties

import lakegate.runtime.checkpoint as checkpoint_module
from lakegate.core.config import CatalogSpec
from lakegate.query.cdc_views import CurrentReader, read_current
from lakegate.runtime.cdc import Compactor
from lakegate.runtime.checkpoint import OpenCheckpoint, finish_pending
from lakegate.runtime.state import StateStore
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.cdc import (
    CHANGE_SEQ,
    METADATA_VERSIONS_KEPT,
    CompactionPolicy,
    changes_table_name,
    compact_mirror,
    ensure_cdc_tables,
    mirror_schema,
)
from lakegate.sinks.commit import EXPIRE_BATCH, KEEP_SNAPSHOTS_PROPERTY
from lakegate.sinks.reclaim import RECLAIM_GRACE_PROPERTY, ExpiredSnapshots, Reclaimer
from lakegate.sinks.tables import TableManager
from tests.sinks.test_cdc_mirror import SCHEMA, ChangeStream, Warehouse, as_rows, random_checkpoint

KEYS = ("id",)
CHANGE_SCHEMA = SCHEMA.append(pa.field(CHANGE_SEQ, pa.int64()))
MIRROR, CHANGES = "accounts", changes_table_name("accounts")


class Lake(Warehouse):
    def checkpoint(self, rows: pa.Table) -> OpenCheckpoint:
        """One checkpoint into the changes table; returns it (``expired`` filled)."""
        return self.commit(CHANGES, rows, KEYS)

    def table(self, name: str) -> Table:
        table = self.tables.refresh(name)
        assert table is not None
        return table

    def compactor(self) -> Compactor:
        """The runtime's compactor, compacting and reclaiming in the calling thread (no worker)."""
        return Compactor(lambda: TableManager(open_catalog(CatalogSpec(), self.root), "ns"), CompactionPolicy())


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Lake]:
    state = StateStore(tmp_path / "state")
    yield Lake(tmp_path, TableManager(open_catalog(CatalogSpec(), tmp_path), "ns"), state, pipeline="cdc")
    state.close()


def cdc_tables(lake: Lake, **properties: str) -> None:
    tables = ensure_cdc_tables(lake.tables, MIRROR, CHANGE_SCHEMA, mode="mirror", key_columns=KEYS)
    for table in (tables.changes, tables.mirror):
        assert table is not None
        with table.transaction() as txn:
            txn.set_properties(properties)


# -- what is on disk and what the metadata reaches, computed here with pyiceberg alone ---------------


def local(path: str) -> str:
    return path.removeprefix("file://")


def on_disk(table: Table) -> set[str]:
    """Every file under the table's data/ and its manifest lists and manifests under metadata/."""
    root = Path(local(table.location()))
    data = {str(p) for p in (root / "data").rglob("*") if p.is_file()}
    return data | {str(p) for p in (root / "metadata").glob("*.avro")}


def _referenced(table: Table, manifest_lists: Iterable[str]) -> set[str]:
    files = set()
    for manifest_list in manifest_lists:
        files.add(local(manifest_list))
        for manifest in read_manifest_list(table.io.new_input(manifest_list)):
            files.add(local(manifest.manifest_path))
            entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
            files |= {local(e.data_file.file_path) for e in entries}
    return files


def reachable(table: Table) -> set[str]:
    """Manifest lists, manifests and live data files of every snapshot of the current metadata."""
    return _referenced(table, [s.manifest_list for s in table.metadata.snapshots])


def within_grace(table: Table, waiting: Iterable[ExpiredSnapshots]) -> set[str]:
    """Files only the table's expired snapshots still waiting for reclaim reference."""
    lists = [path for e in waiting if e.table == ".".join(table.name()) for path in e.manifest_lists]
    return _referenced(table, lists) - reachable(table)


def metadata_files(table: Table) -> set[str]:
    return {str(p) for p in Path(local(table.location()), "metadata").glob("*.metadata.json")}


def metadata_in_log(table: Table) -> set[str]:
    return {local(table.metadata_location)} | {local(e.metadata_file) for e in table.metadata.metadata_log}


# -- tests ------------------------------------------------------------------------------------------


def test_storage_holds_what_is_reachable_plus_what_waits_for_its_grace(lake: Lake) -> None:
    """Checkpoints, compactions (overwrite + trim) and expiry on both tables: every replaced mirror file,
    trimmed change file, expired manifest list and manifest goes; storage stays bounded and exact."""
    cdc_tables(lake, **{KEEP_SNAPSHOTS_PROPERTY: "2"})
    compactor = lake.compactor()
    rng, stream, next_id = random.Random(17), ChangeStream(), [0]
    first_change_files: list[str] = []
    first_mirror_files: list[str] = []
    for n in range(1, 37):
        random_checkpoint(stream, rng, events=rng.randrange(5, 30), next_id=next_id)
        checkpoint = lake.checkpoint(stream.take_events())
        compactor.expire(checkpoint.expired)
        if n == 1:
            record = lake.state.latest()
            assert record is not None
            first_change_files = [local(p) for p in record.files[CHANGES]]
        if n % 3 == 0:
            [result] = compactor.run_now([(MIRROR, list(KEYS))], force=True)
            assert result.outcome == "compacted"
            first_mirror_files = first_mirror_files or [local(p) for p in result.files]
        if n % 10 == 0:  # the reclaim passes; what expired after the last one still waits for its grace
            compactor.reclaim_now(now=math.inf)

    waiting = compactor.awaiting_reclaim
    assert waiting, "expiries after the last reclaim are still waiting"
    for name in (MIRROR, CHANGES):
        table = lake.table(name)
        assert on_disk(table) == reachable(table) | within_grace(table, waiting), name
        assert metadata_files(table) == metadata_in_log(table), name
    assert len(lake.table(CHANGES).metadata.snapshots) <= 2 + EXPIRE_BATCH
    assert len(lake.table(MIRROR).metadata.snapshots) <= 2 + 1
    # What the first checkpoint wrote (trimmed) and the first compaction wrote (replaced) is gone.
    assert first_change_files and not any(Path(p).exists() for p in first_change_files)
    assert first_mirror_files and not any(Path(p).exists() for p in first_mirror_files)
    assert compactor.reclaimed.files > 0 and compactor.reclaimed.bytes > 0 and not compactor.errors
    # The readers still see exactly the source: the mirror itself, and the always-current view.
    assert as_rows(lake.table(MIRROR).scan().to_arrow()) == stream.expected()
    assert as_rows(read_current(lake.tables.catalog, "ns", MIRROR)) == stream.expected()
    with CurrentReader(lake.tables.catalog, "ns") as reader:
        assert as_rows(reader.read(MIRROR)) == stream.expected()

    # Reclaiming the rest leaves exactly the reachable files.
    assert compactor.reclaim_now(now=math.inf) is not None
    for name in (MIRROR, CHANGES):
        table = lake.table(name)
        assert on_disk(table) == reachable(table), name


def _expire_once(lake: Lake, stream: ChangeStream) -> list[ExpiredSnapshots]:
    """Fast appends until the changes table expires a batch of snapshots (keep 2)."""
    rng, next_id, expired = random.Random(3), [0], []
    while not expired:
        random_checkpoint(stream, rng, events=10, next_id=next_id)
        expired = lake.checkpoint(stream.take_events()).expired
    return expired


def test_a_file_a_retained_snapshot_lists_is_never_deleted(lake: Lake) -> None:
    cdc_tables(lake, **{KEEP_SNAPSHOTS_PROPERTY: "2"})
    stream = ChangeStream()
    [expiry] = _expire_once(lake, stream)
    changes = lake.table(CHANGES)
    before = on_disk(changes)
    rows = changes.scan().to_arrow().num_rows
    reclaimer = Reclaimer(lake.tables.catalog)

    # An expiry naming every retained snapshot: everything it names is reachable, nothing may go.
    retained = tuple(s.manifest_list for s in changes.metadata.snapshots)
    named = ExpiredSnapshots(expiry.table, expiry.table_uuid, retained, reclaim_after=0.0)
    result = reclaimer.reclaim([named], now=math.inf)
    assert result.files == 0 and result.kept == len(reachable(changes)) and not result.errors
    assert on_disk(changes) == before

    # Fast appends carry every manifest forward: of the real expiry only the manifest lists go.
    result = reclaimer.reclaim([expiry], now=math.inf)
    assert result.files == len(expiry.manifest_lists) == EXPIRE_BATCH
    assert on_disk(changes) == before - {local(p) for p in expiry.manifest_lists} == reachable(lake.table(CHANGES))
    assert lake.table(CHANGES).scan().to_arrow().num_rows == rows
    # Reclaiming the same expiry again deletes nothing.
    again = reclaimer.reclaim([expiry], now=math.inf)
    assert again.files == 0 and again.missing == len(expiry.manifest_lists)


def test_files_within_their_grace_are_not_deleted(lake: Lake) -> None:
    cdc_tables(lake, **{KEEP_SNAPSHOTS_PROPERTY: "2"})
    stream = ChangeStream()
    [expiry] = _expire_once(lake, stream)
    changes = lake.table(CHANGES)
    before = on_disk(changes)
    reclaimer = Reclaimer(lake.tables.catalog)

    result = reclaimer.reclaim([expiry], now=expiry.reclaim_after - 0.001)
    assert result.files == 0 and result.deferred == [expiry]
    assert on_disk(changes) == before
    compactor = lake.compactor()  # the runtime's compactor does not even send it before its time
    compactor.expire([expiry])
    compactor.kick([])
    compactor.wait()
    assert compactor.awaiting_reclaim == [expiry] and compactor.reclaimed.files == 0
    assert on_disk(changes) == before

    result = reclaimer.reclaim([expiry], now=expiry.reclaim_after)
    assert result.files == EXPIRE_BATCH and not result.deferred

    # The grace is a table property; 0 makes the next expiry ripe at once.
    with changes.transaction() as txn:
        txn.set_properties({RECLAIM_GRACE_PROPERTY: "0"})
    [ripe] = _expire_once(lake, stream)
    assert ripe.ripe(time.monotonic())


class _Crash(Exception):
    pass


def test_a_pending_checkpoints_files_survive_a_reclaim_and_recovery_commits_them(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between steps 3 and 4 leaves data files that only the pending record names; a reclaim in
    the same directories must not touch them, and recovery commits them."""
    cdc_tables(lake, **{KEEP_SNAPSHOTS_PROPERTY: "2"})
    compactor = lake.compactor()
    rng, stream, next_id = random.Random(23), ChangeStream(), [0]
    for n in range(1, 16):
        random_checkpoint(stream, rng, events=rng.randrange(5, 30), next_id=next_id)
        compactor.expire(lake.checkpoint(stream.take_events()).expired)
        if n % 3 == 0:
            compactor.run_now([(MIRROR, list(KEYS))], force=True)

    def crash_at(step: str) -> None:
        if step == "after_pending":
            raise _Crash(step)

    monkeypatch.setattr(checkpoint_module, "maybe_crash", crash_at)
    random_checkpoint(stream, rng, events=40, next_id=next_id)
    with pytest.raises(_Crash):
        lake.checkpoint(stream.take_events())
    monkeypatch.undo()
    record = lake.state.latest()
    assert record is not None and record.status == "pending"
    pending = {local(p) for p in record.files[CHANGES]}
    data_dir = Path(local(lake.table(CHANGES).location()), "data")
    before = {str(p) for p in data_dir.rglob("*.parquet")}
    assert pending <= before

    result = compactor.reclaim_now(now=math.inf)
    assert result is not None and result.files > 0 and not result.errors
    after = {str(p) for p in data_dir.rglob("*.parquet")}
    assert before - after, "trimmed change files in the same directory were reclaimed"
    assert pending <= after

    finish_pending(record, state=lake.state, tables=lake.tables, pipeline="cdc", acknowledge=lambda: None)
    changes = lake.table(CHANGES)
    assert pending <= {local(task.file.file_path) for task in changes.scan().plan_files()}
    assert as_rows(read_current(lake.tables.catalog, "ns", MIRROR)) == stream.expected()


def test_every_commit_path_deletes_old_metadata_files(lake: Lake) -> None:
    """Fast appends, compaction overwrites, trims and schema evolution all go through pyiceberg's commit
    tail, which deletes the metadata files that fall out of the log once the table says so."""
    lake.tables.ensure(CHANGES, CHANGE_SCHEMA, None)  # tables from before the properties existed
    lake.tables.ensure(MIRROR, mirror_schema(CHANGE_SCHEMA), None)
    ensure_cdc_tables(lake.tables, MIRROR, CHANGE_SCHEMA, mode="mirror", key_columns=KEYS)
    for name in (MIRROR, CHANGES):
        properties = lake.table(name).properties
        assert properties[TableProperties.METADATA_DELETE_AFTER_COMMIT_ENABLED] == "true"
        assert properties[TableProperties.METADATA_PREVIOUS_VERSIONS_MAX] == str(METADATA_VERSIONS_KEPT)
        with lake.table(name).transaction() as txn:  # a short log, so a few commits of each kind show it
            txn.set_properties({TableProperties.METADATA_PREVIOUS_VERSIONS_MAX: "2"})

    def bounded(name: str) -> None:
        table = lake.table(name)
        assert len(table.metadata.metadata_log) == 2, f"{name}: enough commits to fill the log"
        assert metadata_files(table) == metadata_in_log(table), name

    rng, stream, next_id = random.Random(5), ChangeStream(), [0]
    for _ in range(4):  # fast appends
        random_checkpoint(stream, rng, events=10, next_id=next_id)
        lake.checkpoint(stream.take_events())
    bounded(CHANGES)
    for _ in range(3):  # compaction overwrites of the mirror, trims of the changes
        random_checkpoint(stream, rng, events=10, next_id=next_id)
        lake.checkpoint(stream.take_events())
        assert compact_mirror(lake.tables, MIRROR).outcome == "compacted"
    bounded(MIRROR)
    bounded(CHANGES)
    for extra in ("e1", "e2", "e3"):  # schema evolution of both tables
        lake.tables.ensure(CHANGES, CHANGE_SCHEMA.append(pa.field(extra, pa.int64())), None)
        lake.tables.ensure(MIRROR, mirror_schema(CHANGE_SCHEMA).append(pa.field(extra, pa.int64())), None)
    assert "e3" in lake.table(MIRROR).schema().column_names
    bounded(MIRROR)
    bounded(CHANGES)
