"""An upstream schema change for the demo: the producer renames, re-encodes and moves fields mid-stream.

After the semantic-fault stream, the orders producer ships a new version: ``customer.id`` becomes a
top-level ``cust_id``, ``amount`` in dollars becomes ``amount_cents`` as a string, and the customer's
city moves from ``customer.address.city`` to ``shipping.city``. Every record is still a good order,
so the demo can check that each one lands, once, in the orders table's original shape.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from lakegate.demo.orders import _order

CHANGES = {
    "customer__id": "cust_id",
    "amount": "amount_cents (string, cents)",
    "customer__address__city": "shipping__city",
}


@dataclass
class UpstreamManifest:
    records: int = 0
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    """order_id -> the values the orders table must hold for the changed fields."""


def new_shape(order: dict[str, Any]) -> dict[str, Any]:
    """The producer's new version of one order record."""
    changed = dict(order)
    customer = dict(changed.pop("customer"))
    address = dict(customer.pop("address"))
    changed["cust_id"] = customer.pop("id")
    changed["shipping"] = {"city": address.pop("city")}
    changed["customer"] = {**customer, "address": address}
    changed["amount_cents"] = str(round(float(changed.pop("amount")) * 100))
    return changed


def generate_upstream_change(
    directory: Path, next_number: int, clock: datetime | None, records: int = 3000, seed: int = 1234
) -> UpstreamManifest:
    """Write ``upstream.ndjson``: ``records`` clean orders in the producer's new shape."""
    rng = random.Random(seed)
    manifest = UpstreamManifest()
    clock = clock or datetime(2026, 11, 9, tzinfo=UTC)
    lines = []
    for number in range(next_number, next_number + records):
        clock += timedelta(seconds=rng.uniform(5, 55))
        order = _order(rng, number, clock)
        manifest.expected[str(order["order_id"])] = {
            "customer__id": order["customer"]["id"],  # type: ignore[index]
            "amount": order["amount"],
            "customer__address__city": order["customer"]["address"]["city"],  # type: ignore[index]
        }
        lines.append(orjson.dumps(new_shape(order)))
        manifest.records += 1
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".upstream.ndjson.tmp"
    tmp.write_bytes(b"\n".join(lines) + b"\n")
    tmp.rename(directory / "upstream.ndjson")
    return manifest
