"""Step 4 of the checkpoint protocol: one idempotent Iceberg commit per table.

A commit carries ``lakegate.pipeline``, ``lakegate.checkpoint-id`` and ``lakegate.source-positions``
in its snapshot summary. A table whose newest snapshot *from this pipeline* already carries a
checkpoint id >= n is skipped, so retrying a half-finished checkpoint after a crash never appends a
file twice, and other pipelines' snapshots on the same table never hide ours.

The commit is a fast append of entries built from the footers the writer kept (no data file is
opened again). It may start from the table object the previous checkpoint left current
(``refresh=False``): the append requires the branch head it was built on, which the catalog checks
against the current metadata, so a commit on stale metadata is refused, and only then is the table
reloaded and the skip rule asked again.

Snapshot expiry: a table with the ``lakegate.history.keep-snapshots`` property (the CDC tables, which
take a commit every checkpoint) drops its older snapshots inside a checkpoint's own commit, so its
metadata, and with it the cost of every commit and every read, stays bounded. Never dropped: the
newest ``keep`` snapshots, the newest snapshot of every pipeline (the skip rule above), the newest
carrying each of :data:`NEWEST_KEPT_PROPERTIES` (a mirror's compaction watermark), branch and tag
heads. Expiry drops snapshots from the metadata only: the commit returns the expired snapshots'
manifest lists (:class:`~lakegate.sinks.reclaim.ExpiredSnapshots`, strings, no I/O here) and
``sinks/reclaim.py`` deletes the files only they referenced later, off the checkpoint loop, after a
grace that lets readers bound to the older metadata finish.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pyarrow import fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    PyArrowFileIO,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_file_to_data_file,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestEntry,
    ManifestEntryStatus,
    write_manifest,
    write_manifest_list,
)
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import MAIN_BRANCH, SnapshotRefType
from pyiceberg.table.snapshots import (
    Operation,
    Snapshot,
    SnapshotSummaryCollector,
    Summary,
    update_snapshot_summaries,
)
from pyiceberg.table.update import (
    AddSnapshotUpdate,
    AssertRefSnapshotId,
    AssertTableUUID,
    RemoveSnapshotsUpdate,
    SetPropertiesUpdate,
    SetSnapshotRefUpdate,
    TableUpdate,
)
from pyiceberg.table.update.snapshot import ExpireSnapshots

from lakegate.core.errors import TransientError
from lakegate.sinks.reclaim import ExpiredSnapshots, expired_snapshots
from lakegate.sinks.writer import WrittenFile, data_file_prefix

log = logging.getLogger(__name__)

PIPELINE_PROPERTY = "lakegate.pipeline"
CHECKPOINT_PROPERTY = "lakegate.checkpoint-id"
POSITIONS_PROPERTY = "lakegate.source-positions"
WATERMARK_PROPERTY = "lakegate.cdc.watermark"
"""A mirror's compaction watermark (``sinks/cdc.py``), read from the newest snapshot carrying it."""
KEEP_SNAPSHOTS_PROPERTY = "lakegate.history.keep-snapshots"
"""Table property: how many of the newest snapshots expiry keeps besides the protected ones (unset: all)."""
NEWEST_KEPT_PROPERTIES = (CHECKPOINT_PROPERTY, WATERMARK_PROPERTY)
"""Summary properties whose newest carrier is never expired (they are read by walking the history)."""
EXPIRE_BATCH = 10
"""Expire once this many snapshots are expirable, so most commits carry no removal at all."""

CommitOutcome = Literal["committed", "skipped"]


@dataclass(frozen=True)
class CommitResult:
    """What :func:`commit_checkpoint` did, and the snapshots its commit expired (their files are to reclaim)."""

    outcome: CommitOutcome
    expired: ExpiredSnapshots | None = None


def newest_first(metadata: TableMetadata) -> list[Snapshot]:
    """The table's snapshots, newest first (by sequence number, then time)."""
    return sorted(metadata.snapshots, key=lambda s: (s.sequence_number or 0, s.timestamp_ms), reverse=True)


