"""Reclaim the storage of expired snapshots: delete the files that only expired snapshots referenced.

Expiry (``lakegate.history.keep-snapshots``, ``sinks/commit.py``) edits metadata only, as pyiceberg
does: without this module every expired snapshot's manifest list and manifests, every mirror file a
compaction replaced and every change file a trim dropped would stay in storage for ever (a CDC table
takes a commit every second). The rule is the one of Iceberg's Java ``ExpireSnapshots``: a file may go
only if a committed snapshot once referenced it and no snapshot of the table's current metadata does.

1. A commit that expires snapshots records their manifest lists (:class:`ExpiredSnapshots`, strings
   taken from the metadata the commit was built on: no I/O on the checkpoint's path) and the time
   before which none of their files may go (:func:`reclaim_grace_s`), so that a reader that planned a
   scan on a snapshot just expired can finish reading it.
2. Later, off the checkpoint loop (the compaction process), :class:`Reclaimer` takes as candidates
   those manifest lists, their manifests and the data and delete files their live entries reference,
   subtracts everything the table's *current* metadata reaches (every retained snapshot's manifest
   list, manifests and live files), and deletes the rest under the table's location: data files
   first, then manifests, then manifest lists, so a reclaim killed half-way leaves only files nothing
   references.

No directory is ever listed: a file no committed snapshot referenced (a crashed pipeline's pending
checkpoint files, which recovery commits later) is never a candidate. A file unreachable now cannot
become reachable again: every snapshot commit requires the branch head it was built on, so a new
snapshot carries only manifests and files of the current head (reachable, so kept) or files written
for it.

An expiry waits in memory for its grace, so a crash or a close can come first. The runtime keeps the
waiting ones in its checkpointed state, and at start-up :func:`expired_in_metadata_log` finds those of
the table's recent commits (the snapshots the metadata files still in the table's metadata log list
and the current one does not), so both are reclaimed after a restart. What can still leak, never what
can be deleted wrongly: an expiry older than the metadata log that the last checkpoint's state did not
hold (a crash mid-reclaim), and the metadata file the catalog wrote for a commit it then refused (its
name is the catalog's; the manifests of a refused commit are deleted by the committer:
``sinks/commit.py``, and pyiceberg's transactions).
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pyiceberg.catalog import Catalog
from pyiceberg.io import FileIO
from pyiceberg.manifest import ManifestFile, read_manifest_list
from pyiceberg.serializers import FromInputFile
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

log = logging.getLogger(__name__)

RECLAIM_GRACE_PROPERTY = "lakegate.history.reclaim-grace-seconds"
"""Table property: seconds between a snapshot's expiry and the deletion of its files (unset: the default)."""
RECLAIM_GRACE_S = 60.0
"""Default grace: longer than a query of the always-current read path takes to plan and read its files."""

_Key = tuple[str, str, str]


@dataclass(frozen=True)
class ExpiredSnapshots:
    """The snapshots one commit expired from a table: their manifest lists, and when their files may go.

    ``reclaim_after`` is a ``time.monotonic()`` value; the monotonic clock is system-wide on Linux, so
    the pipeline process that commits and the compaction process that reclaims agree on it.
    """

    table: str
    """The table's identifier, ``namespace.name``."""
    table_uuid: str
    manifest_lists: tuple[str, ...]
    reclaim_after: float

    def ripe(self, now: float) -> bool:
        return now >= self.reclaim_after


def reclaim_grace_s(properties: Mapping[str, str]) -> float:
    """The grace of a table: its ``lakegate.history.reclaim-grace-seconds``, else :data:`RECLAIM_GRACE_S`."""
    text = properties.get(RECLAIM_GRACE_PROPERTY)
    return max(float(text), 0.0) if text else RECLAIM_GRACE_S


def expired_snapshots(identifier: str, metadata: TableMetadata, snapshot_ids: Iterable[int]) -> ExpiredSnapshots | None:
    """What a commit built on ``metadata`` expires when it removes ``snapshot_ids`` (None: nothing).

    Strings only, so it costs the commit nothing; hand it on only once the commit succeeded.
    """
    ids = set(snapshot_ids)
    lists = tuple(s.manifest_list for s in metadata.snapshots if s.snapshot_id in ids)
    if not lists:
        return None
    grace = reclaim_grace_s(metadata.properties)
    return ExpiredSnapshots(identifier, str(metadata.table_uuid), lists, time.monotonic() + grace)


