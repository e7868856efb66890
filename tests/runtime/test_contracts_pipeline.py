"""Semantic contracts inside a running pipeline: warm-up -> enforce, SIGKILL survival, rollback."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakegate.contracts.registry import ContractRegistry
from lakegate.demo.orders import generate_orders
from lakegate.demo.semantic import generate_semantic_faults
from lakegate.runtime.pipeline import Pipeline
from tests.runtime.helpers import read_back, run_cli


def _spec(tmp_path: Path, incoming: Path, **contract: Any) -> Path:
    spec = {
        "pipeline": "orders",
        "namespace": "test",
        "data_dir": str(tmp_path / "lakegate-data"),
        "sources": [{"name": "orders", "path": str(incoming), "format": "ndjson", "batch_rows": 2500}],
        "tables": {
            "orders": {
                "event_time": {"field": "created_at", "max_out_of_orderness": "5m"},
                "contract": {
                    "warmup_rows": 8000,
                    "max_shift": 0.3,
                    "keys": ["order_id"],
                    "window_rows": 2000,
                    **contract,
                },
            }
        },
        "checkpoint": {"interval": "60s", "max_rows": 3000},
    }
    path = tmp_path / "orders.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _stream(incoming: Path) -> tuple[int, int]:
    clean = generate_orders(incoming, records=16_000, files=4, seed=21, fault_rate=0.0, late_rate=0.0, gzip_last=False)
    semantic = generate_semantic_faults(incoming, clean, records=4000, fault_rate=0.03, seed=5)
    return semantic.quarantine_expected, semantic.faults.get("ship_before_order", 0)


def _quarantined(tmp_path: Path) -> list[dict[str, Any]]:
    return read_back(
        tmp_path / "lakegate-data",
        "SELECT position, json_extract_string(detail, '$.violations[0].kind') AS kind,"
        " json_extract_string(detail, '$.violations[0].threshold') AS threshold,"
        " json_extract(detail, '$.contract_version')::INT AS version"
        " FROM test.orders__dead_letter WHERE stage = 'contract' ORDER BY position",
    ).to_pylist()


def test_warmup_learns_then_enforces_with_reasons_and_decisions(tmp_path: Path) -> None:
    expected, _ = _stream(tmp_path / "incoming")
    with Pipeline.from_yaml(_spec(tmp_path, tmp_path / "incoming")) as pipeline:
        summary = pipeline.run(until_idle=True)
    assert summary.reconciled
    quarantined = _quarantined(tmp_path)
    assert len(quarantined) == summary.quarantined
    assert summary.quarantined >= 0.9 * expected  # the injected faults are caught...
    assert summary.quarantined <= expected + 5  # ...with at most a handful of false alarms
    assert all(q["threshold"] and q["version"] == 1 for q in quarantined)
    with ContractRegistry(f"sqlite:///{tmp_path / 'lakegate-data' / 'contracts.db'}") as registry:
        active = registry.active("orders")
        assert active is not None and active.version == 1
        kinds = [d.kind for d in registry.decisions("orders")]
    assert kinds.count("mode.enforce") == 1
    assert "contract.activated" in kinds


@pytest.mark.slow
def test_contract_state_survives_sigkill_through_the_checkpoint(tmp_path: Path) -> None:
    _stream(tmp_path / "incoming")
    spec = _spec(tmp_path, tmp_path / "incoming")
    # Checkpoint 5 comes after warm-up (3,000 rows a checkpoint, 8,000+ rows of warm-up).
    crashed = run_cli("run", str(spec), "--until-idle", "-q", fault="after_pending@5")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = run_cli("run", str(spec), "--until-idle", "-q")
    assert resumed.returncode == 0, resumed.stderr

    reference = tmp_path / "reference"
    reference.mkdir()
    _stream(reference / "incoming")
    with Pipeline.from_yaml(_spec(reference, reference / "incoming")) as pipeline:
        pipeline.run(until_idle=True)

    # The restarted pipeline enforced the same contract and quarantined exactly the same rows,
    # each once; it did not fall back to warm-up and learn a second version.
    assert _quarantined(tmp_path) == _quarantined(reference)
    with ContractRegistry(f"sqlite:///{tmp_path / 'lakegate-data' / 'contracts.db'}") as registry:
        assert registry.versions("orders") == [1]
        assert [d.kind for d in registry.decisions("orders")].count("mode.enforce") == 1


def test_rollback_and_activation_apply_without_touching_checkpoints(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    clean = generate_orders(incoming, records=16_000, files=4, seed=21, fault_rate=0.0, late_rate=0.0, gzip_last=False)
    spec = _spec(tmp_path, incoming)
    with Pipeline.from_yaml(spec) as pipeline:
        pipeline.run(until_idle=True)
    url = f"sqlite:///{tmp_path / 'lakegate-data' / 'contracts.db'}"
    with ContractRegistry(url) as registry:
        learned = registry.active("orders")
        assert learned is not None
        relaxed = learned.model_copy(update={"rules": [r for r in learned.rules if r.kind != "ordering"]})
        v2 = registry.register(relaxed)
        registry.activate("orders", v2.version, actor="test", reason="drop the ordering rule")

    semantic = generate_semantic_faults(incoming, clean, records=4000, fault_rate=0.03, seed=5)
    with Pipeline.from_yaml(spec) as pipeline:
        pipeline.run(until_idle=True)
    kinds = {q["kind"] for q in _quarantined(tmp_path)}
    assert semantic.faults.get("ship_before_order", 0) > 0
    assert "ordering" not in kinds  # v2 is active: ship-before-order lands
    assert {q["version"] for q in _quarantined(tmp_path)} == {v2.version}

    with ContractRegistry(url) as registry:
        registry.rollback("orders", actor="test", reason="v2 let bad shipments through")
        assert registry.active("orders").version == learned.version  # type: ignore[union-attr]
