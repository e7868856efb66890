"""The pgoutput decoder on message bytes captured from the real server, plus malformed input."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import psycopg2
import psycopg2.extras
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lakegate.sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Change,
    Commit,
    DecodeError,
    Relation,
    Truncate,
    TypeInfo,
    bulk_new_tuples,
    decode_change,
    decode_message,
    decode_tuple,
    lsn_from_str,
    lsn_to_str,
)
from lakegate.sources.postgres.types import numeric_precision_scale, parse_array_literal

BIG = "(SELECT string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 400) i)"


def _capture(dsn: str, statements: list[str], expected_commits: int) -> list[bytes]:
    """Run ``statements`` and return every pgoutput payload the slot produces for them, in order."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("DROP PUBLICATION IF EXISTS capture_pub")
    cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'capture'")
    cur.execute("DROP TABLE IF EXISTS cap_t")
    cur.execute("DROP TYPE IF EXISTS cap_mood")
    cur.execute("CREATE TYPE cap_mood AS ENUM ('sad', 'happy')")
    cur.execute("CREATE TABLE cap_t (id int PRIMARY KEY, amount numeric(10,2), note text, mood cap_mood, big text)")
    cur.execute("CREATE PUBLICATION capture_pub FOR TABLE cap_t")
    cur.execute("SELECT pg_create_logical_replication_slot('capture', 'pgoutput')")
    for statement in statements:
        cur.execute(statement)
    repl = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    stream = repl.cursor()
    stream.start_replication(
        slot_name="capture", decode=False, options={"proto_version": "1", "publication_names": "capture_pub"}
    )
    payloads: list[bytes] = []
    deadline = time.monotonic() + 20
    while sum(p[:1] == b"C" for p in payloads) < expected_commits and time.monotonic() < deadline:
        message = stream.read_message()
        if message is None:
            select.select([stream], [], [], 0.2)
            continue
        payloads.append(bytes(message.payload))
    repl.close()
    for _ in range(100):  # the walsender exits shortly after its client
        cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'capture'")
        if not cur.fetchone()[0]:
            break
        time.sleep(0.05)
    cur.execute("SELECT pg_drop_replication_slot('capture')")
    cur.execute("DROP PUBLICATION capture_pub")
    conn.close()
    return payloads


@pytest.fixture(scope="module")
def captured(pg_server: str) -> Iterator[list[bytes]]:
    yield _capture(
        pg_server,
        [
            "INSERT INTO cap_t VALUES (1, 12.50, 'a\tb', 'happy', NULL)",
            f"INSERT INTO cap_t VALUES (2, NULL, 'x', 'sad', {BIG})",
            "UPDATE cap_t SET note = 'y' WHERE id = 2",  # big untouched: unchanged TOAST
            "UPDATE cap_t SET id = 3 WHERE id = 1",  # key change: old key sent
            "ALTER TABLE cap_t REPLICA IDENTITY FULL",
            "UPDATE cap_t SET note = 'z' WHERE id = 2",
            "DELETE FROM cap_t WHERE id = 3",
            "TRUNCATE cap_t",
        ],
        expected_commits=7,
    )


def _changes(payloads: list[bytes]) -> list[Change]:
    return [m for m in map(decode_message, payloads) if isinstance(m, Change)]


@pytest.mark.integration
def test_transactions_are_framed_by_begin_and_commit(captured: list[bytes]) -> None:
    messages = [decode_message(p) for p in captured]
    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert len(begins) == len(commits) == 7
    for begin, commit in zip(begins, commits, strict=True):
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_time_us == commit.commit_time_us
        assert abs(begin.commit_time_us / 1e6 - time.time()) < 600  # epoch 2000 shifted to 1970
    assert [c.end_lsn for c in commits] == sorted(c.end_lsn for c in commits)


@pytest.mark.integration
def test_relation_and_type_messages(captured: list[bytes]) -> None:
    messages = [decode_message(p) for p in captured]
    types = [m for m in messages if isinstance(m, TypeInfo)]
    relations = [m for m in messages if isinstance(m, Relation)]
    assert types and types[0].namespace == "public" and types[0].name == "cap_mood"
    first = relations[0]
    assert first.qualified_name == "public.cap_t"
    assert [c.name for c in first.columns] == ["id", "amount", "note", "mood", "big"]
    assert first.key_columns == ["id"] and first.replica_identity == "d"
    assert first.columns[3].type_oid == types[0].type_oid
    assert numeric_precision_scale(first.columns[1].type_modifier) == (10, 2)
    assert relations[-1].replica_identity == "f"  # re-sent after ALTER ... REPLICA IDENTITY FULL
    assert relations[-1].key_columns == ["id", "amount", "note", "mood", "big"]


