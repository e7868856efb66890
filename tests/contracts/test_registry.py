"""The contract registry on a real SQLite file and the real PostgreSQL server (never mocked)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from lakegate.contracts.decisions import Decision
from lakegate.contracts.model import (
    Contract,
    DatasetSchema,
    FieldSchema,
    Metadata,
    Policies,
    Provenance,
    Rule,
)
from lakegate.contracts.registry import (
    CONTRACT_FORMAT_VERSION,
    ContractNotFoundError,
    ContractRegistry,
    contract_document,
    parse_contract,
)
from lakegate.core.errors import ConfigError, TerminalError, TransientError
from tests.conftest import free_port

PG_URL = os.environ.get("LAKEGATE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")

Factory = Callable[[], ContractRegistry]


def full_contract(dataset: str = "orders", high: float = 1200.0) -> Contract:
    """A contract with every rule kind, policies, metadata and provenance."""
    at = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    rules = [
        Rule(id="order_id.not_null", kind="not_null", columns=["order_id"], support=5000, confidence=1.0),
        Rule(
            id="amount.range",
            kind="range",
            columns=["amount"],
            params={"low": 0.5, "high": high, "q_low": 1.25, "q_high": 980.125},
            support=5000,
            confidence=0.999,
        ),
        Rule(
            id="range:order_date",
            kind="range",
            columns=["order_date"],
            params={"low": 1_735_689_600_000_000, "high": None, "unit": "epoch_us", "trend": "up"},
        ),
        Rule(
            id="status.allowed",
            kind="allowed_values",
            columns=["status"],
            params={"values": ["new", "paid", "shipped", "yes", "null", "2024-01-01"], "new_value_tolerance": 0.001},
        ),
        Rule(id="city.length", kind="length", columns=["city"], params={"low": 2, "high": 40}, action="alert"),
        Rule(id="sku.pattern", kind="pattern", columns=["sku"], params={"patterns": ["AAA-999", "AA-9999"]}),
        Rule(id="email.format", kind="format", columns=["email"], params={"format": "email"}, severity="critical"),
        Rule(
            id="zip.city",
            kind="dependency",
            columns=["zip", "city"],
            params={"mapping": {"75001": "Paris", "10115": "Berlin", "true": "Yes"}, "min_support": 200},
        ),
        Rule(id="dates.order", kind="ordering", columns=["order_date", "ship_date"], params={"slack": 0}),
        Rule(
            id="total.identity",
            kind="identity",
            columns=["total", "qty", "unit_price"],
            params={"op": "mul", "target": "total", "rel_tolerance": 1e-6, "abs_tolerance": 0.01},
        ),
        Rule(id="dup", kind="unique_key", columns=["order_id"], params={"window_s": 3600.0}),
        Rule(
            id="amount.drift",
            kind="drift",
            columns=["amount"],
            params={"metric": "psi", "baseline": {"bins": [0, 10, 100], "p": [0.2, 0.5, 0.3]}, "threshold": 0.2},
        ),
        Rule(id="email.null_rate", kind="null_rate", columns=["email"], params={"baseline": 0.01, "threshold": 0.1}),
        Rule(
            id="qty.price.corr",
            kind="correlation",
            columns=["qty", "total"],
            params={"baseline": 0.93, "threshold": 0.3},
        ),
        Rule(
            id="volume",
            kind="volume",
            columns=[],
            params={"baseline": [100, 120, 90], "bucket_s": 3600, "threshold": 3.0},
        ),
        Rule(id="lateness", kind="lateness", columns=["order_date"], params={"p99_s": 120.5, "threshold": 600}),
        Rule(
            id="freshness",
            kind="freshness",
            columns=["order_date"],
            params={"threshold": 86400},
            origin="declared",
            description="a day without events is a problem",
        ),
    ]
    return Contract(
        dataset=dataset,
        schema=DatasetSchema(
            fields=[
                FieldSchema(name="order_id", type="long", nullable=False, description="the order"),
                FieldSchema(name="amount", type="decimal(12,2)"),
                FieldSchema(name="status", type="string"),
                FieldSchema(name="city", type="string"),
                FieldSchema(name="sku", type="string"),
                FieldSchema(name="email", type="string"),
                FieldSchema(name="zip", type="string"),
                FieldSchema(name="order_date", type="timestamp", nullable=False),
                FieldSchema(name="ship_date", type="date"),
                FieldSchema(name="total", type="double"),
                FieldSchema(name="qty", type="int"),
                FieldSchema(name="unit_price", type="float"),
                FieldSchema(name="paid", type="boolean"),
                FieldSchema(name="tags", type="list<string>"),
                FieldSchema(name="customer__address__city", type="string"),
            ],
            keys=["order_id"],
        ),
        rules=rules,
        policies=Policies(
            quarantine=["not_null", "range"],
            alert=["drift", "volume"],
            pii={"email": "mask"},
            retention_days=30,
        ),
        metadata=Metadata(owner="data-team", status="active", description="Orders of the shop", tags=["sales", "eu"]),
        provenance=Provenance(
            learned_from_rows=5000,
            first_event_time=at - timedelta(days=1),
            last_event_time=at,
            learned_at=at + timedelta(minutes=5),
            checkpoint_id=7,
            source="files:incoming",
            reason="learned baseline",
        ),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def make_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Registries on one store: a SQLite file, or a fresh schema on the PostgreSQL server."""
    opened: list[ContractRegistry] = []
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'data' / 'contracts.db'}", None
    else:
        url, schema = PG_URL, f"lg_test_{uuid.uuid4().hex[:12]}"

    def make() -> ContractRegistry:
        registry = ContractRegistry(url, schema=schema)
        opened.append(registry)
        return registry

    yield make
    for registry in opened:
        registry.close()
    if schema:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def registry(make_registry: Factory) -> ContractRegistry:
    return make_registry()


