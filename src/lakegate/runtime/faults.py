"""Fault injection for crash tests: SIGKILL the process at a named step of the checkpoint protocol.

``LAKEGATE_FAULT=after_pending`` kills at the first time the step is reached; ``after_pending@3`` at
the third. Unset in production, where ``maybe_crash`` is a dictionary look-up.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

PROTOCOL_STEPS = (
    "after_write",  # data files written, no pending record yet
    "after_pending",  # pending record persisted, no table committed
    "mid_commit",  # the first table committed, the others not
    "after_commit",  # every table committed, checkpoint not marked
    "after_mark",  # marked committed, sources not acknowledged
    "after_ack",  # the whole protocol done
)
"""The checkpoint protocol's steps (runtime/checkpoint.py)."""
STEPS = (
    *PROTOCOL_STEPS,
    "compact_before_commit",  # CDC mirror compaction: files written, mirror snapshot not committed
)

_seen: Counter[str] = Counter()


def fault_fires(step: str) -> bool:
    """Whether ``LAKEGATE_FAULT`` names this step and this is the occurrence it names."""
    wanted = os.environ.get("LAKEGATE_FAULT")
    if not wanted:
        return False
    name, _, occurrence = wanted.partition("@")
    if name != step:
        return False
    _seen[step] += 1
    return _seen[step] >= int(occurrence or 1)


def maybe_crash(step: str) -> None:
    """Kill this process with SIGKILL if ``LAKEGATE_FAULT`` names this step (and occurrence)."""
    if fault_fires(step):
        os.kill(os.getpid(), signal.SIGKILL)
