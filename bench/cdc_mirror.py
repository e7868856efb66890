"""CDC mirror benchmark: what a checkpoint, the always-current read and a compaction cost at 1M rows.

A mirror of ``--rows`` rows (id, name, amount, balance, doc ~120 chars, updated_at) is loaded as a
snapshot read and compacted. Then ``--checkpoints`` checkpoints of ``--updates`` random changes each
(90% updates, 5% inserts, 5% deletes) go through the real checkpoint protocol into ``T__changes``;
after each, the always-current view (``lakegate.query.cdc_views``) is queried. Finally one compaction
merges every pending change into the mirror. For comparison, pyiceberg's own ``Table.upsert`` of one
checkpoint's updates into a plain table of the same rows (the copy-on-write path the design avoids).

Figures (seconds, medians where repeated):

- ``checkpoint_commit_s``: prepare the change rows + write Parquet + protocol commit to ``T__changes``.
- ``current_count_s`` / ``current_fetch_s`` / ``current_lookup_s``: the always-current view on a
  long-lived ``CurrentReader`` as ``count(*)``, as the whole table fetched to Arrow, and as a 100-key
  lookup, with every checkpoint since the first compaction pending; ``oneoff_connection_lookup_s`` is
  a one-key lookup through ``read_current`` (a fresh DuckDB connection, as ``lakegate query`` opens).
- ``compaction_s`` (+ read/merge/write/commit parts): one compaction of the mirror + all changes.
- ``upsert_s``: pyiceberg ``Table.upsert`` of one checkpoint's updates (``--skip-upsert`` to omit).

Checks (exit 1 when one fails; the JSON line is printed all the same): the view's row count equals
the model's after every checkpoint, and after the compaction the mirror equals the view row for row.

    python bench/cdc_mirror.py                      # 1,000,000 rows, 10 checkpoints of 5,000 changes
    python bench/cdc_mirror.py --rows 100000 --checkpoints 3 --skip-upsert
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.cdc import BEFORE, COMMIT_POSITION, COMMIT_TIME, OP
from lakegate.core.config import CatalogSpec
from lakegate.query.cdc_views import CurrentReader, read_current
from lakegate.runtime.checkpoint import OpenCheckpoint, run_protocol
from lakegate.runtime.state import StateStore
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.cdc import (
    ChangeSequencer,
    changes_table_name,
    compact_mirror,
    ensure_cdc_tables,
    prepare_changes,
)
from lakegate.sinks.tables import TableManager

TABLE = "accounts"
KEYS = ("id",)


def change_rows(ids: np.ndarray, ops: np.ndarray, rng: np.random.Generator, lsn: int) -> pa.Table:
    """Change rows for ``ids`` with random values (deletes carry only the key), vectorized."""
    n = len(ids)
    deleted = pa.array(ops == "d")
    amount = pa.array(rng.integers(0, 10**9, n), pa.int64())
    names = pc.binary_join_element_wise(pa.array(np.full(n, "name-")), pc.cast(pa.array(ids), pa.string()), "")
    doc = pc.binary_join_element_wise(
        pa.array(np.full(n, "x" * 100)), pc.cast(pa.array(rng.integers(0, 10**12, n)), pa.string()), ""
    )
    now = datetime.now(UTC)

    def unless_deleted(values: pa.Array) -> pa.Array:
        return pc.if_else(deleted, pa.nulls(n, values.type), values)

    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": unless_deleted(names),
            "amount": unless_deleted(amount),
            "balance": unless_deleted(pa.array(rng.random(n) * 1e6)),
            "doc": unless_deleted(doc),
            "updated_at": unless_deleted(
                pa.array(np.full(n, np.datetime64(now.replace(tzinfo=None), "us"))).cast(pa.timestamp("us", tz="UTC"))
            ),
            OP: pa.array(ops, pa.string()),
            BEFORE: pa.nulls(n, pa.string()),
            COMMIT_POSITION: pa.array(np.full(n, f"0/{lsn:X}")),
            COMMIT_TIME: pa.array(np.full(n, np.datetime64(now.replace(tzinfo=None), "us"))).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )


class Bench:
    def __init__(self, root: Path) -> None:
        self.catalog = open_catalog(CatalogSpec(), root)
        self.tables = TableManager(self.catalog, "bench")
        self.state = StateStore(root / "state")
        self.checkpoint_id = 0

    def commit(self, rows: pa.Table) -> float:
        """One checkpoint through the real protocol; returns its wall time."""
        started = time.perf_counter()
        self.checkpoint_id += 1
        prepared = prepare_changes(rows, table=TABLE, key_columns=KEYS, sequencer=ChangeSequencer(self.checkpoint_id))
        checkpoint = OpenCheckpoint(
            checkpoint_id=self.checkpoint_id,
            pipeline="bench",
            tables=self.tables,
            dead_letter_table="dead_letters",
            partitions=lambda _: None,
        )
        checkpoint.add_rows(changes_table_name(TABLE), prepared.rows)
        checkpoint.counts.records_read = checkpoint.counts.rows_landed = rows.num_rows
        run_protocol(
            checkpoint,
            state=self.state,
            source_positions={"pg": {"checkpoint": self.checkpoint_id}},
            operator_state={},
            known_tables=[],
            acknowledge=lambda: None,
        )
        return time.perf_counter() - started


def timed(action: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    bench = Bench(root)
    failures: list[str] = []
    initial = change_rows(np.arange(args.rows, dtype=np.int64), np.full(args.rows, "r"), rng, 1)
    ensure_cdc_tables(bench.tables, TABLE, initial.schema, mode="mirror", key_columns=KEYS)
    load_s = bench.commit(initial)
    first = compact_mirror(bench.tables, TABLE)
    print(f"snapshot load {args.rows:,} rows: commit {load_s:.2f}s, first compaction {first.total_s:.2f}s")

    reader = CurrentReader(bench.catalog, "bench", cache=False)  # every read queries: what this bench times
    live = np.ones(args.rows, dtype=bool)
    next_id = args.rows
    commits, counts, fetches, lookups = [], [], [], []
    last_updates = None
    for index in range(args.checkpoints):
        n = args.updates
        kinds = rng.random(n)
        existing = np.flatnonzero(live)
        ids = rng.choice(existing, size=n, replace=False)
        inserts = kinds < 0.05
        ids[inserts] = np.arange(next_id, next_id + int(inserts.sum()))
        next_id += int(inserts.sum())
        ops = np.where(inserts, "c", np.where(kinds < 0.10, "d", "u"))
        if len(live) < next_id:
            live = np.concatenate([live, np.zeros(next_id - len(live), dtype=bool)])
        live[ids[ops != "d"]] = True
        live[ids[ops == "d"]] = False
        rows = change_rows(ids, ops, rng, 2 + index)
        last_updates = rows.filter(pc.equal(rows.column(OP), "u"))
        commits.append(bench.commit(rows))

        count_s, count = timed(lambda: _count(reader))
        counts.append(count_s)
        if count != int(live.sum()):
            failures.append(f"checkpoint {bench.checkpoint_id}: view has {count} rows, model {int(live.sum())}")
        wanted = ",".join(str(i) for i in rng.choice(np.flatnonzero(live), size=100, replace=False))
        lookup_s, hits = timed(lambda w=wanted: reader.read(TABLE, where=f"id IN ({w})").num_rows)
        lookups.append(lookup_s)
        if hits != 100:
            failures.append(f"checkpoint {bench.checkpoint_id}: lookup found {hits} of 100 live keys")
        print(
            f"checkpoint {bench.checkpoint_id}: commit {commits[-1]:.3f}s, view count {count_s:.3f}s,"
            f" lookup {lookup_s:.3f}s"
        )
    for _ in range(2):
        fetch_s, current = timed(lambda: reader.read(TABLE))
        fetches.append(fetch_s)
    reader.close()
    oneoff_s, _ = timed(lambda: read_current(bench.catalog, "bench", TABLE, where="id = 1"))

    result = compact_mirror(bench.tables, TABLE)
    print(
        f"compaction of {result.mirror_rows_before:,} + {result.changes_merged:,} changes: {result.total_s:.2f}s"
        f" (read {result.read_s:.2f}, merge {result.merge_s:.2f}, write {result.write_s:.2f},"
        f" commit {result.commit_s:.2f})"
    )
    mirror = bench.tables.refresh(TABLE)
    assert mirror is not None
    compacted = mirror.scan().to_arrow()
    if not _same_rows(compacted, current):
        failures.append("the compacted mirror differs from the always-current view before compaction")

    upsert_s = None
    if not args.skip_upsert and last_updates is not None:
        fresh = change_rows(last_updates.column("id").to_numpy(), np.full(last_updates.num_rows, "u"), rng, 99)
        upsert_s, updated = _upsert(bench, compacted, fresh)
        print(f"pyiceberg upsert of {last_updates.num_rows:,} rows into {compacted.num_rows:,}: {upsert_s:.2f}s")
        if updated != last_updates.num_rows:
            failures.append(f"pyiceberg upsert updated {updated} of {last_updates.num_rows} rows")
    return {
        "rows": args.rows,
        "changes_per_checkpoint": args.updates,
        "checkpoints": args.checkpoints,
        "snapshot_load_commit_s": round(load_s, 3),
        "first_compaction_s": round(first.total_s, 3),
        "checkpoint_commit_s": round(statistics.median(commits), 3),
        "checkpoint_commit_max_s": round(max(commits), 3),
        "current_count_s": round(statistics.median(counts), 3),
        "current_count_max_s": round(max(counts), 3),
        "current_lookup_s": round(statistics.median(lookups), 3),
        "current_fetch_s": round(min(fetches), 3),
        "oneoff_connection_lookup_s": round(oneoff_s, 3),
        "compaction_s": round(result.total_s, 3),
        "compaction_read_s": round(result.read_s, 3),
        "compaction_merge_s": round(result.merge_s, 3),
        "compaction_write_s": round(result.write_s, 3),
        "compaction_commit_s": round(result.commit_s, 3),
        "compaction_changes": result.changes_merged,
        "upsert_s": None if upsert_s is None else round(upsert_s, 3),
        "failures": failures,
    }


def _count(reader: CurrentReader) -> int:
    return int(reader.read(TABLE, columns="count(*) AS n").column("n")[0].as_py())


def _same_rows(left: pa.Table, right: pa.Table) -> bool:
    columns = ["id", "name", "amount", "balance", "doc", "_lg_change_seq"]
    a = left.select(columns).cast(right.select(columns).schema).sort_by("id")
    b = right.select(columns).sort_by("id")
    return a.equals(b)


def _upsert(bench: Bench, rows: pa.Table, updates: pa.Table) -> tuple[float, int]:
    changed = updates.select(["id", "name", "amount", "balance", "doc", "updated_at"])
    changed = changed.cast(pa.schema([rows.schema.field(c) for c in changed.column_names]))
    target = rows.select(changed.column_names)
    plain = bench.catalog.create_table("bench.plain_upsert", schema=target.schema)
    plain.append(target)
    started = time.perf_counter()
    outcome = plain.upsert(changed, join_cols=["id"])
    return time.perf_counter() - started, outcome.rows_updated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=5_000)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--skip-upsert", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep the warehouse in this directory")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="lakegate-cdc-bench-"))
    try:
        figures = run(args, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