def last_committed_checkpoint(table: Table, pipeline: str) -> int:
    """The checkpoint id of the newest snapshot this pipeline committed to ``table`` (0 if none)."""
    for snapshot in newest_first(table.metadata):
        summary = snapshot.summary
        if summary is not None and summary.get(PIPELINE_PROPERTY) == pipeline:
            return int(summary.get(CHECKPOINT_PROPERTY) or 0)
    return 0


# -- snapshot expiry ------------------------------------------------------------------------------


def keep_snapshots(table: Table) -> int | None:
    """The table's ``lakegate.history.keep-snapshots`` (None: every snapshot is kept)."""
    text = table.properties.get(KEEP_SNAPSHOTS_PROPERTY)
    return max(int(text), 1) if text else None


def expirable_snapshots(metadata: TableMetadata, keep: int) -> list[int]:
    """Ids of the snapshots expiry may drop: all but the newest ``keep``, the newest of every pipeline,
    the newest carrying each of :data:`NEWEST_KEPT_PROPERTIES`, and branch and tag heads."""
    ordered = newest_first(metadata)
    protected = {s.snapshot_id for s in ordered[:keep]} | {ref.snapshot_id for ref in metadata.refs.values()}
    pipelines: set[str] = set()
    markers: set[str] = set()
    for snapshot in ordered:
        summary = snapshot.summary
        if summary is None:
            continue
        pipeline = summary.get(PIPELINE_PROPERTY)
        if pipeline is not None and pipeline not in pipelines:
            pipelines.add(pipeline)
            protected.add(snapshot.snapshot_id)
        for marker in NEWEST_KEPT_PROPERTIES:
            if marker not in markers and summary.get(marker) is not None:
                markers.add(marker)
                protected.add(snapshot.snapshot_id)
    return [s.snapshot_id for s in ordered if s.snapshot_id not in protected]


class _ExpireChosen(ExpireSnapshots):
    """pyiceberg's expiry of snapshots chosen up front (its ``by_ids`` copies the whole table metadata
    twice per id; this stages them all at once, still sparing branch and tag heads)."""

    def choose(self, snapshot_ids: Iterable[int]) -> _ExpireChosen:
        self._snapshot_ids_to_expire.update(snapshot_ids)
        return self


def stage_expiry(txn: Transaction, metadata: TableMetadata, keep: int | None, batch: int = EXPIRE_BATCH) -> list[int]:
    """Stage in ``txn`` the expiry of the snapshots of ``metadata`` (the transaction's base) that may
    go, once there are at least ``batch`` of them; returns their ids."""
    if keep is None:
        return []
    expired = expirable_snapshots(metadata, keep)
    if len(expired) < max(batch, 1):
        return []
    _ExpireChosen(txn).choose(expired).commit()
    return expired


# -- the commit -----------------------------------------------------------------------------------


def data_files_of(
    io: FileIO, metadata: TableMetadata, paths: Sequence[str], written: Mapping[str, WrittenFile]
) -> list[DataFile]:
    """Iceberg entries for ``paths``: from the footers their writer kept, else by reading each footer."""
    schema = metadata.schema()
    statistics_plan = compute_statistics_plan(schema, metadata.properties)
    column_ids = parquet_path_to_id_mapping(schema)
    spec = metadata.spec()
    entries = []
    for path in paths:
        known = written.get(path)
        if known is None:  # recovery: the writer's footers died with the crashed process
            entries.append(parquet_file_to_data_file(io, metadata, path))
            continue
        statistics = data_file_statistics_from_parquet_metadata(known.footer, statistics_plan, column_ids)
        entries.append(
            DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=statistics.partition(spec, schema),
                file_size_in_bytes=known.size,
                sort_order_id=None,
                spec_id=metadata.default_spec_id,
                equality_ids=None,
                key_metadata=None,
                **statistics.to_serialized_dict(),
            )
        )
    return entries


