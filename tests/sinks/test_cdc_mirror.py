"""CDC write modes against a dict reference model: the merge, the always-current view, real Iceberg tables.

Change events (inserts, updates with and without unchanged TOAST values, deletes, truncates) are applied
to an in-memory dict and, as change rows, through ``lakegate.sinks.cdc`` and the checkpoint protocol into
a SQLite-catalog Iceberg warehouse; the always-current DuckDB view must equal the dict after every
checkpoint and the compacted mirror must equal the dict at its watermark.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakegate.core.cdc import BEFORE, COMMIT_POSITION, COMMIT_TIME, OP
from lakegate.core.config import CatalogSpec
from lakegate.core.errors import TransientError
from lakegate.query.cdc_views import CurrentReader, CurrentSource, current_sql, read_current, register_current_views
from lakegate.query.duckdb_reader import connect
from lakegate.runtime.checkpoint import OpenCheckpoint, finish_pending, run_protocol
from lakegate.runtime.compaction_worker import CompactionWorker
from lakegate.runtime.state import StateStore
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.cdc import (
    CHANGE_SEQ,
    KEEP_SNAPSHOTS,
    NO_WATERMARK,
    UNCHANGED,
    ChangeSequencer,
    CompactionPolicy,
    PendingChanges,
    changes_table_name,
    compact_mirror,
    decode_sequence,
    encode_sequence,
    ensure_cdc_tables,
    merge_changes,
    mirror_watermark,
    pending_changes,
    prepare_changes,
)
from lakegate.sinks.commit import KEEP_SNAPSHOTS_PROPERTY
from lakegate.sinks.tables import TableManager

VALUES = ("id", "part", "name", "amount", "doc")
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("part", pa.int32()),
        pa.field("name", pa.string()),
        pa.field("amount", pa.int64()),
        pa.field("doc", pa.string()),
        pa.field(OP, pa.string()),
        pa.field(BEFORE, pa.string()),
        pa.field(COMMIT_POSITION, pa.string()),
        pa.field(COMMIT_TIME, pa.timestamp("us", tz="UTC")),
        pa.field(UNCHANGED, pa.list_(pa.string())),
    ]
)
Key = tuple[int, ...]


@dataclass
class ChangeStream:
    """A source table as a dict, and the change events that took it there, in commit order."""

    key_columns: tuple[str, ...] = ("id",)
    reference: dict[Key, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    lsn: int = 0x16B3748

    def key_of(self, row: dict[str, Any]) -> Key:
        return tuple(row[k] for k in self.key_columns)

    def _emit(self, op: str, row: dict[str, Any], before: dict[str, Any] | None, unchanged: list[str] | None) -> None:
        self.lsn += 0x58
        self.events.append(
            {
                **{c: row.get(c) for c in VALUES},
                OP: op,
                BEFORE: orjson.dumps(before).decode() if before is not None else None,
                COMMIT_POSITION: f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}",
                COMMIT_TIME: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.lsn % 100_000),
                UNCHANGED: unchanged,
            }
        )

    def upsert(self, op: str, row: dict[str, Any], *, toast_unchanged: bool = False) -> None:
        key = self.key_of(row)
        before = self.reference.get(key)
        if op == "u" and before is None:
            op, toast_unchanged = "c", False  # an update of a missing key is an insert
        stored = dict(row)
        if toast_unchanged and before is not None:
            stored["doc"] = before["doc"]
            self._emit(op, {**row, "doc": None}, before, ["doc"])
        else:
            self._emit(op, row, before, None)
        self.reference[key] = stored

    def delete(self, key: Key) -> None:
        if key in self.reference:
            before = self.reference.pop(key)
            self._emit("d", dict(zip(self.key_columns, key, strict=True)), before, None)

    def truncate(self) -> None:
        self.reference.clear()
        self._emit("t", {}, None, None)

    def take_events(self) -> pa.Table:
        rows = pa.Table.from_pylist(self.events, schema=SCHEMA)
        self.events = []
        return rows

    def expected(self) -> list[tuple[Any, ...]]:
        return sorted(tuple(r[c] for c in VALUES) for r in self.reference.values())


def as_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [table.column(c).to_pylist() for c in VALUES]
    return sorted(zip(*columns, strict=True))


def random_checkpoint(stream: ChangeStream, rng: random.Random, events: int, next_id: list[int]) -> None:
    """Mostly updates and inserts, some deletes, a rare truncate; updates often leave the TOAST doc alone."""
    for _ in range(events):
        roll = rng.random()
        keys = list(stream.reference)
        if roll < 0.005:
            stream.truncate()
        elif roll < 0.3 or not keys:
            next_id[0] += 1
            stream.upsert("c", _row(rng, next_id[0]))
        elif roll < 0.45:
            stream.delete(rng.choice(keys))
        else:
            key = rng.choice(keys)
            stream.upsert("u", _row(rng, key[0]), toast_unchanged=rng.random() < 0.5)


def _row(rng: random.Random, key: int) -> dict[str, Any]:
    return {
        "id": key,
        "part": key % 3,
        "name": rng.choice([None, "ann", "bob", f"n{rng.randrange(1000)}"]),
        "amount": rng.randrange(-(10**12), 10**12),
        "doc": "x" * rng.randrange(0, 3000) + str(rng.random()),
    }


# -- the pure merge and the view SQL against the reference (no Iceberg) ----------------------------

_OPERATION = st.tuples(
    st.sampled_from(["c", "u", "u_toast", "d", "t"]),
    st.integers(0, 6),
    st.integers(0, 2),
    st.one_of(st.none(), st.integers(-5, 5)),
    st.text(alphabet="ab", max_size=3),
)
_DUCKDB = duckdb.connect()


def _apply(stream: ChangeStream, operations: list[tuple[str, int, int, int | None, str]], truncates: bool) -> None:
    for op, key, part, amount, doc in operations:
        row = {
            "id": key,
            "part": part if len(stream.key_columns) > 1 else key % 3,
            "name": op,
            "amount": amount,
            "doc": doc,
        }
        if op == "t":
            if truncates:
                stream.truncate()
        elif op == "d":
            stream.delete(stream.key_of(row))
        else:
            stream.upsert("u" if op.startswith("u") else "c", row, toast_unchanged=op == "u_toast")


def _sequenced(rows: pa.Table, sequencer: ChangeSequencer, key_columns: tuple[str, ...]) -> pa.Table:
    prepared = prepare_changes(rows, table="t", key_columns=key_columns, sequencer=sequencer)
    assert len(prepared.dead_letters) == 0
    return prepared.rows


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(_OPERATION, max_size=25),
    after=st.lists(_OPERATION, max_size=25),
    composite=st.booleans(),
    truncates=st.booleans(),
)
def test_merge_and_current_view_equal_the_reference(
    before: list[tuple[str, int, int, int | None, str]],
    after: list[tuple[str, int, int, int | None, str]],
    composite: bool,
    truncates: bool,
) -> None:
    keys = ("id", "part") if composite else ("id",)
    stream = ChangeStream(key_columns=keys)
    _apply(stream, before, truncates)
    first = _sequenced(stream.take_events(), ChangeSequencer(1), keys)
    at_watermark = stream.expected()
    _apply(stream, after, truncates)
    second = _sequenced(stream.take_events(), ChangeSequencer(2), keys)

    mirror = merge_changes(_empty_mirror(), first, keys)
    assert as_rows(mirror) == at_watermark
    assert as_rows(merge_changes(mirror, second, keys)) == stream.expected()
    assert set(mirror.column_names).isdisjoint({BEFORE, UNCHANGED})

    # The view reads the mirror and *all* changes; it must skip those at or below the watermark.
    watermark = encode_sequence(1, first.num_rows - 1) if first.num_rows else NO_WATERMARK
    changes = pa.concat_tables([first, second])
    _DUCKDB.register("mirror_rows", mirror)
    _DUCKDB.register("change_rows", changes)
    source = CurrentSource(
        mirror_sql='"mirror_rows"',
        changes_sql='"change_rows"',
        columns=[c for c in mirror.column_names],
        mirror_columns=mirror.column_names,
        changes_columns=changes.column_names,
        key_columns=list(keys),
        watermark=watermark,
        unchanged_columns=["doc"],
    )
    assert as_rows(_DUCKDB.execute(current_sql(source)).fetch_arrow_table()) == stream.expected()


def _empty_mirror() -> pa.Table:
    return (
        pa.schema([f for f in SCHEMA if f.name not in (BEFORE, UNCHANGED)])
        .append(pa.field(CHANGE_SEQ, pa.int64()))
        .empty_table()
    )


def test_unchanged_toast_values_keep_the_stored_value() -> None:
    keys = ("id",)
    stream = ChangeStream()
    stream.upsert("c", {"id": 1, "part": 1, "name": "a", "amount": 1, "doc": "big-1"})
    stream.upsert("c", {"id": 2, "part": 2, "name": "b", "amount": 2, "doc": "big-2"})
    stream.upsert("u", {"id": 1, "part": 1, "name": "a2", "amount": 1, "doc": None}, toast_unchanged=True)
    mirror = merge_changes(_empty_mirror(), _sequenced(stream.take_events(), ChangeSequencer(1), keys), keys)
    assert as_rows(mirror) == [(1, 1, "a2", 1, "big-1"), (2, 2, "b", 2, "big-2")]
    # Two unchanged updates in a row after compaction, a real null, and a change of the value.
    stream.upsert("u", {"id": 1, "part": 1, "name": "a3", "amount": 1, "doc": None}, toast_unchanged=True)
    stream.upsert("u", {"id": 1, "part": 1, "name": "a4", "amount": 1, "doc": None}, toast_unchanged=True)
    stream.upsert("u", {"id": 2, "part": 2, "name": "b2", "amount": 2, "doc": None})
    stream.upsert("u", {"id": 2, "part": 2, "name": "b3", "amount": 2, "doc": None}, toast_unchanged=True)
    merged = merge_changes(mirror, _sequenced(stream.take_events(), ChangeSequencer(2), keys), keys)
    assert as_rows(merged) == [(1, 1, "a4", 1, "big-1"), (2, 2, "b3", 2, None)]
    assert as_rows(merged) == stream.expected()


def test_bad_change_rows_are_dead_lettered_not_dropped() -> None:
    rows = pa.Table.from_pylist(
        [
            {"id": 1, OP: "c"},
            {"id": None, OP: "u"},
            {"id": 3, OP: "x"},
            {"id": None, OP: "t"},
            {"id": 5, OP: None},
        ],
        schema=SCHEMA,
    )
    sequencer = ChangeSequencer(7)
    prepared = prepare_changes(
        rows,
        table="t",
        key_columns=["id"],
        sequencer=sequencer,
        source_ref="pg:public.t",
        positions=pa.array([f"0/1:{i}" for i in range(5)]),
    )
    assert prepared.rows.column(OP).to_pylist() == ["c", "t"]
    assert prepared.rows.column(CHANGE_SEQ).to_pylist() == [encode_sequence(7, 0), encode_sequence(7, 1)]
    assert [(d["position"], d["field"]) for d in prepared.dead_letters.rows] == [
        ("0/1:1", "id"),
        ("0/1:2", OP),
        ("0/1:4", OP),
    ]
    assert prepared.rows.num_rows + len(prepared.dead_letters) == rows.num_rows
    # The next batch of the same table continues the sequence; another table starts its own.
    assert sequencer.take("t", 2).to_pylist() == [encode_sequence(7, 2), encode_sequence(7, 3)]
    assert sequencer.take("u", 1).to_pylist() == [encode_sequence(7, 0)]
    assert decode_sequence(encode_sequence(7, 3)) == (7, 3)
    assert encode_sequence(2, 0) > encode_sequence(1, 2**32 - 1)


def test_compaction_policy() -> None:
    policy = CompactionPolicy(every_checkpoints=10, max_change_share=0.1)
    assert not policy.due(PendingChanges(checkpoints=3, rows=0), mirror_rows=100)
    assert not policy.due(PendingChanges(checkpoints=3, rows=10), mirror_rows=100)
    assert policy.due(PendingChanges(checkpoints=3, rows=11), mirror_rows=100)
    assert policy.due(PendingChanges(checkpoints=10, rows=1), mirror_rows=100)


# -- real Iceberg tables through the checkpoint protocol --------------------------------------------


@dataclass
class Warehouse:
    root: Path
    tables: TableManager
    state: StateStore
    pipeline: str = "cdc"
    checkpoint_id: int = 0

    def commit(self, table: str, rows: pa.Table, key_columns: tuple[str, ...]) -> OpenCheckpoint:
        """One checkpoint of the embedded runtime: prepared change rows -> OpenCheckpoint -> run_protocol;
        returns the checkpoint (``expired``: what its commits expired)."""
        self.checkpoint_id += 1
        prepared = prepare_changes(
            rows, table=table, key_columns=key_columns, sequencer=ChangeSequencer(self.checkpoint_id)
        )
        assert len(prepared.dead_letters) == 0
        checkpoint = OpenCheckpoint(
            checkpoint_id=self.checkpoint_id,
            pipeline=self.pipeline,
            tables=self.tables,
            dead_letter_table="dead_letters",
            partitions=lambda _: None,
        )
        checkpoint.add_rows(table, prepared.rows)
        checkpoint.counts.records_read = checkpoint.counts.rows_landed = rows.num_rows
        run_protocol(
            checkpoint,
            state=self.state,
            source_positions={"pg": {"lsn": self.checkpoint_id}},
            operator_state={},
            known_tables=[],
            acknowledge=lambda: None,
        )
        return checkpoint


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    catalog = open_catalog(CatalogSpec(), tmp_path)
    state = StateStore(tmp_path / "state")
    yield Warehouse(tmp_path, TableManager(catalog, "ns"), state)
    state.close()


def _change_schema() -> pa.Schema:
    return SCHEMA.append(pa.field(CHANGE_SEQ, pa.int64()))


def _mirror_rows(warehouse: Warehouse, table: str) -> pa.Table:
    mirror = warehouse.tables.refresh(table)
    assert mirror is not None
    return mirror.scan().to_arrow() if mirror.current_snapshot() is not None else pa.table({c: [] for c in VALUES})


@pytest.mark.slow
def test_mirror_and_current_view_follow_random_changes_across_checkpoints(warehouse: Warehouse) -> None:
    keys = ("id",)
    ensure_cdc_tables(warehouse.tables, "accounts", _change_schema(), mode="mirror", key_columns=keys)
    catalog = warehouse.tables.catalog
    # Before any checkpoint the view exists and is empty.
    assert read_current(catalog, "ns", "accounts").num_rows == 0
    rng = random.Random(20260105)
    stream, next_id, at_checkpoint = ChangeStream(), [0], {}
    for _ in range(60):  # a snapshot read first
        next_id[0] += 1
        stream.upsert("r", _row(rng, next_id[0]))
    compactions = []
    reader = CurrentReader(catalog, "ns")  # one long-lived connection, re-bound on every read
    for checkpoint in range(1, 10):
        if checkpoint > 1:
            random_checkpoint(stream, rng, events=rng.randrange(1, 80), next_id=next_id)
        if checkpoint == 6:
            stream.truncate()
            random_checkpoint(stream, rng, events=20, next_id=next_id)
        warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)
        at_checkpoint[warehouse.checkpoint_id] = stream.expected()

        current = reader.read("accounts")
        assert as_rows(current) == stream.expected(), f"checkpoint {checkpoint}"
        assert {"_lg_ingested_at", "_lg_pipeline", "_lg_checkpoint", CHANGE_SEQ, OP}.issubset(current.column_names)
        assert BEFORE not in current.column_names and UNCHANGED not in current.column_names

        if checkpoint in (3, 6, 7):  # 6: right after a truncate; 7: the very next checkpoint
            result = compact_mirror(warehouse.tables, "accounts")
            assert result.outcome == "compacted"
            compactions.append(result)
            mirror = warehouse.tables.refresh("accounts")
            assert mirror is not None
            merged_checkpoint = decode_sequence(mirror_watermark(mirror))[0]
            assert merged_checkpoint == warehouse.checkpoint_id
            assert as_rows(_mirror_rows(warehouse, "accounts")) == at_checkpoint[merged_checkpoint]
            assert result.mirror_rows_after == len(at_checkpoint[merged_checkpoint])
            assert as_rows(reader.read("accounts")) == stream.expected()
    reader.close()
    # After the last compaction, two more checkpoints: the mirror lags, the view does not.
    mirror = warehouse.tables.refresh("accounts")
    assert mirror is not None
    assert as_rows(_mirror_rows(warehouse, "accounts")) == at_checkpoint[7] != stream.expected()
    changes = warehouse.tables.refresh(changes_table_name("accounts"))
    assert changes is not None
    assert pending_changes(changes, mirror_watermark(mirror)).checkpoints == 2
    assert compactions[-1].watermark_before == compactions[-2].watermark_after
    # The view is also registered by name on a `lakegate query` connection.
    connection = connect(catalog)
    try:
        assert register_current_views(connection, catalog) == ["ns.accounts__current"]
        count = connection.execute('SELECT count(*) FROM "ns"."accounts__current"').fetchone()
        assert count is not None and count[0] == len(stream.reference)
    finally:
        connection.close()


_CRASHING_COMPACTION = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lakegate.core.config import CatalogSpec
    from lakegate.runtime.faults import maybe_crash
    from lakegate.sinks.catalog import open_catalog
    from lakegate.sinks.cdc import compact_mirror
    from lakegate.sinks.tables import TableManager

    tables = TableManager(open_catalog(CatalogSpec(), Path(sys.argv[1])), "ns")
    compact_mirror(tables, "accounts", before_commit=lambda: maybe_crash("compact_before_commit"))
    print("survived")
    """
)


