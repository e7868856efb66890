"""``lakegate proposals ...``, ``lakegate audit`` and ``lakegate dlq replay``.

Review what schema intelligence proposed for an upstream change (list, show, approve, reject, revert),
read the decision log every automated and manual decision is appended to, and replay the dead letters
a fix released. The registry is found as for ``lakegate contract`` (``--spec`` or ``--registry``).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from lakegate.cli.contract import _default_actor, registry_url
from lakegate.cli.render import render_table
from lakegate.contracts.decisions import Decision
from lakegate.contracts.registry import DEFAULT_REGISTRY_URL, ContractRegistry, ProposalRecord
from lakegate.core.config import load_spec
from lakegate.core.errors import ConfigError
from lakegate.runtime.state import StateStore

_SINCE_UNITS = {"m": 60, "h": 3600, "d": 86400}


def _registry(args: argparse.Namespace) -> ContractRegistry:
    return ContractRegistry(registry_url(args.spec, args.registry))


def _table(columns: dict[str, list[Any]], limit: int = 10_000) -> str:
    return render_table(pa.table({k: pa.array([str(v) for v in vs], pa.string()) for k, vs in columns.items()}), limit)


def cmd_proposals_list(args: argparse.Namespace) -> int:
    proposals = _registry(args).proposals(dataset=args.dataset, status=args.status)
    if not proposals:
        print("no proposals")
        return 0
    print(
        _table(
            {
                "id": [p.id for p in proposals],
                "dataset": [p.dataset for p in proposals],
                "status": [p.status for p in proposals],
                "confidence": [f"{p.confidence:.2f}" if p.confidence is not None else "-" for p in proposals],
                "created": [f"{p.created_at:%Y-%m-%d %H:%M:%S}" for p in proposals],
                "mappings": ["; ".join(p.body.get("described", [])) for p in proposals],
            }
        )
    )
    return 0


def render_proposal(proposal: ProposalRecord) -> str:
    body = proposal.body
    decided = ""
    if proposal.decided_at:
        decided = f", {proposal.status} by {proposal.decided_by} at {proposal.decided_at:%H:%M:%S}"
    lines = [
        f"proposal {proposal.id}  {proposal.dataset}  [{proposal.status}]  confidence {proposal.confidence}",
        f"  upstream change: {proposal.signature}  (contract v{body.get('contract_version')})",
        f"  created {proposal.created_at:%Y-%m-%d %H:%M:%S %Z}{decided}",
    ]
    if body.get("held_because"):
        lines.append("  held because:")
        lines += [f"    - {reason}" for reason in body["held_because"]]
    lines.append("  mappings:")
    validation = body.get("validation", {})
    matches = {m["target"]: m for m in body.get("matches", [])}
    for described, mapping in zip(body.get("described", []), body.get("mappings", []), strict=False):
        target = mapping["target"]
        check = validation.get(target, {})
        match = matches.get(target, {})
        evidence = match.get("evidence", {})
        lines.append(f"    {described}")
        lines.append(
            f"      confidence {match.get('confidence')}  names: cosine {evidence.get('cosine')} lexical"
            f" {evidence.get('lexical')}  values: distance {evidence.get('best_distance')} overlap"
            f" {evidence.get('overlap')}" + ("  AMBIGUOUS" if match.get("ambiguous") else "")
        )
        for alternative in match.get("alternatives", []):
            lines.append(f"      rival: {alternative['target']} confidence {alternative['confidence']}")
        if check:
            lines.append(
                f"      validated on {check.get('rows')} rows: {check.get('valid_share', 0):.1%} transformed,"
                f" profile distance {check.get('profile_distance')}"
            )
            for pair in check.get("sample", []):
                lines.append(f"        {pair['before']!r} -> {pair['after']!r}")
    for key in ("still_missing", "unmatched_incoming"):
        if body.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {', '.join(body[key])}")
    if body.get("llm"):
        lines.append(f"  model asked: {json.dumps(body['llm'])[:400]}")
    return "\n".join(lines)


def cmd_proposals_show(args: argparse.Namespace) -> int:
    proposal = _registry(args).proposal(args.id)
    print(json.dumps(proposal.model_dump(mode="json"), indent=2) if args.json else render_proposal(proposal))
    return 0


def _switch_mappings(
    registry: ContractRegistry, proposal: ProposalRecord, mappings: list[dict[str, Any]], actor: str, verb: str
) -> int:
    """Register and activate the active contract with ``mappings`` instead; returns the new version."""
    current = registry.active(proposal.dataset)
    if current is None:
        raise ConfigError(f"{proposal.dataset} has no active contract to change for proposal {proposal.id}")
    stored = registry.register(current.with_mappings(mappings, f"mapping {proposal.id} {verb} by {actor}"), actor=actor)
    registry.activate(proposal.dataset, stored.version, actor=actor, reason=f"proposal {proposal.id} {verb}")
    return stored.version


def approve(
    registry: ContractRegistry, proposal_id: str, actor: str, applied_checkpoint: int | None = None
) -> tuple[ProposalRecord, int]:
    """Apply a held proposal: a new contract version carrying its mappings becomes active.

    ``applied_checkpoint``: the pipeline's next checkpoint, the first its mappings shape (for a revert).
    """
    proposal = registry.proposal(proposal_id)
    if proposal.status != "pending":
        raise ConfigError(f"proposal {proposal.id} is {proposal.status}; only a pending one can be approved")
    active = registry.active(proposal.dataset)
    carried = active.mappings if active else []
    version = _switch_mappings(registry, proposal, [*carried, *proposal.body.get("mappings", [])], actor, "approved")
    updated = registry.set_proposal_status(
        proposal.id, "applied", actor=actor, contract_version=version, applied_checkpoint=applied_checkpoint
    )
    registry.record_decision(
        Decision(
            dataset=proposal.dataset,
            kind="schema.mapping_approved",
            summary=f"{proposal.dataset}: {actor} approved {'; '.join(proposal.body.get('described', []))}"
            f" as contract v{version}",
            evidence={"proposal": proposal.id, "confidence": proposal.confidence},
            actor=actor,
            reversal={"command": f"lakegate proposals revert {proposal.id}"},
            contract_version=version,
        )
    )
    return updated, version


def _next_checkpoint(spec_path: str | None) -> int | None:
    if not spec_path:
        return None
    state = StateStore(load_spec(spec_path).state_dir)
    try:
        latest = state.latest_committed()
        return (latest.checkpoint_id if latest else 0) + 1
    finally:
        state.close()


def cmd_proposals_approve(args: argparse.Namespace) -> int:
    registry = _registry(args)
    proposal, version = approve(registry, args.id, args.actor, _next_checkpoint(args.spec))
    print(f"{proposal.dataset}: proposal {proposal.id} applied as contract v{version}")
    if args.replay:
        if not args.spec:
            raise ConfigError("--replay needs --spec (the pipeline whose dead letters to replay)")
        return _replay(args.spec, proposal=proposal.id)
    where = f"--spec {args.spec}" if args.spec else "--spec SPEC"
    print(f"rows held for it are in the dead-letter table: lakegate dlq replay {where} --proposal {proposal.id}")
    return 0


def cmd_proposals_reject(args: argparse.Namespace) -> int:
    registry = _registry(args)
    proposal = registry.set_proposal_status(args.id, "rejected", actor=args.actor)
    registry.record_decision(
        Decision(
            dataset=proposal.dataset,
            kind="schema.mapping_rejected",
            summary=f"{proposal.dataset}: {args.actor} rejected {'; '.join(proposal.body.get('described', []))}:"
            " the new fields flow on as new columns",
            evidence={"proposal": proposal.id, "note": args.note},
            actor=args.actor,
            reversal={"note": "approve a new proposal for the same change, or map it in the contract"},
            contract_version=proposal.body.get("contract_version"),
        )
    )
    print(f"{proposal.dataset}: proposal {proposal.id} rejected; its held rows stay in the dead-letter table")
    return 0


def revert(registry: ContractRegistry, proposal_id: str, actor: str) -> tuple[ProposalRecord, int]:
    """Take an applied proposal's mappings out of the active contract (a new version without them)."""
    proposal = registry.proposal(proposal_id)
    if proposal.status != "applied":
        raise ConfigError(f"proposal {proposal.id} is {proposal.status}; only an applied one can be reverted")
    active = registry.active(proposal.dataset)
    theirs = proposal.body.get("mappings", [])
    kept = [m for m in (active.mappings if active else []) if m not in theirs]
    version = _switch_mappings(registry, proposal, kept, actor, "reverted")
    updated = registry.set_proposal_status(proposal.id, "reverted", actor=actor, contract_version=version)
    registry.record_decision(
        Decision(
            dataset=proposal.dataset,
            kind="schema.mapping_reverted",
            summary=f"{proposal.dataset}: {actor} reverted {'; '.join(proposal.body.get('described', []))};"
            f" contract v{version} has it no more, and rows of that shape are held for review again",
            evidence={"proposal": proposal.id, "applied_in": proposal.contract_version},
            actor=actor,
            reversal={"command": f"lakegate contract activate {proposal.dataset} {proposal.contract_version}"},
            contract_version=version,
        )
    )
    return updated, version


