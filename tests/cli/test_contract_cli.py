"""``lakegate contract ...`` end to end on real registries (SQLite files, the PostgreSQL server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
import yaml

from lakegate.cli.contract import main
from lakegate.contracts.odcs import export_odcs, import_odcs
from lakegate.contracts.registry import ContractRegistry
from tests.contracts.test_registry import PG_URL, full_contract


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_show_diff_activate_rollback_history_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    v1 = tmp_path / "orders.odcs.yaml"
    v1.write_text(export_odcs(full_contract()))
    v2 = tmp_path / "orders-wider.odcs.yaml"
    v2.write_text(export_odcs(full_contract(high=1500.0)))

    code, out, _ = run(capsys, "import", str(v1), "--activate", "--actor", "alice")
    assert code == 0
    assert f"orders: registered v1 (17 rules) from {v1}" in out and "orders: contract v1 is active" in out
    assert (tmp_path / "lakegate-data" / "contracts.db").exists()  # the default registry
    code, out, _ = run(capsys, "import", str(v1))
    assert (code, out.strip()) == (0, "orders: identical to v1; nothing new registered")
    assert run(capsys, "import", str(v2), "--actor", "bob")[1].startswith("orders: registered v2")

    code, out, _ = run(capsys, "show", "orders")
    assert code == 0
    assert out.startswith("contract orders v1 [active]  fingerprint ")
    assert "status active  owner data-team" in out
    assert "reason: learned baseline; learned from 5,000 rows" in out and "source files:incoming" in out
    assert "fields (15; keys: order_id):" in out
    field_line = next(line for line in out.splitlines() if line.startswith("email "))
    assert field_line.split() == ["email", "string", "yes", "mask"]
    rule_line = next(line for line in out.splitlines() if line.startswith("amount.range "))
    assert "[0.5, 1200]" in rule_line and "quarantine" in rule_line and "5,000" in rule_line
    assert "0.999" in rule_line
    assert "[2025-01-01T00:00:00Z, ∞)" in out  # temporal bounds read as times
    assert "one of 6 values: new, paid, shipped, yes, null, 2024-01-01" in out
    assert "policies: quarantine not_null, range; alert drift, volume; retention 30 days" in out

    code, out, _ = run(capsys, "show", "orders", "--version", "2")
    assert "contract orders v2 [not active]" in out and "[0.5, 1500]" in out and "parent 1" in out

    code, out, _ = run(capsys, "diff", "orders", "1", "2")
    assert code == 0
    assert "contract orders: v1 → v2" in out
    assert "~ range amount [amount.range] (quarantine, learned): [0.5, 1200] → [0.5, 1500]" in out
    assert "params.high: 1200 → 1500" in out

    code, out, _ = run(capsys, "activate", "orders", "2", "--actor", "bob", "--reason", "reviewed")
    assert (code, out.strip()) == (0, "orders: contract v2 is active (was v1)")
    code, out, _ = run(capsys, "rollback", "orders", "--actor", "carol", "--reason", "v2 lets bad totals in")
    assert (code, out.strip()) == (
        0,
        "orders: rolled back from contract v2 to v1 (undo: lakegate contract activate orders 2)",
    )

    code, out, _ = run(capsys, "history", "orders")
    assert code == 0
    lines = out.splitlines()
    assert "registered   v1  by alice: learned baseline (17 rules, fingerprint " in lines[0]
    assert "activated    v1  by alice: imported from" in lines[1]
    assert "registered   v2 from v1  by bob" in lines[2]
    assert "activated    v2 (was v1)  by bob: reviewed" in lines[3]
    assert "rolled back  v1 (was v2)  by carol: v2 lets bad totals in" in lines[4]
    assert lines[-1] == "active: v1"

    out_file = tmp_path / "export" / "orders.yaml"
    out_file.parent.mkdir()
    code, out, _ = run(capsys, "export", "orders", "-o", str(out_file))
    assert (code, out.strip()) == (0, f"wrote {out_file} (orders v1, 17 rules)")
    with ContractRegistry("sqlite:///lakegate-data/contracts.db") as registry:
        assert import_odcs(out_file.read_text()) == registry.get("orders", 1)
        decisions = registry.decisions("orders")
    assert [d.kind for d in decisions] == ["contract.activated", "contract.activated", "contract.rolled_back"]
    assert decisions[-1].actor == "carol"
    code, out, _ = run(capsys, "export", "orders", "--version", "2")
    assert code == 0 and yaml.safe_load(out)["version"] == "2.0.0"


def test_errors_exit_2_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "show", "orders")
    assert code == 2 and "lakegate: no contract for dataset 'orders', any version" in err

    bad = tmp_path / "bad.odcs.yaml"
    bad.write_text(export_odcs(full_contract()).replace("kind: not_null", "kind: not_nul"))
    code, _, err = run(capsys, "import", str(bad))
    assert code == 2
    assert f"{bad}: schema[0].quality[0].implementation: invalid lakegate rule 'order_id.not_null'" in err
    assert "kind: Input should be 'not_null', 'range'" in err

    native = tmp_path / "orders.json"
    native.write_text('{"format_version": 3, "dataset": "orders"}')
    code, _, err = run(capsys, "import", str(native))
    assert code == 2 and f"{native}: format_version: 3 was written by a newer lakegate" in err

    good = tmp_path / "good.odcs.yaml"
    good.write_text(export_odcs(full_contract()))
    assert run(capsys, "import", str(good))[0] == 0
    code, _, err = run(capsys, "rollback", "orders")
    assert code == 2 and "'orders' has no active contract to roll back" in err
    code, _, err = run(capsys, "diff", "orders", "1", "5")
    assert code == 2 and "no contract for dataset 'orders', version 5 (versions: 1)" in err
    code, _, err = run(capsys, "activate", "orders", "1")
    assert code == 0
    code, _, err = run(capsys, "rollback", "orders")
    assert code == 2 and "v1 is the first active version" in err
    code, out, _ = run(capsys, "history", "payments")
    assert code == 1 and "no contract for payments" in out


def test_the_registry_of_a_spec_and_by_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "conf" / "orders.yaml"
    spec.parent.mkdir()
    spec.write_text(
        "pipeline: orders\ndata_dir: ../store\nsources:\n  - name: orders\n    path: incoming\n    format: ndjson\n"
    )
    contract_file = tmp_path / "orders.odcs.yaml"
    contract_file.write_text(export_odcs(full_contract()))
    assert run(capsys, "import", str(contract_file), "--spec", str(spec))[0] == 0
    assert (tmp_path / "store" / "contracts.db").exists()
    assert not (tmp_path / "lakegate-data").exists()
    assert "contract orders v1" in run(capsys, "show", "orders", "--spec", str(spec))[1]

    other = tmp_path / "elsewhere.db"
    assert run(capsys, "import", str(contract_file), "--registry", f"sqlite:///{other}")[0] == 0
    assert other.exists()

    spec.write_text(spec.read_text() + "contract_registry: not a url\n")
    code, _, err = run(capsys, "show", "orders", "--spec", str(spec))
    assert code == 2 and "contract registry URL 'not a url' is not a SQLAlchemy URL" in err


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search path is a fresh schema on the PostgreSQL server (dropped afterwards)."""
    schema = f"lg_cli_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.mark.integration
