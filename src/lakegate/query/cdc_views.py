"""The always-current read path of CDC mirrors: a DuckDB view ``T__current`` per mirror ``T``.

A mirror (``lakegate.sinks.cdc``) is rewritten only on a compaction schedule; the changes of every
checkpoint since then sit in ``T__changes``. The view is

    mirror rows whose key no later change touches
    UNION ALL BY NAME
    for every key changed after the watermark: its last change, unless that is a delete,

where a truncate after the watermark drops the mirror and every earlier change, and a column marked
unchanged (``_lg_unchanged``, unchanged TOAST values) takes the key's previous value. So the view
equals the source table at the last committed checkpoint, at the cost of scanning the mirror once and
the (few) change files past the watermark.

Each view binds the metadata files and the watermark current when it is registered (the same
snapshot isolation as the plain table views of ``duckdb_reader.connect``): ``lakegate query`` opens a
fresh connection per query, so its views are current; a long-lived connection calls
:func:`register_current_views` again to move forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from lakegate.core.cdc import BEFORE, OP
from lakegate.query.duckdb_reader import connect, load_extension
from lakegate.sinks.cdc import (
    CHANGE_SEQ,
    CHANGES_PROPERTY,
    MODE_PROPERTY,
    UNCHANGED,
    key_columns_of,
    mirror_watermark,
)

CURRENT_SUFFIX = "__current"


def current_view_name(table: str) -> str:
    return f"{table}{CURRENT_SUFFIX}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class CurrentSource:
    """What the current view of one mirror reads: relations (SQL), columns, key and watermark."""

    mirror_sql: str | None
    """A relation of the compacted mirror (``iceberg_scan(...)``), or None before it has a snapshot."""
    changes_sql: str | None
    """A relation of the changes table, or None before its first checkpoint."""
    columns: list[str]
    """The view's columns: the mirror's, then any newer change column (no before image, no markers)."""
    mirror_columns: list[str]
    changes_columns: list[str]
    key_columns: list[str]
    watermark: int
    unchanged_columns: list[str]
    """Columns some change after the watermark marked unchanged (filled from the previous value)."""


def current_sql(source: CurrentSource) -> str:
    """The SELECT of the always-current view."""
    columns = ", ".join(_ident(c) for c in source.columns)
    if source.changes_sql is None:
        if source.mirror_sql is None:
            raise ValueError("a current view needs a mirror or a changes relation")
        return f"SELECT {columns} FROM {source.mirror_sql}"
    keys = ", ".join(_ident(k) for k in source.key_columns)
    seq, op = _ident(CHANGE_SEQ), _ident(OP)
    change_columns = ", ".join(_ident(c) for c in _change_columns(source))
    window = f"PARTITION BY {keys} ORDER BY {seq} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
    fills = [
        f"(last_value(CASE WHEN NOT list_contains(coalesce({_ident(UNCHANGED)}, []::VARCHAR[]), {_literal(c)})"
        f" THEN struct_pack(v := {_ident(c)}) END IGNORE NULLS) OVER ({window})).v AS {_ident(c)}"
        for c in source.unchanged_columns
    ]
    filled = f"SELECT * REPLACE ({', '.join(fills)}) FROM history" if fills else "SELECT * FROM history"
    watermark = source.watermark
    # CTEs are materialized once (the changes past the watermark are few); the mirror is scanned
    # inline so that filters and projections reach its Parquet files.
    ctes = [
        f"changes AS MATERIALIZED (SELECT {change_columns} FROM {source.changes_sql} WHERE {seq} > {watermark})",
        f"cleared AS MATERIALIZED (SELECT coalesce(max({seq}) FILTER (WHERE {op} = 't'), {watermark}) AS __lg_since,"
        f" count(*) FILTER (WHERE {op} = 't') > 0 AS __lg_truncated FROM changes)",
        f"live AS MATERIALIZED (SELECT changes.* FROM changes CROSS JOIN cleared"
        f" WHERE {op} IS DISTINCT FROM 't' AND {seq} > __lg_since)",
    ]
    base = ""
    if source.mirror_sql is not None:
        mirror_columns = ", ".join(f"mirror_rows.{_ident(c)}" for c in source.mirror_columns if c in source.columns)
        base = (
            f"(SELECT {mirror_columns} FROM {source.mirror_sql} AS mirror_rows CROSS JOIN cleared"
            " WHERE NOT __lg_truncated)"
        )
    if fills and base:
        touched = f"SELECT * FROM {base} SEMI JOIN live USING ({keys})"
        ctes.append(f"history AS ({touched} UNION ALL BY NAME SELECT * FROM live)")
    else:
        ctes.append("history AS (SELECT * FROM live)")
    ctes += [
        f"filled AS ({filled})",
        f"latest AS (SELECT * FROM filled QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {seq} DESC) = 1)",
    ]
    body = f"SELECT * FROM latest WHERE {op} IS DISTINCT FROM 'd'"
    if base:
        body = f"SELECT * FROM {base} ANTI JOIN live USING ({keys}) UNION ALL BY NAME {body}"
    return f"WITH {', '.join(ctes)} SELECT {columns} FROM ({body})"


def _change_columns(source: CurrentSource) -> list[str]:
    extra = [UNCHANGED] if source.unchanged_columns else []
    return [*(c for c in source.changes_columns if c in source.columns), *extra]


def _table_columns(table: Table) -> list[str]:
    return [f.name for f in table.schema().fields]


def _scan_sql(table: Table) -> str | None:
    if table.current_snapshot() is None:
        return None
    return f"iceberg_scan({_literal(table.metadata_location)})"


def changes_of(catalog: Catalog, mirror: Table) -> Table:
    """The changes table behind ``mirror``, loaded now.

    Raises:
        ValueError: ``mirror`` is not a CDC mirror (no mode/key/changes table properties).
    """
    properties = mirror.properties
    changes_name = properties.get(CHANGES_PROPERTY)
    if properties.get(MODE_PROPERTY) != "mirror" or not changes_name or not key_columns_of(mirror):
        raise ValueError(f"{'.'.join(mirror.name())} is not a lakegate CDC mirror")
    return catalog.load_table(f"{'.'.join(mirror.name()[:-1])}.{changes_name}")


def describe_current(
    connection: duckdb.DuckDBPyConnection, catalog: Catalog, mirror: Table, changes: Table | None = None
) -> CurrentSource:
    """Resolve what the current view of ``mirror`` reads, from the catalog at this moment (``changes``:
    its changes table, loaded after ``mirror``, when the caller has it already).

    Raises:
        ValueError: ``mirror`` is not a CDC mirror (no mode/key/changes table properties).
    """
    # Mirror (and its watermark) first, changes second: a compaction in between only makes the
    # changes redundant.
    changes = changes if changes is not None else changes_of(catalog, mirror)
    keys = key_columns_of(mirror)
    watermark = mirror_watermark(mirror)
    hidden = {BEFORE, UNCHANGED}
    mirror_columns, changes_columns = _table_columns(mirror), _table_columns(changes)
    columns = [c for c in mirror_columns if c not in hidden]
    columns += [c for c in changes_columns if c not in hidden and c not in columns]
    changes_sql = _scan_sql(changes)
    unchanged: list[str] = []
    if changes_sql is not None and UNCHANGED in _table_columns(changes):
        rows = connection.execute(
            f"SELECT DISTINCT unnest({_ident(UNCHANGED)}) FROM {changes_sql} WHERE {_ident(CHANGE_SEQ)} > {watermark}"
        ).fetchall()
        unchanged = sorted(str(r[0]) for r in rows if r[0] is not None and r[0] in columns and r[0] not in keys)
    return CurrentSource(
        mirror_sql=_scan_sql(mirror),
        changes_sql=changes_sql,
        columns=columns,
        mirror_columns=mirror_columns,
        changes_columns=changes_columns,
        key_columns=keys,
        watermark=watermark,
        unchanged_columns=unchanged,
    )


def register_current_views(
    connection: duckdb.DuckDBPyConnection, catalog: Catalog, namespaces: Sequence[str] | None = None
) -> list[str]:
    """Create or replace ``"<namespace>"."<T>__current"`` for every CDC mirror; returns the view names.

    The connection needs the iceberg extension loaded (``duckdb_reader.connect`` does that).
    """
    created = []
    for namespace in namespaces or [".".join(n) for n in catalog.list_namespaces()]:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(namespace)}")
        for identifier in catalog.list_tables(namespace):
            table = catalog.load_table(identifier)
            if table.properties.get(MODE_PROPERTY) != "mirror":
                continue
            source = describe_current(connection, catalog, table)
            view = f"{_ident(namespace)}.{_ident(current_view_name(identifier[-1]))}"
            if source.mirror_sql is None and source.changes_sql is None:
                select = _empty_select(connection, table, source.columns)
            else:
                select = current_sql(source)
            connection.execute(f"CREATE OR REPLACE VIEW {view} AS {select}")
            created.append(f"{namespace}.{current_view_name(identifier[-1])}")
    return created


def _empty_select(connection: duckdb.DuckDBPyConnection, table: Table, columns: list[str]) -> str:
    """A typed, empty relation for a mirror that has neither a compaction nor a checkpoint yet."""
    schema = schema_to_pyarrow(table.schema())
    empty = pa.schema([schema.field(c) for c in columns if c in schema.names]).empty_table()
    name = f"__lg_empty_{'_'.join(table.name())}"
    connection.register(name, empty)
    return f"SELECT * FROM {_ident(name)}"


def _bare_connection() -> duckdb.DuckDBPyConnection:
    """DuckDB with the iceberg extension, without a view per catalog table (cheaper per query)."""
    connection = duckdb.connect()
    connection.execute("SET autoinstall_known_extensions = false")
    connection.execute("SET autoload_known_extensions = false")
    load_extension(connection, "avro")
    load_extension(connection, "iceberg")
    return connection


class CurrentReader:
    """A long-lived DuckDB connection that re-binds the current views before every read.

    Opening DuckDB and loading its iceberg extension costs ~0.4-0.7 s here, more than the query; a
    reader that polls for freshness (a lag probe, a server) keeps one connection and pays only the
    catalog look-ups (a few ms per mirror) and the query.

    A read whose mirror and changes table still have the metadata files of the previous identical
    read (same table, predicate and columns) returns that read's result without querying: Iceberg
    metadata files are immutable, so the same two files mean the same rows. A poll between two
    checkpoints then costs two catalog look-ups instead of a DuckDB query (``cache=False`` queries
    every time, to measure the query).
    """

    CACHED_READS = 16
    """Distinct (table, predicate, columns) reads remembered; the oldest is dropped first."""

    def __init__(
        self, catalog: Catalog, namespace: str, s3: dict[str, str] | None = None, *, cache: bool = True
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self.connection = connect(catalog, s3) if s3 else _bare_connection()
        self.cache = cache
        self._last: dict[tuple[str, str | None, str], tuple[tuple[str, str], pa.Table]] = {}
        """(table, where, columns) -> (the metadata locations it was read at, its rows)."""

    def read(self, table: str, where: str | None = None, columns: str = "*") -> pa.Table:
        """Rows of mirror ``table`` as of the last committed checkpoint (``where`` is a SQL predicate)."""
        mirror = self.catalog.load_table(f"{self.namespace}.{table}")
        changes = changes_of(self.catalog, mirror)
        request, at = (table, where, columns), (mirror.metadata_location, changes.metadata_location)
        known = self._last.get(request)
        if self.cache and known is not None and known[0] == at:
            return known[1]
        source = describe_current(self.connection, self.catalog, mirror, changes)
        if source.mirror_sql is None and source.changes_sql is None:
            select = _empty_select(self.connection, mirror, source.columns)
        else:
            select = current_sql(source)
        sql = f"SELECT {columns} FROM ({select})"
        rows = self.connection.execute(f"{sql} WHERE {where}" if where else sql).to_arrow_table()
        if self.cache:
            self._last.pop(request, None)
            self._last[request] = (at, rows)
            while len(self._last) > self.CACHED_READS:
                self._last.pop(next(iter(self._last)))
        return rows

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> CurrentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_current(
    catalog: Catalog, namespace: str, table: str, s3: dict[str, str] | None = None, where: str | None = None
) -> pa.Table:
    """The rows of mirror ``namespace.table`` as of the last committed checkpoint (one-off connection)."""
    with CurrentReader(catalog, namespace, s3) as reader:
        return reader.read(table, where)
