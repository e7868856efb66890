"""Crash tests: SIGKILL the pipeline at every step of the checkpoint protocol, restart, compare.

The generator's manifest is the truth: the keys read back through DuckDB must equal the keys it
wrote (no row lost, none duplicated), and the dead-letter table must hold exactly the records it
broke on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from lakegate.core.config import CatalogSpec
from lakegate.demo.orders import generate_orders
from lakegate.runtime.checkpoint import finish_pending
from lakegate.runtime.faults import PROTOCOL_STEPS
from lakegate.runtime.state import StateStore
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.cdc import KEEP_SNAPSHOTS, changes_table_name
from lakegate.sinks.commit import EXPIRE_BATCH, last_committed_checkpoint
from lakegate.sinks.tables import TableManager
from tests.runtime.helpers import files_on_disk_and_referenced, read_back, run_cli, write_spec


@pytest.mark.slow
@pytest.mark.parametrize("step", PROTOCOL_STEPS)
def test_sigkill_at_each_protocol_step_loses_and_duplicates_nothing(tmp_path: Path, step: str) -> None:
    manifest = generate_orders(tmp_path / "incoming", records=2500, files=3, seed=11, fault_rate=0.02)
    spec = write_spec(tmp_path, tmp_path / "incoming")

    crashed = run_cli("run", str(spec), "--until-idle", "-q", fault=f"{step}@2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = run_cli("run", str(spec), "--until-idle", "-q")
    assert resumed.returncode == 0, resumed.stderr

    data_dir = tmp_path / "lakegate-data"
    landed = read_back(data_dir, "SELECT order_id FROM test.orders").column("order_id").to_pylist()
    assert Counter(landed) == Counter(manifest.order_ids)
    items = read_back(
        data_dir,
        "SELECT count(*) AS n, count(DISTINCT _lg_parent_key || _lg_position) AS d FROM test.orders__items",
    ).to_pylist()[0]
    assert items == {"n": manifest.line_items, "d": manifest.line_items}
    dead = read_back(
        data_dir, "SELECT count(*) AS n, count(DISTINCT dlq_id) AS d FROM test.orders__dead_letter"
    ).to_pylist()[0]
    assert dead == {"n": manifest.dead_letters, "d": manifest.dead_letters}
    orphans = read_back(
        data_dir,
        "SELECT count(*) AS n FROM test.orders__items i"
        " LEFT JOIN test.orders o ON i._lg_parent_key = o._lg_source || '#' || o._lg_position"
        " WHERE o.order_id IS NULL",
    ).to_pylist()[0]
    assert orphans == {"n": 0}
    on_disk, referenced = files_on_disk_and_referenced(data_dir)
    assert on_disk == referenced


_CDC_CHECKPOINTS = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import pyarrow as pa

    from lakegate.core.config import CatalogSpec
    from lakegate.runtime.checkpoint import OpenCheckpoint, run_protocol
    from lakegate.runtime.state import StateStore
    from lakegate.sinks.catalog import open_catalog
    from lakegate.sinks.cdc import ChangeSequencer, changes_table_name, ensure_cdc_tables, prepare_changes
    from lakegate.sinks.tables import TableManager

    root, checkpoints, rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    tables = TableManager(open_catalog(CatalogSpec(), root), "ns")
    state = StateStore(root / "state")
    schema = pa.schema([("id", pa.int64()), ("v", pa.int64()), ("_lg_op", pa.string()), ("_lg_change_seq", pa.int64())])
    for name in ("a", "b"):
        ensure_cdc_tables(tables, name, schema, mode="mirror", key_columns=["id"])
    known = []
    for checkpoint_id in range(1, checkpoints + 1):
        checkpoint = OpenCheckpoint(checkpoint_id, "cdc", tables, "dead_letters", lambda _: None)
        sequencer = ChangeSequencer(checkpoint_id)
        for name in ("a", "b"):
            ids = pa.array(np.arange(rows, dtype=np.int64) + checkpoint_id * rows)
            changes = pa.table({"id": ids, "v": ids, "_lg_op": pa.array(["c"] * rows)})
            prepared = prepare_changes(changes, table=name, key_columns=["id"], sequencer=sequencer)
            checkpoint.add_rows(changes_table_name(name), prepared.rows)
            checkpoint.counts.records_read += rows
            checkpoint.counts.rows_landed += rows
        record = run_protocol(checkpoint, state=state, source_positions={"pg": {"lsn": checkpoint_id}},
                              operator_state={}, known_tables=known, acknowledge=lambda: None)
        known = record.tables
    print("survived")
    """
)


@pytest.mark.slow
def test_sigkill_mid_commit_after_snapshot_expiry_commits_each_table_once(tmp_path: Path) -> None:
    """CDC changes tables expire their old snapshots; the skip rule must still see the newest one."""
    checkpoints, rows = 3 * (KEEP_SNAPSHOTS + EXPIRE_BATCH), 5
    env = {**os.environ, "LAKEGATE_FAULT": f"mid_commit@{checkpoints}"}
    crashed = subprocess.run(
        [sys.executable, "-c", _CDC_CHECKPOINTS, str(tmp_path), str(checkpoints), str(rows)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    tables = TableManager(open_catalog(CatalogSpec(), tmp_path), "ns")
    state = StateStore(tmp_path / "state")
    record = state.latest()
    assert record is not None and record.status == "pending" and record.checkpoint_id == checkpoints
    first, second = (tables.get(changes_table_name(name)) for name in ("a", "b"))
    assert first is not None and second is not None
    assert last_committed_checkpoint(first, "cdc") == checkpoints  # committed before the kill
    assert last_committed_checkpoint(second, "cdc") == checkpoints - 1
    assert len(first.metadata.snapshots) <= KEEP_SNAPSHOTS + EXPIRE_BATCH + 1 < checkpoints  # expiry ran

    finish_pending(record, state=state, tables=tables, pipeline="cdc", acknowledge=lambda: None)
    finish_pending(record, state=state, tables=tables, pipeline="cdc", acknowledge=lambda: None)  # a retry

    assert state.latest() is not None and state.latest().status == "committed"  # type: ignore[union-attr]
    for name in ("a", "b"):
        table = tables.refresh(changes_table_name(name))
        assert table is not None
        landed = table.scan().to_arrow()
        assert Counter(landed.column("_lg_checkpoint").to_pylist()) == {c: rows for c in range(1, checkpoints + 1)}
        assert len(set(landed.column("id").to_pylist())) == landed.num_rows == checkpoints * rows
    state.close()
