"""Test helpers: write specs, run the CLI in a child process, read tables back through DuckDB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from lakegate.core.config import CatalogSpec
from lakegate.query.duckdb_reader import query
from lakegate.sinks.catalog import open_catalog


def write_spec(directory: Path, source_dir: Path, **overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "pipeline": "orders",
        "namespace": "test",
        "data_dir": str(directory / "lakegate-data"),
        "sources": [{"name": "orders", "path": str(source_dir), "format": "ndjson", "batch_rows": 300}],
        "tables": {"orders": {"event_time": {"field": "created_at", "max_out_of_orderness": "5m"}}},
        "checkpoint": {"interval": "60s", "max_rows": 700},
    }
    spec.update(overrides)
    path = directory / "orders.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(*args: str, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAKEGATE_FAULT"}
    if fault:
        env["LAKEGATE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "lakegate.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_back(data_dir: Path, sql: str) -> pa.Table:
    """Query through DuckDB, an independent reader of the Iceberg tables."""
    catalog = open_catalog(CatalogSpec(), data_dir)
    return query(catalog, sql)


def files_on_disk_and_referenced(data_dir: Path) -> tuple[set[str], set[str]]:
    """Parquet data files under the warehouse vs the data files the tables reference."""
    catalog = open_catalog(CatalogSpec(), data_dir)
    on_disk: set[str] = set()
    referenced: set[str] = set()
    for namespace in catalog.list_namespaces():
        for identifier in catalog.list_tables(namespace):
            table = catalog.load_table(identifier)
            root = Path(table.location().removeprefix("file://")) / "data"
            on_disk |= {str(p) for p in root.rglob("*.parquet")}
            referenced |= {t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()}
    return on_disk, referenced