def test_postgres_registry_by_url(tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    contract_file = tmp_path / "orders.odcs.yaml"
    contract_file.write_text(export_odcs(full_contract()))
    code, out, _ = run(capsys, "import", str(contract_file), "--registry", postgres_url, "--activate")
    assert code == 0 and "orders: registered v1" in out
    contract_file.write_text(export_odcs(full_contract(high=99.0)))
    assert run(capsys, "import", str(contract_file), "--registry", postgres_url)[0] == 0
    code, out, _ = run(capsys, "diff", "orders", "1", "2", "--registry", postgres_url)
    assert "[0.5, 1200] → [0.5, 99]" in out
    code, out, _ = run(capsys, "history", "orders", "--registry", postgres_url)
    assert code == 0 and out.splitlines()[-1] == "active: v1"


def test_learn_from_an_iceberg_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lakegate.core.config import DEFAULT_DATA_DIR, CatalogSpec
    from lakegate.sinks.catalog import open_catalog

    monkeypatch.chdir(tmp_path)
    catalog = open_catalog(CatalogSpec(), DEFAULT_DATA_DIR)
    catalog.create_namespace("lakegate")
    n = 5000
    rows = pa.table(
        {
            "order_id": pa.array(range(n), pa.int64()),
            "status": pa.array([("new", "paid", "shipped")[i % 3] for i in range(n)]),
            "qty": pa.array([1 + i % 5 for i in range(n)], pa.int32()),
            "amount": pa.array([10.0 + (i % 97) for i in range(n)]),
        }
    )
    table = catalog.create_table("lakegate.orders", schema=rows.schema)
    table.append(rows)

    code, out, _ = run(capsys, "learn", "orders", "--from-table", "lakegate.orders", "--actor", "alice")
    assert code == 0, out
    assert "orders: learned v1 from 5,000 rows of lakegate.orders" in out
    assert "activate it with: lakegate contract activate orders 1" in out
    with ContractRegistry("sqlite:///lakegate-data/contracts.db") as registry:
        learned = registry.get("orders", 1)
        assert [f.name for f in learned.schema_.fields] == ["order_id", "status", "qty", "amount"]
        assert learned.provenance.learned_from_rows == n and learned.provenance.source == "iceberg:lakegate.orders"
        assert any(r.kind == "allowed_values" and r.columns == ["status"] for r in learned.rules)
        assert registry.active("orders") is None
        [decision] = registry.decisions("orders")
        assert decision.kind == "contract.learned" and decision.evidence["rows"] == n
    code, out, _ = run(capsys, "learn", "orders", "--from-table", "lakegate.orders", "--limit", "3000", "--activate")
    assert code == 0 and "orders: learned v2 from 3,000 rows" in out and "orders: contract v2 is active" in out
    with ContractRegistry("sqlite:///lakegate-data/contracts.db") as registry:
        relearned = registry.get("orders", 2)
        assert relearned.provenance.parent_version == 1 and relearned.provenance.learned_from_rows == 3000
        assert registry.active_version("orders") == 2
    code, _, err = run(capsys, "learn", "orders", "--from-table", "lakegate.missing")
    assert code == 2 and "--from-table lakegate.missing: no such table" in err
