"""The CLI end to end: init writes a spec that runs; the read commands see what landed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakegate.cli.main import main
from lakegate.demo.orders import generate_orders


def test_init_run_status_tables_query_dlq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = generate_orders(tmp_path / "incoming", records=1500, files=2, seed=3, fault_rate=0.02)

    assert main(["init", "orders", "--path", "incoming", "--format", "ndjson", "--event-time", "created_at"]) == 0
    assert (tmp_path / "orders.yaml").exists()
    assert main(["init", "orders", "--path", "incoming"]) == 2  # refuses to overwrite
    capsys.readouterr()

    assert main(["run", "orders.yaml", "--until-idle"]) == 0
    out, _ = capsys.readouterr()
    assert f"{manifest.records:,} = {manifest.good:,} + {manifest.dead_letters:,} OK" in out

    assert main(["status", "orders.yaml"]) == 0
    out, _ = capsys.readouterr()
    assert "last checkpoint #1 (committed)" in out
    assert "table lakegate.orders: checkpoint #1" in out

    assert main(["tables"]) == 0  # default catalog under ./lakegate-data
    out, _ = capsys.readouterr()
    assert "lakegate.orders " in out and "lakegate.orders__items" in out and "lakegate.orders__dead_letter" in out

    assert main(["query", "SELECT count(*) AS n FROM lakegate.orders", "--format", "csv"]) == 0
    out, _ = capsys.readouterr()
    assert out.split() == ['"n"', str(manifest.good)]

    assert main(["dlq", "list", "--spec", "orders.yaml", "--limit", "100"]) == 0
    out, _ = capsys.readouterr()
    assert "malformed_json" in out and "invalid_utf8" in out and "type_mismatch" in out
    dlq_id = next(line.split()[0] for line in out.splitlines() if "type_mismatch" in line)
    assert main(["dlq", "show", dlq_id, "--spec", "orders.yaml"]) == 0
    out, _ = capsys.readouterr()
    assert "reason_code: type_mismatch" in out and "field: amount" in out and '"order_id"' in out


def test_bad_spec_is_reported_with_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("pipeline: p\nsources:\n  - name: s\n    path: d\n    format: xml\n")
    assert main(["run", str(spec)]) == 2
    _, err = capsys.readouterr()
    assert str(spec) in err and "sources.0.format" in err


def test_demo_reconciles_with_its_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--records", "3000"]) == 0
    out, _ = capsys.readouterr()
    assert "MATCH" in out and "MISMATCH" not in out
    assert "Revenue by city" in out and "Dead letters by reason" in out
