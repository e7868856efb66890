"""Crash tests: SIGKILL the pipeline at every step of the checkpoint protocol, restart, compare.

The generator's manifest is the truth: the keys read back through DuckDB must equal the keys it
wrote (no row lost, none duplicated), and the dead-letter table must hold exactly the records it
broke on purpose.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from lakegate.demo.orders import generate_orders
from lakegate.runtime.faults import PROTOCOL_STEPS
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
