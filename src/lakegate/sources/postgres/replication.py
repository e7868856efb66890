"""Everything that talks to the PostgreSQL server: publication, slot, snapshot copy, stream, status.

Every connection is opened with ``TimeZone=UTC``, ``DateStyle=ISO`` and ``bytea_output=hex``, so the
text representation of a value is the same in the snapshot (``value::text``) and in the stream
(pgoutput runs in the walsender, which takes the same startup options) and parses the same way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lakegate.core.errors import MissingExtraError, TerminalError, TransientError
from lakegate.sources.postgres.pgoutput import Column, Relation, lsn_from_str

try:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    import psycopg2.extras
except ImportError:  # pragma: no cover - exercised only without the extra; connecting says what to install
    psycopg2 = None

SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c bytea_output=hex -c extra_float_digits=1"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class ReplicationError(TerminalError):
    """The slot or publication is not in a state the source can work from (the message says why)."""


def _dsn_with_session_options(dsn: str) -> str:
    if psycopg2 is None:
        raise MissingExtraError("psycopg2", "cdc")
    params = psycopg2.extensions.parse_dsn(dsn)
    params["options"] = f"{params.get('options', '')} {SESSION_OPTIONS}".strip()
    return psycopg2.extensions.make_dsn(**params)


def connect(dsn: str) -> Any:
    """A regular connection in autocommit mode.

    Raises:
        TransientError: the server cannot be reached.
    """
    try:
        conn = psycopg2.connect(_dsn_with_session_options(dsn))
    except psycopg2.OperationalError as err:
        raise TransientError(f"cannot connect to PostgreSQL: {err}".strip()) from err
    conn.autocommit = True
    return conn


def replication_connect(dsn: str) -> Any:
    """A logical replication (walsender) connection.

    Raises:
        TransientError: the server cannot be reached.
    """
    try:
        return psycopg2.connect(
            _dsn_with_session_options(dsn), connection_factory=psycopg2.extras.LogicalReplicationConnection
        )
    except psycopg2.OperationalError as err:
        raise TransientError(f"cannot open a replication connection: {err}".strip()) from err


def split_table_name(table: str) -> tuple[str, str]:
    """``schema.table`` -> ``(schema, table)``; a bare name is in ``public``."""
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def quote(identifier: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def qualified_sql(table: str) -> str:
    schema, name = split_table_name(table)
    return f"{quote(schema)}.{quote(name)}"


def ensure_publication(conn: Any, publication: str, tables: list[str]) -> None:
    """Create the publication for ``tables`` if missing, or add the tables it lacks.

    Raises:
        ReplicationError: a table does not exist.
    """
    with conn.cursor() as cur:
        for table in tables:
            cur.execute("SELECT to_regclass(%s)", (qualified_sql(table),))
            if cur.fetchone()[0] is None:
                raise ReplicationError(f"table {table!r} does not exist (source tables)")
        cur.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
        )
        present = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        if cur.fetchone() is None:
            listed = ", ".join(qualified_sql(t) for t in tables)
            cur.execute(f"CREATE PUBLICATION {quote(publication)} FOR TABLE {listed}")
            return
        missing = [t for t in tables if ".".join(split_table_name(t)) not in present]
        if missing:
            listed = ", ".join(qualified_sql(t) for t in missing)
            cur.execute(f"ALTER PUBLICATION {quote(publication)} ADD TABLE {listed}")


@dataclass(frozen=True)
class CreatedSlot:
    name: str
    consistent_lsn: int
    """Changes committed after this LSN are streamed; everything before is in the snapshot."""
    snapshot_name: str | None
    """The exported snapshot, valid while the creating connection stays open and idle."""


def create_slot_exporting_snapshot(replication_conn: Any, slot: str) -> CreatedSlot:
    """Create a pgoutput slot on a replication connection and export its snapshot.

    Raises:
        ReplicationError: the slot already exists or the server refuses (wal_level, max slots).
    """
    if not _IDENTIFIER.match(slot):
        raise ReplicationError(f"slot name {slot!r} is not a plain identifier")
    with replication_conn.cursor() as cur:
        try:
            cur.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')")
        except psycopg2.Error as err:
            raise ReplicationError(f"cannot create replication slot {slot!r}: {err}".strip()) from err
        name, consistent_point, snapshot_name, _plugin = cur.fetchone()
    return CreatedSlot(name, lsn_from_str(consistent_point), snapshot_name)


def create_slot(conn: Any, slot: str) -> CreatedSlot:
    """Create a pgoutput slot with SQL, without a snapshot (streaming only).

    Raises:
        ReplicationError: the server refuses.
    """
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT lsn FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        except psycopg2.Error as err:
            raise ReplicationError(f"cannot create replication slot {slot!r}: {err}".strip()) from err
        return CreatedSlot(slot, lsn_from_str(cur.fetchone()[0]), None)


@dataclass(frozen=True)
class SlotStatus:
    """A slot's state for ``lakegate status``: how far the consumer confirmed and how far behind it is."""

    slot: str
    exists: bool
    plugin: str | None = None
    active: bool = False
    active_pid: int | None = None
    restart_lsn: str | None = None
    confirmed_flush_lsn: str | None = None
    current_wal_lsn: str | None = None
    lag_bytes: int | None = None
    """WAL written since the last confirmed flush (what a restart may replay)."""
    retained_bytes: int | None = None
    """WAL the server keeps for this slot (from restart_lsn)."""
    wal_status: str | None = None


