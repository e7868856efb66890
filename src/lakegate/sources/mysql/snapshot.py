"""The initial snapshot: every captured table copied inside one consistent read, tied to a binlog position.

``START TRANSACTION WITH CONSISTENT SNAPSHOT`` opens the read without a global lock; on MariaDB
``SHOW STATUS LIKE 'binlog_snapshot_%'`` then gives the binlog file and offset that this very read
view is consistent with (measured on 10.11: transactions committed after that offset are invisible to
the snapshot). On MySQL the position comes from ``SHOW MASTER STATUS`` under a brief
``FLUSH TABLES WITH READ LOCK`` (needs the RELOAD privilege). Tables are streamed in primary-key order
over an unbuffered cursor, ``chunk_rows`` per call, so the progress (table, last key) is exact.

Resuming after a crash: the read view is gone with the connection, so a new consistent snapshot is
opened at a later binlog position P2 and the copy continues after the last key of the table in
progress; tables already copied are not read again. Streaming still starts from the first snapshot's
position P1, so changes between P1 and P2 are seen twice (once in the P2 copy, once from the binlog).
Every row carries its commit position (the snapshot's position for copied rows), and positions of one
server sort in commit order: per key, the row with the highest commit position is the current one, which
is how the mirror resolves the overlap (see ``sources/mysql/__init__``). A table without a primary key
cannot be resumed mid-way and is copied again from its start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pymysql
import pymysql.cursors

from lakegate.sources.mysql.binlog import BinlogPoint, TableShape
from lakegate.sources.mysql.types import canonical_from_information_schema

Connect = Callable[[], pymysql.connections.Connection]


def quote(identifier: str) -> str:
    """A MySQL identifier in backticks."""
    return "`" + identifier.replace("`", "``") + "`"


def quote_table(table: str) -> str:
    schema, name = table.split(".", 1)
    return f"{quote(schema)}.{quote(name)}"


def _key_to_json(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, int | float | str) or value is None:
        return value
    return str(value)  # Decimal, date, datetime: MySQL compares their text form correctly


def _key_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "hex" in value:
        return bytes.fromhex(value["hex"])
    return value


@dataclass
class SnapshotProgress:
    """Where a snapshot stands; part of the source position, so a restarted source continues it."""

    point: BinlogPoint
    """The binlog position the current snapshot transaction is consistent with (its rows' commit position)."""
    started_at: str
    """When the current snapshot transaction began (ISO 8601, UTC): the commit time of its rows."""
    tables: list[str]
    """Tables still to copy; the first one is in progress."""
    last_key: list[Any] | None = None
    """Primary key of the last row copied from ``tables[0]`` (None: from its start)."""
    ordinal: int = 0
    """Rows copied from ``tables[0]`` so far (the index part of their positions)."""
    attempt: int = 1
    shapes: dict[str, TableShape] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point.to_json(),
            "started_at": self.started_at,
            "tables": list(self.tables),
            "last_key": None if self.last_key is None else [_key_to_json(v) for v in self.last_key],
            "ordinal": self.ordinal,
            "attempt": self.attempt,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotProgress:
        last_key = data.get("last_key")
        return cls(
            point=BinlogPoint.from_json(data["point"]),
            started_at=str(data["started_at"]),
            tables=list(data["tables"]),
            last_key=None if last_key is None else [_key_from_json(v) for v in last_key],
            ordinal=int(data.get("ordinal", 0)),
            attempt=int(data.get("attempt", 1)),
        )


@dataclass
class SnapshotChunk:
    """Up to ``chunk_rows`` rows of one table, as columns of Python values."""

    table: str
    shape: TableShape
    columns: dict[str, list[Any]]
    first_ordinal: int
    rows: int


def list_tables(cursor: Any, databases: Sequence[str], tables: set[str] | None) -> list[str]:
    """Base tables of the captured databases (optionally only the listed ones), in name order."""
    marks = ",".join(["%s"] * len(databases))
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
        f"WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ({marks}) ORDER BY TABLE_SCHEMA, TABLE_NAME",
        list(databases),
    )
    found = [f"{schema}.{name}" for schema, name in cursor.fetchall()]
    return [table for table in found if tables is None or table in tables]


def read_shapes(cursor: Any, tables: Sequence[str]) -> dict[str, TableShape]:
    """The current shape of each table from ``information_schema`` (columns in order, primary key)."""
    if not tables:
        return {}
    schemas = sorted({table.split(".", 1)[0] for table in tables})
    marks = ",".join(["%s"] * len(schemas))
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE "
        f"FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN ({marks}) "
        "ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        schemas,
    )
    columns: dict[str, list[tuple[str, str]]] = {}
    for schema, name, column, data_type, column_type, precision, scale in cursor.fetchall():
        kind = canonical_from_information_schema(str(data_type), str(column_type), precision, scale)
        columns.setdefault(f"{schema}.{name}", []).append((str(column), kind))
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
        f"WHERE INDEX_NAME = 'PRIMARY' AND TABLE_SCHEMA IN ({marks}) "
        "ORDER BY TABLE_SCHEMA, TABLE_NAME, SEQ_IN_INDEX",
        schemas,
    )
    keys: dict[str, list[str]] = {}
    for schema, name, column in cursor.fetchall():
        keys.setdefault(f"{schema}.{name}", []).append(str(column))
    return {
        table: TableShape(tuple(columns[table]), tuple(keys.get(table, ()))) for table in tables if table in columns
    }


def server_is_mariadb(cursor: Any) -> bool:
    cursor.execute("SELECT VERSION()")
    return "mariadb" in str(cursor.fetchone()[0]).lower()


