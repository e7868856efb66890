"""Mirror compactions and file reclaims in a child process: its own interpreter, so rewriting a 1M-row
mirror competes with the checkpoint loop for CPU only, not for the GIL.

Measured under unthrottled pgbench (2 cores, ``bench/cdc.py --seconds 120``): on a thread of the pipeline
process, a ``pgbench_accounts`` compaction (6-9 s, every ~17 s) pushed the end-to-end lag p99 of those
spans from 1.9 to 2.4 s and more. The child dies with the pipeline (``PR_SET_PDEATHSIG``), so a killed
pipeline never leaves an orphan compactor racing its successor on the same mirror; compaction itself
is idempotent and crash-safe (``sinks/cdc.compact_mirror``).

Two kinds of task travel on the pipe: :class:`CompactTask` (answered with a ``CompactionResult``) and
:class:`ReclaimTask` (the files of expired snapshots, ``sinks/reclaim.py``; answered with a
``ReclaimResult``); a failure comes back as its text. The parent waits for an answer a bounded time
(:func:`compaction_timeout_s`, :data:`RECLAIM_TIMEOUT_S`): a child that does not answer is killed and
replaced, and the task fails with ``TransientError`` (a compaction killed before its commit leaves the
old mirror; a reclaim killed half-way leaves only files nothing references).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from lakegate.core.config import CatalogSpec
from lakegate.core.errors import TransientError
from lakegate.sinks.cdc import CompactionResult
from lakegate.sinks.reclaim import ExpiredSnapshots, ReclaimResult

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
FAULT_STEP = "compact_before_commit"
HANG_STEP = "compact_hang"
"""Test-only fault (``LAKEGATE_FAULT=compact_hang``): the child stops answering before the commit."""
COMPACTOR_NICE = 10
BASE_TIMEOUT_S = 120.0
"""Least time a compaction is given: opening the tables and the commit's retries under load."""
SLOWEST_ROWS_PER_S = 10_000.0
"""Rows per second below which a compaction counts as hung: 1M mirror rows + 50,000 changes merge in
2.5-3 s on 2 shared cores (~400,000 rows/s, ``bench/cdc_mirror.py``), so 40 times slower than that."""
RECLAIM_TIMEOUT_S = 120.0
"""A reclaim reads a few manifests and deletes files: well under a second when healthy."""


def compaction_timeout_s(rows: int) -> float:
    """How long a compaction of a mirror with ``rows`` rows (mirror + changes) may take before it is
    deemed hung: the work grows with the rows read, merged and written."""
    return BASE_TIMEOUT_S + max(rows, 0) / SLOWEST_ROWS_PER_S


@dataclass(frozen=True)
class CompactTask:
    """Compact mirror ``table`` (keyed by ``key``)."""

    table: str
    key: list[str]


@dataclass(frozen=True)
class ReclaimTask:
    """Delete the files only these expired snapshots referenced (``sinks/reclaim.Reclaimer``)."""

    expired: tuple[ExpiredSnapshots, ...]


