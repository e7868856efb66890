"""The checkpoint state store: one SQLite file per pipeline, written before any table is committed.

A record holds everything recovery needs to finish checkpoint n: operator state, source end
positions, and the data files per table. SQLite gives an atomic, durable write on a local disk.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

Status = Literal["pending", "committed"]


@dataclass
class CheckpointRecord:
    """What checkpoint ``checkpoint_id`` wrote and where every source stood after it."""

    checkpoint_id: int
    status: Status
    source_positions: dict[str, Any]
    files: dict[str, list[str]]
    operator_state: dict[str, str] = field(default_factory=dict)
    """Stage name -> base64 of ``stage.snapshot()``."""
    counts: dict[str, int] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    """Every table this pipeline has written so far (for stray-file clean-up)."""

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "checkpoint_id": self.checkpoint_id,
                "source_positions": self.source_positions,
                "files": self.files,
                "operator_state": self.operator_state,
                "counts": self.counts,
                "tables": self.tables,
            }
        )

    @classmethod
    def from_json(cls, status: Status, data: bytes) -> CheckpointRecord:
        raw = orjson.loads(data)
        return cls(status=status, **raw)


class StateStore:
    """Durable checkpoint records of one pipeline."""

    KEEP = 200

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "state.db"
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS checkpoints ("
            " id INTEGER PRIMARY KEY, status TEXT NOT NULL, record BLOB NOT NULL, updated_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS rewinds ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, target_table TEXT NOT NULL, from_checkpoint INTEGER NOT NULL,"
            " reason TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', note TEXT)"
        )

    def latest(self) -> CheckpointRecord | None:
        """The newest record, pending or committed."""
        row = self._db.execute("SELECT status, record FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else CheckpointRecord.from_json(row[0], row[1])

    def latest_committed(self) -> CheckpointRecord | None:
        row = self._db.execute(
            "SELECT status, record FROM checkpoints WHERE status = 'committed' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else CheckpointRecord.from_json(row[0], row[1])

    def history(self, limit: int = 20) -> list[CheckpointRecord]:
        rows = self._db.execute("SELECT status, record FROM checkpoints ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [CheckpointRecord.from_json(status, record) for status, record in rows]

    def put_pending(self, record: CheckpointRecord) -> None:
        """Step 3: persist the record before any table sees the checkpoint."""
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints (id, status, record, updated_at) VALUES (?, 'pending', ?, ?)",
            (record.checkpoint_id, record.to_json(), time.time()),
        )

    def mark_committed(self, checkpoint_id: int) -> None:
        """Step 5: every table holds the checkpoint; older records are pruned."""
        self._db.execute(
            "UPDATE checkpoints SET status = 'committed', updated_at = ? WHERE id = ?",
            (time.time(), checkpoint_id),
        )
        self._db.execute("DELETE FROM checkpoints WHERE id <= ?", (checkpoint_id - self.KEEP,))

    def get(self, checkpoint_id: int) -> CheckpointRecord | None:
        row = self._db.execute("SELECT status, record FROM checkpoints WHERE id = ?", (checkpoint_id,)).fetchone()
        return None if row is None else CheckpointRecord.from_json(row[0], row[1])

    def put_committed(self, record: CheckpointRecord) -> None:
        """A checkpoint that commits no data file (a rewind): written committed in one step."""
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints (id, status, record, updated_at) VALUES (?, 'committed', ?, ?)",
            (record.checkpoint_id, record.to_json(), time.time()),
        )

    # -- rewinds: re-read what a table landed from some checkpoint on (after a mapping is reverted) ----

    def add_rewind(self, table: str, from_checkpoint: int, reason: str) -> None:
        self._db.execute(
            "INSERT INTO rewinds (target_table, from_checkpoint, reason) VALUES (?, ?, ?)",
            (table, from_checkpoint, reason),
        )

    def pending_rewinds(self) -> list[tuple[int, str, int, str]]:
        """(id, table, from checkpoint, reason) of the rewinds the next run must carry out, oldest first."""
        rows = self._db.execute(
            "SELECT id, target_table, from_checkpoint, reason FROM rewinds WHERE status = 'pending' ORDER BY id"
        ).fetchall()
        return [(int(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]

    def finish_rewind(self, rewind_id: int, status: Literal["done", "refused"], note: str = "") -> None:
        self._db.execute("UPDATE rewinds SET status = ?, note = ? WHERE id = ?", (status, note, rewind_id))

    def close(self) -> None:
        self._db.close()
