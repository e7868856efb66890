"""The pipeline spec: YAML validated by pydantic, with errors that name the file and the field."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from lakegate.core.errors import ConfigError

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
DEFAULT_DATA_DIR = Path("lakegate-data")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``500ms``, ``5s``, ``2m``, ``1h``, ``1d``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '5s', '2m', '1h'")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use seconds or a string like '500ms', '5s', '2m', '1h'")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSourceSpec(_Model):
    """A directory of files; new files are picked up when they appear under their final name."""

    type: Literal["files"] = "files"
    name: str = Field(pattern=NAME_PATTERN)
    path: Path
    format: Literal["ndjson", "json", "csv", "avro", "parquet", "auto"] = "auto"
    compression: Literal["auto", "none", "gzip", "zstd"] = "auto"
    pattern: str = "**/*"
    table: str | None = Field(default=None, pattern=NAME_PATTERN)
    watch: bool = False
    batch_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    batch_rows: int = Field(default=262_144, gt=0)
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)


_PG_TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$"
_SLOT_NAME = r"^[a-z0-9_]{1,63}$"


class PostgresSourceSpec(_Model):
    """A PostgreSQL database read through logical replication (pgoutput)."""

    type: Literal["postgres"] = "postgres"
    name: str = Field(pattern=NAME_PATTERN)
    dsn: str = Field(min_length=1)
    """libpq connection string or URL; the user needs the REPLICATION attribute."""
    tables: list[str] = Field(min_length=1)
    """``schema.table`` or a bare name (schema ``public``)."""
    slot: str = Field(default="", pattern=r"^$|" + _SLOT_NAME)
    """Replication slot (default ``lakegate_<name>``)."""
    publication: str = Field(default="", pattern=r"^$|^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    """Publication (default ``lakegate_<name>``); created for ``tables`` if missing."""
    snapshot: bool = True
    """Copy the tables' current rows first (``_lg_op = 'r'``), then stream."""
    batch_rows: int = Field(default=50_000, gt=0)
    poll_timeout: Duration = 0.2
    """Longest a poll reads before returning what it has (keeps checkpoints on time)."""
    table_prefix: str = Field(default="", pattern=r"^$|^[a-z][a-z0-9_]*$")
    """Prepended to every target table name (``pgbench_accounts`` -> ``<prefix>pgbench_accounts``)."""

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, tables: list[str]) -> list[str]:
        for table in tables:
            if not re.match(_PG_TABLE_NAME, table):
                raise ValueError(f"{table!r} is not 'schema.table' or 'table' (plain identifiers)")
        if len(set(tables)) != len(tables):
            raise ValueError("a table is listed twice")
        return tables

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            data = dict(data)
            data["slot"] = data.get("slot") or f"lakegate_{data['name']}"
            data["publication"] = data.get("publication") or f"lakegate_{data['name']}"
        return data

    def origins(self) -> list[str]:
        """The qualified source tables (``schema.table``), as batches name them in ``origin``."""
        return [t if "." in t else f"public.{t}" for t in self.tables]