def _compact_files(warehouse: Warehouse) -> set[str]:
    return {p.name for p in (warehouse.root / "warehouse").rglob("lg-compact-*.parquet")}


def test_compaction_killed_before_its_commit_is_redone_identically(warehouse: Warehouse) -> None:
    keys = ("id",)
    ensure_cdc_tables(warehouse.tables, "accounts", _change_schema(), mode="mirror", key_columns=keys)
    rng = random.Random(7)
    stream, next_id = ChangeStream(), [0]
    random_checkpoint(stream, rng, events=150, next_id=next_id)
    warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)
    first = compact_mirror(warehouse.tables, "accounts")
    random_checkpoint(stream, rng, events=120, next_id=next_id)
    warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)
    committed_files = _compact_files(warehouse)

    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_COMPACTION, str(warehouse.root)],
        env={**os.environ, "LAKEGATE_FAULT": "compact_before_commit"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -9, crashed.stderr
    mirror = warehouse.tables.refresh("accounts")
    assert mirror is not None
    assert mirror_watermark(mirror) == first.watermark_after  # the old mirror, the old watermark
    strays = _compact_files(warehouse) - committed_files
    assert strays, "the killed compaction wrote its files"
    assert as_rows(_mirror_rows(warehouse, "accounts")) != stream.expected()

    redone = compact_mirror(warehouse.tables, "accounts")
    assert redone.outcome == "compacted"
    assert redone.watermark_before == first.watermark_after
    assert as_rows(_mirror_rows(warehouse, "accounts")) == stream.expected()
    assert _compact_files(warehouse) - committed_files == {Path(p).name for p in redone.files} == strays
    assert compact_mirror(warehouse.tables, "accounts").outcome == "nothing_new"
    assert as_rows(read_current(warehouse.tables.catalog, "ns", "accounts")) == stream.expected()


def test_changelog_keeps_every_event_exactly_once(warehouse: Warehouse) -> None:
    tables = ensure_cdc_tables(warehouse.tables, "history", _change_schema(), mode="changelog", key_columns=[])
    assert tables.mirror is None
    rng = random.Random(11)
    stream, next_id, expected = ChangeStream(), [0], []
    for _ in range(3):
        random_checkpoint(stream, rng, events=50, next_id=next_id)
        rows = stream.take_events()
        expected += rows.select([*VALUES, OP, BEFORE, COMMIT_POSITION]).to_pylist()
        warehouse.commit("history", rows, ())
    # Recovery repeats step 4 of an already committed checkpoint: the commit is skipped.
    record = warehouse.state.latest()
    assert record is not None
    finish_pending(record, state=warehouse.state, tables=warehouse.tables, pipeline="cdc", acknowledge=lambda: None)

    history = warehouse.tables.refresh("history")
    assert history is not None
    landed = history.scan().to_arrow().sort_by(CHANGE_SEQ)
    assert landed.select([*VALUES, OP, BEFORE, COMMIT_POSITION]).to_pylist() == expected
    assert landed.column("_lg_checkpoint").to_pylist() == sorted(landed.column("_lg_checkpoint").to_pylist())
    assert len(set(landed.column(CHANGE_SEQ).to_pylist())) == landed.num_rows
    assert history.properties["lakegate.cdc.mode"] == "changelog"


def test_a_polling_reader_queries_again_only_when_a_table_moved_on(warehouse: Warehouse) -> None:
    keys = ("id",)
    ensure_cdc_tables(warehouse.tables, "accounts", _change_schema(), mode="mirror", key_columns=keys)
    rng = random.Random(3)
    stream, next_id = ChangeStream(), [0]
    random_checkpoint(stream, rng, events=40, next_id=next_id)
    warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)
    reader = CurrentReader(warehouse.tables.catalog, "ns")
    uncached = CurrentReader(warehouse.tables.catalog, "ns", cache=False)
    try:
        first = reader.read("accounts")
        assert reader.read("accounts") is first  # nothing committed: the same rows, no query
        assert as_rows(first) == stream.expected()
        count = reader.read("accounts", columns="count(*) AS n")  # another request is queried on its own
        assert count.column("n").to_pylist() == [len(stream.reference)]
        assert uncached.read("accounts") is not uncached.read("accounts")

        random_checkpoint(stream, rng, events=40, next_id=next_id)
        warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)  # the changes move on
        after_commit = reader.read("accounts")
        assert after_commit is not first and as_rows(after_commit) == stream.expected()
        assert compact_mirror(warehouse.tables, "accounts").outcome == "compacted"  # the mirror moves on
        after_compaction = reader.read("accounts")
        assert after_compaction is not after_commit and as_rows(after_compaction) == stream.expected()
        assert as_rows(uncached.read("accounts")) == stream.expected()
    finally:
        reader.close()
        uncached.close()


