"""PostgreSQL CDC benchmark: how fast a pgbench backlog is read from a slot and turned into Arrow batches.

Steps (each on a private PostgreSQL started for the run, see ``tests/cdc/pg_server.py``):

1. ``pgbench -i -s SCALE``, then a publication and a pgoutput slot on the four pgbench tables;
2. ``pgbench -T SECONDS -c 4`` unthrottled with nothing consuming the slot: its tps is
   ``pgbench_tps_alone`` and it leaves a backlog of about 4 row changes per transaction;
3. ``PostgresSource`` (no snapshot) reads the backlog: pgoutput decoded, text converted to typed Arrow
   batches, positions computed; no Iceberg commit. ``backlog_changes_per_s`` = row changes / seconds
   from ``restore`` to the last change. The server's logical decoding runs on the same cores, so the
   figure is end-to-end for the source, not the Python decoder alone.

4. end to end (``measure_end_to_end``): on a fresh database of the same scale, ``lakegate run`` (its own
   process, 1 s checkpoints) takes its snapshot of the pgbench tables and a one-row probe table; then
   pgbench runs unthrottled (``pgbench_tps``, compare ``pgbench_tps_alone``) while a separate connection
   bumps the probe every 100 ms and a long-lived ``CurrentReader`` polls it through the always-current
   read path: ``lag_p50_s``/``lag_p99_s`` from commit to visible, with the p99 per 30 s of load and
   the read's own duration (``read_s_p99_per_30s``: it grows with the files the probe's changes table
   holds until a compaction trims them). ``peak_rss_mb`` is the pipeline
   process's peak RSS (VmHWM); the bench process's own is ``bench_process_peak_rss_mb``.
   ``storage_files``/``storage_mb``: every file under the CDC tables' directories (data and metadata)
   when the load ends, with the largest file count sampled during the load (``storage_files_max``) and
   the count after the snapshot: expired snapshots' files are reclaimed, so it stays bounded.

    python bench/cdc.py              # scale 10, 20 s of pgbench
    python bench/cdc.py --quick      # scale 2, 6 s of pgbench (about 20 s in all)
    python bench/cdc.py --profile    # also print where the backlog read spends its time

The last line printed is one JSON object with ``backlog_changes_per_s``, ``lag_p50_s``, ``lag_p99_s``,
``pgbench_tps``, ``pgbench_tps_alone``, ``peak_rss_mb``, ``storage_files``, ``storage_mb`` (and details).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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


def _pgbench_command(server: PostgresServer, *args: str) -> list[str]:
    return [find_binary("pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", *args]


def run_pgbench(server: PostgresServer, *args: str, database: str = "postgres") -> str:
    done = subprocess.run([*_pgbench_command(server, *args), database], capture_output=True, text=True, check=False)
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


PROBE_TABLE = "lg_probe"


def _state_phase(spec_path: Path) -> str | None:
    """The phase of the source in the pipeline's last committed checkpoint (``snapshot``/``stream``)."""
    from lakegate.core.config import load_spec
    from lakegate.runtime.state import StateStore

    spec = load_spec(spec_path)
    if not (spec.state_dir / "state.db").exists():
        return None
    store = StateStore(spec.state_dir)
    try:
        record = store.latest()
    finally:
        store.close()
    if record is None or record.status != "committed":
        return None
    position = record.source_positions.get("pg")
    return position.get("phase") if isinstance(position, dict) else None


def _peak_rss_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of the process plus that of its children (the compaction process): a sum of
    peaks, so an upper bound of what they held at once."""
    try:
        total = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    except OSError:
        return None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            total += _peak_rss_mb(int(stat.parent.name)) or 0.0
    return total


def table_storage(spec_path: Path) -> dict[str, dict[str, float]]:
    """Files and MB under each CDC table's directory (data files, manifests, metadata files), by table."""
    from lakegate.core.config import load_spec
    from lakegate.sinks.catalog import open_catalog
    from lakegate.sinks.cdc import MODE_PROPERTY

    spec = load_spec(spec_path)
    catalog = open_catalog(spec.catalog, spec.data_dir)
    storage: dict[str, dict[str, float]] = {}
    for identifier in catalog.list_tables(spec.namespace):
        table = catalog.load_table(identifier)
        if MODE_PROPERTY not in table.properties:
            continue
        files, size = {"data": 0, "metadata": 0}, 0
        root = Path(table.location().removeprefix("file://"))
        for path in root.rglob("*"):
            try:
                if path.is_file():
                    size += path.stat().st_size
                    files["data" if path.relative_to(root).parts[0] == "data" else "metadata"] += 1
            except OSError:  # reclaimed while we walked
                continue
        storage[identifier[-1]] = {"data_files": files["data"], "metadata_files": files["metadata"], "mb": size / 1e6}
    return storage