def test_versions_are_numbered_and_identical_content_is_not_stored_twice(registry: ContractRegistry) -> None:
    first = registry.register(full_contract())
    assert first.version == 1
    assert first.provenance.parent_version is None
    assert first.model_copy(update={"version": 0}) == full_contract()

    # Same content (metadata and provenance are not content): the existing version comes back.
    again = full_contract().model_copy(update={"provenance": Provenance(reason="relearned, same result")})
    assert registry.register(again) == first
    assert registry.versions("orders") == [1]

    second = registry.register(full_contract(high=1500.0))
    assert second.version == 2
    assert second.provenance.parent_version == 1
    assert registry.versions("orders") == [1, 2]
    assert registry.get("orders") == second
    assert registry.get("orders", 1) == first

    # Returning to earlier content makes a new version; versions are never rewritten.
    third = registry.register(full_contract().model_copy(update={"version": 1}))
    assert third.version == 3
    assert registry.get("orders", 1) == first
    assert registry.register(full_contract(dataset="payments")).version == 1
    assert registry.datasets() == ["orders", "payments"]


def test_versions_survive_reopening(make_registry: Factory) -> None:
    stored = make_registry().register(full_contract())
    reopened = make_registry()
    assert reopened.get("orders", 1) == stored
    assert reopened.register(full_contract(high=2000.0)).version == 2


def test_missing_dataset_or_version_is_a_clear_error(registry: ContractRegistry) -> None:
    with pytest.raises(ContractNotFoundError, match="no contract for dataset 'orders'"):
        registry.get("orders")
    registry.register(full_contract())
    with pytest.raises(ContractNotFoundError, match=r"version 9 \(versions: 1\)"):
        registry.get("orders", 9)
    assert registry.active("orders") is None
    assert registry.resolve("orders", None) is None
    with pytest.raises(ContractNotFoundError):
        registry.resolve("orders", 4)
    with pytest.raises(ContractNotFoundError):
        registry.activate("orders", 2, actor="alice", reason="typo")


