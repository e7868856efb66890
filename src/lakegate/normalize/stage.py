"""The normalize stage: flat, typed, event-timed rows and child tables from a source batch.

A record is the unit of rejection: when any part of it (a field, an element of one of its arrays) is
rejected, the record's row and all its child rows are left out and the record is dead-lettered once,
with the first reason found (columns in order, the top-level table before its child tables). So for
every batch ``records_read == rows.num_rows + len(dead_letters)``, and every child table holds exactly
the elements of the arrays of the landed rows.

State (``snapshot``/``restore``) is the established column types of every table and the watermark.
"""

from __future__ import annotations

import hashlib
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.batch import SourceBatch
from lakegate.core.config import TableSpec
from lakegate.core.deadletter import DEFAULT_MAX_PAYLOAD_BYTES, DeadLetters, Reason
from lakegate.core.errors import ConfigError, TerminalError
from lakegate.core.types import TIMESTAMP, type_from_str, type_to_str
from lakegate.normalize.event_time import Watermark, event_field
from lakegate.normalize.flatten import SEPARATOR, FlatTable, flatten, is_list_type, list_values
from lakegate.normalize.types import coerce, infer

STAGE = "normalize"
STATE_VERSION = 1

ROW_SYSTEM_FIELDS = (
    pa.field("_lg_source", pa.string()),
    pa.field("_lg_position", pa.string()),
    pa.field("_lg_event_time", TIMESTAMP),
    pa.field("_lg_late", pa.bool_()),
)
CHILD_SYSTEM_FIELDS = (pa.field("_lg_parent_key", pa.string()), *ROW_SYSTEM_FIELDS)


@dataclass
class NormalizedBatch:
    """What the normalize stage hands on for one source batch.

    Attributes:
        table: the target table.
        rows: the landed top-level rows, flat and typed (schema: ``Normalizer.schemas[table]``).
        children: child table name (``f"{table}__{array_path}"``) -> the landed rows of that table.
        dead_letters: the decoder's dead letters of the batch plus this stage's.
        records_read: ``batch.records_read``.
        late_rows: landed rows labeled late.
    """

    table: str
    rows: pa.Table
    children: dict[str, pa.Table]
    dead_letters: DeadLetters
    records_read: int
    late_rows: int


@dataclass(frozen=True)
class _Issue:
    """One kind of problem found in one column of one table (its rows are kept in _Rejections)."""

    reason: Reason
    table: FlatTable
    field: str
    values: pa.Array | None
    expected: pa.DataType | None = None
    limit: int | None = None


class _Rejections:
    """For each top-level record: the first issue that rejects it and the offending row."""

    def __init__(self, num_records: int) -> None:
        self.issue_of = np.full(num_records, -1, dtype=np.int64)
        self.row_of = np.full(num_records, -1, dtype=np.int64)
        self.issues: list[_Issue] = []

    def add(self, issue: _Issue, rows: np.ndarray) -> None:
        """Reject the records owning ``rows`` (indices into ``issue.table``) unless already rejected."""
        if not len(rows):
            return
        root = issue.table.root_index
        records = rows if root is None else root[rows]
        unique, first = np.unique(records, return_index=True)
        free = self.issue_of[unique] < 0
        if not free.any():
            return
        self.issues.append(issue)
        self.issue_of[unique[free]] = len(self.issues) - 1
        self.row_of[unique[free]] = rows[first[free]]

    @property
    def keep(self) -> np.ndarray:
        return self.issue_of < 0


