"""An upstream schema change mid-stream, end to end: rename, unit change as a string, a moved nested
field. Auto-applied when confident; held, approved and replayed when not; rejected; reverted. In every
case no row is lost or duplicated and the orders table keeps its schema."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lakegate.cli.main import main as cli
from lakegate.contracts.registry import ContractRegistry
from lakegate.core.config import load_spec
from lakegate.runtime.pipeline import Pipeline
from tests.runtime.helpers import read_back

pytestmark = pytest.mark.slow

CITIES = [("Paris", "75001"), ("Lyon", "69001"), ("Berlin", "10115"), ("Madrid", "28001"), ("Rome", "00118")]
START = datetime(2026, 1, 1, tzinfo=UTC)
OLD_FILES, NEW_FILES, PER_FILE = 4, 2, 1000


def order(i: int, rng: random.Random, new_shape: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record as the source writes it, and the row the orders table must hold for it."""
    customer, amount = rng.randint(1000, 9999), round(rng.uniform(5, 500), 2)
    city, zip_code = rng.choice(CITIES)
    created = (START + timedelta(minutes=i)).isoformat()
    currency = rng.choice(["EUR", "USD"])
    expected = {"order_id": f"ORD-{i:07d}", "customer_id": customer, "amount": amount, "shipping__city": city}
    if not new_shape:
        record = {"order_id": expected["order_id"], "customer_id": customer, "amount": amount, "currency": currency,
                  "created_at": created, "shipping": {"city": city, "zip": zip_code}}  # fmt: skip
    else:  # upstream renamed customer_id, sends cents as a string, moved shipping.city to delivery.city
        record = {"order_id": expected["order_id"], "cust_id": customer, "amount_cents": str(round(amount * 100)),
                  "currency": currency, "created_at": created, "delivery": {"city": city},
                  "shipping": {"zip": zip_code}}  # fmt: skip
    return record, expected


def write_orders(directory: Path, files: range, new_shape: bool, seed: int = 7) -> list[dict[str, Any]]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = []
    for f in files:
        rng = random.Random(seed * 1000 + f)
        lines = []
        for i in range(f * PER_FILE, (f + 1) * PER_FILE):
            record, row = order(i, rng, new_shape)
            lines.append(json.dumps(record))
            expected.append(row)
        (directory / f"part-{f:02d}.ndjson").write_text("\n".join(lines) + "\n")
    return expected


def write_spec(tmp_path: Path, auto_apply: float) -> Path:
    spec = tmp_path / "orders.yaml"
    spec.write_text(
        json.dumps(
            {
                "pipeline": "sc",
                "data_dir": str(tmp_path / "data"),
                "sources": [{"name": "orders", "path": str(tmp_path / "in"), "format": "ndjson"}],
                "tables": {"orders": {"event_time": {"field": "created_at"},
                                      "contract": {"warmup_rows": 2000, "auto_apply": auto_apply}}},
                "checkpoint": {"max_rows": 1000},
            }
        )  # fmt: skip
    )
    return spec


def run(spec: Path) -> Any:
    with Pipeline(load_spec(spec)) as pipeline:
        return pipeline.run(until_idle=True)


