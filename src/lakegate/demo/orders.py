"""A generator of nested order events that knows exactly what it wrote.

The demo and the tests use it: every count a test asserts (records, malformed lines, type errors,
late events, line items) comes from the generator's manifest, never from what landed.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

CITIES = [
    ("Berlin", "10115", "DE", "EUR"),
    ("Paris", "75001", "FR", "EUR"),
    ("Madrid", "28001", "ES", "EUR"),
    ("London", "EC1A", "GB", "GBP"),
    ("New York", "10001", "US", "USD"),
    ("Toronto", "M5H", "CA", "CAD"),
    ("Tokyo", "100-0001", "JP", "JPY"),
]
FIRST = ["Ada", "Linus", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Donald", "Frances"]
LAST = ["Lovelace", "Torvalds", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Knuth"]
SKUS = [(f"SKU-{i:04d}", round(random.Random(i).uniform(2, 250), 2)) for i in range(1, 120)]
STATUSES = ["paid", "paid", "paid", "shipped", "delivered", "refunded"]
CHANNELS = ["web", "app", "store"]


@dataclass
class Manifest:
    """What the generator wrote, for reconciliation and assertions."""

    records: int = 0
    good: int = 0
    malformed: int = 0
    invalid_utf8: int = 0
    wrong_type: int = 0
    late: int = 0
    line_items: int = 0
    order_ids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    next_number: int = 1
    clock: datetime | None = None

    @property
    def dead_letters(self) -> int:
        return self.malformed + self.invalid_utf8 + self.wrong_type


def _order(rng: random.Random, number: int, when: datetime) -> dict[str, object]:
    city, zip_code, country, currency = rng.choice(CITIES)
    customer_id = rng.randint(1, 5000)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    items = []
    for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
        sku, price = rng.choice(SKUS)
        items.append({"sku": sku, "qty": rng.randint(1, 5), "unit_price": price})
    amount = round(sum(i["qty"] * i["unit_price"] for i in items), 2)  # type: ignore[operator]
    offset = timedelta(hours=rng.choice([0, 1, 2, -5]))
    local = when.astimezone(UTC) + offset
    stamp = local.replace(tzinfo=None).isoformat(timespec="milliseconds")
    sign = "+" if offset >= timedelta(0) else "-"
    hours = abs(int(offset.total_seconds() // 3600))
    shipped = (when + timedelta(minutes=rng.uniform(30, 72 * 60))).astimezone(UTC)
    return {
        "order_id": f"ORD-{number:07d}",
        "created_at": f"{stamp}{sign}{hours:02d}:00",
        "shipped_at": shipped.isoformat(timespec="seconds"),
        "merchant_id": f"M{rng.randint(1, 40):03d}",
        "customer": {
            "id": customer_id,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{customer_id}@example.com",
            "address": {"city": city, "zip": zip_code, "country": country},
        },
        "items": items,
        "quantity": sum(int(i["qty"]) for i in items),  # type: ignore[call-overload]
        "currency": currency,
        "amount": amount,
        "status": rng.choice(STATUSES),
        "channel": rng.choice(CHANNELS),
    }


def generate_orders(
    directory: Path,
    records: int = 20_000,
    files: int = 4,
    seed: int = 7,
    fault_rate: float = 0.01,
    late_rate: float = 0.01,
    start: datetime | None = None,
    gzip_last: bool = True,
) -> Manifest:
    """Write ``records`` order lines over ``files`` NDJSON files (the last one gzipped).

    About ``fault_rate`` of the lines are broken (a truncated line, invalid UTF-8, an amount that is
    not a number) and about ``late_rate`` carry an event time two hours behind the stream.
    """
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = Manifest()
    clock = start or datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    per_file = -(-records // files)
    number = 0
    for index in range(files):
        lines: list[bytes] = []
        for _ in range(min(per_file, records - number)):
            number += 1
            clock += timedelta(seconds=rng.uniform(5, 55))
            when = clock
            roll = rng.random()
            is_late = roll < late_rate
            if is_late:
                when = clock - timedelta(hours=2)
            order = _order(rng, number, when)
            manifest.records += 1
            fault = rng.random()
            if fault < fault_rate / 3:
                lines.append(orjson.dumps(order)[:-15])
                manifest.malformed += 1
            elif fault < 2 * fault_rate / 3:
                lines.append(orjson.dumps(order).replace(b'"status"', b'"st\xff\xfeatus"'))
                manifest.invalid_utf8 += 1
            elif fault < fault_rate:
                order["amount"] = rng.choice(["twelve", "n/a", "12,50 EUR"])
                lines.append(orjson.dumps(order))
                manifest.wrong_type += 1
            else:
                lines.append(orjson.dumps(order))
                manifest.good += 1
                manifest.late += int(is_late)
                manifest.line_items += len(order["items"])  # type: ignore[arg-type]
                manifest.order_ids.append(str(order["order_id"]))
        name = f"orders-{index:03d}.ndjson"
        payload = b"\n".join(lines) + b"\n"
        if gzip_last and index == files - 1:
            name += ".gz"
            payload = gzip.compress(payload)
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(payload)
        tmp.rename(directory / name)  # a file counts once it appears under its final name
        manifest.files.append(name)
    manifest.next_number, manifest.clock = number + 1, clock
    return manifest
