"""``lakegate demo``: generate orders, ingest them, print the reconciliation and a DuckDB query."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from lakegate.cli.render import render_table
from lakegate.demo.orders import generate_orders
from lakegate.query.duckdb_reader import query
from lakegate.runtime.pipeline import Pipeline

SPEC = {
    "pipeline": "orders_demo",
    "namespace": "demo",
    "data_dir": "lakegate-data",
    "sources": [{"name": "orders", "type": "files", "path": "incoming", "format": "ndjson"}],
    "tables": {
        "orders": {
            "event_time": {"field": "created_at", "max_out_of_orderness": "5m"},
            "partition": "day",
        }
    },
    "checkpoint": {"interval": "5s", "max_rows": 5000},
}

REVENUE_BY_CITY = """
SELECT o.customer__address__city AS city, count(DISTINCT o.order_id) AS orders,
       sum(i.qty) AS items, round(sum(i.qty * i.unit_price), 2) AS revenue
FROM demo.orders o JOIN demo.orders__items i ON i._lg_parent_key = o._lg_source || '#' || o._lg_position
GROUP BY 1 ORDER BY revenue DESC
"""

LATE_AND_DAYS = """
SELECT CAST(_lg_event_time AS DATE) AS day, count(*) AS orders, count(*) FILTER (WHERE _lg_late) AS late
FROM demo.orders GROUP BY 1 ORDER BY 1
"""

DEAD_LETTERS = """
SELECT reason_code, field, count(*) AS records, min(left(message, 70)) AS example
FROM demo.orders_demo__dead_letter GROUP BY 1, 2 ORDER BY 3 DESC
"""


def run_demo(directory: Path, records: int = 20_000) -> int:
    """Lay out ``directory`` anew, ingest a generated stream, and show what landed and why."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    manifest = generate_orders(directory / "incoming", records=records)
    spec_path = directory / "orders.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    incoming = directory / "incoming"
    print(f"generated {manifest.records:,} order events in {len(manifest.files)} files under {incoming}")
    print(
        f"  of which {manifest.malformed} truncated lines, {manifest.invalid_utf8} with invalid UTF-8,"
        f" {manifest.wrong_type} with a non-numeric amount, {manifest.late} late events (2h behind)\n"
    )
    with Pipeline.from_yaml(spec_path) as pipeline:
        summary = pipeline.run(until_idle=True)
        catalog = pipeline.catalog
    print(summary.render())
    expected = (manifest.good, manifest.dead_letters)
    landed = (summary.counts.rows_landed, summary.counts.dead_lettered)
    print(
        f"\ngenerator says good={expected[0]:,} bad={expected[1]:,}; lakegate landed={landed[0]:,}"
        f" dead-lettered={landed[1]:,} -> {'MATCH' if expected == landed else 'MISMATCH'}"
    )
    for title, sql in (
        ("Revenue by city (orders joined to their line items, read by DuckDB)", REVENUE_BY_CITY),
        ("Orders per day and late events", LATE_AND_DAYS),
        ("Dead letters by reason", DEAD_LETTERS),
    ):
        print(f"\n{title}:\n{render_table(query(catalog, sql))}")
    print(f"\nspec: {spec_path}   data: {directory / 'lakegate-data'}")
    print(f'try:  lakegate query --spec {spec_path} "SELECT * FROM demo.orders LIMIT 5"')
    print(f"      lakegate dlq list --spec {spec_path}")
    return 0 if expected == landed else 1
