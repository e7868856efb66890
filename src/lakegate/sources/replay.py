"""Replay dead letters through the pipeline once their cause is fixed (a proposal approved, a rule relaxed).

The dead-letter table is append-only, so a replay does not change it: every record it replays is marked
in ``<dead-letter table>_replays`` (its ``dlq_id`` and the checkpoint that dead-lettered it), committed
in the same checkpoint as the rows the replay lands. A marked dead letter is never replayed again; a
record that fails again is dead-lettered again, under a later checkpoint, and can be replayed later.

The records keep their lineage: ``_lg_source`` and ``_lg_position`` are those of the original record,
and they go to the table the dead letter names. Payloads are JSON objects (NDJSON lines, and the JSON
form of Avro, Parquet and CDC rows); one that is not cannot be replayed and is reported, not marked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.batch import SourceBatch

log = logging.getLogger(__name__)

REPLAYS_SCHEMA = pa.schema(
    [
        pa.field("dlq_id", pa.string(), nullable=False),
        pa.field("dead_lettered_checkpoint", pa.int64()),
        pa.field("target_table", pa.string()),
        pa.field("reason_code", pa.string()),
        pa.field("replayed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def replays_table_of(dead_letter_table: str) -> str:
    return f"{dead_letter_table}_replays"


@dataclass(frozen=True)
class ReplayFilter:
    """Which open dead letters to replay (all conditions must hold; unset ones match everything)."""

    proposal: str | None = None
    reason: str | None = None
    dlq_ids: tuple[str, ...] = ()
    target_table: str | None = None

    def apply(self, letters: pa.Table) -> pa.Table:
        mask = pc.equal(letters.column("status"), "open")
        if self.reason:
            mask = pc.and_(mask, pc.equal(letters.column("reason_code"), self.reason))
        if self.target_table:
            mask = pc.and_(mask, pc.equal(letters.column("target_table"), self.target_table))
        if self.dlq_ids:
            mask = pc.and_(mask, pc.is_in(letters.column("dlq_id"), value_set=pa.array(list(self.dlq_ids))))
        if self.proposal:
            needle = f'"proposal":"{self.proposal}'
            detail = pc.fill_null(letters.column("detail"), "")
            mask = pc.and_(mask, pc.match_substring(pc.replace_substring(detail, " ", ""), needle))
        return letters.filter(pc.fill_null(mask, False))


def pending_dead_letters(dead_letters: pa.Table, replays: pa.Table | None, selection: ReplayFilter) -> pa.Table:
    """The selected open dead letters that no replay has marked yet (per record and checkpoint)."""
    chosen = selection.apply(dead_letters)
    if replays is None or replays.num_rows == 0 or chosen.num_rows == 0:
        return chosen
    done = pc.binary_join_element_wise(
        replays.column("dlq_id"), pc.cast(replays.column("dead_lettered_checkpoint"), pa.string()), "@"
    )
    mine = pc.binary_join_element_wise(
        chosen.column("dlq_id"), pc.cast(chosen.column("checkpoint_id"), pa.string()), "@"
    )
    return chosen.filter(pc.invert(pc.is_in(mine, value_set=done)))


class DeadLetterReplay:
    """A source over chosen dead letters (implements the Source protocol; one batch per source file/table).

    Args:
        letters: the dead letters to replay (rows of the dead-letter table, see :func:`pending_dead_letters`).
        replays_table: where the markers go (committed with the replayed rows).
    """

    name = "replay"

    def __init__(self, letters: pa.Table, replays_table: str) -> None:
        self.replays_table = replays_table
        self.skipped: list[dict[str, Any]] = []
        """Dead letters that cannot be replayed (payload not a JSON object), with the reason."""
        self._batches = self._group(letters)
        self._done = 0

    def _group(self, letters: pa.Table) -> list[tuple[str, str, pa.Table]]:
        groups: dict[tuple[str, str], list[int]] = {}
        sources = letters.column("source").to_pylist()
        tables = letters.column("target_table").to_pylist()
        for i, (source, table) in enumerate(zip(sources, tables, strict=True)):
            groups.setdefault((source or "", table or ""), []).append(i)
        return [(s, t, letters.take(pa.array(rows))) for (s, t), rows in sorted(groups.items())]

    def restore(self, position: dict[str, Any] | None) -> None:
        """Nothing to seek: what is done is marked in the replays table, which selected the letters."""

    def poll(self) -> SourceBatch | None:
        while self._done < len(self._batches):
            source_ref, table, letters = self._batches[self._done]
            self._done += 1
            batch = self._batch(source_ref, table, letters)
            if batch is not None:
                return batch
        return None

    def _batch(self, source_ref: str, table: str, letters: pa.Table) -> SourceBatch | None:
        records: list[dict[str, Any]] = []
        keep: list[int] = []
        payloads = letters.column("raw_payload").to_pylist()
        for i, payload in enumerate(payloads):
            try:
                record = orjson.loads(payload) if payload else None
            except orjson.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                dlq_id = letters.column("dlq_id")[i].as_py()
                self.skipped.append({"dlq_id": dlq_id, "reason": "payload is not a JSON object"})
                continue
            records.append(record)
            keep.append(i)
        if not keep:
            return None
        chosen = letters.take(pa.array(keep))
        raw = [payloads[i] for i in keep]
        source, _, origin = source_ref.partition(":")
        markers = pa.table(
            {
                "dlq_id": chosen.column("dlq_id"),
                "dead_lettered_checkpoint": chosen.column("checkpoint_id"),
                "target_table": chosen.column("target_table"),
                "reason_code": chosen.column("reason_code"),
                "replayed_at": pa.array([datetime.now(UTC)] * len(keep), pa.timestamp("us", tz="UTC")),
            },
            schema=REPLAYS_SCHEMA,
        )

        def raw_of(indices: Sequence[int]) -> list[bytes]:
            return [raw[i] for i in indices]

        return SourceBatch(
            source=source,
            origin=origin,
            records=pa.Table.from_pylist(records),
            positions=pc.cast(chosen.column("position"), pa.string()).combine_chunks(),
            end_position={"replayed": len(keep)},
            raw=raw_of,
            table=table or None,
            side_rows={self.replays_table: markers},
        )

    def position(self) -> dict[str, Any]:
        return {"batches": self._done}

    def is_idle(self) -> bool:
        return self._done >= len(self._batches)

    def acknowledge(self, position: dict[str, Any]) -> None:
        """The markers are committed with the data: nothing to confirm upstream."""

    def close(self) -> None:
        self._batches = []
