"""Mirror compactions in a child process: its own interpreter, so rewriting a 1M-row mirror competes
with the checkpoint loop for CPU only, not for the GIL.

Measured under unthrottled pgbench (2 cores, ``bench/cdc.py --seconds 120``): on a thread of the pipeline
process, a ``pgbench_accounts`` compaction (6-9 s, every ~17 s) pushed the end-to-end lag p99 of those
spans from 1.9 to 2.4 s and more. The child dies with the pipeline (``PR_SET_PDEATHSIG``), so a killed
pipeline never leaves an orphan compactor racing its successor on the same mirror; compaction itself
is idempotent and crash-safe (``sinks/cdc.compact_mirror``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from lakegate.core.config import CatalogSpec
from lakegate.core.errors import TransientError
from lakegate.sinks.cdc import CompactionResult

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
FAULT_STEP = "compact_before_commit"
COMPACTOR_NICE = 10


class CompactionWorker:
    """One long-lived child process that compacts the mirrors it is sent, one at a time."""

    def __init__(self, catalog: CatalogSpec, data_dir: Path, namespace: str) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, catalog, data_dir, namespace, os.getpid()),
            name="lakegate-compactor",
            daemon=True,
        )
        self._process.start()
        child.close()

    def compact(self, table: str, key: list[str]) -> CompactionResult:
        """Compact mirror ``table`` in the child and return what it did.

        Raises:
            TransientError: the child died or the compaction failed (the old mirror stands).
        """
        try:
            self._connection.send((table, key))
            answer: Any = self._connection.recv()
        except (EOFError, OSError) as err:
            raise TransientError(f"the compaction process of {table} died (exit {self._process.exitcode})") from err
        if isinstance(answer, CompactionResult):
            return answer
        raise TransientError(f"compaction of {table} failed: {answer}")

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


def _serve(connection: Connection, catalog: CatalogSpec, data_dir: Path, namespace: str, parent: int) -> None:
    _die_with(parent)
    os.nice(COMPACTOR_NICE)  # maintenance yields the CPU to the checkpoint loop (no GIL to invert here)
    from lakegate.core.memory import keep_freed_memory
    from lakegate.sinks.catalog import open_catalog
    from lakegate.sinks.cdc import compact_mirror
    from lakegate.sinks.tables import TableManager

    keep_freed_memory()
    tables = TableManager(open_catalog(catalog, data_dir), namespace)
    while True:
        try:
            task = connection.recv()
        except EOFError:
            return
        if task is None:
            return
        table, key = task
        try:
            result = compact_mirror(tables, table, key, before_commit=lambda: _crash_pipeline_at(FAULT_STEP))
        except Exception as err:  # noqa: BLE001 - reported to the parent, which logs and retries later
            connection.send(f"{type(err).__name__}: {err}")
            continue
        connection.send(result)
