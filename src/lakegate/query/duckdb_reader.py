"""DuckDB over the Iceberg tables, each visible as ``namespace.table`` in SQL.

DuckDB reads Iceberg with its ``iceberg`` extension (which needs ``avro``). Offline, the extensions
come from the ``duckdb-extension-*`` wheels and are loaded by path with auto-install off; where DuckDB
can install its own, it is let to. For tables on S3 the ``httpfs`` extension is needed as well.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog

from lakegate.core.errors import MissingExtraError


def _extension_file(name: str) -> Path | None:
    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError:
        return None
    root = Path(package.__file__ or "").parent
    found = sorted(root.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
    return found[0] if found else None


def load_extension(connection: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load a DuckDB extension from its wheel, else let DuckDB install it.

    Raises:
        MissingExtraError: neither the wheel nor an install from the network is available.
    """
    path = _extension_file(name)
    if path is not None:
        connection.execute(f"LOAD '{path}'")
        return
    try:
        connection.execute(f"INSTALL {name}")
        connection.execute(f"LOAD {name}")
    except duckdb.Error as err:
        raise MissingExtraError(f"duckdb extension {name!r} (pip install duckdb-extension-{name})", "query") from err


def connect(catalog: Catalog, s3: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per Iceberg table of every namespace in the catalog."""
    connection = duckdb.connect()
    connection.execute("SET autoinstall_known_extensions = false")
    connection.execute("SET autoload_known_extensions = false")
    load_extension(connection, "avro")
    load_extension(connection, "iceberg")
    if s3:
        _configure_s3(connection, s3)
    for namespace in catalog.list_namespaces():
        schema = ".".join(namespace)
        connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        for identifier in catalog.list_tables(namespace):
            table = catalog.load_table(identifier)
            name = identifier[-1]
            location = table.metadata_location.replace("'", "''")
            connection.execute(
                f'CREATE OR REPLACE VIEW "{schema}"."{name}" AS SELECT * FROM iceberg_scan(\'{location}\')'
            )
    return connection


def _configure_s3(connection: duckdb.DuckDBPyConnection, properties: dict[str, str]) -> None:
    load_extension(connection, "httpfs")
    endpoint = properties.get("s3.endpoint", "")
    use_ssl = endpoint.startswith("https://")
    host = endpoint.split("://", 1)[-1]
    options = {
        "TYPE": "s3",
        "KEY_ID": properties.get("s3.access-key-id", ""),
        "SECRET": properties.get("s3.secret-access-key", ""),
        "REGION": properties.get("s3.region", "us-east-1"),
        "ENDPOINT": host,
        "URL_STYLE": "path",
        "USE_SSL": "true" if use_ssl else "false",
    }
    rendered = ", ".join(f"{k} {v}" if k in {"TYPE", "USE_SSL"} else f"{k} '{v}'" for k, v in options.items())
    connection.execute(f"CREATE OR REPLACE SECRET lakegate_s3 ({rendered})")


def query(catalog: Catalog, sql: str, s3: dict[str, str] | None = None) -> pa.Table:
    """Run SQL over the catalog's tables and return the result as Arrow."""
    connection = connect(catalog, s3)
    try:
        result: Any = connection.execute(sql)
        return result.fetch_arrow_table()
    finally:
        connection.close()
