"""The reader protocol: what a reader is given, what it hands back, and how it reports damage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lakegate.core.batch import RawPayloads
from lakegate.core.deadletter import DeadLetters
from lakegate.sources.compression import Compression

DECODE_STAGE = "decode"
"""The stage named in the dead letters of records that could not be decoded."""


@dataclass(frozen=True)
class ReadContext:
    """What a reader needs to know about its file and the source."""

    path: Path
    source_ref: str
    compression: Compression
    batch_rows: int
    batch_bytes: int
    max_payload_bytes: int
    csv_delimiter: str = ","


@dataclass
class Failure:
    """The damaged rest of a file: what went wrong and where the unread part lies."""

    position: str
    start: int
    end: int
    message: str


@dataclass
class Chunk:
    """Records read by one ``read`` call, before ``FileSource`` wraps them in a SourceBatch."""

    records: pa.Table
    positions: pa.Array
    dead_letters: DeadLetters
    raw: RawPayloads
    records_read: int


def position_labels(values: np.ndarray) -> pa.Array:
    """Record positions (indices or line numbers) as the string labels a batch carries."""
    return pa.array(values.astype(np.int64, copy=False)).cast(pa.string())


class FormatReader:
    """Base of the readers: position bookkeeping and the damage protocol."""

    def __init__(self, ctx: ReadContext, resume: dict[str, Any] | None) -> None:
        self.ctx = ctx
        resume = resume or {}
        self.offset = int(resume.get("offset", 0))
        self.record = int(resume.get("record", 0))
        self.finished = False
        self.failure: Failure | None = None

    def read(self) -> Chunk | None:
        """The next chunk, or None at the end; sets ``finished`` once the file is fully read."""
        raise NotImplementedError

    def position(self) -> dict[str, Any]:
        """Where to resume: the offset after the last consumed record and how many were consumed."""
        return {"offset": self.offset, "record": self.record}

    def next_label(self) -> str:
        return str(self.record)

    def fail(self, err: BaseException | str, start: int | None = None, end: int | None = None) -> None:
        """Give up on the rest of the file; it becomes one dead letter."""
        message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        begin = self.offset if start is None else start
        self.failure = Failure(self.next_label(), begin, max(begin, end if end is not None else begin), message)
        self.finished = True

    def dead_letters(self) -> DeadLetters:
        return DeadLetters(max_payload_bytes=self.ctx.max_payload_bytes)

    def close(self) -> None:
        """Release the file."""


class NoRecords(FormatReader):
    """A file with nothing to read (empty), or one that cannot be read at all (``failure`` set)."""

    def __init__(self, ctx: ReadContext, failure: str | None = None, size: int = 0) -> None:
        super().__init__(ctx, None)
        if failure:
            self.fail(failure, 0, size)
        self.finished = True

    def read(self) -> Chunk | None:
        return None