_STATUS_SQL = """
SELECT plugin, active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, pg_current_wal_lsn()::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status
FROM pg_replication_slots WHERE slot_name = %s
"""


def read_slot_status(conn: Any, slot: str) -> SlotStatus:
    """The slot's state on an open connection."""
    with conn.cursor() as cur:
        cur.execute(_STATUS_SQL, (slot,))
        row = cur.fetchone()
    if row is None:
        return SlotStatus(slot, exists=False)
    return SlotStatus(slot, True, *row)


def slot_status(dsn: str, slot: str) -> SlotStatus:
    """The slot's state and lag (for ``lakegate status``).

    Raises:
        TransientError: the server cannot be reached.
    """
    conn = connect(dsn)
    try:
        return read_slot_status(conn, slot)
    finally:
        conn.close()


def drop_slot_on(conn: Any, slot: str, *, force: bool = False) -> bool:
    """Drop ``slot`` on an open connection; True if it existed. ``force`` ends the consumer holding it.

    Raises:
        ReplicationError: the slot is in use and ``force`` is false.
    """
    status = read_slot_status(conn, slot)
    if not status.exists:
        return False
    with conn.cursor() as cur:
        if status.active and status.active_pid:
            if not force:
                raise ReplicationError(f"slot {slot!r} is in use by backend {status.active_pid}; stop it first")
            cur.execute("SELECT pg_terminate_backend(%s)", (status.active_pid,))
        deadline = time.monotonic() + 15
        while True:  # a walsender whose client died (or was terminated) takes a moment to exit
            try:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return True
            except psycopg2.errors.ObjectInUse as err:
                if time.monotonic() > deadline:
                    raise ReplicationError(f"slot {slot!r} is still in use: {err}".strip()) from err
                time.sleep(0.1)


def drop_slot(dsn: str, slot: str, *, force: bool = False) -> bool:
    """Drop a replication slot (``lakegate cdc drop-slot``), so the server stops retaining WAL for it.

    Returns True if the slot existed.

    Raises:
        ReplicationError: the slot is in use and ``force`` is false.
        TransientError: the server cannot be reached.
    """
    conn = connect(dsn)
    try:
        return drop_slot_on(conn, slot, force=force)
    finally:
        conn.close()