def _fast_append(
    table: Table, files: Sequence[str], properties: dict[str, str], written: Mapping[str, WrittenFile]
) -> ExpiredSnapshots | None:
    """One catalog commit: a manifest of ``files``, a manifest list, the snapshot on ``main`` and, when
    due, the expiry of old snapshots (returned once committed).

    What pyiceberg's ``Transaction.add_files`` does, built once from ``table.metadata``: its snapshot
    producer re-applies and deep-copies the whole table metadata a dozen times per commit, which was
    most of a checkpoint's commit time (v1/v2 tables; newer formats take pyiceberg's own path).
    """
    metadata = table.metadata
    identifier = ".".join(table.name())
    entries = data_files_of(table.io, metadata, files, written)
    if metadata.format_version > 2:
        with table.transaction() as txn:
            with txn.update_snapshot(snapshot_properties=properties).fast_append() as append:
                for entry in entries:
                    append.append_data_file(entry)
            expiry = expired_snapshots(identifier, metadata, stage_expiry(txn, metadata, keep_snapshots(table)))
        return expiry
    snapshot_id = metadata.new_snapshot_id()
    parent = metadata.snapshot_by_name(MAIN_BRANCH)
    commit_uuid = uuid.uuid4()
    compression = metadata.properties.get(
        TableProperties.WRITE_AVRO_COMPRESSION, TableProperties.WRITE_AVRO_COMPRESSION_DEFAULT
    )
    locations = table.location_provider()
    schema, spec = metadata.schema(), metadata.spec()
    written_paths: list[str] = []
    committing = False
    try:
        manifest_path = locations.new_metadata_location(f"{commit_uuid}-m0.avro")
        written_paths.append(manifest_path)
        with write_manifest(
            format_version=metadata.format_version,
            spec=spec,
            schema=schema,
            output_file=table.io.new_output(manifest_path),
            snapshot_id=snapshot_id,
            avro_compression=compression,  # type: ignore[arg-type]
        ) as manifest:
            for entry in entries:
                manifest.add(
                    ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=snapshot_id, data_file=entry)
                )
        manifests = [manifest.to_manifest_file()]
        if parent is not None:  # a fast append keeps every manifest of the parent as it is
            manifests += [m for m in parent.manifests(table.io) if m.has_added_files() or m.has_existing_files()]
        collector = SnapshotSummaryCollector(
            partition_summary_limit=int(
                metadata.properties.get(
                    TableProperties.WRITE_PARTITION_SUMMARY_LIMIT, TableProperties.WRITE_PARTITION_SUMMARY_LIMIT_DEFAULT
                )
            )
        )
        for entry in entries:
            collector.add_file(entry, schema=schema, partition_spec=spec)
        summary = update_snapshot_summaries(
            Summary(operation=Operation.APPEND, **collector.build(), **properties),
            previous_summary=parent.summary if parent is not None else None,
        )
        sequence_number = metadata.next_sequence_number()
        list_path = locations.new_metadata_location(f"snap-{snapshot_id}-0-{commit_uuid}.avro")
        written_paths.append(list_path)
        with write_manifest_list(
            format_version=metadata.format_version,
            output_file=table.io.new_output(list_path),
            snapshot_id=snapshot_id,
            parent_snapshot_id=parent.snapshot_id if parent else None,
            sequence_number=sequence_number,
            avro_compression=compression,  # type: ignore[arg-type]
        ) as manifest_list:
            manifest_list.add_manifests(manifests)
        # pyiceberg's pydantic models take field names; without the pydantic plugin mypy sees only aliases.
        snapshot = Snapshot(  # type: ignore[call-arg]
            snapshot_id=snapshot_id,
            parent_snapshot_id=parent.snapshot_id if parent else None,
            manifest_list=list_path,
            sequence_number=sequence_number,
            summary=summary,
            schema_id=metadata.current_schema_id,
        )
        updates: list[TableUpdate] = []
        if metadata.name_mapping() is None:  # what add_files did: readers can map files without field ids
            mapping = schema.name_mapping.model_dump_json()
            updates.append(SetPropertiesUpdate(updates={TableProperties.DEFAULT_NAME_MAPPING: mapping}))
        updates += [
            AddSnapshotUpdate(snapshot=snapshot),
            SetSnapshotRefUpdate(  # type: ignore[call-arg]
                snapshot_id=snapshot_id,
                parent_snapshot_id=parent.snapshot_id if parent else None,
                ref_name=MAIN_BRANCH,
                type=SnapshotRefType.BRANCH,
            ),
        ]
        keep = keep_snapshots(table)
        expired = expirable_snapshots(metadata, keep) if keep is not None else []
        if len(expired) < EXPIRE_BATCH:
            expired = []
        if expired:
            updates.append(RemoveSnapshotsUpdate(snapshot_ids=expired))  # type: ignore[call-arg]
        expiry = expired_snapshots(identifier, metadata, expired)
        requirements = (
            AssertTableUUID(uuid=metadata.table_uuid),
            AssertRefSnapshotId(snapshot_id=parent.snapshot_id if parent else None, ref=MAIN_BRANCH),  # type: ignore[call-arg]
        )
        committing = True
        # pyiceberg's commit tail: the catalog commit, then table.metadata updated and old metadata files pruned.
        table._do_commit(updates=tuple(updates), requirements=requirements)  # noqa: SLF001
        return expiry
    except CommitFailedException:  # the catalog refused the commit: nothing references these files
        _delete_quietly(table, written_paths)
        raise
    except BaseException:
        if not committing:  # failed before the catalog saw anything; after that the outcome is unknown
            _delete_quietly(table, written_paths)
        raise


