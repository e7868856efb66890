"""Dead-letter records: what could not land, why, and the bytes needed to replay it.

Dead letters are rare by nature, so they are gathered row by row in Python and turned into one Arrow
table per batch; the hot path never builds them for good rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import pyarrow as pa


class Reason(StrEnum):
    """Why a record was dead-lettered (the ``reason_code`` column)."""

    MALFORMED_JSON = "malformed_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    MALFORMED_ROW = "malformed_row"
    UNREADABLE = "unreadable"
    TYPE_MISMATCH = "type_mismatch"
    FIELD_TOO_LARGE = "field_too_large"
    MISSING_EVENT_TIME = "missing_event_time"
    CHILD_REJECTED = "child_rejected"
    CONTRACT_VIOLATION = "contract_violation"
    SCHEMA_HELD = "schema_held"
    """An upstream schema change awaits review; replayable once its proposal is approved."""


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("dlq_id", pa.string(), nullable=False),
        pa.field("pipeline", pa.string()),
        pa.field("source", pa.string()),
        pa.field("position", pa.string()),
        pa.field("byte_start", pa.int64()),
        pa.field("byte_end", pa.int64()),
        pa.field("target_table", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("reason_code", pa.string()),
        pa.field("message", pa.string()),
        pa.field("field", pa.string()),
        pa.field("raw_value", pa.string()),
        pa.field("raw_payload", pa.binary()),
        pa.field("payload_size", pa.int64()),
        pa.field("payload_sha256", pa.string()),
        pa.field("payload_preview", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("checkpoint_id", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("dead_lettered_at", pa.timestamp("us", tz="UTC")),
    ]
)

PREVIEW_CHARS = 512
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


def dead_letter_id(source: str, position: str, stage: str) -> str:
    """A key that is the same when the same record is dead-lettered again on replay."""
    return hashlib.sha256(f"{source}\x00{position}\x00{stage}".encode()).hexdigest()[:32]


def preview(data: bytes, limit: int = PREVIEW_CHARS) -> str:
    """The first ``limit`` characters of a payload, undecodable bytes shown as U+FFFD."""
    return data[: limit * 4].decode("utf-8", errors="replace")[:limit]


@dataclass
class DeadLetters:
    """An append-only list of dead-letter rows for one batch.

    Payloads above ``max_payload_bytes`` keep only their preview, size and sha256, so one huge record
    cannot blow up the dead-letter table.
    """

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        *,
        source: str,
        position: str,
        stage: str,
        reason: Reason,
        message: str,
        payload: bytes | None,
        field_name: str | None = None,
        raw_value: str | None = None,
        byte_range: tuple[int, int] | None = None,
        target_table: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record one record that cannot land."""
        data = payload or b""
        self.rows.append(
            {
                "dlq_id": dead_letter_id(source, position, stage),
                "pipeline": None,
                "source": source,
                "position": position,
                "byte_start": byte_range[0] if byte_range else None,
                "byte_end": byte_range[1] if byte_range else None,
                "target_table": target_table,
                "stage": stage,
                "reason_code": str(reason),
                "message": message,
                "field": field_name,
                "raw_value": None if raw_value is None else raw_value[:PREVIEW_CHARS],
                "raw_payload": data if len(data) <= self.max_payload_bytes else None,
                "payload_size": len(data),
                "payload_sha256": hashlib.sha256(data).hexdigest(),
                "payload_preview": preview(data),
                "detail": orjson.dumps(detail).decode() if detail else None,
                "checkpoint_id": None,
                "status": "open",
                "dead_lettered_at": datetime.now(UTC),
            }
        )

    def extend(self, other: DeadLetters) -> None:
        self.rows.extend(other.rows)

    def to_arrow(self, *, pipeline: str, checkpoint_id: int) -> pa.Table:
        """The rows as a table of DEAD_LETTER_SCHEMA, stamped with the pipeline and checkpoint."""
        for row in self.rows:
            row["pipeline"] = pipeline
            row["checkpoint_id"] = checkpoint_id
        return pa.Table.from_pylist(self.rows, schema=DEAD_LETTER_SCHEMA)