def test_compactions_expire_old_mirror_snapshots_but_keep_the_watermark(warehouse: Warehouse) -> None:
    keys = ("id",)
    tables = ensure_cdc_tables(warehouse.tables, "accounts", _change_schema(), mode="mirror", key_columns=keys)
    assert tables.mirror is not None and tables.mirror.properties[KEEP_SNAPSHOTS_PROPERTY] == str(KEEP_SNAPSHOTS)
    with tables.mirror.transaction() as txn:
        txn.set_properties({KEEP_SNAPSHOTS_PROPERTY: "2"})
    rng = random.Random(5)
    stream, next_id = ChangeStream(), [0]
    for _ in range(6):
        random_checkpoint(stream, rng, events=30, next_id=next_id)
        warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)
        result = compact_mirror(warehouse.tables, "accounts")
        assert result.outcome == "compacted"
    mirror = warehouse.tables.refresh("accounts")
    assert mirror is not None
    assert len(mirror.metadata.snapshots) <= 3  # the newest two and the one this compaction added
    assert mirror_watermark(mirror) == result.watermark_after == encode_sequence(6, result.changes_merged - 1)
    assert as_rows(_mirror_rows(warehouse, "accounts")) == stream.expected()
    assert as_rows(read_current(warehouse.tables.catalog, "ns", "accounts")) == stream.expected()


