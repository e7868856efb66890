"""Opening the Iceberg catalog a spec names (SQLite by default, any SQLAlchemy URL, or REST)."""

from __future__ import annotations

from pathlib import Path

from pyiceberg.catalog import Catalog, load_catalog

from lakegate.core.config import DEFAULT_DATA_DIR, CatalogSpec
from lakegate.core.errors import ConfigError


def warehouse_location(spec: CatalogSpec, data_dir: Path) -> str:
    """The warehouse root: the spec's, or ``<data dir>/warehouse``."""
    if spec.warehouse:
        if "://" in spec.warehouse:
            return spec.warehouse
        return Path(spec.warehouse).resolve().as_uri()
    return (data_dir / "warehouse").resolve().as_uri()


def open_catalog(spec: CatalogSpec, data_dir: Path = DEFAULT_DATA_DIR, name: str = "lakegate") -> Catalog:
    """Open (and for SQLite, create) the catalog.

    Raises:
        ConfigError: a REST catalog without ``uri``.
    """
    warehouse = warehouse_location(spec, data_dir)
    properties: dict[str, str] = {"warehouse": warehouse, **spec.properties}
    if spec.type == "sql":
        if spec.uri:
            uri = spec.uri
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(data_dir / 'catalog.db').resolve()}"
        if warehouse.startswith("file://"):
            Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        return load_catalog(name, type="sql", uri=uri, **properties)
    if not spec.uri:
        raise ConfigError("catalog.uri: a REST catalog needs the endpoint URL, e.g. http://127.0.0.1:8181")
    return load_catalog(name, type="rest", uri=spec.uri, **properties)
