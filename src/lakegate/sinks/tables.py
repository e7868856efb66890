"""Creating and evolving Iceberg tables from the Arrow schemas the stages produce."""

from __future__ import annotations

import time
from typing import Literal

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, HourTransform, MonthTransform, Transform

from lakegate.core.errors import TerminalError

Granularity = Literal["day", "hour", "month"]
EVENT_TIME_COLUMN = "_lg_event_time"

_TRANSFORMS: dict[str, Transform] = {
    "day": DayTransform(),
    "hour": HourTransform(),
    "month": MonthTransform(),
}

TABLE_PROPERTIES = {
    # Each checkpoint is one commit per table; keep metadata files from piling up.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
    # Concurrent pipelines appending to one table retry inside pyiceberg, which rebuilds the
    # manifest list on the refreshed table and cleans up the manifests of failed attempts.
    "commit.retry.num-retries": "30",
    "commit.retry.min-wait-ms": "20",
    "commit.retry.max-wait-ms": "1000",
    "commit.retry.total-timeout-ms": "120000",
    "format-version": "2",
}


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([field.with_nullable(True) for field in schema])


def _plain_type(data_type: pa.DataType) -> pa.DataType:
    """pyiceberg maps strings to large_string; Parquet stores both alike, so keep the cheap form."""
    if pa.types.is_large_string(data_type):
        return pa.string()
    if pa.types.is_large_binary(data_type):
        return pa.binary()
    if pa.types.is_large_list(data_type) or pa.types.is_list(data_type):
        return pa.list_(_plain_field(data_type.value_field))
    if pa.types.is_struct(data_type):
        return pa.struct([_plain_field(data_type.field(i)) for i in range(data_type.num_fields)])
    if pa.types.is_map(data_type):
        return pa.map_(_plain_field(data_type.key_field), _plain_field(data_type.item_field))
    return data_type


def _plain_field(field: pa.Field) -> pa.Field:
    return pa.field(field.name, _plain_type(field.type), field.nullable, field.metadata)


_FILE_SCHEMAS: dict[tuple[str, int], pa.Schema] = {}
"""(table uuid, schema id) -> its file schema: a table schema never changes under its id, and every
batch asks (the conversion costs more than the rest of landing a small CDC batch)."""


def file_schema(table: Table) -> pa.Schema:
    """The Arrow schema data files of ``table`` are written with, carrying Iceberg field ids."""
    metadata = table.metadata
    key = (str(metadata.table_uuid), metadata.current_schema_id)
    schema = _FILE_SCHEMAS.get(key)
    if schema is None:
        if len(_FILE_SCHEMAS) >= 1024:
            _FILE_SCHEMAS.clear()
        schema = _FILE_SCHEMAS[key] = pa.schema([_plain_field(f) for f in schema_to_pyarrow(table.schema())])
    return schema


def partition_granularity(table: Table) -> Granularity | None:
    """The time granularity the table is partitioned by on ``_lg_event_time``, if any."""
    spec = table.spec()
    for field in spec.fields:
        source = table.schema().find_field(field.source_id)
        if source.name == EVENT_TIME_COLUMN:
            for name, transform in _TRANSFORMS.items():
                if type(field.transform) is type(transform):
                    return name  # type: ignore[return-value]
    return None


class TableManager:
    """Loads, creates and evolves the tables of one namespace.

    Tables are created with every column optional (a source can always omit a field) and, when the
    rows carry event time, partitioned by ``day(_lg_event_time)`` (or the configured granularity).
    """

    def __init__(self, catalog: Catalog, namespace: str) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self._tables: dict[str, Table] = {}
        try:
            catalog.create_namespace_if_not_exists(namespace)
        except NamespaceAlreadyExistsError:  # a concurrent pipeline created it first
            pass

    def identifier(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def get(self, name: str) -> Table | None:
        """The table, loaded once and cached; ``None`` if it does not exist yet."""
        if name not in self._tables:
            try:
                self._tables[name] = self.catalog.load_table(self.identifier(name))
            except NoSuchTableError:
                return None
        return self._tables[name]

    def ensure(self, name: str, schema: pa.Schema, partition: Granularity | None) -> Table:
        """Return the table, creating it or evolving its schema so ``schema`` fits.

        Raises:
            TerminalError: the table's columns cannot take the new types (no legal promotion).
        """
        table = self.get(name)
        if table is None:
            table = self._create(name, schema, partition)
        elif not _fits(table, schema):
            table = self._evolve(table, schema)
        self._tables[name] = table
        return table

    def _create(self, name: str, schema: pa.Schema, partition: Granularity | None) -> Table:
        identifier = self.identifier(name)
        try:
            txn = self.catalog.create_table_transaction(
                identifier, schema=_nullable(schema), properties=TABLE_PROPERTIES
            )
            if partition and EVENT_TIME_COLUMN in schema.names:
                with txn.update_spec() as spec:
                    spec.add_field(EVENT_TIME_COLUMN, _TRANSFORMS[partition], f"{EVENT_TIME_COLUMN}_{partition}")
            txn.commit_transaction()
            return self.catalog.load_table(identifier)
        except TableAlreadyExistsError:
            table = self.catalog.load_table(identifier)
            return table if _fits(table, schema) else self._evolve(table, schema)

    def _evolve(self, table: Table, schema: pa.Schema, attempts: int = 30) -> Table:
        for attempt in range(attempts):
            try:
                with table.update_schema() as update:
                    update.union_by_name(_nullable(schema))
                return table
            except CommitFailedException:
                time.sleep(min(0.02 * 2**attempt, 1.0))
                table.refresh()
                if _fits(table, schema):
                    return table
            except ValueError as err:
                raise TerminalError(f"cannot evolve table {table.name()} to {schema}: {err}") from err
        raise TerminalError(f"could not evolve table {'.'.join(table.name())} after {attempts} attempts")

    def refresh(self, name: str) -> Table | None:
        self._tables.pop(name, None)
        return self.get(name)


def type_signature(data_type: pa.DataType) -> str:
    """A type's shape, ignoring list item names and field metadata (``item`` vs ``element``)."""
    data_type = _plain_type(data_type)
    if pa.types.is_list(data_type):
        return f"list<{type_signature(data_type.value_type)}>"
    if pa.types.is_struct(data_type):
        inner = ",".join(
            f"{data_type.field(i).name}:{type_signature(data_type.field(i).type)}" for i in range(data_type.num_fields)
        )
        return f"struct<{inner}>"
    return str(data_type)


_FITTING: set[tuple[pa.Schema, pa.Schema]] = set()
"""(table file schema, rows schema) pairs known to fit: every batch of a stream asks again."""


def _fits(table: Table, schema: pa.Schema) -> bool:
    """True when every column of ``schema`` exists in the table with the same type."""
    target = file_schema(table)
    if (target, schema) in _FITTING:
        return True
    current = {f.name: type_signature(f.type) for f in target}
    fits = all(current.get(f.name) == type_signature(f.type) for f in schema)
    if fits:
        if len(_FITTING) >= 4096:
            _FITTING.clear()
        _FITTING.add((target, schema))
    return fits