def _change_files(warehouse: Warehouse) -> int:
    changes = warehouse.tables.refresh(changes_table_name("accounts"))
    assert changes is not None
    return len(list(changes.scan().plan_files())) if changes.current_snapshot() is not None else 0


def test_compaction_trims_the_changes_the_previous_one_merged(warehouse: Warehouse) -> None:
    """A changes table would otherwise gain a file per checkpoint for ever; each compaction drops the
    files the one before it merged, and the current view stays exact throughout."""
    keys = ("id",)
    ensure_cdc_tables(warehouse.tables, "accounts", _change_schema(), mode="mirror", key_columns=keys)
    catalog = warehouse.tables.catalog
    rng = random.Random(11)
    stream, next_id = ChangeStream(), [0]
    reader = CurrentReader(catalog, "ns")

    def checkpoints(count: int) -> None:
        for _ in range(count):
            random_checkpoint(stream, rng, events=rng.randrange(5, 40), next_id=next_id)
            warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)
            assert as_rows(reader.read("accounts")) == stream.expected()

    checkpoints(3)
    first = compact_mirror(warehouse.tables, "accounts")
    assert first.outcome == "compacted" and first.change_files_trimmed == 0  # nothing merged before it
    assert _change_files(warehouse) == 3
    checkpoints(2)
    second = compact_mirror(warehouse.tables, "accounts")
    assert second.change_files_trimmed == 3 and _change_files(warehouse) == 2  # what the first merged
    assert as_rows(reader.read("accounts")) == stream.expected()
    checkpoints(1)
    third = compact_mirror(warehouse.tables, "accounts")
    assert third.change_files_trimmed == 2 and _change_files(warehouse) == 1
    assert as_rows(_mirror_rows(warehouse, "accounts")) == stream.expected() == as_rows(reader.read("accounts"))
    changes = warehouse.tables.refresh(changes_table_name("accounts"))
    mirror = warehouse.tables.refresh("accounts")
    assert changes is not None and mirror is not None
    assert pending_changes(changes, mirror_watermark(mirror)).checkpoints == 0
    reader.close()