def test_activate_and_rollback_repoint_the_active_version(registry: ContractRegistry) -> None:
    for high in (100.0, 200.0, 300.0):
        registry.register(full_contract(high=high))
    with pytest.raises(ContractNotFoundError, match="no active contract"):
        registry.rollback("orders", actor="alice", reason="nothing yet")

    registry.activate("orders", 1, actor="lakegate", reason="warm-up over")
    with pytest.raises(ConfigError, match="first active version"):
        registry.rollback("orders", actor="alice", reason="too early")
    registry.activate("orders", 2, actor="alice", reason="reviewed")
    registry.activate("orders", 2, actor="alice", reason="again: a no-op")
    registry.activate("orders", 3, actor="alice", reason="reviewed")
    active = registry.active("orders")
    assert active is not None and active.version == 3

    assert registry.rollback("orders", actor="bob", reason="v3 quarantines too much").version == 2
    assert registry.active_version("orders") == 2
    assert registry.rollback("orders", actor="bob", reason="v2 too").version == 1
    with pytest.raises(ConfigError, match="first active version"):
        registry.rollback("orders", actor="bob", reason="nothing before v1")
    assert registry.rollback("orders", to_version=3, actor="bob", reason="back to v3").version == 3
    with pytest.raises(ConfigError, match="already the active version"):
        registry.rollback("orders", to_version=3, actor="bob", reason="no-op")
    assert registry.rollback("orders", actor="bob", reason="undo").version == 1

    # A pin wins over the active version; versions were never touched.
    assert registry.resolve("orders", 2) == registry.get("orders", 2)
    resolved = registry.resolve("orders", None)
    assert resolved is not None and resolved.version == 1
    assert registry.versions("orders") == [1, 2, 3]

    events = [(e.event, e.version, e.previous_version) for e in registry.history("orders")]
    assert events == [
        ("registered", 1, None),
        ("registered", 2, 1),
        ("registered", 3, 2),
        ("activated", 1, None),
        ("activated", 2, 1),
        ("activated", 3, 2),
        ("rolled_back", 2, 3),
        ("rolled_back", 1, 2),
        ("rolled_back", 3, 1),
        ("rolled_back", 1, 3),
    ]
    history = registry.history("orders")
    assert history[0].reason == "learned baseline" and history[0].rules == 17 and history[0].fingerprint
    assert history[6].actor == "bob" and history[6].reason == "v3 quarantines too much"

    decisions = registry.decisions("orders")
    assert [d.kind for d in decisions] == ["contract.activated"] * 3 + ["contract.rolled_back"] * 4
    assert decisions[1].reversal == {"command": "lakegate contract rollback orders --to 1"}
    assert decisions[3].reversal == {"command": "lakegate contract activate orders 3"}
    assert decisions[3].actor == "bob" and decisions[3].contract_version == 2
    assert decisions[3].evidence["reason"] == "v3 quarantines too much"


def test_diff_names_fields_rules_and_thresholds(registry: ContractRegistry) -> None:
    base = full_contract()
    registry.register(base)
    fields = [f for f in base.schema_.fields if f.name != "zip"]
    fields[0] = fields[0].model_copy(update={"type": "string"})
    fields.append(FieldSchema(name="coupon", type="string"))
    rules = [r for r in base.rules if r.id != "zip.city"]
    rules[1] = rules[1].model_copy(update={"params": {**rules[1].params, "high": 1500.0}})
    rules[3] = rules[3].model_copy(update={"action": "alert"})
    rules.append(Rule(id="coupon.not_null", kind="not_null", columns=["coupon"]))
    changed = base.model_copy(
        update={
            "schema_": DatasetSchema(fields=fields, keys=["order_id", "sku"]),
            "rules": rules,
            "policies": base.policies.model_copy(update={"retention_days": 90}),
        }
    )
    registry.register(changed)

    diff = registry.diff("orders", 1, 2)
    assert [f.name for f in diff.fields_added] == ["coupon"]
    assert [f.name for f in diff.fields_removed] == ["zip"]
    assert [(c.name, c.old.type, c.new.type) for c in diff.fields_changed] == [("order_id", "long", "string")]
    assert diff.keys == (["order_id"], ["order_id", "sku"])
    assert [r.id for r in diff.rules_added] == ["coupon.not_null"]
    assert [r.id for r in diff.rules_removed] == ["zip.city"]
    by_id = {c.id: c for c in diff.rules_changed}
    assert set(by_id) == {"amount.range", "status.allowed"}
    amount = by_id["amount.range"]
    assert [(p.key, p.old, p.new) for p in amount.changes] == [("params.high", 1200.0, 1500.0)]
    assert (amount.old_threshold, amount.new_threshold) == ("[0.5, 1200]", "[0.5, 1500]")
    assert [(p.key, p.old, p.new) for p in by_id["status.allowed"].changes] == [("action", "quarantine", "alert")]
    assert [(p.key, p.old, p.new) for p in diff.policies] == [("retention_days", 30, 90)]

    text = diff.render()
    assert "contract orders: v1 → v2" in text
    assert "  + coupon string" in text and "  - zip string" in text
    assert "  ~ order_id: long not null → string not null" in text
    assert "range amount [amount.range] (quarantine, learned): [0.5, 1200] → [0.5, 1500]" in text
    assert "params.high: 1200 → 1500" in text
    assert "retention_days: 30 → 90" in text
    assert registry.diff("orders", 1, 1).empty and "no changes" in registry.diff("orders", 2, 2).render()


