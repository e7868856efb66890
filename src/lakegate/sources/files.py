"""A directory of files as a resumable source: each file read once, in a fixed order, resumable mid-file.

Position format (JSON-serializable; what a checkpoint records)::

    {"done": ["a/1.ndjson", ...],          # relative paths read to the end (never read again)
     "current": {"file": "b/2.csv.gz",     # the file being read, or null
                 "offset": 1048576,        # decompressed byte offset after the last consumed record
                 "record": 5000,           # records consumed from that file
                 ...}}                     # format extras: "line" (NDJSON), "in_array" (JSON)

NDJSON, JSON documents and CSV resume at ``offset``, always a record boundary (compressed files are
decompressed and skipped up to it); Avro and Parquet resume at ``record``, skipping whole blocks or
row groups. Files are never modified, moved or deleted.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from lakegate.core.batch import SourceBatch
from lakegate.core.config import FileSourceSpec
from lakegate.core.deadletter import DEFAULT_MAX_PAYLOAD_BYTES, DeadLetters, Reason
from lakegate.sources.compression import Compression, DecodedStream
from lakegate.sources.readers.avro import AvroReader
from lakegate.sources.readers.base import DECODE_STAGE, Chunk, Failure, FormatReader, NoRecords, ReadContext
from lakegate.sources.readers.csv import CsvReader
from lakegate.sources.readers.json_document import JsonReader
from lakegate.sources.readers.ndjson import NdjsonReader
from lakegate.sources.readers.parquet import ParquetReader

_COMPRESSION_SUFFIXES: dict[str, Compression] = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".zst": "zstd",
    ".zstd": "zstd",
}
_FORMAT_SUFFIXES = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json?",
    ".csv": "csv",
    ".avro": "avro",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_READERS: dict[str, type[FormatReader]] = {
    "ndjson": NdjsonReader,
    "json": JsonReader,
    "csv": CsvReader,
    "avro": AvroReader,
    "parquet": ParquetReader,
}
_SNIFF_BYTES = 64 * 1024


def is_final_name(relpath: str) -> bool:
    """Whether a file is complete by naming convention: no hidden/underscore part, no ``.tmp`` suffix.

    Writers create files as ``.name``, ``_name`` or ``name.tmp`` and rename them when done, so a file
    counts only once it appears under its final name.
    """
    parts = PurePosixPath(relpath).parts
    return not any(part.startswith((".", "_")) for part in parts) and not relpath.endswith(".tmp")


def detect_compression(path: Path, setting: str) -> Compression:
    """The file's compression: as configured, else by extension, else by magic bytes."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    by_suffix = _COMPRESSION_SUFFIXES.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def detect_format(path: Path, setting: str, compression: Compression) -> str | None:
    """The reader to use: as configured, else by extension (after the compression one), else by sniffing.

    ``.json`` is a JSON document when its first non-space byte is ``[`` (or it opens with a line
    holding only ``{``: one pretty-printed object), NDJSON otherwise. Returns ``"empty"`` for a file
    with no bytes and None when the format cannot be told.

    Raises:
        OSError: the file cannot be opened, or is damaged before its first byte.
    """
    name = path.name.lower()
    if path.suffix.lower() in _COMPRESSION_SUFFIXES:
        name = name[: -len(path.suffix)]
    by_suffix = setting if setting != "auto" else _FORMAT_SUFFIXES.get(PurePosixPath(name).suffix)
    if by_suffix not in (None, "json?"):
        return by_suffix
    with DecodedStream(path, compression) as stream:
        head = stream.read(_SNIFF_BYTES)
        if not head and stream.damage:
            raise OSError(stream.damage)
        if not head:
            return "empty"
    text = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if by_suffix == "json?":  # a pretty-printed object starts with a line holding only "{"
        pretty = text[:1] == b"{" and text.split(b"\n", 1)[0].strip() == b"{"
        return "json" if text[:1] == b"[" or pretty or not text else "ndjson"
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:4] == b"Obj\x01":
        return "avro"
    return {b"[": "json", b"{": "ndjson"}.get(text[:1])