def landed(tmp_path: Path) -> dict[str, dict[str, Any]]:
    rows = read_back(
        tmp_path / "data",
        "SELECT order_id, customer_id, amount, shipping__city FROM lakegate.orders",
    ).to_pylist()
    ids = [r["order_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an order landed twice"
    return {r["order_id"]: r for r in rows}


def columns(tmp_path: Path) -> set[str]:
    table = read_back(tmp_path / "data", "SELECT * FROM lakegate.orders LIMIT 0")
    return {c for c in table.column_names if not c.startswith("_lg_")}


def registry(tmp_path: Path) -> ContractRegistry:
    return ContractRegistry(f"sqlite:///{tmp_path / 'data' / 'contracts.db'}")


ORDER_COLUMNS = {"order_id", "customer_id", "amount", "currency", "created_at", "shipping__city", "shipping__zip"}


def assert_exact(tmp_path: Path, expected: list[dict[str, Any]]) -> None:
    got = landed(tmp_path)
    assert set(got) == {e["order_id"] for e in expected}
    for row in expected:
        assert got[row["order_id"]] == pytest.approx(row), row["order_id"]


def test_a_confident_change_is_applied_and_nothing_is_lost(tmp_path: Path) -> None:
    expected = write_orders(tmp_path / "in", range(OLD_FILES), new_shape=False)
    expected += write_orders(tmp_path / "in", range(OLD_FILES, OLD_FILES + NEW_FILES), new_shape=True)
    spec = write_spec(tmp_path, auto_apply=0.8)

    summary = run(spec)

    assert summary.reconciled and summary.held == 0 and summary.counts.dead_lettered == 0
    assert_exact(tmp_path, expected)
    assert columns(tmp_path) == ORDER_COLUMNS  # no cust_id, amount_cents, delivery__city
    reg = registry(tmp_path)
    applied = reg.decisions(dataset="orders", kind="schema.mapping_applied")
    assert len(applied) == 1
    evidence = applied[0].evidence
    assert {m["target"]: m["sources"] for m in evidence["mappings"]} == {
        "customer_id": ["cust_id"],
        "amount": ["amount_cents"],
        "shipping__city": ["delivery__city"],
    }
    assert evidence["validation"]["amount"]["valid_share"] == 1.0
    active = reg.active("orders")
    assert active is not None and len(active.mappings) == 3
    assert reg.proposals(status="applied")[0].contract_version == active.version


def test_a_held_change_is_approved_then_replayed_exactly_once(tmp_path: Path, capsys: Any) -> None:
    expected = write_orders(tmp_path / "in", range(OLD_FILES), new_shape=False)
    expected += write_orders(tmp_path / "in", range(OLD_FILES, OLD_FILES + NEW_FILES), new_shape=True)
    spec = write_spec(tmp_path, auto_apply=0.999)

    summary = run(spec)
    assert summary.held == NEW_FILES * PER_FILE and summary.reconciled
    assert len(landed(tmp_path)) == OLD_FILES * PER_FILE
    pending = registry(tmp_path).proposals(status="pending")
    assert len(pending) == 1 and pending[0].body["held_because"]

    assert cli(["dlq", "list", "--spec", str(spec), "--limit", "5"]) == 0
    assert "replayed" not in capsys.readouterr().out
    assert cli(["proposals", "approve", pending[0].id[:8], "--spec", str(spec), "--replay", "--actor", "ana"]) == 0
    assert_exact(tmp_path, expected)
    assert columns(tmp_path) == ORDER_COLUMNS
    capsys.readouterr()
    assert cli(["dlq", "list", "--spec", str(spec), "--limit", "5"]) == 0
    listed = capsys.readouterr().out  # the held rows now show as replayed, per reason in the summary
    assert "replayed" in listed and f"{NEW_FILES * PER_FILE}" in listed, listed
    assert cli(["dlq", "replay", "--spec", str(spec)]) == 0
    assert "no open dead letters match" in capsys.readouterr().out
    assert_exact(tmp_path, expected)  # a second replay lands nothing twice
    approved = registry(tmp_path).decisions(kind="schema.mapping_approved")
    assert approved[0].actor == "ana"


def test_a_rejected_change_is_no_longer_held_and_meets_the_contract_as_it_is(tmp_path: Path) -> None:
    """Not a rename, a person says: the rows are not held any more, and lacking the contract's
    never-null fields they are quarantined by it, each with its reason (nothing lost)."""
    write_orders(tmp_path / "in", range(OLD_FILES), new_shape=False)
    write_orders(tmp_path / "in", range(OLD_FILES, OLD_FILES + 1), new_shape=True)
    spec = write_spec(tmp_path, auto_apply=0.999)
    assert run(spec).held == PER_FILE
    proposal = registry(tmp_path).proposals(status="pending")[0]
    assert cli(["proposals", "reject", proposal.id, "--spec", str(spec)]) == 0

    write_orders(tmp_path / "in", range(OLD_FILES + 1, OLD_FILES + 2), new_shape=True)
    summary = run(spec)

    assert summary.held == 0 and summary.reconciled
    assert summary.quarantined == PER_FILE
    reasons = read_back(
        tmp_path / "data",
        "SELECT reason_code, count(*) AS n FROM lakegate.sc__dead_letter WHERE checkpoint_id > 5 GROUP BY 1",
    ).to_pylist()
    assert reasons == [{"reason_code": "contract_violation", "n": PER_FILE}]


def test_reverting_a_mapping_re_reads_what_it_shaped_and_holds_it_for_review(tmp_path: Path) -> None:
    """Revert: the contract loses the mapping, the rows that landed through it are taken out and read
    again from the files, and this time they wait for review; nothing is lost or doubled."""
    expected = write_orders(tmp_path / "in", range(OLD_FILES), new_shape=False)
    write_orders(tmp_path / "in", range(OLD_FILES, OLD_FILES + 1), new_shape=True)
    spec = write_spec(tmp_path, auto_apply=0.8)
    assert run(spec).held == 0
    assert len(landed(tmp_path)) == (OLD_FILES + 1) * PER_FILE
    applied = registry(tmp_path).proposals(status="applied")[0]
    assert isinstance(applied.body.get("applied_checkpoint"), int)

    assert cli(["proposals", "revert", applied.id, "--spec", str(spec)]) == 0
    reg = registry(tmp_path)
    active = reg.active("orders")
    assert active is not None and active.mappings == []
    assert reg.proposal(applied.id).status == "reverted"

    summary = run(spec)  # re-reads the file the mapping shaped

    assert summary.reconciled and summary.held == PER_FILE
    assert_exact(tmp_path, expected)  # only the old-shape orders remain landed, each once
    held = read_back(
        tmp_path / "data",
        "SELECT count(*) AS n, count(DISTINCT position) AS d FROM lakegate.sc__dead_letter"
        " WHERE reason_code = 'schema_held'",
    ).to_pylist()
    assert held == [{"n": PER_FILE, "d": PER_FILE}]
    assert [d.evidence["status"] for d in reg.decisions(kind="schema.replay_after_revert")] == ["done"]
    pending = reg.proposals(status="pending")
    assert len(pending) == 1 and "reverted" in " ".join(pending[0].body["held_because"])

    write_orders(tmp_path / "in", range(OLD_FILES + 1, OLD_FILES + 2), new_shape=True)
    assert run(spec).held == PER_FILE  # the same change is not re-applied on its own after a revert
    assert cli(["proposals", "approve", pending[0].id, "--spec", str(spec), "--replay"]) == 0
    assert len(landed(tmp_path)) == (OLD_FILES + 2) * PER_FILE


def test_updates_of_landed_orders_link_by_key_for_row_by_row_evidence(tmp_path: Path) -> None:
    """New-shape records re-sending orders already landed are linked to them by the contract's key:
    each mapping's evidence then has a row-by-row match, and the change is held or applied on it."""
    expected = write_orders(tmp_path / "in", range(OLD_FILES), new_shape=False)
    spec = write_spec(tmp_path, auto_apply=0.999)
    contract = json.loads(spec.read_text())
    contract["tables"]["orders"]["contract"]["keys"] = ["order_id"]
    spec.write_text(json.dumps(contract))
    run(spec)
    # the producer re-sends the last file's orders in its new shape (same ids, same values)
    resent = tmp_path / "in" / f"part-{OLD_FILES:02d}.ndjson"
    rng = random.Random(7 * 1000 + OLD_FILES - 1)
    lines = [json.dumps(order(i, rng, True)[0]) for i in range((OLD_FILES - 1) * PER_FILE, OLD_FILES * PER_FILE)]
    resent.write_text("\n".join(lines) + "\n")

    summary = run(spec)

    assert summary.reconciled and summary.held == PER_FILE
    proposal = registry(tmp_path).proposals(dataset="orders")[0]
    evidence = {m["target"]: m["evidence"] for m in proposal.body["matches"]}
    assert evidence["customer_id"]["row_match"] == 1.0
    assert evidence["amount"]["row_match"] == 1.0
    assert evidence["shipping__city"]["row_match"] == 1.0
    assert len(landed(tmp_path)) == len(expected)