def expired_in_metadata_log(identifier: str, table: Table) -> ExpiredSnapshots | None:
    """The snapshots the metadata files in ``table``'s metadata log list and its current metadata does
    not (expired by its recent commits), with a full grace from now; None when there are none.

    Their files may have been reclaimed already (they then count as missing). A metadata file that is
    gone or unreadable is skipped: this only recovers what would otherwise leak.
    """
    current = {s.snapshot_id for s in table.metadata.snapshots}
    lists: dict[str, None] = {}
    for entry in table.metadata.metadata_log:
        try:
            old = FromInputFile.table_metadata(table.io.new_input(entry.metadata_file))
        except Exception as err:  # noqa: BLE001 - deleted after commit, or unreadable: nothing to recover
            log.debug("metadata file %s of %s not read: %s", entry.metadata_file, identifier, err)
            continue
        if old.table_uuid != table.metadata.table_uuid:
            continue
        lists.update((s.manifest_list, None) for s in old.snapshots if s.snapshot_id not in current)
    if not lists:
        return None
    grace = reclaim_grace_s(table.properties)
    return ExpiredSnapshots(identifier, str(table.metadata.table_uuid), tuple(lists), time.monotonic() + grace)


def expiries_to_json(expired: Iterable[ExpiredSnapshots], now: float | None = None) -> list[dict[str, Any]]:
    """Waiting expiries as JSON for a checkpoint's state: the grace left, not the clock reading."""
    now = time.monotonic() if now is None else now
    return [
        {
            "table": e.table,
            "table_uuid": e.table_uuid,
            "manifest_lists": list(e.manifest_lists),
            "grace_left_s": max(e.reclaim_after - now, 0.0),
        }
        for e in expired
    ]


def expiries_from_json(data: Iterable[Mapping[str, Any]], now: float | None = None) -> list[ExpiredSnapshots]:
    """Expiries from :func:`expiries_to_json`; the grace left is counted again from ``now`` (a restart
    only makes it longer)."""
    now = time.monotonic() if now is None else now
    return [
        ExpiredSnapshots(
            str(item["table"]),
            str(item["table_uuid"]),
            tuple(str(path) for path in item["manifest_lists"]),
            now + float(item["grace_left_s"]),
        )
        for item in data
    ]


@dataclass
class ReclaimResult:
    """What a reclaim deleted, and what it left (``deferred``: still within their grace)."""

    files: int = 0
    bytes: int = 0
    kept: int = 0
    """Candidates the current metadata still reaches (a data file a retained snapshot lists)."""
    missing: int = 0
    """Candidates already gone (reclaimed before, or a manifest list that no longer exists)."""
    tables: int = 0
    deferred: list[ExpiredSnapshots] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: ReclaimResult) -> None:
        """Add ``other``'s counts to these totals (``deferred`` is not carried)."""
        self.files += other.files
        self.bytes += other.bytes
        self.kept += other.kept
        self.missing += other.missing
        self.tables += other.tables
        self.errors += other.errors
        self.seconds += other.seconds


@dataclass
class _TableCache:
    """Contents of one table's manifest lists and manifests, by path: both are immutable once written."""

    lists: dict[str, tuple[ManifestFile, ...]] = field(default_factory=dict)
    live: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    """Manifest path -> (path, size) of every file its live (added or existing) entries reference."""

    def manifests(self, io: FileIO, manifest_list: str) -> tuple[ManifestFile, ...]:
        found = self.lists.get(manifest_list)
        if found is None:
            found = self.lists[manifest_list] = tuple(read_manifest_list(io.new_input(manifest_list)))
        return found

    def live_files(self, io: FileIO, manifest: ManifestFile) -> tuple[tuple[str, int], ...]:
        found = self.live.get(manifest.manifest_path)
        if found is None:
            entries = manifest.fetch_manifest_entry(io, discard_deleted=True)
            found = tuple((e.data_file.file_path, e.data_file.file_size_in_bytes) for e in entries)
            self.live[manifest.manifest_path] = found
        return found

    def keep_only(self, lists: set[str], manifests: set[str]) -> None:
        """Forget what the table no longer reaches (the cache stays as small as the table's metadata)."""
        self.lists = {k: v for k, v in self.lists.items() if k in lists}
        self.live = {k: v for k, v in self.live.items() if k in manifests}


