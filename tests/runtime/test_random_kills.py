"""A watched directory fed while the pipeline is SIGKILLed from outside at random moments."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lakegate.demo.orders import generate_orders
from tests.runtime.helpers import files_on_disk_and_referenced, read_back, run_cli, write_spec


@pytest.mark.slow
def test_random_sigkills_while_files_arrive(tmp_path: Path) -> None:
    rng = random.Random(5)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    spec = write_spec(tmp_path, incoming, checkpoint={"interval": "300ms", "max_rows": 400})
    expected: Counter[str] = Counter()
    dead_expected = 0
    for round_number in range(5):
        # New files land (under a temporary name first) while the pipeline is down or running.
        manifest = generate_orders(tmp_path / f"gen{round_number}", records=900, files=2, seed=round_number, start=None)
        for name in manifest.files:
            os.rename(tmp_path / f"gen{round_number}" / name, incoming / f"r{round_number}-{name}")
        expected.update(f"{round_number}:{order_id}" for order_id in manifest.order_ids)
        dead_expected += manifest.dead_letters
        child = subprocess.Popen(
            [sys.executable, "-m", "lakegate.cli.main", "run", str(spec), "-q", "--max-seconds", "60"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(1.5, 3.5))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, (child.stderr.read() if child.stderr else b"").decode()

    final = run_cli("run", str(spec), "--until-idle", "-q")
    assert final.returncode == 0, final.stderr

    data_dir = tmp_path / "lakegate-data"
    landed = read_back(data_dir, "SELECT split_part(_lg_source, ':', 2) AS file, order_id FROM test.orders").to_pylist()
    got = Counter(f"{row['file'][1]}:{row['order_id']}" for row in landed)
    assert got == expected
    dead = read_back(data_dir, "SELECT count(*) AS n, count(DISTINCT dlq_id) AS d FROM test.orders__dead_letter")
    assert dead.to_pylist() == [{"n": dead_expected, "d": dead_expected}]
    on_disk, referenced = files_on_disk_and_referenced(data_dir)
    assert on_disk == referenced