class CompactionWorker:
    """One long-lived child process that runs the tasks it is sent, one at a time."""

    def __init__(self, catalog: CatalogSpec, data_dir: Path, namespace: str) -> None:
        self._args = (catalog, data_dir, namespace)
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, *self._args, os.getpid()),
            name="lakegate-compactor",
            daemon=True,
        )
        self._process.start()
        child.close()

    def _restart(self) -> None:
        """Kill the child (hung) and start a new one for the next task.

        The new child's ``PR_SET_PDEATHSIG`` is bound to the calling *thread*: restarted from a thread
        that then ends, it dies with it, and its owner starts another (``runtime/cdc.Compactor.kick``).
        """
        if self._process.is_alive():
            self._process.kill()
        self._process.join(10.0)
        self._connection.close()
        self._start()

    def compact(self, table: str, key: list[str], *, rows: int = 0, timeout_s: float | None = None) -> CompactionResult:
        """Compact mirror ``table`` in the child and return what it did; ``rows`` (mirror + changes, as far
        as the caller knows) sets the time it may take (:func:`compaction_timeout_s`) unless ``timeout_s``.

        Raises:
            TransientError: the child died, did not answer in time (it is killed and replaced), or the
                compaction failed; the old mirror stands.
        """
        timeout = compaction_timeout_s(rows) if timeout_s is None else timeout_s
        answer = self._ask(CompactTask(table, list(key)), f"compaction of {table}", timeout)
        if isinstance(answer, CompactionResult):
            return answer
        raise TransientError(f"compaction of {table} failed: {answer}")

    def reclaim(self, expired: Sequence[ExpiredSnapshots], *, timeout_s: float = RECLAIM_TIMEOUT_S) -> ReclaimResult:
        """Delete in the child the files only ``expired`` referenced (those past their grace).

        Raises:
            TransientError: the child died or did not answer in time (killed and replaced); files stay.
        """
        answer = self._ask(ReclaimTask(tuple(expired)), "reclaim", timeout_s)
        if isinstance(answer, ReclaimResult):
            return answer
        raise TransientError(f"reclaim failed: {answer}")

    def _ask(self, task: CompactTask | ReclaimTask, what: str, timeout_s: float) -> Any:
        started = time.monotonic()
        try:
            self._connection.send(task)
            if not self._connection.poll(timeout_s):
                pid = self._process.pid
                self._restart()
                raise TransientError(
                    f"{what} did not finish in {timeout_s:.0f}s: compaction process {pid} killed and replaced"
                )
            return self._connection.recv()
        except (EOFError, OSError) as err:
            raise TransientError(
                f"the compaction process died during {what} after {time.monotonic() - started:.1f}s"
                f" (exit {self._process.exitcode})"
            ) from err

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        try:
            self._connection.send(None)
        except (OSError, ValueError):
            pass
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        self._connection.close()


def _die_with(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("no PR_SET_PDEATHSIG here: the compactor may outlive a killed pipeline")
    if os.getppid() != parent:
        os._exit(1)


def _crash_pipeline_at(step: str) -> None:
    """The fault hook inside the child: a crash of *the pipeline* at this step kills both processes."""
    from lakegate.runtime.faults import fault_fires

    if fault_fires(step):
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _before_commit() -> None:
    """Fault hooks between a compaction's files and its commit: a hang (tests) or a crash."""
    from lakegate.runtime.faults import fault_fires

    if fault_fires(HANG_STEP):
        while True:
            time.sleep(3600)
    _crash_pipeline_at(FAULT_STEP)


def _serve(connection: Connection, catalog: CatalogSpec, data_dir: Path, namespace: str, parent: int) -> None:
    _die_with(parent)
    os.nice(COMPACTOR_NICE)  # maintenance yields the CPU to the checkpoint loop (no GIL to invert here)
    from lakegate.core.memory import keep_freed_memory, release_freed_memory
    from lakegate.sinks.catalog import open_catalog
    from lakegate.sinks.cdc import compact_mirror
    from lakegate.sinks.reclaim import Reclaimer
    from lakegate.sinks.tables import TableManager

    keep_freed_memory()
    tables = TableManager(open_catalog(catalog, data_dir), namespace)
    reclaimer = Reclaimer(tables.catalog)
    while True:
        try:
            task = connection.recv()
        except EOFError:
            return
        if task is None:
            return
        answer: CompactionResult | ReclaimResult
        try:
            if isinstance(task, ReclaimTask):
                answer = reclaimer.reclaim(task.expired)
            else:
                answer = compact_mirror(tables, task.table, task.key, before_commit=_before_commit)
        except Exception as err:  # noqa: BLE001 - reported to the parent, which logs and retries later
            connection.send(f"{type(err).__name__}: {err}")
            continue
        connection.send(answer)
        release_freed_memory()  # idle until the next task: keep nothing of this one's arrays
