"""What every change-data-capture source emits, so the sinks treat PostgreSQL and MySQL alike.

A CDC source returns one ``SourceBatch`` per source table per poll (a batch never mixes tables, and
never mixes rows from before and after a schema change of its table). ``SourceBatch.origin`` is the
qualified source table (``schema.table``). ``records`` holds the table's columns, typed (the after
image for snapshot reads, inserts and updates; the before image, at least the key, for deletes), plus
the change columns below. ``positions`` are ``"<commit position>:<index within the transaction>"``,
stable on replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OP = "_lg_op"
"""Operation: ``r`` snapshot read, ``c`` insert, ``u`` update, ``d`` delete, ``t`` truncate."""
BEFORE = "_lg_before"
"""The before image as a JSON string (updates and deletes; null when the server did not send it)."""
COMMIT_POSITION = "_lg_commit_position"
"""The commit's position as a string: an LSN (``0/16B3748``), a GTID or ``file:pos``."""
COMMIT_TIME = "_lg_commit_time"
"""The commit's timestamp (``timestamp[us, UTC]``); the snapshot's start time for snapshot reads."""
UNCHANGED = "_lg_unchanged"
"""``list<string>``: columns whose value the server did not send (PostgreSQL unchanged TOAST); a merge
keeps the stored value. Present only in batches holding such a row."""
CHANGE_COLUMNS = (OP, BEFORE, COMMIT_POSITION, COMMIT_TIME)

ChangeKind = Literal["column_added", "column_dropped", "column_renamed", "column_retyped", "table_added"]


@dataclass(frozen=True)
class ColumnChange:
    kind: ChangeKind
    column: str
    old_type: str | None = None
    new_type: str | None = None
    old_name: str | None = None
    """For ``column_renamed`` only when the source says so (binlog DDL); pgoutput only shows drop+add."""


@dataclass(frozen=True)
class SchemaChange:
    """A source table's columns changed between two batches (a new Relation message, a DDL event)."""

    table: str
    """Qualified source table (``schema.table``)."""
    position: str
    """Commit position of the first change with the new shape."""
    before: dict[str, str]
    """Column name -> type name before the change."""
    after: dict[str, str]
    changes: list[ColumnChange] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
