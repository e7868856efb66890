"""``lakegate`` CLI: init, run, status, tables, query, dlq, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lakegate.cli.cdc import add_cdc_commands, cdc_source_entry, cdc_status_lines
from lakegate.cli.contract import add_contract_commands
from lakegate.cli.render import render_table
from lakegate.cli.schema import add_schema_commands
from lakegate.core.config import DEFAULT_DATA_DIR, CatalogSpec, PipelineSpec, load_spec, parse_spec
from lakegate.core.errors import LakegateError
from lakegate.core.memory import keep_freed_memory


def _catalog_of(spec_path: str | None) -> tuple[object, dict[str, str], PipelineSpec | None]:
    from lakegate.sinks.catalog import open_catalog

    if spec_path:
        spec = load_spec(spec_path)
        return open_catalog(spec.catalog, spec.data_dir), dict(spec.catalog.properties), spec
    return open_catalog(CatalogSpec(), DEFAULT_DATA_DIR), {}, None


def cmd_init(args: argparse.Namespace) -> int:
    """Write a working spec for a directory of files or a database (PostgreSQL, MySQL/MariaDB)."""
    target = Path(args.output or f"{args.name}.yaml")
    if target.exists() and not args.force:
        print(f"{target} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    table: dict[str, object] = {}
    if args.source == "files":
        if not args.path:
            print("lakegate init --source files needs --path", file=sys.stderr)
            return 2
        source: dict[str, object] = {"name": args.name, "type": "files", "path": args.path, "format": args.format}
        if args.watch:
            source["watch"] = True
        if args.event_time:
            table["event_time"] = {"field": args.event_time, "max_out_of_orderness": "5m"}
        checkpoint: dict[str, object] = {"interval": "10s", "max_rows": 1_000_000}
    else:
        source = cdc_source_entry(args)
        checkpoint = {"interval": "5s", "max_rows": 1_000_000}
    data = {
        "pipeline": args.name,
        "namespace": args.namespace,
        "data_dir": args.data_dir,
        "sources": [source],
        "tables": {args.name: table} if table else {},
        "checkpoint": checkpoint,
    }
    parse_spec(data, origin=str(target))  # never write a spec that would not load
    target.write_text(
        f"# lakegate pipeline spec; see README.md for every field\n{yaml.safe_dump(data, sort_keys=False)}"
    )
    if args.source == "files":
        print(f"wrote {target}; run it with: lakegate run {target} --until-idle")
    else:
        print(
            f"wrote {target}; run it with: lakegate run {target} (a snapshot, then changes as they commit);"
            f" lakegate status {target} shows the replication lag"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lakegate.runtime.pipeline import Pipeline, Progress

    def show(p: Progress) -> None:
        print(
            f"\r{p.elapsed_s:6.1f}s  read {p.records_read:,}  landed {p.rows_landed:,}"
            f"  dead-lettered {p.dead_lettered:,}  {p.rows_per_s:,.0f} rows/s"
            f"  last checkpoint #{p.last_checkpoint}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    with Pipeline.from_yaml(args.spec) as pipeline:
        summary = pipeline.run(
            until_idle=args.until_idle,
            max_seconds=args.max_seconds,
            on_progress=None if args.quiet else show,
        )
    if not args.quiet:
        print(file=sys.stderr)
    print(summary.render())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from lakegate.runtime.state import StateStore
    from lakegate.sinks.catalog import open_catalog
    from lakegate.sinks.commit import last_committed_checkpoint
    from lakegate.sinks.tables import TableManager

    spec = load_spec(args.spec)
    store = StateStore(spec.state_dir)
    latest = store.latest()
    print(f"pipeline {spec.pipeline} (namespace {spec.namespace}), state {store.path}")
    if latest is None:
        print("  no checkpoint yet")
        for line in cdc_status_lines(spec, {}):
            print(line)
        return 0
    print(f"  last checkpoint #{latest.checkpoint_id} ({latest.status}); counts {latest.counts}")
    cdc_sources = {s.name for s in spec.sources if s.type != "files"}
    for source, position in sorted(latest.source_positions.items()):
        if source not in cdc_sources:
            print(f"  source {source}: {position}")
    for line in cdc_status_lines(spec, latest.source_positions):
        print(line)
    tables = TableManager(open_catalog(spec.catalog, spec.data_dir), spec.namespace)
    for name in latest.tables:
        table = tables.get(name)
        if table is not None:
            snapshot = table.current_snapshot()
            committed = last_committed_checkpoint(table, spec.pipeline)
            snapshot_id = snapshot.snapshot_id if snapshot else "-"
            print(f"  table {spec.namespace}.{name}: checkpoint #{committed}, snapshot {snapshot_id}")
    store.close()
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    catalog, _, _ = _catalog_of(args.spec)
    for namespace in catalog.list_namespaces():  # type: ignore[attr-defined]
        for identifier in catalog.list_tables(namespace):  # type: ignore[attr-defined]
            table = catalog.load_table(identifier)  # type: ignore[attr-defined]
            snapshot = table.current_snapshot()
            rows = snapshot.summary.get("total-records") if snapshot and snapshot.summary else "0"
            print(f"{'.'.join(identifier):<48} {rows:>12} rows  {table.location()}")
    return 0


def query_current(catalog: Any, sql: str, s3: dict[str, str] | None) -> Any:
    """SQL over the catalog where a CDC mirror ``T`` reads through its always-current view (the
    compacted mirror merged with the changes committed since); ``T__current`` names the same view."""
    from lakegate.query.cdc_views import register_current_views
    from lakegate.query.duckdb_reader import connect

    connection = connect(catalog, s3)
    try:
        for view in register_current_views(connection, catalog):
            namespace, _, name = view.rpartition(".")
            mirror = name.removesuffix("__current")
            connection.execute(
                f'CREATE OR REPLACE VIEW "{namespace}"."{mirror}" AS SELECT * FROM "{namespace}"."{name}"'
            )
        return connection.execute(sql).fetch_arrow_table()
    finally:
        connection.close()


def cmd_query(args: argparse.Namespace) -> int:
    catalog, s3, _ = _catalog_of(args.spec)
    result = query_current(catalog, args.sql, s3 if any(k.startswith("s3.") for k in s3) else None)
    if args.format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    else:
        print(render_table(result, limit=args.limit))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from lakegate.query.duckdb_reader import query

    catalog, s3, spec = _catalog_of(args.spec)
    namespace = spec.namespace if spec else "lakegate"
    if spec:
        tables = [spec.dead_letter_table]
    else:
        tables = [i[-1] for i in catalog.list_tables(namespace) if i[-1].endswith("__dead_letter")]  # type: ignore[attr-defined]
    if not tables:
        print("no dead-letter table yet")
        return 0
    union = " UNION ALL ".join(_dead_letters_sql(catalog, namespace, t) for t in tables)
    s3_props = s3 if any(k.startswith("s3.") for k in s3) else None
    if args.action == "list":
        sql = (
            "SELECT dlq_id, source, position, stage, reason_code, field, left(message, 60) AS message, status"
            f" FROM ({union}) ORDER BY dead_lettered_at, source, position LIMIT {int(args.limit)}"
        )
        print(render_table(query(catalog, sql, s3_props), limit=args.limit))  # type: ignore[arg-type]
        summary = (
            f"SELECT reason_code, status, count(*) AS records FROM ({union}) GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
        )
        print(render_table(query(catalog, summary, s3_props)))  # type: ignore[arg-type]
        return 0
    dlq_id = args.id.replace("'", "''")
    rows = query(catalog, f"SELECT * FROM ({union}) WHERE dlq_id = '{dlq_id}'", s3_props).to_pylist()  # type: ignore[arg-type]
    if not rows:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    for key, value in rows[0].items():
        if key == "raw_payload" and value is not None:
            value = value[:2000].decode("utf-8", errors="replace")
        print(f"{key:>18}: {value}")
    return 0


def _dead_letters_sql(catalog: object, namespace: str, table: str) -> str:
    """A dead-letter table's rows with their replay: the table itself is append-only, so a replayed
    record's ``status`` comes from the replay markers (``<table>_replays``) committed with its replay."""
    from lakegate.sources.replay import replays_table_of

    letters = f'"{namespace}"."{table}"'
    replays = replays_table_of(table)
    if not catalog.table_exists((namespace, replays)):  # type: ignore[attr-defined]
        return f"SELECT *, CAST(NULL AS TIMESTAMPTZ) AS replayed_at FROM {letters}"
    return (
        f"SELECT d.* REPLACE (CASE WHEN r.dlq_id IS NULL THEN d.status ELSE 'replayed' END AS status),"
        f' r.replayed_at FROM {letters} d LEFT JOIN (SELECT dlq_id, dead_lettered_checkpoint,'
        f' max(replayed_at) AS replayed_at FROM "{namespace}"."{replays}" GROUP BY 1, 2) r'
        " ON r.dlq_id = d.dlq_id AND r.dead_lettered_checkpoint = d.checkpoint_id"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from lakegate.demo.run import run_demo

    return run_demo(Path(args.dir), records=args.records)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakegate", description="Governed streaming ingestion into Iceberg.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a working pipeline spec")
    p.add_argument("name")
    p.add_argument("--source", choices=["files", "postgres", "mysql"], default="files")
    p.add_argument("--path", help="files: directory to read files from")
    p.add_argument("--format", default="ndjson", choices=["ndjson", "json", "csv", "avro", "parquet", "auto"])
    p.add_argument("--event-time", help="field holding each record's event time")
    p.add_argument("--namespace", default="lakegate")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--watch", action="store_true", help="keep watching the directory for new files")
    p.add_argument("--dsn", help="postgres: libpq connection string (the user needs REPLICATION)")
    p.add_argument("--tables", help="postgres/mysql: comma-separated source tables (schema.table or table)")
    p.add_argument("--host", default="127.0.0.1", help="mysql: server host")
    p.add_argument("--port", type=int, default=3306, help="mysql: server port")
    p.add_argument("--user", help="mysql: user (needs REPLICATION SLAVE, REPLICATION CLIENT, SELECT)")
    p.add_argument("--password-env", help="mysql: environment variable holding the password")
    p.add_argument("--database", help="mysql: database to capture")
    p.add_argument("-o", "--output", help="spec file to write (default NAME.yaml)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run a pipeline")
    p.add_argument("spec")
    p.add_argument("--until-idle", action="store_true", help="stop once every source is drained and committed")
    p.add_argument("--max-seconds", type=float, help="stop after this long (with a final checkpoint)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="checkpoint, source positions, replication lag and tables of a pipeline")
    p.add_argument("spec")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("tables", help="list the Iceberg tables")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("query", help='run SQL (DuckDB) over the tables, named "namespace.table"')
    p.add_argument("sql")
    p.add_argument("--spec")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("dlq", help="inspect the dead-letter table")
    dlq = p.add_subparsers(dest="action", required=True)
    q = dlq.add_parser("list", help="dead letters with their reasons")
    q.add_argument("--spec")
    q.add_argument("--limit", type=int, default=20)
    q = dlq.add_parser("show", help="one dead letter in full")
    q.add_argument("id")
    q.add_argument("--spec")
    p.set_defaults(func=cmd_dlq)

    add_contract_commands(sub)
    add_schema_commands(sub, dlq)
    add_cdc_commands(sub)

    p = sub.add_parser("demo", help="generate an orders stream, ingest it, show the result")
    p.add_argument("--dir", default="lakegate-demo")
    p.add_argument("--records", type=int, default=20_000)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    keep_freed_memory()  # a lakegate process reuses its big temporary arrays (see core/memory.py)
    try:
        return int(args.func(args))
    except LakegateError as err:
        print(f"lakegate: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
