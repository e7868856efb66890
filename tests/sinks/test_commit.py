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
from lakegate.sinks.commit import (
    EXPIRE_BATCH,
    KEEP_SNAPSHOTS_PROPERTY,
    WATERMARK_PROPERTY,
    commit_checkpoint,
    data_files_of,
    delete_stray_files,
    last_committed_checkpoint,
)
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

    assert commit_checkpoint(table, files, pipeline="a", checkpoint_id=1, source_positions="{}").outcome == "committed"
    assert commit_checkpoint(table, files, pipeline="a", checkpoint_id=1, source_positions="{}").outcome == "skipped"
    # Another pipeline's higher checkpoint id must not hide pipeline a's next checkpoint.
    other = DataFileWriter(table, "b", 7)
    other.write(_rows("b", 7, 4))
    assert (
        commit_checkpoint(table, other.close(), pipeline="b", checkpoint_id=7, source_positions="{}").outcome
        == "committed"
    )
    second = DataFileWriter(table, "a", 2)
    second.write(_rows("a", 2, 5))
    assert (
        commit_checkpoint(table, second.close(), pipeline="a", checkpoint_id=2, source_positions="{}").outcome
        == "committed"
    )

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


def _entry_fields(entry) -> dict[str, object]:  # type: ignore[no-untyped-def]
    names = (
        "file_path", "record_count", "file_size_in_bytes", "column_sizes", "value_counts", "null_value_counts",
        "nan_value_counts", "lower_bounds", "upper_bounds", "split_offsets",
    )  # fmt: skip
    return {**{name: getattr(entry, name) for name in names}, "partition": tuple(entry.partition)}


def test_entries_from_the_writers_footers_equal_those_read_back_from_the_files(tmp_path: Path) -> None:
    tables = TableManager(open_catalog(CatalogSpec(), tmp_path), "ns")
    sample = _rows("a", 1, 10)
    table = tables.ensure("events", sample.schema, "day")
    writer = DataFileWriter(table, "a", 1)
    writer.write(sample)
    writer.write(_rows("a", 1, 7, day_offset=1))
    files = writer.close()
    assert sorted(writer.written) == sorted(files)

    from_footers = data_files_of(table.io, table.metadata, files, writer.written)
    read_back = data_files_of(table.io, table.metadata, files, {})

    assert [_entry_fields(e) for e in from_footers] == [_entry_fields(e) for e in read_back]
    assert sum(e.record_count for e in from_footers) == 17


def test_expiry_keeps_the_newest_snapshot_of_every_pipeline_and_the_skip_rule(tmp_path: Path) -> None:
    tables = TableManager(open_catalog(CatalogSpec(), tmp_path), "ns")
    table = tables.ensure("events", _rows("a", 0, 1).schema, None)
    with table.transaction() as txn:
        txn.set_properties({KEEP_SNAPSHOTS_PROPERTY: "3"})
    other = DataFileWriter(table, "b", 7)
    other.write(_rows("b", 7, 2))
    assert (
        commit_checkpoint(table, other.close(), pipeline="b", checkpoint_id=7, source_positions="{}").outcome
        == "committed"
    )
    table.append(_rows("compactor", 0, 1), snapshot_properties={WATERMARK_PROPERTY: "42"})
    commits = 3 + EXPIRE_BATCH + 12
    for checkpoint in range(1, commits + 1):
        writer = DataFileWriter(table, "a", checkpoint)
        writer.write(_rows("a", checkpoint, 3))
        result = commit_checkpoint(
            table, writer.close(), pipeline="a", checkpoint_id=checkpoint, source_positions="{}", refresh=False
        )
        assert result.outcome == "committed"

    table.refresh()
    snapshots = table.metadata.snapshots
    # Bounded: the newest 3, the protected two (b's newest, the watermark), at most a batch not yet expired.
    assert len(snapshots) <= 3 + 2 + EXPIRE_BATCH < commits
    assert last_committed_checkpoint(table, "a") == commits
    assert last_committed_checkpoint(table, "b") == 7
    assert any(s.summary is not None and s.summary.get(WATERMARK_PROPERTY) == "42" for s in snapshots)
    for retried in (commits, commits - 1):  # a retry after a crash still sees the checkpoint committed
        assert (
            commit_checkpoint(table, [], pipeline="a", checkpoint_id=retried, source_positions="{}").outcome
            == "skipped"
        )
    # Expiry drops snapshots, never data: every row is still there, every file still referenced.
    assert table.scan().to_arrow().num_rows == 2 + 1 + 3 * commits
    assert _data_files_on_disk(table.location()) == _referenced_files(table)


def test_a_commit_on_a_stale_table_object_reloads_before_it_decides(tmp_path: Path) -> None:
    catalog = open_catalog(CatalogSpec(), tmp_path)
    table = TableManager(catalog, "ns").ensure("events", _rows("a", 0, 1).schema, None)
    stale = catalog.load_table("ns.events")
    writer = DataFileWriter(table, "a", 1)
    writer.write(_rows("a", 1, 4))
    files = writer.close()
    assert commit_checkpoint(table, files, pipeline="a", checkpoint_id=1, source_positions="{}").outcome == "committed"

    # The stale object does not show checkpoint 1; its append is refused, it reloads and skips.
    result = commit_checkpoint(
        stale, files, pipeline="a", checkpoint_id=1, source_positions="{}", written=writer.written, refresh=False
    )
    assert result.outcome == "skipped"
    # Another pipeline's commit moved the table on: a stale append of ours is retried on top of it.
    other = DataFileWriter(table, "b", 1)
    other.write(_rows("b", 1, 2))
    commit_checkpoint(table, other.close(), pipeline="b", checkpoint_id=1, source_positions="{}")
    second = DataFileWriter(stale, "a", 2)
    second.write(_rows("a", 2, 3))
    assert commit_checkpoint(stale, second.close(), pipeline="a", checkpoint_id=2, source_positions="{}",
                             written=second.written, refresh=False).outcome == "committed"  # fmt: skip
    table.refresh()
    keys = table.scan().to_arrow().column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 4 + 2 + 3
