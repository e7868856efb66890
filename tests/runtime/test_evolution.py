"""Additive schema evolution through a running pipeline: new columns and legal promotions."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import yaml

from lakegate.core.config import CatalogSpec
from lakegate.runtime.pipeline import Pipeline
from lakegate.sinks.catalog import open_catalog
from tests.runtime.helpers import read_back


def _spec(tmp_path: Path) -> Path:
    spec = {
        "pipeline": "evo",
        "namespace": "t",
        "data_dir": str(tmp_path / "data"),
        "sources": [{"name": "ev", "path": str(tmp_path / "in"), "format": "ndjson"}],
        "tables": {"ev": {"types": {"price": "decimal(6,2)"}}},
    }
    path = tmp_path / "evo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_new_column_and_promotions_evolve_the_table(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _write(
        tmp_path / "in" / "1.ndjson",
        [{"id": i, "small": i, "ratio": 0.5, "price": "12.50"} for i in range(30)],
    )
    spec = _spec(tmp_path)
    with Pipeline.from_yaml(spec) as pipeline:
        pipeline.run(until_idle=True)
    table = open_catalog(CatalogSpec(), tmp_path / "data").load_table("t.ev")
    types = {f.name: str(f.field_type) for f in table.schema().fields}
    assert types["small"] == "int" and types["price"] == "decimal(6, 2)"

    # The second file adds a column, needs a long for `small` and a wider decimal for `price`.
    _write(
        tmp_path / "in" / "2.ndjson",
        [{"id": 100 + i, "small": 2**40 + i, "ratio": 0.25, "price": "123456.78", "note": "new"} for i in range(10)],
    )
    with Pipeline.from_yaml(spec) as pipeline:
        summary = pipeline.run(until_idle=True)
    assert summary.counts.rows_landed == 10 and summary.counts.dead_lettered == 0
    table.refresh()
    types = {f.name: str(f.field_type) for f in table.schema().fields}
    assert types["small"] == "long"
    assert types["note"] == "string"
    assert types["price"] == "decimal(8, 2)"

    rows = read_back(tmp_path / "data", "SELECT id, small, price, note FROM t.ev ORDER BY id").to_pylist()
    assert len(rows) == 40
    assert rows[0] == {"id": 0, "small": 0, "price": Decimal("12.50"), "note": None}
    assert rows[-1] == {"id": 109, "small": 2**40 + 9, "price": Decimal("123456.78"), "note": "new"}


def test_misfit_that_no_promotion_allows_is_dead_lettered(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "1.ndjson", [{"id": i, "qty": i} for i in range(30)])
    _write(
        tmp_path / "in" / "2.ndjson",
        [{"id": 30, "qty": 2.5}, {"id": 31, "qty": "three"}, {"id": 32, "qty": 4}],
    )
    with Pipeline.from_yaml(_spec(tmp_path)) as pipeline:
        summary = pipeline.run(until_idle=True)
    assert (summary.counts.rows_landed, summary.counts.dead_lettered) == (31, 2)
    reasons = read_back(tmp_path / "data", "SELECT reason_code, field, raw_value FROM t.evo__dead_letter ORDER BY 3")
    assert reasons.to_pylist() == [
        {"reason_code": "type_mismatch", "field": "qty", "raw_value": "2.5"},
        {"reason_code": "type_mismatch", "field": "qty", "raw_value": "three"},
    ]
