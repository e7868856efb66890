"""Event time, watermark and late labels.

The event-time column is typed ``timestamp[us, UTC]`` by :mod:`lakegate.normalize.types`: ISO text
with an offset, naive values in the configured zone (:func:`localize`), epoch numbers by magnitude
(:func:`epoch_to_timestamp`). This module turns it into the watermark: the largest event time seen
so far minus the allowed out-of-orderness. A row is late when its event time is below the watermark
as it stood when the row arrived; within a batch the running maximum comes from
``np.maximum.accumulate`` seeded with the state's maximum.

Only aware datetimes appear here: event times are integers (microseconds since the epoch, UTC) or
``datetime`` objects with ``tzinfo=UTC``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.config import EventTimeSpec
from lakegate.core.types import TIMESTAMP
from lakegate.normalize.flatten import SEPARATOR

_NO_EVENT = np.iinfo(np.int64).min
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_field(spec: EventTimeSpec) -> str:
    """The flattened column name of the event-time field (``meta.ts`` and ``meta__ts`` both work)."""
    return spec.field.replace(".", SEPARATOR)


def localize(naive: pa.Array, zone: str) -> pa.Array:
    """Naive timestamps read as wall-clock time in ``zone``, as timestamp[us, UTC]."""
    naive = pc.cast(naive, pa.timestamp("us"), safe=False)
    if zone == "UTC":
        return pc.cast(naive, TIMESTAMP)
    aware = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="latest")
    return pc.cast(aware, TIMESTAMP)


def epoch_to_timestamp(arr: pa.Array) -> pa.Array:
    """Epoch numbers as timestamp[us, UTC]: seconds, ms, us or ns chosen by each value's magnitude."""
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(arr.type):
        v = pc.cast(arr, pa.int64(), safe=False).fill_null(0).to_numpy()
        a = np.abs(v)
        us = np.select([a < 10**11, a < 10**14, a < 10**17], [v * 1_000_000, v * 1000, v], v // 1000)
    else:
        f = pc.cast(arr, pa.float64(), safe=False).fill_null(0.0).to_numpy()
        valid &= np.isfinite(f)
        f = np.where(valid, f, 0.0)
        a = np.abs(f)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = f * np.select([a < 1e11, a < 1e14, a < 1e17], [1e6, 1e3, 1.0], 1e-3)
        valid &= np.abs(scaled) < 2.0**63
        us = np.round(np.where(valid, scaled, 0.0)).astype(np.int64)
    return pa.array(us, type=TIMESTAMP, mask=~valid)


def to_datetime(micros: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=micros)


def micros(events: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A ``timestamp[us, UTC]`` array as (int64 microseconds, present mask); nulls read as 0."""
    present = np.asarray(events.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = events.cast(pa.int64()).fill_null(0).to_numpy()
    return values, present


def late_labels(
    events_us: np.ndarray, present: np.ndarray, seed_max_us: int | None, out_of_orderness_us: int
) -> tuple[np.ndarray, int | None]:
    """Label late rows and advance the maximum event time.

    Args:
        events_us: event times in microseconds, in arrival order.
        present: which rows have an event time and count (a dead-lettered row does not move the
            watermark).
        seed_max_us: the largest event time seen before this batch, or None.
        out_of_orderness_us: how far behind the maximum an event may be without being late.

    Returns:
        The late flags (False where not present) and the new maximum event time.
    """
    counted = np.where(present, events_us, _NO_EVENT)
    running = np.maximum.accumulate(counted) if len(counted) else counted
    seed = _NO_EVENT if seed_max_us is None else seed_max_us
    running = np.maximum(running, seed)
    has_watermark = running != _NO_EVENT
    watermark = np.where(has_watermark, running, 0) - out_of_orderness_us
    late = present & has_watermark & (events_us < watermark)
    new_max = int(running[-1]) if len(running) else seed
    return late, (None if new_max == _NO_EVENT else new_max)


@dataclass
class Watermark:
    """The watermark state of one table: the largest event time landed so far."""

    out_of_orderness_us: int
    max_event_us: int | None = None

    @classmethod
    def from_spec(cls, spec: EventTimeSpec | None) -> Watermark:
        seconds = spec.max_out_of_orderness if spec else 0.0
        return cls(out_of_orderness_us=round(seconds * 1_000_000))

    def label(self, events: pa.Array, keep: np.ndarray) -> np.ndarray:
        """Late flags for a batch's event times; rows not kept neither count nor are late."""
        values, present = micros(events)
        late, self.max_event_us = late_labels(values, present & keep, self.max_event_us, self.out_of_orderness_us)
        return late

    @property
    def value(self) -> datetime | None:
        """The current watermark (aware, UTC), or None before the first event time."""
        if self.max_event_us is None:
            return None
        return to_datetime(self.max_event_us - self.out_of_orderness_us)

    def state(self) -> dict[str, Any]:
        return {"max_event_time_us": self.max_event_us, "max_out_of_orderness_us": self.out_of_orderness_us}

    def restore(self, state: dict[str, Any]) -> None:
        value = state.get("max_event_time_us")
        self.max_event_us = None if value is None else int(value)
