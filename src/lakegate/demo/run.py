"""``lakegate demo``: generate orders, ingest them, print the reconciliation and a DuckDB query."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

from lakegate.cli.render import render_table
from lakegate.demo.orders import generate_orders
from lakegate.demo.semantic import generate_semantic_faults
from lakegate.demo.upstream import CHANGES, UpstreamManifest, generate_upstream_change
from lakegate.query.duckdb_reader import query
from lakegate.runtime.pipeline import Pipeline

SPEC: dict[str, Any] = {
    "pipeline": "orders_demo",
    "namespace": "demo",
    "data_dir": "lakegate-data",
    "sources": [{"name": "orders", "type": "files", "path": "incoming", "format": "ndjson", "batch_rows": 2500}],
    "tables": {
        "orders": {
            "event_time": {"field": "created_at", "max_out_of_orderness": "5m"},
            "partition": "day",
            "contract": {"warmup_rows": 8000, "max_shift": 0.3, "keys": ["order_id"], "window_rows": 2000},
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
SELECT reason_code, field, count(*) AS records, min(left(message, 90)) AS example
FROM demo.orders_demo__dead_letter GROUP BY 1, 2 ORDER BY 3 DESC
"""

QUARANTINED = """
SELECT json_extract_string(detail, '$.violations[0].kind') AS rule_kind,
       json_extract_string(detail, '$.violations[0].rule') AS rule, count(*) AS records,
       min(left(message, 100)) AS example
FROM demo.orders_demo__dead_letter WHERE stage = 'contract' GROUP BY 1, 2 ORDER BY 3 DESC
"""


