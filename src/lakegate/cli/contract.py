"""``lakegate contract ...``: show, diff, history, activate, rollback, export, import and learn contracts.

The registry is the one a spec names (``--spec``: its ``contract_registry`` or
``<data dir>/contracts.db``), a SQLAlchemy URL (``--registry``), or ``./lakegate-data/contracts.db``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lakegate.cli.render import render_table
from lakegate.contracts.decisions import CONTRACT_LEARNED, Decision
from lakegate.contracts.diff import describe_thresholds, fmt_value
from lakegate.contracts.model import Contract
from lakegate.contracts.registry import DEFAULT_REGISTRY_URL, ContractRegistry
from lakegate.core.config import DEFAULT_DATA_DIR, CatalogSpec, load_spec
from lakegate.core.errors import ConfigError

if TYPE_CHECKING:
    from lakegate.contracts.learn import ContractLearner

LEARN_BATCH_ROWS = 65_536


def registry_url(spec_path: str | None, url: str | None) -> str:
    """``--registry`` if given, else the spec's registry, else the default SQLite file."""
    if url:
        return url
    if spec_path:
        spec = load_spec(spec_path)
        return spec.contract_registry or f"sqlite:///{(spec.data_dir / 'contracts.db').resolve()}"
    return DEFAULT_REGISTRY_URL


def _registry(args: argparse.Namespace) -> ContractRegistry:
    return ContractRegistry(registry_url(args.spec, args.registry))


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _current(registry: ContractRegistry, dataset: str, version: int | None) -> Contract:
    """The given version, else the active one, else the latest."""
    if version is not None:
        return registry.get(dataset, version)
    return registry.active(dataset) or registry.get(dataset)


def _table(columns: dict[str, list[str]], limit: int = 10_000) -> str:
    return render_table(pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), limit=limit)


def render_contract(contract: Contract, active_version: int | None) -> str:
    """A contract for a terminal: header, provenance, fields, rules with thresholds, policies."""
    marker = "active" if contract.version == active_version else "not active"
    meta, prov = contract.metadata, contract.provenance
    out = [
        f"contract {contract.dataset} v{contract.version} [{marker}]  fingerprint {contract.fingerprint()}"
        f"  status {meta.status}  owner {meta.owner or '-'}"
    ]
    if meta.description:
        out.append(f"  {meta.description}")
    origin = [f"reason: {prov.reason or '-'}"]
    if prov.learned_from_rows:
        origin.append(f"learned from {prov.learned_from_rows:,} rows")
    if prov.first_event_time or prov.last_event_time:
        origin.append(f"events {prov.first_event_time} .. {prov.last_event_time}")
    if prov.learned_at:
        origin.append(f"at {prov.learned_at:%Y-%m-%d %H:%M:%S %Z}")
    origin += [f"{k} {v}" for k, v in (("source", prov.source), ("parent", prov.parent_version)) if v is not None]
    out.append("  " + "; ".join(origin))
    keys = contract.schema_.keys
    out.append(f"\nfields ({len(contract.schema_.fields)}; keys: {', '.join(keys) or '-'}):")
    pii = contract.policies.pii
    out.append(
        _table(
            {
                "name": [f.name for f in contract.schema_.fields],
                "type": [f.type for f in contract.schema_.fields],
                "nullable": ["yes" if f.nullable else "no" for f in contract.schema_.fields],
                "key": ["key" if f.name in keys else "" for f in contract.schema_.fields],
                "pii": [pii.get(f.name, "") for f in contract.schema_.fields],
            }
        )
    )
    out.append(f"\nrules ({len(contract.rules)}):")
    rules = contract.rules
    out.append(
        _table(
            {
                "id": [r.id for r in rules],
                "kind": [r.kind for r in rules],
                "columns": [",".join(r.columns) for r in rules],
                "allowed": [describe_thresholds(r) for r in rules],
                "action": [contract.action_of(r) for r in rules],
                "severity": [r.severity for r in rules],
                "origin": [r.origin for r in rules],
                "support": ["" if r.support is None else f"{r.support:,}" for r in rules],
                "confidence": ["" if r.confidence is None else fmt_value(r.confidence, 4) for r in rules],
            }
        )
    )
    policies = contract.policies
    retention = f"{policies.retention_days} days" if policies.retention_days is not None else "-"
    out.append(
        f"\npolicies: quarantine {', '.join(policies.quarantine) or '-'}; alert {', '.join(policies.alert) or '-'};"
        f" retention {retention}"
    )
    return "\n".join(out)