def test_compaction_in_its_own_process_equals_the_reference_and_dies_with_its_parent(warehouse: Warehouse) -> None:
    """The pipeline's background compactions run in a child process (no GIL shared with the checkpoint
    loop); the result is the same mirror, and the child goes when its parent is killed."""
    keys = ("id",)
    ensure_cdc_tables(warehouse.tables, "accounts", _change_schema(), mode="mirror", key_columns=keys)
    rng = random.Random(5)
    stream, next_id = ChangeStream(), [0]
    for _ in range(3):
        random_checkpoint(stream, rng, events=40, next_id=next_id)
        warehouse.commit(changes_table_name("accounts"), stream.take_events(), keys)
    worker = CompactionWorker(CatalogSpec(), warehouse.root, "ns")
    try:
        result = worker.compact("accounts", list(keys))
        assert result.outcome == "compacted" and result.changes_merged == 120
        assert as_rows(_mirror_rows(warehouse, "accounts")) == stream.expected()
        again = worker.compact("accounts", list(keys))  # the same long-lived child, nothing new
        assert again.outcome == "nothing_new"
        with pytest.raises(TransientError, match="failed"):
            worker.compact("no_such_table", list(keys))
    finally:
        worker.close()

    parent = subprocess.Popen(
        [sys.executable, "-c", _WORKER_PARENT, str(warehouse.root)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, 9)
    parent.wait(timeout=30)
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the compaction process outlived its killed parent")


_WORKER_PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lakegate.core.config import CatalogSpec
    from lakegate.runtime.compaction_worker import CompactionWorker

    worker = CompactionWorker(CatalogSpec(), Path(sys.argv[1]), "ns")
    print(worker.pid, flush=True)
    time.sleep(60)
    """
)