class Normalizer:
    """Flattens, types and event-times the records of one target table.

    Args:
        table: the target table name.
        spec: how records become rows (array modes, type overrides, event time, field size limit).
        max_payload_bytes: dead letters keep raw payloads up to this size (larger: preview + sha256).

    Raises:
        ConfigError: a type override or the event-time zone is invalid.
    """

    def __init__(self, table: str, spec: TableSpec, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.table = table
        self.spec = spec
        self.max_payload_bytes = max_payload_bytes
        self._overrides: dict[str, pa.DataType] = {}
        for name, type_name in spec.types.items():
            try:
                self._overrides[name.replace(".", SEPARATOR)] = type_from_str(type_name)
            except ValueError as err:
                raise ConfigError(f"tables.{table}.types.{name}: {err}") from err
        self._event = spec.event_time
        self._event_field = event_field(self._event) if self._event else None
        self._zone = self._event.timezone if self._event else "UTC"
        try:
            zoneinfo.ZoneInfo(self._zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise ConfigError(f"tables.{table}.event_time.timezone: unknown time zone {self._zone!r}") from err
        self._columns: dict[str, dict[str, pa.DataType]] = {table: {}}
        self._watermark = Watermark.from_spec(self._event)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def schemas(self) -> dict[str, pa.Schema]:
        """The established schema of every table (top level and child tables), system columns first."""
        out = {}
        for name, columns in self._columns.items():
            system = ROW_SYSTEM_FIELDS if name == self.table else CHILD_SYSTEM_FIELDS
            out[name] = pa.schema([*system, *(pa.field(c, t) for c, t in columns.items())])
        return out

    @property
    def watermark(self) -> datetime | None:
        """The current watermark as an aware UTC datetime, or None."""
        return self._watermark.value

    def snapshot(self) -> bytes:
        """The stage state as JSON: established column types per table and the watermark."""
        state = {
            "version": STATE_VERSION,
            "table": self.table,
            "columns": {t: [[c, type_to_str(ty)] for c, ty in cols.items()] for t, cols in self._columns.items()},
            "watermark": self._watermark.state(),
        }
        return orjson.dumps(state)

    def restore(self, state: bytes) -> None:
        """Replace the state with one taken by :meth:`snapshot`.

        Raises:
            TerminalError: the state is unreadable or belongs to another table or version.
        """
        try:
            data = orjson.loads(state)
            if data.get("version") != STATE_VERSION or data.get("table") != self.table:
                raise ValueError(f"state of table {data.get('table')!r}, version {data.get('version')!r}")
            columns = {t: {c: type_from_str(ty) for c, ty in cols} for t, cols in data["columns"].items()}
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise TerminalError(f"cannot restore normalizer state of table {self.table!r}: {err}") from err
        columns.setdefault(self.table, {})
        self._columns = columns
        self._watermark = Watermark.from_spec(self._event)
        self._watermark.restore(data.get("watermark") or {})

    # -- processing ----------------------------------------------------------------------------------

    def process(self, batch: SourceBatch) -> NormalizedBatch:
        """Normalize one batch: flatten, type, dead-letter misfits, label event time and lateness."""
        num = batch.records.num_rows
        tables = flatten(
            batch.records,
            self.table,
            arrays_of_objects=self.spec.arrays_of_objects,
            arrays_of_scalars=self.spec.arrays_of_scalars,
            known_child_tables=frozenset(self._columns) - {self.table},
        )
        # problems are looked for in this order, the first one found rejects its record: the
        # top-level columns, its event time, then the child tables depth first
        rejections = _Rejections(num)
        typed = {self.table: self._type_table(tables[0], rejections)}
        events = self._event_times(tables[0], typed[self.table], rejections)
        for table in tables[1:]:
            typed[table.name] = self._type_table(table, rejections)

        dead = DeadLetters(max_payload_bytes=self.max_payload_bytes)
        dead.extend(batch.dead_letters)
        self._dead_letters(batch, rejections, dead)
        keep = rejections.keep
        late = self._watermark.label(events, keep) if self._event else np.zeros(num, dtype=bool)

        source = batch.source_ref
        positions = {self.table: pc.cast(batch.positions, pa.string())}
        root_late = pa.array(late, pa.bool_())
        rows = self._assemble(
            tables[0], typed, keep, [_constant(source, num), positions[self.table], events, root_late]
        )
        children = {}
        for table in tables[1:]:
            assert table.parent is not None and table.parent_index is not None
            assert table.root_index is not None and table.element_index is not None
            parent_positions = positions[table.parent.name].take(table.parent_index)
            index = pc.cast(pa.array(table.element_index), pa.string())
            own = pc.binary_join_element_wise(parent_positions, f"/{table.field}[", index, "]", "")
            positions[table.name] = own
            system = [
                pc.binary_join_element_wise(f"{source}#", parent_positions, ""),
                _constant(source, table.num_rows),
                own,
                events.take(table.root_index),
                root_late.take(table.root_index),
            ]
            children[table.name] = self._assemble(table, typed, keep[table.root_index], system)
        return NormalizedBatch(
            table=self.table,
            rows=rows,
            children=children,
            dead_letters=dead,
            records_read=batch.records_read,
            late_rows=int(np.count_nonzero(late & keep)),
        )

    def _type_table(self, table: FlatTable, rejections: _Rejections) -> dict[str, pa.Array]:
        """Establish, coerce and (when legal) promote the column types of one table."""
        established = self._columns.setdefault(table.name, {})
        prefix = f"{table.path}{SEPARATOR}" if table.path else ""
        out: dict[str, pa.Array] = {}
        for name, values in table.columns.items():
            is_event = table.parent is None and name == self._event_field
            override = self._overrides.get(prefix + name)
            self._check_size(table, name, values, rejections)
            target = established.get(name)
            if target is None:
                if is_event:
                    target = TIMESTAMP
                elif override is not None:
                    target = override
                elif name in table.json_columns:
                    target = pa.string()
                else:
                    target = infer(values, zone=self._zone)
                if target is None:
                    continue  # no value yet: the column waits for one
            result = coerce(values, target, zone=self._zone, epoch=is_event or override == TIMESTAMP)
            established[name] = result.type  # new, same, or promoted (the sink evolves the table)
            out[name] = result.array
            if is_event:
                if self._event is not None and self._event.on_missing == "dead_letter":
                    rejections.add(_Issue(Reason.MISSING_EVENT_TIME, table, name, values), result.bad)
            else:
                issue = _Issue(Reason.TYPE_MISMATCH, table, name, values, expected=result.type)
                rejections.add(issue, result.bad)
        return out

    def _check_size(self, table: FlatTable, name: str, values: pa.Array, rejections: _Rejections) -> None:
        limit = self.spec.max_field_bytes
        kind = values.type
        flat, parents = values, None
        if is_list_type(kind):
            flat = list_values(values)
            lengths = pc.list_value_length(values).fill_null(0).to_numpy()
            parents = np.repeat(np.arange(len(values), dtype=np.int64), lengths)
        if not (
            pa.types.is_string(flat.type)
            or pa.types.is_binary(flat.type)
            or pa.types.is_large_string(flat.type)
            or pa.types.is_large_binary(flat.type)
        ):
            return
        lengths = pc.binary_length(flat)
        largest = pc.max(lengths).as_py()
        if largest is None or largest <= limit:
            return
        rows = np.flatnonzero(lengths.fill_null(0).to_numpy() > limit)
        if parents is not None:
            rows = np.unique(parents[rows])
        issue = _Issue(Reason.FIELD_TOO_LARGE, table, name, values, limit=limit)
        rejections.add(issue, rows.astype(np.int64))

    def _event_times(self, root: FlatTable, typed: dict[str, pa.Array], rejections: _Rejections) -> pa.Array:
        """The ``_lg_event_time`` column; records without one are rejected when so configured."""
        num = root.num_rows
        if self._event_field is None:
            return pa.nulls(num, TIMESTAMP)
        events = typed.get(self._event_field)
        if events is None:
            events = pa.nulls(num, TIMESTAMP)
        if self._event is not None and self._event.on_missing == "dead_letter" and events.null_count:
            missing = np.flatnonzero(~np.asarray(events.is_valid().to_numpy(zero_copy_only=False), dtype=bool))
            rejections.add(_Issue(Reason.MISSING_EVENT_TIME, root, self._event_field, None), missing)
        return events

    def _assemble(
        self,
        table: FlatTable,
        typed: dict[str, dict[str, pa.Array]],
        keep: np.ndarray,
        system: list[pa.Array],
    ) -> pa.Table:
        """System columns, then every established column (nulls when absent), landed rows only."""
        schema = self.schemas[table.name]
        columns = typed[table.name]
        arrays = list(system)
        for f in list(schema)[len(system) :]:
            values = columns.get(f.name)
            arrays.append(pa.nulls(table.num_rows, f.type) if values is None else values)
        out = pa.Table.from_arrays(arrays, schema=schema)
        if not keep.all():
            out = out.filter(pa.array(keep, pa.bool_()))
        return out

    def _dead_letters(self, batch: SourceBatch, rejections: _Rejections, dead: DeadLetters) -> None:
        """One dead letter per rejected record, built in Python for the (few) rejected records only."""
        records = np.flatnonzero(~rejections.keep)
        if not len(records):
            return
        indices = records.tolist()
        payloads = batch.raw(indices)
        positions = pc.cast(batch.positions.take(pa.array(indices)), pa.string()).to_pylist()
        for record, payload, position in zip(indices, payloads, positions, strict=True):
            issue = rejections.issues[int(rejections.issue_of[record])]
            row = int(rejections.row_of[record])
            field_name = issue.field
            if issue.table.parent is not None:
                field_name = f"{issue.table.element_path(row)}.{issue.field}"
            value = None if issue.values is None else issue.values[row].as_py()
            message, raw_value, detail = _describe(issue, field_name, value)
            dead.add(
                source=batch.source_ref,
                position=str(position),
                stage=STAGE,
                reason=issue.reason,
                message=message,
                payload=payload,
                field_name=field_name,
                raw_value=raw_value,
                target_table=self.table,
                detail=detail,
            )


def _describe(issue: _Issue, field_name: str, value: Any) -> tuple[str, str | None, dict[str, Any] | None]:
    """Message, raw value text and detail of one dead letter."""
    if issue.reason is Reason.FIELD_TOO_LARGE:
        items = value if isinstance(value, list) else [value]
        big = max((v for v in items if v is not None), key=len)
        data = big.encode() if isinstance(big, str) else bytes(big)
        detail = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "max_field_bytes": issue.limit,
        }
        return f"field {field_name!r} is {len(data)} bytes, above max_field_bytes {issue.limit}", None, detail
    text = _text(value)
    if issue.reason is Reason.MISSING_EVENT_TIME:
        if value is None:
            return f"event-time field {field_name!r} is missing or null", None, None
        return f"event-time field {field_name!r} has no readable time: {text}", text, None
    assert issue.expected is not None
    expected = type_to_str(issue.expected)
    detail = {"expected": expected, "table": issue.table.name}
    return f"value {text} of field {field_name!r} does not fit type {expected}", text, detail


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return orjson.dumps(value, default=str).decode()


def _constant(value: str, length: int) -> pa.Array:
    """A string array repeating one value, built from buffers."""
    data = value.encode()
    if length * len(data) >= 2**31:
        return pa.repeat(value, length)  # beyond 32-bit offsets: let Arrow decide (and complain)
    offsets = np.arange(length + 1, dtype=np.int32) * np.int32(len(data))
    return pa.Array.from_buffers(pa.string(), length, [None, pa.py_buffer(offsets), pa.py_buffer(data * length)])
