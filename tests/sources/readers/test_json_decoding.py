"""A chunk of JSON records big enough to be parsed in pieces, one per core, must decode exactly as one
Arrow block would: same columns in the same order, same types, same values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pa_json
import pytest

from lakegate.core.config import FileSourceSpec
from lakegate.sources.files import FileSource

ROWS = 24_000  # about 6 MiB with the padding: four pieces of more than 1 MiB each
PAD = "p" * 220

Shape = Callable[[int], dict[str, Any]]
"""One record of a test file, by its index."""

SHAPES: dict[str, Shape] = {
    # A column that is null until late, then an object (one block infers the struct).
    "null_then_object": lambda i: {"id": i, "late": None if i < ROWS * 0.7 else {"a": i, "b": "x"}},
    # A column that first appears in the last piece goes last.
    "new_column_late": lambda i: {"id": i, **({"tail": i % 7} if i > ROWS * 0.9 else {})},
    # Object keys in another order later: one block keeps the first order.
    "key_order_changes": lambda i: {"id": i, "o": {"x": 1, "y": 2} if i < ROWS / 2 else {"y": 3, "x": 4}},
    "empty_lists_then_numbers": lambda i: {"id": i, "tags": [] if i < ROWS * 0.6 else [i, 1]},
    "integers_then_floats": lambda i: {"id": i, "v": i if i < ROWS * 0.75 else i + 0.5},
    "timestamps_then_text": lambda i: {"id": i, "t": "2025-03-01T02:00:00" if i < ROWS / 2 else "later"},
}


@pytest.fixture
def four_cores() -> Iterator[None]:
    """As many pieces as on a four-core machine, whatever this one has."""
    before = pa.cpu_count()
    pa.set_cpu_count(4)
    yield
    pa.set_cpu_count(before)


def records(shape: Shape) -> list[dict[str, Any]]:
    return [{**shape(i), "pad": PAD} for i in range(ROWS)]


def write(path: Path, shape: Shape) -> bytes:
    """The file as NDJSON, or as a pretty-printed JSON array; returns the records as NDJSON."""
    ndjson = b"".join(orjson.dumps(record) + b"\n" for record in records(shape))
    path.write_bytes(ndjson if path.suffix == ".ndjson" else orjson.dumps(records(shape), option=orjson.OPT_INDENT_2))
    return ndjson


def one_block(data: bytes) -> pa.Table:
    options = pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1)
    return pa_json.read_json(pa.BufferReader(data), read_options=options)


@pytest.mark.usefixtures("four_cores")
@pytest.mark.parametrize("fmt", ["ndjson", "json"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_chunk_parsed_in_pieces_equals_one_arrow_block(tmp_path: Path, shape: str, fmt: str) -> None:
    data = write(tmp_path / f"data.{fmt}", SHAPES[shape])
    assert len(data) > 4 * 1024 * 1024
    src = FileSource(FileSourceSpec(name="src", path=tmp_path))
    batch = src.poll()
    assert batch is not None and src.poll() is None
    expected = one_block(data)
    assert batch.records.schema == expected.schema
    assert batch.records.equals(expected)
    assert len(batch.dead_letters) == 0
    assert batch.records_read == ROWS


@pytest.mark.usefixtures("four_cores")
def test_pieces_that_conflict_on_a_type_keep_every_row_as_text(tmp_path: Path) -> None:
    write(tmp_path / "data.ndjson", lambda i: {"id": i, "v": i if i < ROWS * 0.8 else f"s{i}"})
    src = FileSource(FileSourceSpec(name="src", path=tmp_path))
    batch = src.poll()
    assert batch is not None and src.poll() is None
    assert batch.records.schema.field("v").type == pa.string()
    assert batch.records.column("v").to_pylist() == [str(i) if i < ROWS * 0.8 else f"s{i}" for i in range(ROWS)]
    assert len(batch.dead_letters) == 0