def test_rules_renamed_between_versions_are_matched_by_kind_and_columns(registry: ContractRegistry) -> None:
    base = full_contract()
    registry.register(base)
    renamed = [r.model_copy(update={"id": f"{r.id}.v2"}) if r.id == "amount.range" else r for r in base.rules]
    renamed = [
        r.model_copy(update={"params": {**r.params, "low": 1.0}}) if r.id == "amount.range.v2" else r for r in renamed
    ]
    registry.register(base.model_copy(update={"rules": renamed}))
    diff = registry.diff("orders", 1, 2)
    assert not diff.rules_added and not diff.rules_removed
    assert [(p.key, p.old, p.new) for p in diff.rules_changed[0].changes] == [
        ("id", "amount.range", "amount.range.v2"),
        ("params.low", 0.5, 1.0),
    ]


def test_decisions_are_appended_and_filtered(registry: ContractRegistry) -> None:
    early = datetime(2025, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    first = registry.record_decision(
        Decision(
            at=early,
            dataset="orders",
            kind="contract.learned",
            summary="learned v1 from 5,000 rows",
            evidence={"rows": 5000, "scores": [0.1, 0.2], "prompt": None},
            reversal={"command": "lakegate contract rollback orders --to 3"},
            contract_version=1,
        )
    )
    assert first.at == early and first.at.tzinfo == UTC and first.at.hour == 8
    registry.record_decision(Decision(dataset="payments", kind="mode.enforce", summary="enforcing", actor="alice"))
    later = registry.record_decision(Decision(dataset="orders", kind="alert.volume", summary="volume dropped"))

    assert registry.decisions()[0] == first
    assert [d.dataset for d in registry.decisions()] == ["orders", "payments", "orders"]
    assert registry.decisions("orders") == [first, later]
    assert registry.decisions("orders", kind="alert.volume") == [later]
    assert registry.decisions(since=datetime(2025, 6, 1, tzinfo=UTC), dataset="orders") == [later]
    with pytest.raises(ConfigError, match="timezone-aware"):
        registry.decisions(since=datetime(2025, 6, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(TerminalError, match="already recorded"):
        registry.record_decision(first)
    assert "(undo: lakegate contract rollback orders --to 3)" in first.render()


def test_decisions_refuse_naive_times_and_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        Decision(at=datetime(2025, 1, 1), dataset="orders", kind="mode.enforce", summary="x")  # noqa: DTZ001
    with pytest.raises(ValidationError, match="kind"):
        Decision(dataset="orders", kind="enforce", summary="x")
    with pytest.raises(ValidationError, match="extra"):
        Decision.model_validate({"dataset": "orders", "kind": "mode.enforce", "summary": "x", "who": "me"})


def test_concurrent_writers_get_distinct_versions(make_registry: Factory) -> None:
    registries = [make_registry() for _ in range(6)]
    per_writer = 5
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(registries))

    def write(index: int, registry: ContractRegistry) -> None:
        try:
            start.wait()
            versions = []
            for j in range(per_writer):
                versions.append(registry.register(full_contract(high=1000.0 + index * 100 + j)).version)
                # The same content from every writer at once: stored once.
                registry.register(full_contract(dataset="shared"))
            results[index] = versions
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i, r)) for i, r in enumerate(registries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    total = len(registries) * per_writer
    assert sorted(v for versions in results.values() for v in versions) == list(range(1, total + 1))
    assert registries[0].versions("orders") == list(range(1, total + 1))
    rules = [registries[0].get("orders", v).rule("amount.range") for v in range(1, total + 1)]
    highs = {rule.params["high"] for rule in rules if rule is not None}
    assert len(highs) == total
    assert registries[0].versions("shared") == [1]


def test_concurrent_activations_keep_a_consistent_history(make_registry: Factory) -> None:
    setup = make_registry()
    for high in (1.0, 2.0, 3.0):
        setup.register(full_contract(high=high))
    errors: list[BaseException] = []

    def flip(registry: ContractRegistry, version: int) -> None:
        try:
            for _ in range(5):
                registry.activate("orders", version, actor=f"writer{version}", reason="race")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=flip, args=(make_registry(), v)) for v in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    last = [e for e in setup.history("orders") if e.event == "activated"][-1]
    assert setup.active_version("orders") == last.version


