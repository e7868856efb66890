"""``lakegate cdc ...``: change-data-capture housekeeping (replication slots, binlog positions, compaction),
and the CDC parts of ``lakegate init`` and ``lakegate status``."""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from lakegate.core.config import MySQLSourceSpec, PipelineSpec, PostgresSourceSpec, load_spec


def cdc_source_entry(args: argparse.Namespace) -> dict[str, Any]:
    """The ``sources`` entry ``lakegate init --source postgres|mysql`` writes.

    Raises:
        SystemExit: a required option for the source kind is missing (argparse-style message).
    """
    tables = [t.strip() for t in (args.tables or "").split(",") if t.strip()]
    if args.source == "postgres":
        if not args.dsn or not tables:
            raise SystemExit("lakegate init --source postgres needs --dsn and --tables a,b,...")
        return {"type": "postgres", "name": args.name, "dsn": args.dsn, "tables": tables}
    if not args.user or not args.database:
        raise SystemExit("lakegate init --source mysql needs --user and --database (and usually --tables)")
    entry: dict[str, Any] = {
        "type": "mysql",
        "name": args.name,
        "host": args.host,
        "port": args.port,
        "user": args.user,
        "databases": [args.database],
    }
    if args.password_env:
        entry["password_env"] = args.password_env
    if tables:
        entry["tables"] = tables
    return entry


def cdc_status_lines(spec: PipelineSpec, positions: dict[str, Any]) -> list[str]:
    """Replication state per CDC source: slot and lag (PostgreSQL), binlog retention and lag (MySQL)."""
    lines: list[str] = []
    for source in spec.sources:
        position = positions.get(source.name)
        if isinstance(source, PostgresSourceSpec):
            lines.extend(_postgres_status(source, position))
        elif isinstance(source, MySQLSourceSpec):
            lines.extend(_mysql_status(source, position))
    return lines


def _postgres_status(source: PostgresSourceSpec, position: Any) -> list[str]:
    from lakegate.core.errors import LakegateError
    from lakegate.sources.postgres import slot_status

    phase = position.get("phase") if isinstance(position, dict) else None
    committed = position.get("lsn") or position.get("snapshot_lsn") if isinstance(position, dict) else None
    head = f"  source {source.name} (postgres): phase {phase or 'not started'}, committed position {committed or '-'}"
    try:
        status = slot_status(source.dsn, source.slot)
    except LakegateError as err:
        return [head, f"    slot {source.slot}: cannot ask the server: {err}"]
    if not status.exists:
        return [head, f"    slot {source.slot}: does not exist (created on the first run)"]
    lag = "-" if status.lag_bytes is None else f"{status.lag_bytes:,} bytes"
    retained = "-" if status.retained_bytes is None else f"{status.retained_bytes:,} bytes"
    return [
        head,
        f"    slot {source.slot}: {'active' if status.active else 'inactive'}"
        + (f" (pid {status.active_pid})" if status.active_pid else "")
        + f", wal_status {status.wal_status}",
        f"    confirmed_flush_lsn {status.confirmed_flush_lsn}, server at {status.current_wal_lsn}:"
        f" replication lag {lag}, WAL retained {retained}",
    ]