class MySQLSourceSpec(_Model):
    """A MySQL/MariaDB server read through its binlog (ROW format, ``binlog_row_metadata=FULL``)."""

    type: Literal["mysql"] = "mysql"
    name: str = Field(pattern=NAME_PATTERN)
    host: str = "127.0.0.1"
    port: int = Field(default=3306, gt=0, lt=65536)
    user: str = Field(min_length=1)
    password_env: str | None = None
    """Name of the environment variable holding the password (never the password itself)."""
    databases: list[str] = Field(min_length=1)
    tables: list[str] | None = None
    """``database.table`` (or ``table`` when one database is listed); all tables of ``databases`` if unset."""
    server_id: int | None = Field(default=None, ge=1, le=2**32 - 1)
    """Replica id the binlog dump registers with; unique per reader on the server (derived from name if unset)."""
    snapshot: bool = True
    position_mode: Literal["file", "gtid"] = "file"
    """Resume by binlog file/offset, or by MariaDB GTID (survives a switch to another server of the cluster)."""
    batch_rows: int = Field(default=50_000, gt=0)
    max_poll_seconds: float = Field(default=0.2, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    table_prefix: str = Field(default="", pattern=r"^$|^[a-z][a-z0-9_]*$")
    """Prepended to every target table name."""

    @field_validator("databases")
    @classmethod
    def _databases_named(cls, value: list[str]) -> list[str]:
        if any(not name or "." in name for name in value):
            raise ValueError("a database is a plain name without dots")
        return value

    @model_validator(mode="after")
    def _tables_in_databases(self) -> MySQLSourceSpec:
        for table in self.tables or []:
            if "." not in table and len(self.databases) != 1:
                raise ValueError(f"tables: {table!r} needs its database ('database.table') when several are listed")
            if "." in table and table.split(".", 1)[0] not in self.databases:
                raise ValueError(f"tables: {table!r} is not in one of databases {self.databases}")
        return self

    def qualified_tables(self) -> set[str] | None:
        if self.tables is None:
            return None
        return {table if "." in table else f"{self.databases[0]}.{table}" for table in self.tables}

    def origins(self) -> list[str]:
        """The qualified source tables when listed (else every table of ``databases``: known at run time)."""
        return sorted(self.qualified_tables() or [])

    def effective_server_id(self) -> int:
        return self.server_id or 100_000 + zlib.crc32(self.name.encode()) % 1_000_000_000


CdcSourceSpec = PostgresSourceSpec | MySQLSourceSpec


def _source_kind(value: Any) -> str:
    """The ``type`` of a source entry; file sources may leave it out (the specs written before CDC)."""
    if isinstance(value, dict):
        return str(value.get("type", "files"))
    return str(getattr(value, "type", "files"))


SourceSpec = Annotated[
    Annotated[FileSourceSpec, Tag("files")]
    | Annotated[PostgresSourceSpec, Tag("postgres")]
    | Annotated[MySQLSourceSpec, Tag("mysql")],
    Discriminator(_source_kind),
]
"""One source entry; ``type`` (``files`` when left out, ``postgres``, ``mysql``) says which."""


def target_table_name(source: CdcSourceSpec, origin: str) -> str:
    """The Iceberg table a CDC source table lands in: the table name without schema/database, lowercased,
    after the source's ``table_prefix``."""
    return f"{source.table_prefix}{origin.rpartition('.')[2].lower()}"


class EventTimeSpec(_Model):
    """Which field carries event time and how late a record may be before it is labeled late."""

    field: str
    max_out_of_orderness: Duration = 60.0
    timezone: str = "UTC"
    """Zone for naive timestamps (no offset); values are stored in UTC."""
    on_missing: Literal["dead_letter", "land"] = "dead_letter"


class ContractSpec(_Model):
    """Semantic contract of a table: learn in warm-up (observe), then enforce."""

    enabled: bool = True
    warmup_rows: int = Field(default=10_000, ge=1)
    warmup_time: Duration = 0.0
    """Observe at least this long (wall clock) before enforcing."""
    max_shift: float = Field(default=0.05, ge=0)
    """Warm-up ends once the learned baseline moves less than this between batches."""
    pin_version: int | None = Field(default=None, ge=1)
    """Enforce this contract version; unset: follow the registry's active version."""
    keys: list[str] = Field(default_factory=list)
    """Fields identifying an event, for duplicate detection (learned when empty)."""
    window_rows: int = Field(default=10_000, ge=100)
    duplicate_window: Duration = 3600.0
    schema_intelligence: bool = True
    """Once enforcing, match fields of an upstream schema change onto the contract and map them."""
    auto_apply: float = Field(default=0.9, ge=0, le=1)
    """A schema-change proposal applies itself when every mapping is at least this confident (and
    validates); below, it is held for review and the new-shape rows are dead-lettered."""


class TableSpec(_Model):
    """How records become rows of one Iceberg table."""

    event_time: EventTimeSpec | None = None
    partition: Literal["auto", "day", "hour", "month", "none"] = "auto"
    arrays_of_objects: Literal["child_table", "json"] = "child_table"
    arrays_of_scalars: Literal["list", "json"] = "list"
    types: dict[str, str] = Field(default_factory=dict)
    """Type overrides by flattened field name: int, long, double, boolean, string, date,
    timestamp, decimal(P,S)."""
    max_field_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    contract: ContractSpec | None = None
    """Semantic contract; off unless given (``contract: {}`` turns it on with the defaults)."""
    mode: Literal["append", "mirror", "changelog"] | None = None
    """How rows land: ``append`` (files; the default there); for CDC tables ``mirror`` (the table equals
    the source table: a changes table plus a compacted mirror; the default with a primary key) or
    ``changelog`` (every change event; the default without one)."""
    primary_key: list[str] = Field(default_factory=list)
    """Key of a ``mirror`` table when the source does not say (default: the source table's primary key)."""


class CatalogSpec(_Model):
    """Where the Iceberg catalog and the data files live."""

    type: Literal["sql", "rest"] = "sql"
    uri: str | None = None
    """SQLAlchemy URL for ``sql`` (default: SQLite under the data dir), endpoint for ``rest``."""
    warehouse: str | None = None
    """Local path or ``s3://bucket/prefix`` (default: ``<data dir>/warehouse``)."""
    properties: dict[str, str] = Field(default_factory=dict)
    """Passed to pyiceberg as is (``s3.endpoint``, ``s3.access-key-id``, ``token``...)."""


class CheckpointSpec(_Model):
    """When to cut a checkpoint: whichever of time or rows comes first."""

    interval: Duration = 10.0
    max_rows: int = Field(default=1_000_000, gt=0)
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    compact_every: int = Field(default=30, ge=1)
    """CDC mirrors: rewrite a mirror after this many checkpoints with changes (or sooner, once the
    changes pass ``compact_share`` of its rows); compaction runs beside the checkpoints, never in them."""
    compact_share: float = Field(default=0.05, gt=0)


class DeadLetterSpec(_Model):
    """The dead-letter table of a pipeline."""

    table: str | None = Field(default=None, pattern=NAME_PATTERN)
    """Defaults to ``<pipeline>__dead_letter``."""
    max_payload_bytes: int = Field(default=16 * 1024 * 1024, gt=0)


class PipelineSpec(_Model):
    """A whole pipeline: sources, target tables, catalog, checkpoints and dead letters."""

    pipeline: str = Field(pattern=NAME_PATTERN)
    namespace: str = Field(default="lakegate", pattern=NAME_PATTERN)
    data_dir: Path = DEFAULT_DATA_DIR
    catalog: CatalogSpec = CatalogSpec()
    sources: list[SourceSpec] = Field(min_length=1)
    tables: dict[str, TableSpec] = Field(default_factory=dict)
    checkpoint: CheckpointSpec = CheckpointSpec()
    dead_letter: DeadLetterSpec = DeadLetterSpec()
    contract_registry: str | None = None
    """SQLAlchemy URL of the contract registry (default: SQLite ``<data dir>/contracts.db``)."""
    llm: dict[str, Any] | None = None
    """Optional OpenAI-compatible chat endpoint that proposes mappings for held schema changes
    (``base_url``, ``model``, ``api_key_env``, ``timeout_s``, ``max_requests_per_minute``...); checked
    when the pipeline starts (``lakegate.ai.llm.LLMConfig``)."""

    @model_validator(mode="after")
    def _check_names(self) -> PipelineSpec:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicates)}")
        for table in self.tables:
            if not re.match(NAME_PATTERN, table):
                raise ValueError(f"table name {table!r} must match {NAME_PATTERN}")
        targets: dict[str, str] = {}
        for source in self.sources:
            if isinstance(source, FileSourceSpec):
                continue
            for origin in source.origins():
                target = target_table_name(source, origin)
                if not re.match(NAME_PATTERN, target):
                    raise ValueError(
                        f"sources.{source.name}: table {origin!r} lands in {target!r}, which must match"
                        f" {NAME_PATTERN}; rename it with table_prefix or pick other tables"
                    )
                if target in targets:
                    raise ValueError(
                        f"sources.{source.name}: tables {targets[target]!r} and {origin!r} both land in {target!r}"
                    )
                targets[target] = origin
        file_tables = {self.table_of(s) for s in self.sources if isinstance(s, FileSourceSpec)}
        for table, table_spec in self.tables.items():
            if table in file_tables and table_spec.mode not in (None, "append"):
                raise ValueError(f"tables.{table}.mode: {table_spec.mode} needs a CDC source (postgres, mysql)")
        return self

    def table_of(self, source: SourceSpec) -> str:
        """The target table of a file source: its ``table`` or its name (a CDC source names a table per
        source table: :meth:`cdc_tables`)."""
        if isinstance(source, FileSourceSpec):
            return source.table or source.name
        raise TypeError(f"source {source.name} is a CDC source: it feeds one table per source table")

    def cdc_tables(self, source: CdcSourceSpec) -> dict[str, str]:
        """Source table (``schema.table``) -> target table, for the tables the spec lists."""
        return {origin: target_table_name(source, origin) for origin in source.origins()}

    def target_tables(self) -> list[str]:
        """Every target table known from the spec alone (a MySQL source without ``tables`` adds more at
        run time)."""
        names: set[str] = set()
        for source in self.sources:
            if isinstance(source, FileSourceSpec):
                names.add(self.table_of(source))
            else:
                names.update(self.cdc_tables(source).values())
        return sorted(names)

    def table_spec(self, table: str) -> TableSpec:
        return self.tables.get(table, TableSpec())

    @property
    def dead_letter_table(self) -> str:
        return self.dead_letter.table or f"{self.pipeline}__dead_letter"

    @property
    def registry_url(self) -> str:
        return self.contract_registry or f"sqlite:///{(self.data_dir / 'contracts.db').resolve()}"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state" / self.pipeline


