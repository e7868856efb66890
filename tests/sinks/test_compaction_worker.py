"""The compaction process (``lakegate.runtime.compaction_worker``): every task has a bounded wait, a hung
child is killed and replaced, and the runtime's compactor sends it the reclaims of expired snapshots."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakegate.core.config import CatalogSpec
from lakegate.core.errors import TransientError
from lakegate.query.cdc_views import read_current
from lakegate.runtime.cdc import Compactor
from lakegate.runtime.compaction_worker import HANG_STEP, CompactionWorker, compaction_timeout_s
from lakegate.runtime.state import StateStore
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.cdc import CompactionPolicy, mirror_watermark
from lakegate.sinks.commit import KEEP_SNAPSHOTS_PROPERTY
from lakegate.sinks.reclaim import RECLAIM_GRACE_PROPERTY
from lakegate.sinks.tables import TableManager
from tests.sinks.test_cdc_mirror import ChangeStream, as_rows, random_checkpoint
from tests.sinks.test_reclaim import CHANGES, KEYS, MIRROR, Lake, cdc_tables, on_disk, reachable


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Lake]:
    state = StateStore(tmp_path / "state")
    yield Lake(tmp_path, TableManager(open_catalog(CatalogSpec(), tmp_path), "ns"), state)
    state.close()


def _running(pid: int | None) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_the_timeout_grows_with_the_rows_to_compact() -> None:
    assert compaction_timeout_s(0) < compaction_timeout_s(1_000_000) < compaction_timeout_s(100_000_000)
    assert compaction_timeout_s(100_000_000) > 100_000_000 / 400_000 * 10  # far above the measured rate


def test_a_hung_compaction_process_is_killed_and_replaced_and_the_old_mirror_stands(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdc_tables(lake)
    rng, stream, next_id = random.Random(9), ChangeStream(), [0]
    random_checkpoint(stream, rng, events=60, next_id=next_id)
    lake.checkpoint(stream.take_events())
    monkeypatch.setenv("LAKEGATE_FAULT", f"{HANG_STEP}@2")  # a child's second compaction stops answering
    worker = CompactionWorker(CatalogSpec(), lake.root, "ns")
    try:
        first = worker.compact(MIRROR, list(KEYS))
        assert first.outcome == "compacted"
        random_checkpoint(stream, rng, events=60, next_id=next_id)
        lake.checkpoint(stream.take_events())

        hung = worker.pid
        with pytest.raises(TransientError, match="did not finish"):
            worker.compact(MIRROR, list(KEYS), timeout_s=5)
        assert not _running(hung), "the hung child was killed"
        assert worker.alive and worker.pid != hung
        assert mirror_watermark(lake.table(MIRROR)) == first.watermark_after  # the old mirror stands
        assert as_rows(read_current(lake.tables.catalog, "ns", MIRROR)) == stream.expected()

        redone = worker.compact(MIRROR, list(KEYS))  # the new child's first compaction: no hang
        assert redone.outcome == "compacted" and redone.watermark_before == first.watermark_after
        assert as_rows(lake.table(MIRROR).scan().to_arrow()) == stream.expected()
    finally:
        worker.close()
    assert not _running(worker.pid)


def test_the_compactor_reclaims_expired_files_in_its_worker_process(lake: Lake) -> None:
    """The runtime's path: checkpoints hand their expiries to the compactor, whose background passes send
    compactions and reclaims to the child; in the end storage holds exactly what the tables reach."""
    cdc_tables(lake, **{KEEP_SNAPSHOTS_PROPERTY: "2", RECLAIM_GRACE_PROPERTY: "0"})
    compactor = Compactor(
        lambda: TableManager(open_catalog(CatalogSpec(), lake.root), "ns"),
        CompactionPolicy(every_checkpoints=2),
        worker=lambda: CompactionWorker(CatalogSpec(), lake.root, "ns"),
        reclaim_every_s=0,
    )
    rng, stream, next_id = random.Random(31), ChangeStream(), [0]
    try:
        for _ in range(24):
            random_checkpoint(stream, rng, events=rng.randrange(5, 30), next_id=next_id)
            rows = stream.take_events()
            checkpoint = lake.checkpoint(rows)
            compactor.note(MIRROR, rows.num_rows)
            compactor.expire(checkpoint.expired)
            compactor.kick([(MIRROR, list(KEYS))])
            compactor.wait()  # one pass at a time, so the test is deterministic
        compactor.kick([])  # what the last compaction expired
        compactor.wait()
        assert not compactor.awaiting_reclaim and not compactor.errors
        assert len(compactor.results) >= 10 and compactor.reclaimed.files > 0
        for name in (MIRROR, CHANGES):
            table = lake.table(name)
            assert on_disk(table) == reachable(table), name
        assert as_rows(read_current(lake.tables.catalog, "ns", MIRROR)) == stream.expected()
    finally:
        compactor.close()