def cmd_show(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        contract = _current(registry, args.dataset, args.version)
        print(render_contract(contract, registry.active_version(args.dataset)))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        print(registry.diff(args.dataset, args.v1, args.v2).render())
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        entries = registry.history(args.dataset)
        active = registry.active_version(args.dataset)
    if not entries:
        print(f"no contract for {args.dataset}")
        return 1
    for e in entries:
        when = f"{e.at:%Y-%m-%d %H:%M:%S}Z"
        if e.event == "registered":
            parent = f" from v{e.previous_version}" if e.previous_version is not None else ""
            detail = f"{e.rules} rules, fingerprint {e.fingerprint}" if e.rules is not None else f"{e.fingerprint}"
            source = f", source {e.source}" if e.source else ""
            print(f"{when}  registered   v{e.version}{parent}  by {e.actor}: {e.reason or '-'} ({detail}{source})")
        else:
            was = f" (was v{e.previous_version})" if e.previous_version is not None else ""
            label = "activated  " if e.event == "activated" else "rolled back"
            print(f"{when}  {label}  v{e.version}{was}  by {e.actor}: {e.reason or '-'}")
    print(f"active: v{active}" if active is not None else "active: none")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        previous = registry.active_version(args.dataset)
        registry.activate(args.dataset, args.version, actor=args.actor, reason=args.reason)
    if previous == args.version:
        print(f"{args.dataset}: contract v{args.version} is already active")
    else:
        was = f" (was v{previous})" if previous is not None else ""
        print(f"{args.dataset}: contract v{args.version} is active{was}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        previous = registry.active_version(args.dataset)
        contract = registry.rollback(args.dataset, args.to, actor=args.actor, reason=args.reason)
    print(
        f"{args.dataset}: rolled back from contract v{previous} to v{contract.version}"
        f" (undo: lakegate contract activate {args.dataset} {previous})"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lakegate.contracts.odcs import export_odcs

    with _registry(args) as registry:
        contract = _current(registry, args.dataset, args.version)
    text = export_odcs(contract)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output} ({args.dataset} v{contract.version}, {len(contract.rules)} rules)")
    else:
        sys.stdout.write(text)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from lakegate.contracts.odcs import read_contract_file

    contract = read_contract_file(args.file, dataset=args.dataset)
    with _registry(args) as registry:
        before = registry.latest_version(contract.dataset)
        stored = registry.register(contract, actor=args.actor)
        if stored.version == before:
            print(f"{stored.dataset}: identical to v{stored.version}; nothing new registered")
        else:
            print(f"{stored.dataset}: registered v{stored.version} ({len(stored.rules)} rules) from {args.file}")
        if args.activate:
            registry.activate(stored.dataset, stored.version, actor=args.actor, reason=f"imported from {args.file}")
            print(f"{stored.dataset}: contract v{stored.version} is active")
    return 0


def _learn_rows(args: argparse.Namespace) -> tuple[ContractLearner, int, str]:
    """Learn from an Iceberg table; returns (the learner, rows observed, table identifier)."""
    from pyiceberg.exceptions import NoSuchTableError

    from lakegate.contracts.api import LearnConfig
    from lakegate.contracts.learn import ContractLearner
    from lakegate.sinks.catalog import open_catalog

    identifier = args.from_table
    if "." not in identifier:
        raise ConfigError(f"--from-table {identifier!r}: name it NAMESPACE.TABLE")
    if args.spec:
        spec = load_spec(args.spec)
        catalog = open_catalog(spec.catalog, spec.data_dir)
    else:
        catalog = open_catalog(CatalogSpec(), DEFAULT_DATA_DIR)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError as err:
        raise ConfigError(f"--from-table {identifier}: no such table") from err
    learner = ContractLearner(args.dataset, LearnConfig())
    rows = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in table.scan().to_arrow_batch_reader():
        if args.limit is not None and rows + pending_rows + batch.num_rows > args.limit:
            batch = batch.slice(0, max(args.limit - rows - pending_rows, 0))
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= LEARN_BATCH_ROWS:
            learner.observe(pa.Table.from_batches(pending))
            rows, pending, pending_rows = rows + pending_rows, [], 0
        if args.limit is not None and rows + pending_rows >= args.limit:
            break
    if pending_rows:
        learner.observe(pa.Table.from_batches(pending))
        rows += pending_rows
    return learner, rows, identifier


def cmd_learn(args: argparse.Namespace) -> int:
    learner, rows, identifier = _learn_rows(args)
    if rows == 0:
        raise ConfigError(f"--from-table {identifier}: the table has no rows to learn from")
    with _registry(args) as registry:
        base = registry.active(args.dataset)
        if base is None and registry.latest_version(args.dataset) is not None:
            base = registry.get(args.dataset)
        before = registry.latest_version(args.dataset)
        contract = learner.build(base, source=f"iceberg:{identifier}", reason=f"learned from {identifier}")
        stored = registry.register(contract, actor=args.actor)
        if stored.version == before:
            print(f"{args.dataset}: learned contract is identical to v{stored.version}; nothing new registered")
            return 0
        per_kind: dict[str, int] = {}
        for rule in stored.rules:
            per_kind[rule.kind] = per_kind.get(rule.kind, 0) + 1
        registry.record_decision(
            Decision(
                dataset=args.dataset,
                kind=CONTRACT_LEARNED,
                summary=f"{args.dataset}: learned contract v{stored.version} from {rows:,} rows of {identifier}",
                evidence={"table": identifier, "rows": rows, "rules_per_kind": per_kind, "parent": before},
                actor=args.actor,
                reversal=(
                    {"command": f"lakegate contract rollback {args.dataset}"}
                    if args.activate
                    else {"note": f"v{stored.version} is not active until `lakegate contract activate`"}
                ),
                contract_version=stored.version,
            )
        )
        print(
            f"{args.dataset}: learned v{stored.version} from {rows:,} rows of {identifier}: {len(stored.rules)} rules"
        )
        for kind, count in sorted(per_kind.items()):
            print(f"  {kind:<16} {count}")
        if args.activate:
            registry.activate(args.dataset, stored.version, actor=args.actor, reason=f"learned from {identifier}")
            print(f"{args.dataset}: contract v{stored.version} is active")
        else:
            print(f"activate it with: lakegate contract activate {args.dataset} {stored.version}")
    return 0


def add_contract_commands(subparsers: Any) -> None:
    """Add ``contract`` and its subcommands to the ``lakegate`` parser's subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--spec", help="pipeline spec whose contract registry to use")
    where.add_argument("--registry", help=f"SQLAlchemy URL of the registry (default {DEFAULT_REGISTRY_URL})")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--actor", default=_default_actor(), help="who does this (default: your user name)")

    p = subparsers.add_parser("contract", help="semantic contracts: show, diff, activate, rollback, ODCS")
    sub = p.add_subparsers(dest="contract_command", required=True)

    q = sub.add_parser("show", parents=[where], help="a contract: fields, rules and their thresholds")
    q.add_argument("dataset")
    q.add_argument("--version", type=int, help="default: the active version, else the latest")
    q.set_defaults(func=cmd_show)

    q = sub.add_parser("diff", parents=[where], help="fields and rules changed between two versions")
    q.add_argument("dataset")
    q.add_argument("v1", type=int)
    q.add_argument("v2", type=int)
    q.set_defaults(func=cmd_diff)

    q = sub.add_parser("history", parents=[where], help="versions, activations and rollbacks")
    q.add_argument("dataset")
    q.set_defaults(func=cmd_history)

    q = sub.add_parser("activate", parents=[where, who], help="make a version the active one")
    q.add_argument("dataset")
    q.add_argument("version", type=int)
    q.add_argument("--reason", default="activated from the command line")
    q.set_defaults(func=cmd_activate)

    q = sub.add_parser("rollback", parents=[where, who], help="return to the previously active version")
    q.add_argument("dataset")
    q.add_argument("--to", type=int, help="the version to return to (default: the previously active one)")
    q.add_argument("--reason", default="rolled back from the command line")
    q.set_defaults(func=cmd_rollback)

    q = sub.add_parser("export", parents=[where], help="a contract as ODCS v3 YAML")
    q.add_argument("dataset")
    q.add_argument("--version", type=int, help="default: the active version, else the latest")
    q.add_argument("-o", "--output", help="file to write (default: standard output)")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("import", parents=[where, who], help="register a contract from ODCS YAML or lakegate JSON")
    q.add_argument("file")
    q.add_argument("--dataset", help="dataset name (and the schema object to import, if several)")
    q.add_argument("--activate", action="store_true", help="make the imported version active")
    q.set_defaults(func=cmd_import)

    q = sub.add_parser("learn", parents=[where, who], help="learn a contract from an Iceberg table's rows")
    q.add_argument("dataset")
    q.add_argument("--from-table", required=True, metavar="NAMESPACE.TABLE")
    q.add_argument("--limit", type=int, help="learn from at most this many rows")
    q.add_argument("--activate", action="store_true", help="make the learned version active")
    q.set_defaults(func=cmd_learn)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``contract`` subcommands alone (``python -m lakegate.cli.contract show orders``)."""
    from lakegate.cli.main import main as lakegate_main  # main imports this module

    return lakegate_main(["contract", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
