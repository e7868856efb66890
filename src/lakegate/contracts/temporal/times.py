"""Event and arrival times as int64 microseconds (one batch, or a grid of windows), and the helpers every
temporal module shares.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EVENT_TIME = "_lg_event_time"
ARRIVAL_TIME = "_lg_ingested_at"
US = 1_000_000
HOUR_US = 3600 * US


def event_micros(rows: pa.Table) -> np.ndarray | None:
    """``_lg_event_time`` as int64 microseconds (nulls: the newest event time of the batch)."""
    if EVENT_TIME not in rows.column_names:
        return None
    return column_micros(rows.column(EVENT_TIME))


def column_micros(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if pa.types.is_timestamp(array.type) and array.type.unit != "us":
        array = pc.cast(array, pa.timestamp("us", array.type.tz))
    values = pc.fill_null(array.view(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        fill = int(values[valid].max()) if valid.any() else 0
        values = np.where(valid, values, fill)
    return np.asarray(values)


def window_micros(column: pa.ChunkedArray, windows: int, size: int) -> np.ndarray:
    """A timestamp column as int64 microseconds, one row per window; nulls take their window's newest
    value (what :func:`column_micros` does for one window)."""
    array = column.combine_chunks()
    if pa.types.is_timestamp(array.type) and array.type.unit != "us":
        array = pc.cast(array, pa.timestamp("us", array.type.tz))
    values = pc.fill_null(array.view(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    grid = values[: windows * size].reshape(windows, size)  # read-only when it is Arrow's buffer
    if not array.null_count:
        return grid
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False))[: windows * size].reshape(windows, size)
    newest = np.where(valid, grid, np.iinfo(np.int64).min).max(axis=1)
    return np.where(valid, grid, np.where(newest == np.iinfo(np.int64).min, 0, newest)[:, None])


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def unb64(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


def as_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / US, tz=UTC)


def time_bounds(times: np.ndarray) -> tuple[datetime | None, datetime | None]:
    if not len(times):
        return None, None
    return as_datetime(int(times.min())), as_datetime(int(times.max()))
