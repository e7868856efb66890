"""Reading the binlog as whole transactions, and telling shape changes apart from data.

``BinlogStream`` wraps ``pymysqlreplication.BinLogStreamReader`` in non-blocking mode: each read
drains what the server has (the server sends EOF at the end of the binlog) and stops early only at a
transaction boundary, so a transaction never straddles two reads and ``read_point`` is always a place a
replay can start from. A transaction's commit position is ``<binlog file>:<end offset, 12 digits>``
(the offset after its Xid/COMMIT/DDL event): it sorts in commit order and equals the snapshot position
of a snapshot that contains it.

With ``binlog_row_metadata=FULL`` every table-map event carries column names, types, charsets, enum
values and the primary key, so the shape of each row is the shape at the time of the event, also on
replay; a DDL statement only adds hints the row shape cannot show (``RENAME COLUMN a TO b``,
``CHANGE a b ...``) and ``TRUNCATE``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lakegate.core.cdc import ColumnChange, SchemaChange
from lakegate.sources.mysql.types import canonical_from_binlog

try:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, QueryEvent, RotateEvent, XidEvent
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent
except ImportError as err:  # pragma: no cover - exercised only without the extra
    from lakegate.core.errors import MissingExtraError

    raise MissingExtraError("mysql-replication", "cdc") from err

_MARIADB_STANDALONE = 0x01
_IDENT = r"(?:`((?:[^`]|``)+)`|([\w$]+))"
_TABLE_REF = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_DDL_TABLE = re.compile(
    rf"^\s*(?:/\*.*?\*/\s*)*(ALTER(?:\s+ONLINE|\s+IGNORE)*\s+TABLE|TRUNCATE(?:\s+TABLE)?|DROP\s+TABLE|CREATE(?:\s+OR\s+REPLACE)?\s+TABLE)"
    rf"(?:\s+IF\s+(?:NOT\s+)?EXISTS)?\s+{_TABLE_REF}",
    re.IGNORECASE | re.DOTALL,
)
_RENAME_COLUMN = re.compile(rf"RENAME\s+COLUMN\s+{_IDENT}\s+TO\s+{_IDENT}", re.IGNORECASE)
_CHANGE_COLUMN = re.compile(rf"CHANGE\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?{_IDENT}\s+{_IDENT}", re.IGNORECASE)


def _ident(quoted: str | None, bare: str | None) -> str:
    return quoted.replace("``", "`") if quoted is not None else (bare or "")


@dataclass(frozen=True)
class BinlogPoint:
    """A transaction boundary in the binlog: where a replay can start."""

    file: str
    pos: int
    gtid: str | None = None
    """MariaDB GTID state (``domain-server-seq`` per domain, comma separated) at this boundary, if known."""

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "pos": self.pos, "gtid": self.gtid}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BinlogPoint:
        return cls(file=str(data["file"]), pos=int(data["pos"]), gtid=data.get("gtid"))

    @property
    def key(self) -> tuple[int, int]:
        return (file_sequence(self.file), self.pos)

    def commit_position(self) -> str:
        return commit_position(self.file, self.pos)


def file_sequence(name: str) -> int:
    """The number of a binlog file (``binlog.000012`` -> 12), which orders files."""
    suffix = name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def commit_position(file: str, pos: int) -> str:
    """``file:offset`` with the offset zero-padded, so positions of one server sort in commit order."""
    return f"{file}:{pos:012d}"


@dataclass(frozen=True)
class TableShape:
    """The columns of a table as (name, canonical type), in table order, and its primary key."""

    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...] = ()

    @property
    def types(self) -> dict[str, str]:
        return dict(self.columns)

    def to_json(self) -> dict[str, Any]:
        return {"columns": [list(column) for column in self.columns], "primary_key": list(self.primary_key)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableShape:
        return cls(
            columns=tuple((str(name), str(kind)) for name, kind in data["columns"]),
            primary_key=tuple(data.get("primary_key", ())),
        )


@dataclass
class RowChange:
    """One row of a row event: ``values`` is the after image (c/u) or the before image (d)."""

    table: str
    op: str
    index: int
    shape: TableShape
    values: dict[str, Any]
    before: dict[str, Any] | None = None


@dataclass
class DdlStatement:
    """A DDL statement on a captured table, kept for hints and the schema-change record."""

    table: str
    statement: str
    renames: list[tuple[str, str]]


@dataclass
class UnreadableEvent:
    """A row event the library could not decode (e.g. bytes that are not in the column's charset)."""

    table: str
    index: int
    message: str


@dataclass
class Transaction:
    """The captured part of one committed transaction."""

    file: str
    gtid: str | None
    timestamp: int
    end_pos: int = 0
    changes: list[RowChange] = field(default_factory=list)
    ddl: list[DdlStatement] = field(default_factory=list)
    unreadable: list[UnreadableEvent] = field(default_factory=list)
    next_index: int = 0
    standalone: bool = False
    """A MariaDB DDL transaction: the next query event is all of it."""

    @property
    def commit_position(self) -> str:
        return commit_position(self.file, self.end_pos)

    @property
    def key(self) -> tuple[int, int]:
        return (file_sequence(self.file), self.end_pos)

    def is_empty(self) -> bool:
        return not (self.changes or self.ddl or self.unreadable)


def parse_ddl(statement: str, default_schema: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    """``(verb, qualified table, column renames)`` of a table DDL statement, or None for other statements."""
    match = _DDL_TABLE.match(statement)
    if not match:
        return None
    verb = match.group(1).split()[0].upper()
    first, second = _ident(match.group(2), match.group(3)), _ident(match.group(4), match.group(5))
    table = f"{first}.{second}" if second else f"{default_schema}.{first}"
    renames: list[tuple[str, str]] = []
    if verb == "ALTER":
        for found in _RENAME_COLUMN.finditer(statement):
            renames.append((_ident(found.group(1), found.group(2)), _ident(found.group(3), found.group(4))))
        for found in _CHANGE_COLUMN.finditer(statement):
            old, new = _ident(found.group(1), found.group(2)), _ident(found.group(3), found.group(4))
            if old != new:
                renames.append((old, new))
    return verb, table, renames


def diff_shapes(
    table: str,
    position: str,
    before: TableShape,
    after: TableShape,
    renames: Iterable[tuple[str, str]] = (),
    statements: Iterable[str] = (),
) -> SchemaChange:
    """The schema change from ``before`` to ``after``; ``renames`` (from DDL) turn a drop+add into a rename."""
    old_types, new_types = before.types, after.types
    changes: list[ColumnChange] = []
    renamed_from: dict[str, str] = {}
    for old, new in renames:
        if old in old_types and new in new_types and old not in new_types and new not in old_types:
            renamed_from[new] = old
    for name, kind in after.columns:
        if name in renamed_from:
            old = renamed_from[name]
            changes.append(ColumnChange("column_renamed", name, old_type=old_types[old], new_type=kind, old_name=old))
            if old_types[old] != kind:
                changes.append(ColumnChange("column_retyped", name, old_type=old_types[old], new_type=kind))
        elif name not in old_types:
            changes.append(ColumnChange("column_added", name, new_type=kind))
        elif old_types[name] != kind:
            changes.append(ColumnChange("column_retyped", name, old_type=old_types[name], new_type=kind))
    consumed = set(renamed_from.values())
    for name, kind in before.columns:
        if name not in new_types and name not in consumed:
            changes.append(ColumnChange("column_dropped", name, old_type=kind))
    detail: dict[str, Any] = {"ddl": list(statements)} if statements else {}
    if before.primary_key != after.primary_key:
        detail["primary_key_before"] = list(before.primary_key)
    return SchemaChange(
        table=table,
        position=position,
        before=old_types,
        after=new_types,
        changes=changes,
        primary_key=list(after.primary_key),
        detail=detail,
    )


@dataclass
class ConnectionSettings:
    host: str
    port: int
    user: str
    password: str
    connect_timeout: float = 10.0

    def for_pymysql(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "passwd": self.password,
            "connect_timeout": self.connect_timeout,
        }


def _gtid_state(text: str | None) -> dict[str, str]:
    state: dict[str, str] = {}
    for gtid in (text or "").split(","):
        gtid = gtid.strip()
        if gtid:
            state[gtid.split("-", 1)[0]] = gtid
    return state


class BinlogStream:
    """Committed transactions of the captured tables, from a boundary on, read without blocking."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        server_id: int,
        databases: Iterable[str],
        tables: set[str] | None,
        use_gtid: bool,
    ) -> None:
        self._settings = settings
        self._server_id = server_id
        self._databases = sorted(set(databases))
        self._tables = tables
        self._use_gtid = use_gtid
        self._reader: BinLogStreamReader | None = None
        self._file = ""
        self._gtids: dict[str, str] = {}
        self._shapes: dict[int, tuple[Any, TableShape]] = {}
        self.read_point = BinlogPoint("", 4)
        self.at_end = False

    def seek(self, point: BinlogPoint) -> None:
        """Start reading at a transaction boundary."""
        self.close()
        self.read_point = point
        self._file = point.file
        self._gtids = _gtid_state(point.gtid)
        self.at_end = False

    def captures(self, table: str) -> bool:
        schema = table.split(".", 1)[0]
        if schema not in self._databases:
            return False
        return self._tables is None or table in self._tables

    def _open(self) -> BinLogStreamReader:
        common: dict[str, Any] = {
            "connection_settings": self._settings.for_pymysql(),
            "server_id": self._server_id,
            "resume_stream": True,
            "blocking": False,
            "only_events": [
                WriteRowsEvent,
                UpdateRowsEvent,
                DeleteRowsEvent,
                QueryEvent,
                RotateEvent,
                XidEvent,
                GtidEvent,
                MariadbGtidEvent,
            ],
            "enable_logging": False,
        }
        if self._use_gtid:
            if not self.read_point.gtid:
                raise ValueError("position_mode 'gtid' needs a GTID at the start point; the server reported none")
            return BinLogStreamReader(auto_position=self.read_point.gtid, is_mariadb=True, **common)
        return BinLogStreamReader(log_file=self.read_point.file, log_pos=self.read_point.pos, **common)

    def read(self, max_rows: int, max_seconds: float) -> list[Transaction]:
        """Transactions with captured changes, until ``max_rows`` rows, ``max_seconds`` or the end of the binlog.

        Stops only between transactions; ``read_point`` is then the boundary after the last one read and
        ``at_end`` tells whether the server had nothing more.
        """
        deadline = time.monotonic() + max_seconds
        transactions: list[Transaction] = []
        rows = 0
        current: Transaction | None = None
        if self._reader is None:
            self._reader = self._open()
        while True:
            event = self._reader.fetchone()
            if event is None:
                if current is None and self._reader.log_pos:
                    # past trailing non-transaction events (binlog checkpoints), so the lag reads 0 at the end
                    self.read_point = BinlogPoint(self._file, int(self._reader.log_pos), self.read_point.gtid)
                self.close()
                self.at_end = True
                return transactions
            if isinstance(event, RotateEvent):
                self._file = event.next_binlog
                if current is None:
                    self.read_point = BinlogPoint(self._file, int(event.position), self.read_point.gtid)
                continue
            if isinstance(event, MariadbGtidEvent | GtidEvent):
                gtid = event.gtid if isinstance(event, MariadbGtidEvent) else str(getattr(event, "gtid", ""))
                current = Transaction(file=self._file, gtid=gtid or None, timestamp=int(event.timestamp))
                current.standalone = isinstance(event, MariadbGtidEvent) and bool(event.flags & _MARIADB_STANDALONE)
                continue
            if isinstance(event, QueryEvent):
                current = self._on_query(event, current)
                if current.end_pos:
                    rows += self._finish(current, transactions)
                    current = None
            elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                if current is None:
                    current = Transaction(file=self._file, gtid=None, timestamp=int(event.timestamp))
                self._on_rows(event, current)
                continue
            elif isinstance(event, XidEvent) and current is not None:
                current.end_pos = int(event.packet.log_pos)
                rows += self._finish(current, transactions)
                current = None
            if current is None and (rows >= max_rows or time.monotonic() >= deadline):
                self.at_end = False
                return transactions

    def _finish(self, transaction: Transaction, out: list[Transaction]) -> int:
        if transaction.gtid and "-" in transaction.gtid:
            self._gtids[transaction.gtid.split("-", 1)[0]] = transaction.gtid
        gtid = ",".join(self._gtids[domain] for domain in sorted(self._gtids)) or self.read_point.gtid
        self.read_point = BinlogPoint(transaction.file, transaction.end_pos, gtid)
        if transaction.is_empty():
            return 0
        out.append(transaction)
        return len(transaction.changes)

    def _on_query(self, event: Any, current: Transaction | None) -> Transaction:
        """BEGIN opens a transaction; COMMIT/ROLLBACK or a standalone statement (DDL) closes it."""
        statement = str(event.query).strip()
        upper = statement[:16].upper()
        if upper.startswith("BEGIN"):
            return current or Transaction(file=self._file, gtid=None, timestamp=int(event.timestamp))
        ends = current is None or current.standalone or upper.startswith(("COMMIT", "ROLLBACK", "XA "))
        if current is None:
            current = Transaction(file=self._file, gtid=None, timestamp=int(event.timestamp))
        schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema or "")
        parsed = parse_ddl(statement, schema)
        if parsed is not None:
            verb, table, renames = parsed
            if self.captures(table):
                current.ddl.append(DdlStatement(table, statement, renames))
                if verb == "TRUNCATE":
                    current.changes.append(RowChange(table, "t", current.next_index, TableShape(()), {}))
                    current.next_index += 1
        if ends:
            current.end_pos = int(event.packet.log_pos)
        return current

    def _on_rows(self, event: Any, current: Transaction) -> None:
        table = f"{event.schema}.{event.table}"
        if not self.captures(table):
            return
        shape = self._shape_of(event)
        try:
            rows = event.rows
        except Exception as err:  # any decoding failure becomes a dead letter, never a crash
            current.unreadable.append(UnreadableEvent(table, current.next_index, f"{type(err).__name__}: {err}"))
            current.next_index += 1
            return
        if isinstance(event, WriteRowsEvent):
            for row in rows:
                current.changes.append(RowChange(table, "c", current.next_index, shape, row["values"]))
                current.next_index += 1
        elif isinstance(event, UpdateRowsEvent):
            for row in rows:
                current.changes.append(
                    RowChange(table, "u", current.next_index, shape, row["after_values"], row["before_values"])
                )
                current.next_index += 1
        else:
            for row in rows:
                current.changes.append(RowChange(table, "d", current.next_index, shape, row["values"], row["values"]))
                current.next_index += 1

    def _shape_of(self, event: Any) -> TableShape:
        """The shape of a row event's table, cached per table-map entry (the library keeps one per table)."""
        columns = event.columns
        cached = self._shapes.get(id(columns))
        if cached is not None and cached[0] is columns:
            return cached[1]
        shape = TableShape(
            columns=tuple((str(column.name), canonical_from_binlog(column)) for column in columns),
            primary_key=tuple(str(column.name) for column in columns if getattr(column, "is_primary", False)),
        )
        if len(self._shapes) > 1024:
            self._shapes.clear()
        self._shapes[id(columns)] = (columns, shape)
        return shape

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
