"""The idempotent committer against a real SQLite-backed catalog, including concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from lakegate.core.config import CatalogSpec
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.commit import commit_checkpoint, delete_stray_files, last_committed_checkpoint
from lakegate.sinks.tables import TableManager
from lakegate.sinks.writer import DataFileWriter


def _rows(pipeline: str, checkpoint: int, n: int, day_offset: int = 0) -> pa.Table:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day_offset)
    return pa.table(
        {
            "key": pa.array([f"{pipeline}-{checkpoint}-{i}" for i in range(n)]),
            "value": pa.array(range(n), pa.int64()),
            "_lg_event_time": pa.array(
                [start + timedelta(hours=6 * i) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


def _data_files_on_disk(table_location: str) -> set[str]:
    root = Path(table_location.removeprefix("file://")) / "data"
    return {str(p) for p in root.rglob("*.parquet")}


def _referenced_files(table) -> set[str]:  # type: ignore[no-untyped-def]
    return {task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()}


def test_checkpoint_commit_is_idempotent_per_pipeline(tmp_path: Path) -> None:
    catalog = open_catalog(CatalogSpec(), tmp_path)
    tables = TableManager(catalog, "ns")
    sample = _rows("a", 1, 10)
    table = tables.ensure("events", sample.schema, "day")
    writer = DataFileWriter(table, "a", 1)
    writer.write(sample)
    files = writer.close()
    assert len(files) == 3  # 10 rows 6 hours apart span 3 days (0h..54h): one file per day partition

    assert commit_checkpoint(table, files, pipeline="a", checkpoint_id=1, source_positions="{}") == "committed"
    assert commit_checkpoint(table, files, pipeline="a", checkpoint_id=1, source_positions="{}") == "skipped"
    # Another pipeline's higher checkpoint id must not hide pipeline a's next checkpoint.
    other = DataFileWriter(table, "b", 7)
    other.write(_rows("b", 7, 4))
    assert commit_checkpoint(table, other.close(), pipeline="b", checkpoint_id=7, source_positions="{}") == "committed"
    second = DataFileWriter(table, "a", 2)
    second.write(_rows("a", 2, 5))
    assert commit_checkpoint(table, second.close(), pipeline="a", checkpoint_id=2, source_positions="{}") == "committed"

    table.refresh()
    assert last_committed_checkpoint(table, "a") == 2
    assert last_committed_checkpoint(table, "b") == 7
    assert last_committed_checkpoint(table, "c") == 0
    assert table.scan().to_arrow().num_rows == 10 + 4 + 5
    summary = table.current_snapshot().summary
    assert summary["lakegate.pipeline"] == "a" and summary["lakegate.checkpoint-id"] == "2"


def test_stray_files_of_unrecorded_checkpoints_are_deleted(tmp_path: Path) -> None:
    catalog = open_catalog(CatalogSpec(), tmp_path)
    table = TableManager(catalog, "ns").ensure("events", _rows("a", 1, 1).schema, None)
    committed = DataFileWriter(table, "a", 1)
    committed.write(_rows("a", 1, 3))
    commit_checkpoint(table, committed.close(), pipeline="a", checkpoint_id=1, source_positions="{}")
    stray = DataFileWriter(table, "a", 2)
    stray.write(_rows("a", 2, 3))
    stray_files = stray.close()
    foreign = DataFileWriter(table, "b", 9)
    foreign.write(_rows("b", 9, 3))
    foreign_files = foreign.close()

    removed = delete_stray_files(table, "a", after_checkpoint=1)

    assert sorted(p.removeprefix("file://") for p in stray_files) == sorted(removed)
    assert all(Path(p.removeprefix("file://")).exists() for p in foreign_files)
    table.refresh()
    assert table.scan().to_arrow().num_rows == 3


def _append_many(warehouse: str, pipeline: str, commits: int, rows: int) -> None:
    catalog = open_catalog(CatalogSpec(), Path(warehouse))
    tables = TableManager(catalog, "ns")
    table = tables.ensure("shared", _rows(pipeline, 0, 1).schema, "day")
    for checkpoint in range(1, commits + 1):
        writer = DataFileWriter(table, pipeline, checkpoint)
        writer.write(_rows(pipeline, checkpoint, rows, day_offset=checkpoint % 3))
        commit_checkpoint(table, writer.close(), pipeline=pipeline, checkpoint_id=checkpoint, source_positions="{}")


@pytest.mark.slow
def test_two_pipelines_append_concurrently_without_losing_a_commit(tmp_path: Path) -> None:
    commits, rows = 100, 20
    TableManager(open_catalog(CatalogSpec(), tmp_path), "ns").ensure("shared", _rows("x", 0, 1).schema, "day")
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(str(tmp_path), name, commits, rows)) for name in ("p1", "p2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0

    table = open_catalog(CatalogSpec(), tmp_path).load_table("ns.shared")
    keys = table.scan(selected_fields=("key",)).to_arrow().column("key").to_pylist()
    assert len(keys) == 2 * commits * rows
    assert len(set(keys)) == len(keys)
    assert last_committed_checkpoint(table, "p1") == commits
    assert last_committed_checkpoint(table, "p2") == commits
    appends = [s for s in table.metadata.snapshots if s.summary and s.summary.get("lakegate.pipeline")]
    assert len(appends) == 2 * commits
    # Every data file written is referenced by the table: retries left no orphan data file.
    assert _data_files_on_disk(table.location()) == _referenced_files(table)
    assert os.path.exists(table.metadata_location.removeprefix("file://"))