def _key(path: str) -> _Key:
    """A path compared by scheme, authority and normalized path (``/a/b`` and ``file:///a/b`` are one file)."""
    parsed = urlparse(path)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return "file", "", posixpath.normpath(path)
    return parsed.scheme, parsed.netloc, posixpath.normpath(parsed.path or "/")


class Reclaimer:
    """Deletes the files of expired snapshots that the current metadata no longer reaches.

    One per process, long-lived: it caches manifest contents by path (reading the retained snapshots
    again costs nothing until they change) and forgets what a table no longer reaches.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._caches: dict[str, _TableCache] = {}

    def reclaim(self, expired: Iterable[ExpiredSnapshots], now: float | None = None) -> ReclaimResult:
        """Delete what the ripe ``expired`` snapshots alone referenced; the others come back as ``deferred``.

        A table whose current metadata cannot be read completely is left alone (reported in ``errors``):
        without the whole reachable set no file may go.
        """
        started = time.perf_counter()
        now = time.monotonic() if now is None else now
        result = ReclaimResult()
        ripe: dict[tuple[str, str], list[str]] = {}
        for item in expired:
            if item.ripe(now):
                ripe.setdefault((item.table, item.table_uuid), []).extend(item.manifest_lists)
            else:
                result.deferred.append(item)
        for (table, table_uuid), manifest_lists in ripe.items():
            try:
                self._reclaim_table(table, table_uuid, manifest_lists, result)
            except Exception as err:  # noqa: BLE001 - the files stay: a leak, never a wrong deletion
                log.warning("reclaim of %s's expired snapshots failed (their files stay): %s", table, err)
                result.errors.append(f"{table}: {type(err).__name__}: {err}")
        result.seconds = time.perf_counter() - started
        return result

    def _reclaim_table(self, name: str, table_uuid: str, manifest_lists: list[str], result: ReclaimResult) -> None:
        table = self.catalog.load_table(name)
        if str(table.metadata.table_uuid) != table_uuid:
            self._caches.pop(name, None)
            raise ValueError(f"{name} was replaced by another table (uuid {table.metadata.table_uuid})")
        io = table.io
        cache = self._caches.setdefault(name, _TableCache())
        result.tables += 1

        # Everything the current metadata reaches; a read failing here raises: nothing may go then.
        reachable: set[_Key] = set()
        reachable_lists: set[str] = set()
        reachable_manifests: set[str] = set()
        for snapshot in table.metadata.snapshots:
            reachable_lists.add(snapshot.manifest_list)
            for manifest in cache.manifests(io, snapshot.manifest_list):
                reachable_manifests.add(manifest.manifest_path)
                reachable.update(_key(path) for path, _ in cache.live_files(io, manifest))
        reachable.update(_key(path) for path in reachable_lists | reachable_manifests)

        # The candidates: what the expired snapshots referenced, by kind, with sizes where the metadata has them.
        data: dict[str, int] = {}
        manifests: dict[str, int] = {}
        lists: dict[str, int] = {}
        for manifest_list in dict.fromkeys(manifest_lists):
            try:
                listed = cache.manifests(io, manifest_list)
                lists[manifest_list] = len(io.new_input(manifest_list))
            except FileNotFoundError:
                result.missing += 1  # reclaimed already; its manifests went with an earlier list
                continue
            for manifest in listed:
                manifests[manifest.manifest_path] = manifest.manifest_length
                try:
                    data.update(cache.live_files(io, manifest))
                except FileNotFoundError:
                    continue  # deleted by an earlier reclaim, after the data files it listed

        root = _key(table.location())
        for paths in (data, manifests, lists):  # data files first, manifest lists last
            for path, size in paths.items():
                key = _key(path)
                if key in reachable or key[:2] != root[:2] or not key[2].startswith(root[2].rstrip("/") + "/"):
                    result.kept += 1
                    continue
                try:
                    io.delete(path)
                except FileNotFoundError:
                    result.missing += 1
                    continue
                result.files += 1
                result.bytes += size
        cache.keep_only(reachable_lists, reachable_manifests)