def run_demo(directory: Path, records: int = 20_000) -> int:
    """Lay out ``directory`` anew, ingest a generated stream, and show what landed and why."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    manifest = generate_orders(directory / "incoming", records=records)
    semantic = generate_semantic_faults(directory / "incoming", manifest, records=max(records // 3, 3000))
    upstream = generate_upstream_change(
        directory / "incoming", semantic.next_number, semantic.clock, records=max(records // 6, 1500)
    )
    spec_path = directory / "orders.yaml"
    spec = copy.deepcopy(SPEC)
    # the contract must be learned from the clean stream, before the faults and the upstream change
    spec["tables"]["orders"]["contract"]["warmup_rows"] = min(8000, max(2000, records // 2))
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    incoming = directory / "incoming"
    print(f"generated {manifest.records:,} order events in {len(manifest.files)} files under {incoming}")
    print(
        f"  of which {manifest.malformed} truncated lines, {manifest.invalid_utf8} with invalid UTF-8,"
        f" {manifest.wrong_type} with a non-numeric amount, {manifest.late} late events (2h behind)\n"
    )
    faults = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(semantic.faults.items()))
    print(
        f"then {semantic.records:,} more after warm-up with semantic faults ({faults}),"
        f" a burst of {semantic.late_burst} events 3h late and a channel shift in the second half\n"
    )
    renamed = ", ".join(f"{old} -> {new}" for old, new in CHANGES.items())
    print(f"and last, {upstream.records:,} orders after an upstream schema change: {renamed}\n")
    with Pipeline.from_yaml(spec_path) as pipeline:
        summary = pipeline.run(until_idle=True)
        catalog = pipeline.catalog
    print(summary.render())
    written = manifest.records + semantic.records + upstream.records
    read_ok = summary.counts.records_read == written
    syntactic = summary.counts.dead_lettered - summary.quarantined - summary.held
    ok = read_ok and syntactic == manifest.dead_letters
    print(
        f"\ngenerator wrote {written:,} records, {manifest.dead_letters} broken on purpose;"
        f" lakegate read {summary.counts.records_read:,} and dead-lettered {syntactic} at decode/normalize"
        f" -> {'MATCH' if ok else 'MISMATCH'}"
    )
    print(
        f"semantic faults injected after warm-up: {semantic.quarantine_expected};"
        f" quarantined by the contract: {summary.quarantined}"
    )
    ok = _show_upstream_change(catalog, spec_path, upstream) and ok
    for title, sql in (
        ("Revenue by city (orders joined to their line items, read by DuckDB)", REVENUE_BY_CITY),
        ("Orders per day and late events", LATE_AND_DAYS),
        ("Dead letters by reason", DEAD_LETTERS),
        ("Quarantined by the contract, by rule", QUARANTINED),
    ):
        print(f"\n{title}:\n{render_table(query(catalog, sql))}")
    print(f"\nspec: {spec_path}   data: {directory / 'lakegate-data'}")
    print(f'try:  lakegate query --spec {spec_path} "SELECT * FROM demo.orders LIMIT 5"')
    print(f"      lakegate dlq list --spec {spec_path}")
    print(f"      lakegate contract show orders --spec {spec_path}")
    print(f"      lakegate contract history orders --spec {spec_path}")
    print(f"      lakegate proposals list --spec {spec_path}")
    print(f"      lakegate audit --spec {spec_path}")
    return 0 if ok else 1


def _show_upstream_change(catalog: object, spec_path: Path, upstream: UpstreamManifest) -> bool:
    """What schema intelligence did with the upstream change, and whether every changed order landed right."""
    from lakegate.cli.schema import approve, render_proposal
    from lakegate.contracts.registry import ContractRegistry
    from lakegate.core.config import load_spec
    from lakegate.runtime.replay import replay_dead_letters
    from lakegate.sources.replay import ReplayFilter

    spec = load_spec(spec_path)
    registry = ContractRegistry(spec.registry_url)
    print("\nUpstream schema change (lakegate proposals / lakegate audit):")
    for proposal in registry.proposals(dataset="orders"):
        print(render_proposal(proposal))
    pending = registry.proposals(dataset="orders", status="pending")
    for proposal in pending:
        print(
            f"  -> held for review; the demo plays the reviewer:"
            f" lakegate proposals approve {proposal.id} --replay --spec {spec_path}"
        )
        approve(registry, proposal.id, actor="demo-reviewer")
        result = replay_dead_letters(spec, ReplayFilter(reason="schema_held", target_table="orders"))
        print(f"     replayed {result.selected:,} held rows")
    decisions = registry.decisions(dataset="orders")
    for decision in decisions:
        if decision.kind.startswith("schema."):
            print(f"  audit: {decision.at:%H:%M:%S} {decision.kind}: {decision.summary}")
    ids = ", ".join(f"'{i}'" for i in upstream.expected)
    rows = query(
        catalog,  # type: ignore[arg-type]
        f"SELECT order_id, customer__id, amount, customer__address__city FROM demo.orders WHERE order_id IN ({ids})",
    ).to_pylist()
    columns = set(query(catalog, "SELECT * FROM demo.orders LIMIT 0").column_names)  # type: ignore[arg-type]
    got = {r["order_id"]: r for r in rows}
    right = sum(
        1
        for order_id, want in upstream.expected.items()
        if order_id in got
        and got[order_id]["customer__id"] == want["customer__id"]
        and abs(got[order_id]["amount"] - want["amount"]) < 0.005
        and got[order_id]["customer__address__city"] == want["customer__address__city"]
    )
    leaked = sorted(columns & {"cust_id", "amount_cents", "shipping__city"})
    quarantined = query(
        catalog,  # type: ignore[arg-type]
        "SELECT count(DISTINCT position) AS n FROM demo.orders_demo__dead_letter"
        " WHERE source = 'orders:upstream.ndjson' AND stage = 'contract'",
    ).column("n")[0].as_py()
    ok = right == len(rows) and right + quarantined == upstream.records and not leaked
    print(
        f"  {upstream.records:,} orders sent in the new shape; {len(rows):,} landed in demo.orders, {right:,} with"
        f" customer id, amount and city equal to what the producer meant, {quarantined} quarantined by the"
        f" contract's rules; new columns in the table: {leaked or 'none'} -> {'MATCH' if ok else 'MISMATCH'}"
    )
    return ok
