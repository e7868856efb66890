"""The allocator setting every lakegate command applies: big freed arrays are reused, not re-faulted."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from lakegate.core.memory import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
x = np.arange(5_000_000)
y = x * 2  # the first big temporary is faulted in either way
del y
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    y = x * 2  # 40 MB, above glibc's largest automatic mmap threshold
    del y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_big_arrays_are_reused_instead_of_faulted_in_again() -> None:
    default, kept = _faults("default"), _faults("keep")
    # each 40 MB array is mapped afresh by default (numpy asks for huge pages: ~500 faults a time)
    assert default > 20 * 200, default
    assert kept < default / 10, (default, kept)


RELEASE_PROBE = """
import numpy as np
from lakegate.core.memory import keep_freed_memory, release_freed_memory

def rss_mb():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) // 1024

keep_freed_memory()
arrays = [np.ones(5_000_000) for _ in range(10)]  # 400 MB
held = rss_mb()
del arrays
kept = rss_mb()
release_freed_memory()
print(held, kept, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_hands_kept_memory_back() -> None:
    """An idle process (the compaction process between jobs) gives back what keep_freed_memory kept."""
    done = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, check=True)
    held, kept, released = (int(v) for v in done.stdout.split())
    assert kept > held - 100, (held, kept)  # freed, but kept by the heap
    assert released < kept - 300, (kept, released)
