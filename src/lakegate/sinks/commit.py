"""Step 4 of the checkpoint protocol: one idempotent Iceberg commit per table.

A commit carries ``lakegate.pipeline``, ``lakegate.checkpoint-id`` and ``lakegate.source-positions``
in its snapshot summary. A table whose newest snapshot *from this pipeline* already carries a
checkpoint id >= n is skipped, so retrying a half-finished checkpoint after a crash never appends a
file twice, and other pipelines' snapshots on the same table never hide ours.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Literal

from pyarrow import fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from lakegate.core.errors import TransientError
from lakegate.sinks.writer import data_file_prefix

log = logging.getLogger(__name__)

PIPELINE_PROPERTY = "lakegate.pipeline"
CHECKPOINT_PROPERTY = "lakegate.checkpoint-id"
POSITIONS_PROPERTY = "lakegate.source-positions"

CommitOutcome = Literal["committed", "skipped"]


def last_committed_checkpoint(table: Table, pipeline: str) -> int:
    """The checkpoint id of the newest snapshot this pipeline committed to ``table`` (0 if none)."""
    snapshots = sorted(
        table.metadata.snapshots,
        key=lambda s: (s.sequence_number or 0, s.timestamp_ms),
        reverse=True,
    )
    for snapshot in snapshots:
        summary = snapshot.summary
        if summary is not None and summary.get(PIPELINE_PROPERTY) == pipeline:
            return int(summary.get(CHECKPOINT_PROPERTY) or 0)
    return 0


def commit_checkpoint(
    table: Table,
    files: list[str],
    *,
    pipeline: str,
    checkpoint_id: int,
    source_positions: str,
    attempts: int = 20,
) -> CommitOutcome:
    """Append pre-written data files to ``table`` as checkpoint ``checkpoint_id``, once.

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
        table.refresh()
        if last_committed_checkpoint(table, pipeline) >= checkpoint_id:
            return "skipped"
        try:
            with table.transaction() as txn:
                # Duplicate detection scans every manifest; the checkpoint id already makes this
                # commit idempotent, so skip that per-commit cost.
                txn.add_files(files, snapshot_properties=properties, check_duplicate_files=False)
            return "committed"
        except CommitFailedException as err:
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