_SOURCE_KINDS = ("files", "postgres", "mysql")


def _describe(error: Mapping[str, Any]) -> str:
    parts = list(error["loc"])
    if len(parts) > 2 and parts[0] == "sources" and parts[2] in _SOURCE_KINDS:
        del parts[2]  # the union's tag: the field is sources.<n>.<field>
    location = ".".join(str(part) for part in parts) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{location}: {message}"


def parse_spec(data: Any, origin: str = "<spec>", base_dir: Path | None = None) -> PipelineSpec:
    """Validate a spec mapping; relative paths are taken from ``base_dir``.

    Raises:
        ConfigError: naming ``origin``, each bad field, and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a pipeline spec is a mapping, got {type(data).__name__}")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as err:
        lines = "\n".join(f"  {_describe(e)}" for e in err.errors(include_url=False))
        raise ConfigError(f"{origin}: invalid pipeline spec:\n{lines}") from err
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir)
    return spec


def _resolve_paths(spec: PipelineSpec, base_dir: Path) -> PipelineSpec:
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base_dir / path)

    sources = [
        s.model_copy(update={"path": resolve(s.path)}) if isinstance(s, FileSourceSpec) else s for s in spec.sources
    ]
    return spec.model_copy(update={"data_dir": resolve(spec.data_dir), "sources": sources})


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a YAML spec; relative paths in it are relative to the file.

    Raises:
        ConfigError: the file is missing, is not YAML, or a field is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read pipeline spec: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return parse_spec(data, origin=str(path), base_dir=path.resolve().parent)