_COLUMNS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident, a.attname, a.atttypid, a.atttypmod,
       COALESCE(a.attnum = ANY (i.indkey), false) AS in_identity
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
LEFT JOIN LATERAL (
    SELECT x.indkey FROM pg_index x
    WHERE x.indrelid = c.oid
      AND ((c.relreplident = 'd' AND x.indisprimary) OR (c.relreplident = 'i' AND x.indisreplident))
    LIMIT 1
) i ON true
WHERE c.oid = %s::regclass
ORDER BY a.attnum
"""

_CUSTOM_TYPES_SQL = """
SELECT t.oid, n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid = ANY (%s) AND t.oid >= 16384
"""


def catalog_relation(cur: Any, table: str) -> Relation:
    """The table's shape as a pgoutput Relation message would describe it (same key flags).

    Raises:
        ReplicationError: the table does not exist.
    """
    try:
        cur.execute(_COLUMNS_SQL, (qualified_sql(table),))
    except psycopg2.errors.UndefinedTable as err:
        raise ReplicationError(f"table {table!r} does not exist (source tables)") from err
    rows = cur.fetchall()
    if not rows:
        raise ReplicationError(f"table {table!r} has no columns")
    oid, namespace, name, identity = rows[0][:4]
    columns = tuple(
        Column(column, type_oid, modifier, identity == "f" or bool(in_identity))
        for *_, column, type_oid, modifier, in_identity in rows
    )
    return Relation(oid, namespace, name, identity, columns)


def custom_type_names(cur: Any, type_oids: list[int]) -> dict[int, str]:
    """``schema.name`` of user-defined types (enums, domains), as pgoutput's Type message names them."""
    cur.execute(_CUSTOM_TYPES_SQL, (type_oids,))
    return {oid: name for oid, name in cur.fetchall()}


def _raw_text(value: str | None, cursor: Any) -> str | None:
    return value


class SnapshotCopy:
    """Reads tables inside an exported snapshot, in chunks, every value as its text representation.

    A plain connection in a ``REPEATABLE READ`` transaction adopts the slot's snapshot, so what it
    reads is exactly the state before the slot's consistent point: the stream continues without a gap
    or an overlap.
    """

    def __init__(self, dsn: str, snapshot_name: str) -> None:
        self.conn = connect(dsn)
        self.cur = self.conn.cursor()
        self.cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self.cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))

    def relation(self, table: str) -> Relation:
        return catalog_relation(self.cur, table)

    def custom_type_names(self, type_oids: list[int]) -> dict[int, str]:
        return custom_type_names(self.cur, type_oids)

    def chunks(self, relation: Relation, rows_per_chunk: int) -> Iterator[list[tuple[str | None, ...]]]:
        """The table's rows, ``rows_per_chunk`` at a time, each a tuple of text values.

        Values come as the server's text output (what pgoutput sends), not ``::text`` casts, which
        differ for some types (``true::text`` is ``'true'``, pgoutput sends ``'t'``): the cursor's
        typecasters for the table's types return the raw text unchanged.
        """
        oids = tuple(sorted({c.type_oid for c in relation.columns}))
        raw = psycopg2.extensions.new_type(oids, "LAKEGATE_RAW_TEXT", _raw_text)
        psycopg2.extensions.register_type(raw, self.cur)
        select = ", ".join(quote(c.name) for c in relation.columns)
        table = f"{quote(relation.namespace)}.{quote(relation.name)}"
        self.cur.execute(f"DECLARE lg_snapshot NO SCROLL CURSOR FOR SELECT {select} FROM {table}")
        try:
            while True:
                self.cur.execute(f"FETCH FORWARD {int(rows_per_chunk)} FROM lg_snapshot")
                rows = self.cur.fetchall()
                if not rows:
                    return
                yield rows
        finally:
            if not self.conn.closed:
                self.cur.execute("CLOSE lg_snapshot")

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()


def start_stream(replication_conn: Any, slot: str, publication: str, start_lsn: int) -> Any:
    """Start streaming ``slot`` from ``start_lsn`` (protocol version 1); returns the replication cursor.

    Raises:
        ReplicationError: the server refuses (slot missing or in use, publication missing).
    """
    cur = replication_conn.cursor()
    deadline = time.monotonic() + 15
    while True:
        try:
            cur.start_replication(
                slot_name=slot,
                decode=False,
                start_lsn=start_lsn,
                options={"proto_version": "1", "publication_names": publication},
                status_interval=10,
            )
            return cur
        except psycopg2.errors.ObjectInUse as err:  # the walsender of a crashed consumer is still exiting
            if time.monotonic() > deadline:
                raise ReplicationError(f"slot {slot!r} stays in use by another consumer: {err}".strip()) from err
            time.sleep(0.1)
        except psycopg2.Error as err:
            raise ReplicationError(f"cannot stream from slot {slot!r}: {err}".strip()) from err