def _tamper(registry: ContractRegistry, version: int, **values: object) -> None:
    table = registry._versions
    with registry._engine.begin() as conn:
        conn.execute(table.update().where(table.c.dataset == "orders", table.c.version == version).values(**values))


def test_corrupt_or_newer_stored_contracts_are_named(registry: ContractRegistry) -> None:
    for high in (1.0, 2.0, 3.0, 4.0):
        registry.register(full_contract(high=high))
    _tamper(registry, 1, body="{not json")
    with pytest.raises(TerminalError, match=r"dataset 'orders' version 1: stored contract is not valid JSON"):
        registry.get("orders", 1)

    broken = contract_document(registry.get("orders", 2))
    del broken["format_version"]
    broken["rules"][1]["params"] = "wide"
    broken["surprise"] = True
    import orjson

    _tamper(registry, 2, body=orjson.dumps(broken).decode())
    with pytest.raises(TerminalError) as info:
        registry.get("orders", 2)
    message = str(info.value)
    assert "dataset 'orders' version 2: stored contract is invalid" in message
    assert "rules.1.params: Input should be a valid dictionary" in message
    assert "surprise: unknown field" in message

    _tamper(registry, 3, format_version=CONTRACT_FORMAT_VERSION + 1)
    with pytest.raises(TerminalError, match=r"version 3: stored in format 2 by a newer lakegate"):
        registry.get("orders", 3)

    # The other versions still read, and history still shows the broken ones.
    assert registry.get("orders").version == 4
    history = registry.history("orders")
    assert "unreadable" in (history[0].reason or "") and history[3].rules == 17


def test_contract_documents_are_validated_with_file_and_field() -> None:
    document = contract_document(full_contract())
    assert parse_contract(document, "orders.json") == full_contract()
    bad = {**document, "owner": "me", "rules": [{**document["rules"][0], "kind": "bogus"}]}
    with pytest.raises(ConfigError) as info:
        parse_contract(bad, "orders.json")
    assert "orders.json: invalid contract" in str(info.value)
    assert "owner: unknown field" in str(info.value) and "rules.0.kind: Input should be" in str(info.value)
    with pytest.raises(ConfigError, match=r"orders.json: format_version: 2 was written by a newer lakegate"):
        parse_contract({**document, "format_version": 2}, "orders.json")
    with pytest.raises(ConfigError, match="a contract is a mapping"):
        parse_contract([document], "orders.json")


def test_unreachable_postgres_is_a_transient_error() -> None:
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/test"
    with pytest.raises(
        TransientError, match=f"contract registry postgresql\\+psycopg2://postgres@127.0.0.1:{url.split(':')[-1]}"
    ):
        ContractRegistry(url)


def test_postgres_server_is_reachable() -> None:
    """The PostgreSQL tests above need the server: fail loudly (never skip) when it is down."""
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_bad_urls_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        ContractRegistry("not a url")
    with pytest.raises(ConfigError, match="schema is for PostgreSQL"):
        ContractRegistry(f"sqlite:///{tmp_path}/c.db", schema="x")