class FileSource:
    """Reads the files of a directory into batches, exactly once per file and resumably.

    Files (recursive glob ``spec.pattern``; a pattern without ``/`` matches names at any depth) are
    read in sorted relative-path order, one at a time; each batch comes from one file. When no file
    is left, ``poll`` rescans the directory, so files that appear later are picked up (the rescan
    happens only then, never while a file is being read). Whether the runtime keeps polling an idle
    source is its choice (``spec.watch``). A file listed as done is never read again, even if changed.
    """

    def __init__(self, spec: FileSourceSpec, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.spec = spec
        self.name = spec.name
        self.max_payload_bytes = max_payload_bytes
        self._done: set[str] = set()
        self._queue: deque[str] = deque()
        self._resume: dict[str, Any] | None = None
        self._reader: FormatReader | None = None
        self._current: str | None = None
        self._idle = False

    def restore(self, position: dict[str, Any] | None) -> None:
        """Seek to a recorded position: skip the done files, resume the current one where it stopped."""
        self.close()
        position = position or {}
        self._done = set(position.get("done") or [])
        current = position.get("current")
        self._resume = copy.deepcopy(current) if current else None
        self._queue.clear()
        self._current = None
        self._idle = False

    def position(self) -> dict[str, Any]:
        """The resumable position after the last batch (see the module docstring for its format)."""
        current: dict[str, Any] | None = None
        if self._reader is not None and self._current is not None:
            current = {"file": self._current, **self._reader.position()}
        elif self._resume is not None:
            current = copy.deepcopy(self._resume)
        return {"done": sorted(self._done), "current": current}

    def poll(self) -> SourceBatch | None:
        """The next batch of the current file, opening the next file (or rescanning) when it ends."""
        scanned = False
        while True:
            if self._reader is None:
                if self._resume is None and not self._queue:
                    if scanned:
                        return None
                    scanned = True
                    if not self._rescan():
                        self._idle = True
                        return None
                self._open_next()
            batch = self._read_current()
            if batch is not None:
                return batch

    def is_idle(self) -> bool:
        """True once every file seen has been read to the end and a rescan found nothing new."""
        return self._idle and self._reader is None and self._resume is None and not self._queue

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Nothing to do: input files are never moved or deleted.

        The done list travels in the checkpoint (the Iceberg snapshot's source positions), so it is
        durable exactly when the records are; there is no upstream cursor to advance.
        """

    def close(self) -> None:
        """Close the open file; the current position is kept, so a later poll resumes there."""
        if self._reader is not None:
            current = self.position()["current"]
            self._reader.close()
            self._reader = None
            self._resume = current
            self._current = None

    # -- internals ----------------------------------------------------------------------------------

    def _rescan(self) -> bool:
        """Queue the final-named files not yet done, in sorted order; False when there are none."""
        root = self.spec.path
        if not root.is_dir():
            return False
        pattern = self.spec.pattern if "/" in self.spec.pattern else f"**/{self.spec.pattern}"
        found = set()
        for path in root.glob(pattern):
            relpath = path.relative_to(root).as_posix()
            if relpath not in self._done and is_final_name(relpath) and path.is_file():
                found.add(relpath)
        self._queue = deque(sorted(found))
        if found:
            self._idle = False
        return bool(found)

    def _open_next(self) -> None:
        resume = None
        if self._resume is not None:
            resume, self._resume = self._resume, None
            relpath = str(resume["file"])
        else:
            relpath = self._queue.popleft()
        if relpath in self._queue:
            self._queue.remove(relpath)
        self._current = relpath
        self._reader = self._make_reader(relpath, resume)

    def _make_reader(self, relpath: str, resume: dict[str, Any] | None) -> FormatReader:
        path = self.spec.path / relpath
        ctx = ReadContext(
            path=path,
            source_ref=f"{self.name}:{relpath}",
            compression="none",
            batch_rows=self.spec.batch_rows,
            batch_bytes=self.spec.batch_bytes,
            max_payload_bytes=self.max_payload_bytes,
            csv_delimiter=self.spec.csv_delimiter,
        )
        try:
            compression = detect_compression(path, self.spec.compression)
            ctx = dataclasses.replace(ctx, compression=compression)
            kind = detect_format(path, self.spec.format, compression)
        except OSError as err:
            return NoRecords(ctx, f"cannot read file: {type(err).__name__}: {err}", _size(path))
        if kind == "empty":
            return NoRecords(ctx)
        if kind is None:
            message = "cannot tell the file's format; set 'format' in the source spec"
            return NoRecords(ctx, message, _size(path))
        return _READERS[kind](ctx, resume)

    def _read_current(self) -> SourceBatch | None:
        """One chunk of the current file as a batch (None when it held nothing); ends the file when done."""
        reader, relpath = self._reader, self._current
        assert reader is not None and relpath is not None
        try:
            chunk = reader.read()
        # Readers turn damage into ``failure`` themselves; this is the last resort, so that an
        # unforeseen error dead-letters the rest of one file instead of stopping the pipeline.
        except Exception as err:
            chunk = None
            reader.fail(err)
        dead = DeadLetters(max_payload_bytes=self.max_payload_bytes)
        if reader.failure is not None:
            dead.add(**self._unreadable(reader, relpath, reader.failure))
        if reader.finished:
            reader.close()
            self._done.add(relpath)
            self._reader = None
            self._current = None
        if chunk is None and not dead:
            return None
        if chunk is None:
            chunk = Chunk(pa.table({}), pa.array([], pa.string()), dead, lambda idx: [], 0)
        else:
            chunk.dead_letters.extend(dead)
        if chunk.records_read == 0 and not chunk.dead_letters:
            return None
        return SourceBatch(
            source=self.name,
            origin=relpath,
            records=chunk.records,
            positions=chunk.positions,
            end_position=self.position(),
            dead_letters=chunk.dead_letters,
            raw=chunk.raw,
            records_read=chunk.records_read + len(dead),
        )

    def _unreadable(self, reader: FormatReader, relpath: str, failure: Failure) -> dict[str, Any]:
        """The dead letter for the damaged rest of a file.

        ``byte_range`` is in decompressed bytes: where the unread part starts and how far decoding got
        (the file size for plain files). The payload is the file's raw bytes needed to retry by hand:
        from ``start`` for plain files, the whole file for compressed ones (a damaged stream cannot be
        resumed midway); it is left out when larger than ``max_payload_bytes``.
        """
        path = reader.ctx.path
        compressed = reader.ctx.compression != "none"
        payload: bytes | None = None
        try:
            size = path.stat().st_size
            begin = 0 if compressed else min(failure.start, size)
            if size - begin <= self.max_payload_bytes:
                with path.open("rb") as handle:
                    handle.seek(begin)
                    payload = handle.read()
        except OSError:
            size, begin = -1, 0
        end = failure.end if compressed or size < 0 else max(failure.end, size)
        return {
            "source": f"{self.name}:{relpath}",
            "position": failure.position,
            "stage": DECODE_STAGE,
            "reason": Reason.UNREADABLE,
            "message": f"unreadable from byte {failure.start}: {failure.message}",
            "payload": payload,
            "byte_range": (failure.start, end),
            "detail": {
                "file_size": size,
                "compression": reader.ctx.compression,
                "payload_from_raw_offset": begin if payload is not None else None,
            },
        }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
