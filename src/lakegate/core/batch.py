"""The envelope every stage passes along: an Arrow table of records plus where they came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakegate.core.cdc import SchemaChange
from lakegate.core.deadletter import DeadLetters

RawPayloads = Callable[[Sequence[int]], list[bytes]]
"""Given row indices of a batch, return the original bytes of those records (for dead letters)."""


def _no_raw(indices: Sequence[int]) -> list[bytes]:
    return [b"" for _ in indices]


@dataclass
class SourceBatch:
    """Records decoded from one stretch of one source.

    Attributes:
        source: the source's name in the spec.
        origin: where inside the source the records come from (a file's relative path, a topic
            partition); ``_lg_source`` is ``"<source>:<origin>"``.
        records: one row per record read; columns may be nested (struct, list).
        positions: the position of each record as a string, stable on replay (a line number, a row
            index, an LSN).
        end_position: the source's resumable position after this batch (JSON-serializable).
        dead_letters: records the decoder could not read (malformed, truncated, too large).
        raw: returns the original bytes of chosen rows, so later stages can dead-letter them.
        records_read: records consumed from the source: ``len(records)`` plus the decoder's
            dead letters; the reconciliation's left-hand side.
        schema_changes: for CDC sources, the shape changes of ``origin`` that start with this batch.
        table: the target table, for sources that feed several.
    """

    source: str
    origin: str
    records: pa.Table
    positions: pa.Array
    end_position: dict[str, Any]
    dead_letters: DeadLetters = field(default_factory=DeadLetters)
    raw: RawPayloads = _no_raw
    records_read: int = -1
    schema_changes: list[SchemaChange] = field(default_factory=list)
    side_rows: dict[str, pa.Table] = field(default_factory=dict)
    """Bookkeeping rows for auxiliary tables, committed in the same checkpoint as the records and not
    counted as records (a replay's markers of the dead letters it replayed)."""
    table: str | None = None
    """The target table when a source feeds several (CDC: one per source table; replays: the dead
    letter's table); ``None``: the source's table from the spec."""
    """Changes of the source table's shape that take effect with this batch (CDC Relation/DDL events)."""

    def __post_init__(self) -> None:
        if len(self.positions) != self.records.num_rows:
            raise ValueError(
                f"positions ({len(self.positions)}) and records ({self.records.num_rows}) differ in length"
            )
        if self.records_read < 0:
            self.records_read = self.records.num_rows + len(self.dead_letters)

    @property
    def source_ref(self) -> str:
        """The value of ``_lg_source`` for these records."""
        return f"{self.source}:{self.origin}" if self.origin else self.source