@pytest.mark.integration
def test_insert_update_delete_tuples(captured: list[bytes]) -> None:
    changes = _changes(captured)
    assert [c.op for c in changes] == ["c", "c", "u", "u", "u", "d"]
    first, second, toast_update, key_update, full_update, delete = changes
    assert first.new == [b"1", b"12.50", b"a\tb", b"happy", None] and first.old is None
    assert second.new is not None and len(second.new[4]) == 400 * 32  # type: ignore[arg-type]
    assert toast_update.new is not None and toast_update.new[4] is UNCHANGED and toast_update.old is None
    assert key_update.old_kind == "K" and key_update.old == [b"1", None, None, None, None]
    assert full_update.old_kind == "O" and full_update.old is not None
    assert full_update.old[2] == b"y" and full_update.old[4] == second.new[4]
    assert full_update.new is not None and full_update.new[4] is UNCHANGED  # still not re-sent in the new tuple
    assert delete.old_kind == "O" and delete.old is not None and delete.old[0] == b"3"


@pytest.mark.integration
def test_truncate(captured: list[bytes]) -> None:
    truncates = [m for m in map(decode_message, captured) if isinstance(m, Truncate)]
    relations = [m for m in map(decode_message, captured) if isinstance(m, Relation)]
    assert len(truncates) == 1 and truncates[0].relation_ids == (relations[0].relation_id,)
    assert not truncates[0].cascade


@pytest.mark.integration
def test_every_truncation_of_a_real_message_is_a_decode_error(captured: list[bytes]) -> None:
    for payload in captured:
        if payload[:1] not in (b"I", b"U", b"D", b"R", b"B", b"C"):
            continue
        for cut in range(1, len(payload) - 1, max(1, len(payload) // 40)):
            with pytest.raises(DecodeError):
                decode_message(payload[:cut])


@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        decode_message(data)
    except DecodeError:
        pass


def test_tuple_with_unknown_kind_is_rejected() -> None:
    with pytest.raises(DecodeError, match="kind 'b'"):
        decode_tuple(b"\x00\x01b\x00\x00\x00\x01x", 0)


def test_lsn_text_round_trip() -> None:
    assert lsn_to_str(0x16B374D848) == "16/B374D848"
    assert lsn_from_str("16/B374D848") == 0x16B374D848
    with pytest.raises(ValueError):
        lsn_from_str("16B374D848")


def test_array_literals() -> None:
    assert parse_array_literal("{}") == []
    assert parse_array_literal("{1,NULL,3}") == ["1", None, "3"]
    assert parse_array_literal('{"a b","q\\"x",NULL,"NULL",plain}') == ["a b", 'q"x', None, "NULL", "plain"]
    assert parse_array_literal("[0:1]={7,8}") == ["7", "8"]
    with pytest.raises(ValueError):
        parse_array_literal("{{1,2},{3,4}}")
    with pytest.raises(ValueError):
        parse_array_literal("1,2")


def test_numeric_type_modifier() -> None:
    assert numeric_precision_scale(-1) is None
    assert numeric_precision_scale(((38 << 16) | 9) + 4) == (38, 9)


@pytest.mark.integration
def test_bulk_decode_matches_the_message_decoder(captured: list[bytes]) -> None:
    fast = [p for p in captured if p[:1] in (b"I", b"U") and p[5:6] == b"N"]
    plain = [p for p in fast if UNCHANGED not in decode_change(p)[2]]  # type: ignore[operator]
    columns = bulk_new_tuples(plain, 5)
    assert columns is not None and len(plain) == 2 and len(fast) == 3
    expected = [decode_change(p)[2] for p in plain]
    assert [list(row) for row in zip(*(c.to_pylist() for c in columns), strict=True)] == expected
    assert bulk_new_tuples(fast, 5) is None  # the unchanged-TOAST update needs the per-message path
    assert bulk_new_tuples(plain, 4) is None  # another width
    assert bulk_new_tuples([plain[0][:-1]], 5) is None  # truncated


@given(st.lists(st.binary(min_size=6, max_size=40), min_size=1, max_size=4), st.integers(1, 4))
def test_bulk_decode_never_crashes_on_garbage(payloads: list[bytes], width: int) -> None:
    columns = bulk_new_tuples([b"I\x00\x00\x00\x01N" + p for p in payloads], width)
    assert columns is None or all(len(c) == len(payloads) for c in columns)