def _mysql_status(source: MySQLSourceSpec, position: Any) -> list[str]:
    from lakegate.core.errors import LakegateError

    try:
        import pymysql

        from lakegate.sources.mysql import binlog_status
        from lakegate.sources.mysql.binlog import BinlogPoint
        from lakegate.sources.mysql.source import resolve_password
    except ImportError as err:
        return [f"  source {source.name} (mysql): the cdc extra is missing ({err.name}); pip install 'lakegate[cdc]'"]
    point = None
    if isinstance(position, dict) and position.get("binlog"):
        point = BinlogPoint.from_json(position["binlog"])
    snapshot = isinstance(position, dict) and position.get("snapshot") is not None
    head = f"  source {source.name} (mysql): {'snapshot in progress' if snapshot else 'streaming'}"

    def connect() -> Any:
        return pymysql.connect(
            host=source.host,
            port=source.port,
            user=source.user,
            password=resolve_password(source),
            connect_timeout=source.connect_timeout,
        )

    try:
        status = binlog_status(connect, point)
    except (LakegateError, pymysql.MySQLError, OSError) as err:
        return [head, f"    cannot ask the server: {err}"]
    lag = status["acknowledged_lag_bytes"]
    present = status["acknowledged_file_present"]
    return [
        head,
        f"    committed binlog position {status['acknowledged'] or '-'}, server at {status['server_end']}:"
        f" replication lag {'-' if lag is None else f'{lag:,} bytes'}",
        f"    binlog files on the server: {', '.join(status['binlog_files'])}"
        + ("" if present is None else f"; the committed position's file {'is kept' if present else 'IS PURGED'}"),
    ]


def cmd_drop_slot(args: argparse.Namespace) -> int:
    """Drop the replication slot of every PostgreSQL source of a spec (or the one named)."""
    from lakegate.sources.postgres import drop_slot

    spec = load_spec(args.spec)
    sources = [s for s in spec.sources if isinstance(s, PostgresSourceSpec) and args.source in (None, s.name)]
    if not sources:
        print("no PostgreSQL source in the spec" + (f" named {args.source}" if args.source else ""), file=sys.stderr)
        return 2
    for source in sources:
        dropped = drop_slot(source.dsn, source.slot, force=args.force)
        print(f"slot {source.slot} of source {source.name}: {'dropped' if dropped else 'did not exist'}")
        if dropped:
            print(
                "  the next run cannot resume from the pipeline's recorded position; reset the pipeline state"
                f" ({spec.state_dir}) to take a new snapshot"
            )
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Compact the mirrors of a pipeline now (the running pipeline does it on its schedule)."""
    import orjson

    from lakegate.runtime.cdc import STATE_KEY, Compactor, TableState
    from lakegate.runtime.state import StateStore
    from lakegate.sinks.catalog import open_catalog
    from lakegate.sinks.cdc import CompactionPolicy
    from lakegate.sinks.tables import TableManager

    spec = load_spec(args.spec)
    store = StateStore(spec.state_dir)
    try:
        record = store.latest()
    finally:
        store.close()
    encoded = record.operator_state.get(STATE_KEY) if record is not None else None
    if encoded is None:
        print("no CDC table committed yet")
        return 0
    states = orjson.loads(base64.b64decode(encoded)).get("tables", {})
    mirrors = [(name, TableState.from_json(s).key) for name, s in sorted(states.items()) if s["mode"] == "mirror"]
    compactor = Compactor(
        lambda: TableManager(open_catalog(spec.catalog, spec.data_dir), spec.namespace), CompactionPolicy()
    )
    results = compactor.run_now(mirrors, force=True)
    for table in sorted({name for name, _ in mirrors} - {r.table for r in results}):
        print(f"{table}: up to date (no change past its watermark)")
    for result in results:
        print(
            f"{result.table}: {result.outcome}, {result.changes_merged:,} changes -> {result.mirror_rows_after:,} rows"
            f" in {result.total_s:.2f}s"
        )
    return 0


def add_cdc_commands(subparsers: Any) -> None:
    """Register the ``cdc`` commands on the main parser's subparsers."""
    p = subparsers.add_parser("cdc", help="CDC housekeeping: replication slots, mirror compaction")
    sub = p.add_subparsers(dest="cdc_command", required=True)
    q = sub.add_parser("drop-slot", help="drop the replication slot of the spec's PostgreSQL source(s)")
    q.add_argument("spec")
    q.add_argument("--source", help="only this source (default: every PostgreSQL source)")
    q.add_argument("--force", action="store_true", help="end the backend holding the slot first")
    q.set_defaults(func=cmd_drop_slot)
    q = sub.add_parser("compact", help="rewrite the spec's mirror tables from their changes now")
    q.add_argument("spec")
    q.set_defaults(func=cmd_compact)
