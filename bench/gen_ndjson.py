"""Generate the NDJSON data set of the ingest benchmark, fast (numpy + Arrow kernels, no per-row Python).

Each row has 12 top-level fields, one of them a nested object::

    {"id":1,"ts":"2025-03-01T02:00:00.417+02:00","user_id":48213,"amount":37.5,"quantity":3,
     "currency":"EUR","status":"paid","country":"DE","is_test":false,"note":"fast delivery",
     "score":0.8123,"customer":{"name":"Ada Moreau","tier":"gold",
     "address":{"city":"Lyon","zip":"06914"}}}

``id`` is unique over the whole data set (1..rows); ``ts`` is ISO-8601 with a UTC offset (``Z``,
``+02:00``, ``-05:00``, ``+05:30`` or ``+00:00``) and moves forward with ``id`` over ``days`` days
with up to ±``jitter_s`` seconds of disorder, as an event log would; ``note`` is null in ~30% of
rows and ``score`` in ~5%. Rows are written as ``files`` files ``part-00000.ndjson``... of equal
size. The same ``seed`` gives the same bytes.

Usage: ``python bench/gen_ndjson.py OUT_DIR [--rows N] [--files F] [--seed S]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

START_UTC = np.datetime64("2025-03-01T00:00:00", "ms")
CHUNK_ROWS = 131_072

CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "SEK"]
CURRENCY_P = [0.45, 0.3, 0.1, 0.06, 0.05, 0.04]
STATUSES = ["pending", "paid", "shipped", "delivered", "refunded", "cancelled"]
STATUS_P = [0.1, 0.35, 0.25, 0.22, 0.05, 0.03]
COUNTRIES = [
    "US", "DE", "FR", "GB", "NL", "ES", "IT", "SE", "PL", "BR",
    "IN", "JP", "CA", "AU", "MX", "CH", "AT", "BE", "IE", "PT",
]  # fmt: skip
TIERS = ["bronze", "silver", "gold", "platinum"]
TIER_P = [0.55, 0.3, 0.12, 0.03]
CITIES = [
    "Lyon", "Berlin", "Austin", "Leeds", "Utrecht", "Sevilla", "Torino", "Malmö", "Kraków", "Recife",
    "Pune", "Sapporo", "Halifax", "Perth", "Puebla", "Zürich", "Graz", "Gent", "Cork", "Porto",
]  # fmt: skip
FIRST = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie",
    "Margaret", "John", "Sophie", "Tim", "Hedy", "Linus", "Guido", "Anita", "Niklaus", "Ivan",
]  # fmt: skip
LAST = [
    "Moreau", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman",
    "Lamport", "Hamilton", "Backus", "Wilson", "Berners", "Lamarr", "Torvalds", "Rossum", "Borg",
    "Wirth", "Sutherland", "Müller", "Ødegaard", "Nuñez", "Kowalski", "Silva",
]  # fmt: skip
WORDS = [
    "fast", "delivery", "gift", "wrap", "please", "call", "before", "leave", "at", "door",
    "fragile", "express", "repeat", "customer", "discount", "applied", "café", "naïve", "über",
    "backorder", "split", "shipment", "weekend", "only", "no", "invoice", "needed", "thanks",
]  # fmt: skip
OFFSETS = [("Z", 0), ("+00:00", 0), ("+02:00", 120), ("-05:00", -300), ("+05:30", 330)]
OFFSET_P = [0.4, 0.1, 0.25, 0.15, 0.1]

COLUMNS = ["id", "ts", "user_id", "amount", "quantity", "currency", "status", "country",
           "is_test", "note", "score", "customer"]  # fmt: skip
"""The 12 top-level fields, in file order."""
FLAT_COLUMNS = [*COLUMNS[:-1], "customer__name", "customer__tier", "customer__address__city",
                "customer__address__zip"]  # fmt: skip
"""The columns after flattening the nested object into ``parent__child`` names."""


@dataclass(frozen=True)
class DataSet:
    path: Path
    rows: int
    files: list[Path]
    bytes: int
    seconds: float


def _pool(rng: np.random.Generator, size: int, make: Callable[[np.random.Generator], str]) -> pa.Array:
    return pa.array([make(rng) for _ in range(size)], pa.string())


def _note(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(1, 9))).tolist())


def _name(rng: np.random.Generator) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _take(pool: list[str] | pa.Array, index: np.ndarray) -> pa.Array:
    values = pool if isinstance(pool, pa.Array) else pa.array(pool, pa.string())
    return values.take(pa.array(index, pa.int32()))


def _quoted(values: pa.Array) -> pa.Array:
    """JSON strings (the pools hold no quote, backslash or control character), null stays null."""
    return pc.binary_join_element_wise('"', values, '"', "")


def _text(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _lines(
    start_id: int,
    n: int,
    total: int,
    days: float,
    jitter_s: float,
    rng: np.random.Generator,
    pools: dict[str, pa.Array],
) -> pa.Array:
    """``n`` NDJSON lines (each ending in a newline) starting at id ``start_id``."""
    ids = np.arange(start_id, start_id + n, dtype=np.int64)
    span_ms = days * 86_400_000.0
    jitter_max = min(jitter_s * 1000.0, span_ms / 4)
    base_ms = jitter_max + (ids - 1) * ((span_ms - 2 * jitter_max) / max(total, 1))
    utc_ms = (base_ms + rng.uniform(-jitter_max, jitter_max, n)).astype(np.int64)
    offset_idx = rng.choice(len(OFFSETS), size=n, p=OFFSET_P)
    offset_min = np.array([m for _, m in OFFSETS], dtype=np.int64)[offset_idx]
    local = (START_UTC + utc_ms.astype("timedelta64[ms]")) + (offset_min * 60_000).astype("timedelta64[ms]")
    local_text = pc.strftime(pa.array(local), format="%Y-%m-%dT%H:%M:%S")
    ts = pc.binary_join_element_wise('"', local_text, _take([s for s, _ in OFFSETS], offset_idx), '"', "")

    amount = np.round(rng.lognormal(3.5, 1.0, n), 2)
    score = pa.array(np.round(rng.random(n), 4), mask=rng.random(n) < 0.05)
    note = _quoted(_take(pools["note"], rng.integers(0, len(pools["note"]), n)))
    note = pc.if_else(pa.array(rng.random(n) < 0.3), pa.scalar(None, pa.string()), note)
    zips = pc.utf8_lpad(_text(pa.array(rng.integers(0, 100_000, n))), width=5, padding="0")

    pieces: list[object] = [
        '{"id":', _text(pa.array(ids)),
        ',"ts":', ts,
        ',"user_id":', _text(pa.array(rng.integers(1, 100_001, n))),
        ',"amount":', _text(pa.array(amount)),
        ',"quantity":', _text(pa.array(rng.integers(1, 21, n))),
        ',"currency":', _quoted(_take(CURRENCIES, rng.choice(len(CURRENCIES), size=n, p=CURRENCY_P))),
        ',"status":', _quoted(_take(STATUSES, rng.choice(len(STATUSES), size=n, p=STATUS_P))),
        ',"country":', _quoted(_take(COUNTRIES, rng.integers(0, len(COUNTRIES), n))),
        ',"is_test":', _text(pa.array(rng.random(n) < 0.02)),
        ',"note":', pc.fill_null(note, "null"),
        ',"score":', pc.fill_null(_text(score), "null"),
        ',"customer":{"name":', _quoted(_take(pools["name"], rng.integers(0, len(pools["name"]), n))),
        ',"tier":', _quoted(_take(TIERS, rng.choice(len(TIERS), size=n, p=TIER_P))),
        ',"address":{"city":', _quoted(_take(CITIES, rng.integers(0, len(CITIES), n))),
        ',"zip":"', zips,
        '"}}}\n',
    ]  # fmt: skip
    return pc.binary_join_element_wise(*pieces, "")


def _write(out: BinaryIO, lines: pa.Array) -> int:
    """Write the values of a string array back to back: its data buffer, between its first and last
    offsets, is exactly the file content."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    data = memoryview(lines.buffers()[2])[int(offsets[0]) : int(offsets[-1])]
    out.write(data)
    return len(data)