def cmd_proposals_revert(args: argparse.Namespace) -> int:
    proposal, version = revert(_registry(args), args.id, args.actor)
    print(f"{proposal.dataset}: proposal {proposal.id} reverted; contract v{version} is active")
    start = proposal.body.get("applied_checkpoint")
    if args.spec and isinstance(start, int):
        state = StateStore(load_spec(args.spec).state_dir)
        try:
            state.add_rewind(proposal.dataset, start, f"proposal {proposal.id} reverted by {args.actor}")
        finally:
            state.close()
        print(
            f"the next run re-reads what {proposal.dataset}'s sources landed since checkpoint {start}, under"
            f" contract v{version} (rows of that shape wait for review)"
        )
    else:
        print("rows already landed through it stay; pass --spec to have the next run re-read them")
    return 0


def parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO timestamp (UTC when it has no offset)."""
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in _SINCE_UNITS:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _SINCE_UNITS[text[-1]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise ConfigError(f"--since: {text!r} is neither a duration like 2h / 7d nor an ISO timestamp") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    decisions = _registry(args).decisions(dataset=args.dataset, since=since, kind=args.kind)
    if args.json:
        for decision in decisions:
            print(decision.model_dump_json())
        return 0
    if not decisions:
        print("no decisions recorded")
        return 0
    shown = decisions[-args.limit :]
    print(
        _table(
            {
                "at": [f"{d.at:%Y-%m-%d %H:%M:%S}" for d in shown],
                "dataset": [d.dataset for d in shown],
                "kind": [d.kind for d in shown],
                "actor": [d.actor for d in shown],
                "v": [d.contract_version if d.contract_version is not None else "-" for d in shown],
                "summary": [d.summary[:110] for d in shown],
            }
        )
    )
    if len(decisions) > len(shown):
        print(f"({len(decisions) - len(shown)} earlier; --limit N or --since)")
    return 0


def _replay(spec_path: str, **selection: Any) -> int:
    from lakegate.runtime.replay import replay_dead_letters
    from lakegate.sources.replay import ReplayFilter

    spec = load_spec(spec_path)
    result = replay_dead_letters(spec, ReplayFilter(**selection))
    if result.summary is None:
        print("no open dead letters match (or all were replayed already)")
        return 0
    print(f"replayed {result.selected:,} dead letter(s)")
    print(result.summary.render())
    for skipped in result.skipped[:10]:
        print(f"  not replayable: {skipped['dlq_id']}: {skipped['reason']}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    return _replay(
        args.spec,
        proposal=args.proposal,
        reason=args.reason,
        dlq_ids=tuple(args.id or ()),
        target_table=args.table,
    )


def add_schema_commands(subparsers: Any, dlq_subparsers: Any) -> None:
    """Add ``proposals``, ``audit`` and ``dlq replay`` to the ``lakegate`` parser."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--spec", help="pipeline spec whose registry to use")
    where.add_argument("--registry", help=f"SQLAlchemy URL of the registry (default {DEFAULT_REGISTRY_URL})")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--actor", default=_default_actor(), help="who decides (default: your user name)")

    p = subparsers.add_parser("proposals", help="schema-change proposals: list, show, approve, reject, revert")
    sub = p.add_subparsers(dest="proposals_command", required=True)
    q = sub.add_parser("list", parents=[where], help="proposals with their status and mappings")
    q.add_argument("--dataset")
    q.add_argument("--status", choices=["pending", "applied", "rejected", "reverted"])
    q.set_defaults(func=cmd_proposals_list)
    q = sub.add_parser("show", parents=[where], help="a proposal's mappings, programs and evidence")
    q.add_argument("id", help="proposal id (a unique prefix is enough)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_proposals_show)
    q = sub.add_parser("approve", parents=[where, who], help="apply a held proposal (new contract version)")
    q.add_argument("id")
    q.add_argument("--replay", action="store_true", help="then replay the rows held for it (needs --spec)")
    q.set_defaults(func=cmd_proposals_approve)
    q = sub.add_parser("reject", parents=[where, who], help="refuse a held proposal")
    q.add_argument("id")
    q.add_argument("--note", default="")
    q.set_defaults(func=cmd_proposals_reject)
    q = sub.add_parser("revert", parents=[where, who], help="take an applied proposal out of the contract")
    q.add_argument("id")
    q.set_defaults(func=cmd_proposals_revert)

    p = subparsers.add_parser("audit", parents=[where], help="the decision log: every automated and manual decision")
    p.add_argument("--since", help="30m, 2h, 7d, or an ISO timestamp")
    p.add_argument("--dataset")
    p.add_argument("--kind", help="e.g. schema.mapping_applied, mode.enforce, alert.drift")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON decision per line (evidence, prompt/response)")
    p.set_defaults(func=cmd_audit)

    q = dlq_subparsers.add_parser("replay", help="run open dead letters through the pipeline again (exactly once)")
    q.add_argument("--spec", required=True)
    q.add_argument("--proposal", help="the rows held for this proposal")
    q.add_argument("--reason", help="a reason code, e.g. schema_held, contract_violation")
    q.add_argument("--table", help="only dead letters of this target table")
    q.add_argument("--id", action="append", help="a dead letter id (repeatable)")
    q.set_defaults(func=cmd_dlq_replay)