def current_point(cursor: Any, is_mariadb: bool) -> BinlogPoint:
    """The server's binlog end: where streaming starts when there is no snapshot."""
    cursor.execute("SHOW MASTER STATUS")
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the server has no binary log: start it with log_bin and binlog_format=ROW")
    return BinlogPoint(str(row[0]), int(row[1]), _gtid_at(cursor, str(row[0]), int(row[1])) if is_mariadb else None)


def _gtid_at(cursor: Any, file: str, pos: int) -> str | None:
    cursor.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
    row = cursor.fetchone()
    return str(row[0]) if row and row[0] is not None else None


class SnapshotReader:
    """Copies the captured tables inside one consistent snapshot transaction."""

    def __init__(self, connect: Connect, *, chunk_rows: int) -> None:
        self._connect = connect
        self._chunk_rows = chunk_rows
        self._connection: pymysql.connections.Connection | None = None
        self._cursor: pymysql.cursors.SSCursor | None = None
        self._cursor_table: str | None = None
        self.progress: SnapshotProgress | None = None

    def begin(self, tables: list[str], previous: SnapshotProgress | None) -> SnapshotProgress:
        """Open the consistent read; continue ``previous`` (a crashed attempt) when given."""
        self.close()
        connection = self._connect()
        self._connection = connection
        with connection.cursor() as cursor:
            is_mariadb = server_is_mariadb(cursor)
            cursor.execute("SET SESSION time_zone = '+00:00'")
            cursor.execute("SET SESSION net_write_timeout = 3600")
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            point = self._open_consistent_read(cursor, is_mariadb)
            started_at = datetime.now(UTC).isoformat()
            wanted = previous.tables if previous is not None else tables
            shapes = read_shapes(cursor, wanted)
        if previous is None:
            progress = SnapshotProgress(point=point, started_at=started_at, tables=list(tables))
        else:
            progress = SnapshotProgress(
                point=point,
                started_at=started_at,
                tables=list(previous.tables),
                last_key=previous.last_key,
                ordinal=previous.ordinal,
                attempt=previous.attempt + 1,
            )
        progress.tables = [table for table in progress.tables if table in shapes]
        progress.shapes = shapes
        if progress.tables and not shapes[progress.tables[0]].primary_key:
            progress.last_key, progress.ordinal = None, 0  # no key to resume after: copy that table again
        self.progress = progress
        return progress

    @staticmethod
    def _open_consistent_read(cursor: Any, is_mariadb: bool) -> BinlogPoint:
        if is_mariadb:
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cursor.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {str(name).lower(): value for name, value in cursor.fetchall()}
            file, pos = str(status["binlog_snapshot_file"]), int(status["binlog_snapshot_position"])
            if not file:
                raise RuntimeError("the server has no binary log: start it with log_bin and binlog_format=ROW")
            return BinlogPoint(file, pos, _gtid_at(cursor, file, pos))
        cursor.execute("FLUSH TABLES WITH READ LOCK")
        try:
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            return current_point(cursor, is_mariadb=False)
        finally:
            cursor.execute("UNLOCK TABLES")

    def next_chunk(self) -> SnapshotChunk | None:
        """The next rows of the table in progress, or None once every table is copied."""
        progress = self.progress
        if progress is None or self._connection is None:
            raise RuntimeError("SnapshotReader.begin was not called")
        while progress.tables:
            table = progress.tables[0]
            shape = progress.shapes[table]
            cursor = self._table_cursor(table, shape, progress)
            rows = cursor.fetchmany(self._chunk_rows)
            if not rows:
                self._close_cursor()
                progress.tables.pop(0)
                progress.last_key, progress.ordinal = None, 0
                continue
            names = [name for name, _ in shape.columns]
            columns = {name: list(values) for name, values in zip(names, zip(*rows, strict=True), strict=True)}
            first = progress.ordinal
            progress.ordinal += len(rows)
            if shape.primary_key:
                progress.last_key = [rows[-1][names.index(key)] for key in shape.primary_key]
            return SnapshotChunk(table, shape, columns, first, len(rows))
        self.close()
        return None

    def _table_cursor(self, table: str, shape: TableShape, progress: SnapshotProgress) -> Any:
        if self._cursor is not None and self._cursor_table == table:
            return self._cursor
        self._close_cursor()
        assert self._connection is not None
        columns = ", ".join(quote(name) for name, _ in shape.columns)
        statement = f"SELECT {columns} FROM {quote_table(table)}"
        parameters: list[Any] = []
        if shape.primary_key:
            key = ", ".join(quote(name) for name in shape.primary_key)
            if progress.last_key is not None:
                marks = ", ".join(["%s"] * len(shape.primary_key))
                statement += f" WHERE ({key}) > ({marks})"
                parameters = list(progress.last_key)
            statement += f" ORDER BY {key}"
        cursor = self._connection.cursor(pymysql.cursors.SSCursor)
        cursor.execute(statement, parameters or None)
        self._cursor, self._cursor_table = cursor, table
        return cursor

    def _close_cursor(self) -> None:
        if self._cursor is not None:
            with contextlib.suppress(pymysql.err.Error):
                self._cursor.close()
        self._cursor, self._cursor_table = None, None

    def close(self) -> None:
        """Drop the connection; the server rolls the read-only snapshot transaction back.

        Closing the connection rather than the cursor: an unbuffered cursor would first read the rest
        of the table.
        """
        connection, self._connection = self._connection, None
        self._cursor, self._cursor_table = None, None
        if connection is not None:
            with contextlib.suppress(pymysql.err.Error, OSError):
                connection.close()