def _storage_totals(storage: dict[str, dict[str, float]]) -> tuple[int, float]:
    files = sum(int(t["data_files"] + t["metadata_files"]) for t in storage.values())
    return files, round(sum(t["mb"] for t in storage.values()), 1)


class Probe(threading.Thread):
    """Every 100 ms, a separate connection commits ``UPDATE lg_probe SET seq = seq + 1`` and notes when."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.committed: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute(
                    f"UPDATE {PROBE_TABLE} SET seq = seq + 1, at = clock_timestamp() WHERE id = 1 RETURNING seq"
                )
                seq = cur.fetchone()[0]
                self.committed[seq] = time.time()
                self.stop.wait(0.1)
        conn.close()


def _p99_per_30s(times: list[float], values: list[float], start: float) -> dict[str, float]:
    """The p99 of ``values`` per 30 s span of their ``times`` since ``start``."""
    spans: dict[int, list[float]] = {}
    for at, value in zip(times, values, strict=True):
        spans.setdefault(int((at - start) // 30), []).append(value)
    return {
        f"{k * 30}-{k * 30 + 30}s": round(sorted(v)[min(len(v) - 1, int(0.99 * len(v)))], 3)
        for k, v in sorted(spans.items())
    }


def measure_end_to_end(server: PostgresServer, args: argparse.Namespace) -> dict[str, Any]:
    """Commit in PostgreSQL -> visible through the always-current read path, under unthrottled pgbench.

    A pipeline (``lakegate run``, its own process, 1 s checkpoints) captures the pgbench tables and a
    one-row probe table; once its snapshot is committed, pgbench runs and a separate connection bumps
    the probe every 100 ms. A long-lived ``CurrentReader`` polls the probe's mirror: a probe commit's lag
    is the time from its commit to the first poll that shows it (or a later value).
    """
    import psycopg2
    import yaml

    from lakegate.core.config import load_spec
    from lakegate.query.cdc_views import CurrentReader
    from lakegate.sinks.catalog import open_catalog

    admin = psycopg2.connect(server.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE lag")
    admin.close()
    dsn = server.dsn.replace("dbname=postgres", "dbname=lag")
    run_pgbench(server, "-i", "-q", "-s", str(args.scale_used), database="lag")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {PROBE_TABLE} (id int PRIMARY KEY, seq bigint, at timestamptz)")
        cur.execute(f"INSERT INTO {PROBE_TABLE} VALUES (1, 0, now())")
    conn.close()
    work = Path(tempfile.mkdtemp(prefix="lakegate-bench-cdc-"))
    spec_path = work / "lag.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "pipeline": "lag",
                "data_dir": str(work / "data"),
                "sources": [{"type": "postgres", "name": "pg", "dsn": dsn, "tables": [*TABLES, PROBE_TABLE]}],
                "checkpoint": {"interval": "1s"},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    log_path = work / "pipeline.log"
    log_file = log_path.open("wb")
    verbose = ["-v"] if args.verbose else []
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "lakegate.cli.main", *verbose, "run", str(spec_path), "-q", "--max-seconds", "3600"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    try:
        started = time.monotonic()
        while _state_phase(spec_path) != "stream":
            if pipeline.poll() is not None or time.monotonic() - started > 600:
                failure = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the pipeline did not finish its snapshot: {failure}")
            time.sleep(0.2)
        snapshot_s = time.monotonic() - started
        storage_files_after_snapshot = _storage_totals(table_storage(spec_path))[0]
        spec = load_spec(spec_path)
        reader = CurrentReader(open_catalog(spec.catalog, spec.data_dir), spec.namespace)
        probe = Probe(dsn)
        load = subprocess.Popen(
            _pgbench_command(
                server, "-T", str(args.seconds_used), "-c", str(args.clients), "-j", str(min(args.clients, 2)), "lag"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        probe.start()
        lags: list[float] = []
        lag_times: list[float] = []
        read_seconds: list[float] = []
        read_times: list[float] = []
        load_started = time.time()
        last = 0
        seen = 0
        polls = 0
        storage_files_max, storage_sampled = storage_files_after_snapshot, time.monotonic()
        while True:
            done = load.poll() is not None
            if done and not probe.stop.is_set():
                probe.stop.set()
                probe.join()
                last = max(probe.committed, default=0)
            read_started = time.perf_counter()
            visible = reader.read(PROBE_TABLE, columns="seq").column("seq").to_pylist()
            now = time.time()
            read_times.append(now)
            read_seconds.append(time.perf_counter() - read_started)
            polls += 1
            current = int(visible[0]) if visible else 0
            for seq in range(seen + 1, current + 1):
                if seq in probe.committed:
                    lags.append(now - probe.committed[seq])
                    lag_times.append(now)
            seen = max(seen, current)
            if time.monotonic() - storage_sampled >= 5:
                storage_sampled = time.monotonic()
                storage_files_max = max(storage_files_max, _storage_totals(table_storage(spec_path))[0])
            if done and seen >= last:
                break
            if done and time.monotonic() - started > 3600:
                raise RuntimeError("the probe's last commit never became visible")
            time.sleep(0.05)  # a poll every ~50 ms plus its own time: resolution enough, without hogging a core
        output, errors = load.communicate()
        if load.returncode:
            raise RuntimeError(f"pgbench failed: {errors[-2000:]}")
        tps, _ = pgbench_figures(output)
        peak = _peak_rss_mb(pipeline.pid)
        storage = table_storage(spec_path)
        storage_files, storage_mb = _storage_totals(storage)
        reader.close()
    finally:
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait()
        log_file.close()
        if args.verbose:
            shutil.copy(log_path, Path(tempfile.gettempdir()) / "lakegate-bench-cdc-pipeline.log")
        shutil.rmtree(work, ignore_errors=True)
    ordered = sorted(lags)

    def percentile(share: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3) if ordered else None

    # p99 per 30 s of load: does the lag stay put over a long run? And the read path's own share of it.
    segment_p99 = _p99_per_30s(lag_times, lags, load_started)
    read_p99 = _p99_per_30s(read_times, read_seconds, load_started)

    return {
        "lag_p50_s": percentile(0.50),
        "lag_p99_s": percentile(0.99),
        "lag_max_s": round(ordered[-1], 3) if ordered else None,
        "lag_samples": len(ordered),
        "lag_p99_per_30s": segment_p99,
        "read_s_p99_per_30s": read_p99,
        "lag_polls": polls,
        "pgbench_tps": round(tps, 1),
        "pipeline_peak_rss_mb": None if peak is None else round(peak, 1),
        "snapshot_s": round(snapshot_s, 1),
        "storage_files": storage_files,
        "storage_mb": storage_mb,
        "storage_files_max": max(storage_files_max, storage_files),
        "storage_files_after_snapshot": storage_files_after_snapshot,
        "storage_per_table": {
            name: {**counts, "mb": round(counts["mb"], 1)} for name, counts in sorted(storage.items())
        },
        "end_to_end_note": "lakegate run in its own process, 1 s checkpoints, pgbench tables + probe, scale "
        f"{args.scale_used}; lag = probe commit -> visible through CurrentReader (always-current view)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scale 2, 6 s of pgbench")
    parser.add_argument("--scale", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--verbose", action="store_true", help="keep the pipeline's log (checkpoint timings) in $TMPDIR"
    )
    args = parser.parse_args(argv)
    scale = args.scale or (2 if args.quick else 10)
    seconds = args.seconds or (6 if args.quick else 20)
    args.scale_used, args.seconds_used = scale, seconds
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
        "peak_rss_mb": end_to_end["pipeline_peak_rss_mb"] or round(peak_rss_mb, 1),
        "bench_process_peak_rss_mb": round(peak_rss_mb, 1),
        "lag_max_s": end_to_end["lag_max_s"],
        "lag_samples": end_to_end["lag_samples"],
        "lag_p99_per_30s": end_to_end["lag_p99_per_30s"],
        "read_s_p99_per_30s": end_to_end["read_s_p99_per_30s"],
        "snapshot_s": end_to_end["snapshot_s"],
        "storage_files": end_to_end["storage_files"],
        "storage_mb": end_to_end["storage_mb"],
        "storage_files_max": end_to_end["storage_files_max"],
        "storage_files_after_snapshot": end_to_end["storage_files_after_snapshot"],
        "storage_per_table": end_to_end["storage_per_table"],
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
