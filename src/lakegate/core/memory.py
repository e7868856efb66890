"""Allocator settings for a lakegate process.

The hot path makes many short-lived arrays of tens of megabytes (a 5M-row column of int64 is 40 MB).
glibc serves each allocation above its mmap threshold (at most 32 MB) with a fresh mapping and unmaps
it on free, so every such array is faulted in page by page again: measured on a 5M-row contract check,
a quarter of the time went to the kernel. Raising the threshold keeps freed blocks in the heap for the
next batch, as a JVM keeps its heap. Peak memory is unchanged; memory is handed back to the system
only above ``keep_bytes`` of free heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_KEEP_BYTES = 1 << 30
_applied: list[int] = []


def _libc() -> ctypes.CDLL | None:
    """The C library (glibc's allocator calls), or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory(keep_bytes: int = DEFAULT_KEEP_BYTES) -> bool:
    """Serve allocations up to ``keep_bytes`` from the heap and keep up to that much freed memory.

    Process-wide and idempotent; a no-op (False) where the C library is not glibc.
    """
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(int(keep_bytes), 2**31 - 1)
    applied = mallopt(M_MMAP_THRESHOLD, keep) == 1 and mallopt(M_TRIM_THRESHOLD, keep) == 1
    if applied:
        _applied.append(keep)
    else:
        log.debug("mallopt refused the allocator settings; keeping the C library's defaults")
    return applied


def release_freed_memory() -> None:
    """Hand the freed memory this process keeps back to the system (glibc's heap and Arrow's pool).

    For a process that goes idle between big jobs (the compaction process): what it keeps for the next
    job would otherwise sit unused between them.
    """
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass
    if not sys.platform.startswith("linux"):
        return
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is None:
        log.debug("malloc_trim is not available; freed memory stays with the process")
        return
    malloc_trim(0)