def _delete_quietly(table: Table, paths: list[str]) -> None:
    for path in paths:
        try:
            table.io.delete(path)
        except OSError:
            pass


def commit_checkpoint(
    table: Table,
    files: list[str],
    *,
    pipeline: str,
    checkpoint_id: int,
    source_positions: str,
    written: Mapping[str, WrittenFile] | None = None,
    refresh: bool = True,
    attempts: int = 20,
) -> CommitResult:
    """Append pre-written data files to ``table`` as checkpoint ``checkpoint_id``, once.

    ``written`` holds the footers the writer kept (by path); files without one are read. With
    ``refresh=False`` the first attempt trusts ``table`` as the caller left it (see the module doc).
    The result names the snapshots the commit expired, whose files the caller hands to reclaim.

    Raises:
        TransientError: the catalog kept refusing the commit after ``attempts`` tries.
    """
    properties = {
        PIPELINE_PROPERTY: pipeline,
        CHECKPOINT_PROPERTY: str(checkpoint_id),
        POSITIONS_PROPERTY: source_positions,
    }
    last_error: Exception | None = None
    for attempt in range(attempts):
        if refresh or attempt:
            table.refresh()
        if last_committed_checkpoint(table, pipeline) >= checkpoint_id:
            return CommitResult("skipped")
        try:
            return CommitResult("committed", _fast_append(table, files, properties, written or {}))
        except CommitFailedException as err:
            last_error = err
        except ValueError as err:  # a concurrent expiry removed a snapshot this one meant to remove
            if "does not exist" not in str(err):
                raise
            last_error = err
        except Exception as err:  # SQLite "database is locked" and other catalog hiccups
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            last_error = err
        delay = min(0.05 * 2**attempt, 2.0) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter only
        log.info("commit of %s checkpoint %d conflicted; retrying in %.2fs", table.name(), checkpoint_id, delay)
        time.sleep(delay)
    raise TransientError(
        f"could not commit checkpoint {checkpoint_id} to {'.'.join(table.name())}: {last_error}"
    ) from last_error


def delete_stray_files(table: Table, pipeline: str, after_checkpoint: int) -> list[str]:
    """Delete this pipeline's data files for checkpoints > ``after_checkpoint`` that no record names.

    A crash between writing data files (step 2) and persisting the pending record (step 3) leaves
    files nobody will commit; recovery removes them so no data file stays unreferenced.
    """
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        return []
    location = f"{table.location().rstrip('/')}/data"
    scheme, netloc, path = PyArrowFileIO.parse_location(location, io.properties)
    filesystem = io.fs_by_scheme(scheme, netloc)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    except OSError:
        return []
    prefix = f"lg-{pipeline}-"
    removed = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.startswith(prefix):
            continue
        checkpoint_text = info.base_name[len(prefix) : len(prefix) + 12]
        if checkpoint_text.isdigit() and int(checkpoint_text) > after_checkpoint:
            assert info.base_name.startswith(data_file_prefix(pipeline, int(checkpoint_text)))
            filesystem.delete_file(info.path)
            removed.append(info.path)
    return removed
