"""The pipeline spec: YAML validated by pydantic, with errors that name the file and the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

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


SourceSpec = FileSourceSpec
"""Union of the source kinds; grows a ``type`` discriminator as connectors are added."""


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

    @model_validator(mode="after")
    def _check_names(self) -> PipelineSpec:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicates)}")
        for table in self.tables:
            if not re.match(NAME_PATTERN, table):
                raise ValueError(f"table name {table!r} must match {NAME_PATTERN}")
        return self

    def table_of(self, source: SourceSpec) -> str:
        """The target table of a source: its ``table`` or its name."""
        return source.table or source.name

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


def _describe(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
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

    sources = [s.model_copy(update={"path": resolve(s.path)}) for s in spec.sources]
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