def generate(
    out_dir: str | Path,
    rows: int = 2_000_000,
    files: int = 8,
    seed: int = 42,
    days: float = 30.0,
    jitter_s: float = 30.0,
) -> DataSet:
    """Write ``rows`` rows as ``files`` NDJSON files into ``out_dir`` (created; existing
    ``part-*.ndjson`` files there are replaced)."""
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.ndjson"):
        old.unlink()
    rng = np.random.default_rng(seed)
    pools = {"note": _pool(rng, 2000, _note), "name": _pool(rng, 2000, _name)}
    files = max(1, min(files, rows)) if rows else 1
    per_file = [rows // files + (1 if i < rows % files else 0) for i in range(files)]
    written: list[Path] = []
    total_bytes = 0
    next_id = 1
    for i, count in enumerate(per_file):
        path = out / f"part-{i:05d}.ndjson"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            done = 0
            while done < count:
                n = min(CHUNK_ROWS, count - done)
                total_bytes += _write(fh, _lines(next_id, n, rows, days, jitter_s, rng, pools))
                next_id += n
                done += n
        tmp.rename(path)  # appears under its final name only when complete
        written.append(path)
    return DataSet(out, rows, written, total_bytes, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    ds = generate(args.out_dir, rows=args.rows, files=args.files, seed=args.seed)
    size_mb = ds.bytes / 1e6
    print(f"{ds.rows:,} rows in {len(ds.files)} files, {size_mb:,.1f} MB, {ds.seconds:.1f} s -> {ds.path}")


if __name__ == "__main__":
    main()
