"""PostgreSQL CDC benchmark: how fast a pgbench backlog is read from a slot and turned into Arrow batches.

Steps (each on a private PostgreSQL started for the run, see ``tests/cdc/pg_server.py``):

1. ``pgbench -i -s SCALE``, then a publication and a pgoutput slot on the four pgbench tables;
2. ``pgbench -T SECONDS -c 4`` unthrottled with nothing consuming the slot: its tps is
   ``pgbench_tps_alone`` and it leaves a backlog of about 4 row changes per transaction;
3. ``PostgresSource`` (no snapshot) reads the backlog: pgoutput decoded, text converted to typed Arrow
   batches, positions computed; no Iceberg commit. ``backlog_changes_per_s`` = row changes / seconds
   from ``restore`` to the last change. The server's logical decoding runs on the same cores, so the
   figure is end-to-end for the source, not the Python decoder alone.

The end-to-end part (``lag_p50_s``, ``lag_p99_s``, ``pgbench_tps`` while the pipeline runs with a 1 s
checkpoint interval) needs the pipeline wiring of the CDC source; ``measure_end_to_end`` is where it
slots in and it reports nulls until then.

    python bench/cdc.py              # scale 10, 20 s of pgbench
    python bench/cdc.py --quick      # scale 2, 6 s of pgbench (about 20 s in all)
    python bench/cdc.py --profile    # also print where the backlog read spends its time

The last line printed is one JSON object with ``backlog_changes_per_s``, ``lag_p50_s``, ``lag_p99_s``,
``pgbench_tps``, ``pgbench_tps_alone``, ``peak_rss_mb`` (and details).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.cdc.pg_server import PostgresServer, find_binary  # noqa: E402

from lakegate.sources.postgres import PostgresSource, PostgresSourceSpec  # noqa: E402
from lakegate.sources.postgres import replication as repl  # noqa: E402

TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
CHANGES_PER_TRANSACTION = 4  # tpcb-like: three UPDATEs and one INSERT


def run_pgbench(server: PostgresServer, *args: str) -> str:
    command = [find_binary("pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", *args]
    done = subprocess.run([*command, "postgres"], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def pgbench_figures(output: str) -> tuple[float, int]:
    """(tps, transactions processed) from pgbench's report."""
    tps = re.search(r"tps = ([\d.]+)", output)
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    if not tps or not processed:
        raise RuntimeError(f"cannot read pgbench's report:\n{output}")
    return float(tps.group(1)), int(processed.group(1))


def read_backlog(dsn: str, expected: int, batch_rows: int, profile: bool) -> dict[str, Any]:
    """Read ``expected`` row changes through PostgresSource into Arrow batches; rate and counts."""
    spec = PostgresSourceSpec(name="bench", dsn=dsn, tables=TABLES, snapshot=False, batch_rows=batch_rows)
    source = PostgresSource(spec)
    profiler = cProfile.Profile() if profile else None
    rows = batches = dead = 0
    per_table: dict[str, int] = {}
    delta_sum = history_inserts = 0
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    source.restore(None)
    deadline = time.monotonic() + 600
    while rows + dead < expected and time.monotonic() < deadline:  # pgbench may commit a few more
        batch = source.poll()
        if batch is None:
            continue
        batches += 1
        rows += batch.records.num_rows
        dead += len(batch.dead_letters)
        per_table[batch.origin] = per_table.get(batch.origin, 0) + batch.records.num_rows
        if batch.origin == "public.pgbench_history":  # pgbench truncates it when a run starts: count inserts
            delta_sum += pc.sum(batch.records.column("delta")).as_py() or 0
            history_inserts += pc.sum(pc.equal(batch.records.column("_lg_op"), "c")).as_py() or 0
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        print(text.getvalue())
    source.close()
    return {
        "rows": rows,
        "dead_letters": dead,
        "batches": batches,
        "seconds": round(elapsed, 3),
        "backlog_changes_per_s": round((rows + dead) / elapsed) if elapsed else None,
        "messages": source.stats["messages"],
        "per_table": per_table,
        "history_delta_sum": delta_sum,
        "history_inserts": history_inserts,
    }


def measure_end_to_end(server: PostgresServer, args: argparse.Namespace) -> dict[str, Any]:
    """Lag percentiles and pgbench tps with a pipeline consuming (1 s checkpoints): not wired yet."""
    return {
        "lag_p50_s": None,
        "lag_p99_s": None,
        "pgbench_tps": None,
        "end_to_end_note": "needs the CDC source in the pipeline runtime (Iceberg commits); not measured here",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scale 2, 6 s of pgbench")
    parser.add_argument("--scale", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    scale = args.scale or (2 if args.quick else 10)
    seconds = args.seconds or (6 if args.quick else 20)
    with PostgresServer() as server:
        run_pgbench(server, "-i", "-q", "-s", str(scale))
        conn = repl.connect(server.dsn)
        repl.ensure_publication(conn, "lakegate_bench", TABLES)
        repl.create_slot(conn, "lakegate_bench")
        conn.close()
        output = run_pgbench(server, "-T", str(seconds), "-c", str(args.clients), "-j", str(min(args.clients, 2)))
        tps_alone, transactions = pgbench_figures(output)
        expected = transactions * CHANGES_PER_TRANSACTION + 1  # + the TRUNCATE of pgbench_history a run starts with
        print(f"pgbench alone: {tps_alone:.0f} tps, {transactions} transactions, {expected} row changes queued")
        backlog = read_backlog(server.dsn, expected, args.batch_rows, args.profile)
        print(
            f"backlog: {backlog['rows']} rows + {backlog['dead_letters']} dead letters in {backlog['batches']} "
            f"batches, {backlog['seconds']} s -> {backlog['backlog_changes_per_s']} changes/s"
        )
        conn = repl.connect(server.dsn)
        with conn.cursor() as cur:  # the decoded values, checked against the database
            cur.execute("SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
            history_rows, history_delta = cur.fetchone()
        conn.close()
        end_to_end = measure_end_to_end(server, args)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {
        "backlog_changes_per_s": backlog["backlog_changes_per_s"],
        "lag_p50_s": end_to_end["lag_p50_s"],
        "lag_p99_s": end_to_end["lag_p99_s"],
        "pgbench_tps": end_to_end["pgbench_tps"],
        "pgbench_tps_alone": round(tps_alone, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "scale": scale,
        "pgbench_seconds": seconds,
        "backlog_rows": backlog["rows"],
        "backlog_seconds": backlog["seconds"],
        "expected_changes": expected,
        "note": end_to_end["end_to_end_note"],
    }
    complete = backlog["rows"] + backlog["dead_letters"] >= expected
    verified = (
        backlog["history_inserts"] == history_rows
        and backlog["history_delta_sum"] == history_delta
        and backlog["dead_letters"] == 0
    )
    summary["verified"] = verified
    if not complete:
        summary["error"] = f"read {backlog['rows'] + backlog['dead_letters']} of {expected} changes"
    print(json.dumps(summary))
    return 0 if complete and verified else 1


if __name__ == "__main__":
    sys.exit(main())
