"""Semantic faults for the demo: records with the right shape and the wrong meaning.

Appended after the warm-up stream (``orders.generate_orders``), so the contract is learned from
clean history first. Each faulty record carries exactly one fault, and the manifest counts them, so
the demo can say how many quarantines to expect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from lakegate.demo.orders import CITIES, Manifest, _order

CENTS_MERCHANT = "M007"


@dataclass
class SemanticManifest:
    records: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    late_burst: int = 0
    shifted: int = 0
    next_number: int = 1
    clock: datetime | None = None

    @property
    def quarantine_expected(self) -> int:
        return sum(self.faults.values())


def generate_semantic_faults(
    directory: Path, after: Manifest, records: int = 6000, fault_rate: float = 0.02, seed: int = 99
) -> SemanticManifest:
    """Write ``semantic.ndjson`` continuing ``after``'s stream with faults, a late burst and a shift."""
    rng = random.Random(seed)
    manifest = SemanticManifest()
    clock = after.clock or datetime(2026, 11, 8, tzinfo=UTC)
    number = after.next_number
    lines: list[bytes] = []
    emitted: list[dict[str, object]] = []
    late_start, late_end = records // 3, records // 3 + 400
    shift_start = records // 2
    for index in range(records):
        clock += timedelta(seconds=rng.uniform(5, 55))
        when = clock - timedelta(hours=3) if late_start <= index < late_end else clock
        order = _order(rng, number, when)
        number += 1
        if index >= shift_start:
            order["channel"] = "store" if rng.random() < 0.9 else "web"  # a category shift among known values
            manifest.shifted += 1
        manifest.late_burst += int(late_start <= index < late_end)
        if rng.random() < fault_rate and emitted and not late_start <= index < late_end:
            fault = rng.choice(["cents", "negative_quantity", "ship_before_order", "currency_mismatch", "duplicate"])
            if fault == "cents":
                order["merchant_id"] = CENTS_MERCHANT
                order["amount"] = round(float(order["amount"]) * 100, 2)  # type: ignore[arg-type]
            elif fault == "negative_quantity":
                order["quantity"] = -int(order["quantity"])  # type: ignore[call-overload]
            elif fault == "ship_before_order":
                created = datetime.fromisoformat(str(order["created_at"]))
                order["shipped_at"] = (created - timedelta(hours=rng.uniform(2, 48))).astimezone(UTC).isoformat()
            elif fault == "currency_mismatch":
                country = order["customer"]["address"]["country"]  # type: ignore[index]
                order["currency"] = rng.choice([c for _, _, k, c in CITIES if k != country and c != order["currency"]])
            else:
                order = dict(rng.choice(emitted[-200:]))  # the same event again
            manifest.faults[fault] = manifest.faults.get(fault, 0) + 1
        emitted.append(order)
        lines.append(orjson.dumps(order))
        manifest.records += 1
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".semantic.ndjson.tmp"
    tmp.write_bytes(b"\n".join(lines) + b"\n")
    tmp.rename(directory / "semantic.ndjson")
    manifest.next_number, manifest.clock = number, clock
    return manifest
