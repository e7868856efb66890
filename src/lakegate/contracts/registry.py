"""The contract registry: immutable versions per dataset, which one is active, and the decision log.

Storage is SQLAlchemy Core over SQLite (default, a file under the pipeline's data dir) or
PostgreSQL (by URL). Three append-only tables:

* ``contract_versions`` (dataset, version) -> the contract as JSON, its fingerprint, who stored it
  and why. A version is never changed or deleted; a change is a new version.
* ``contract_activations``: every activation and rollback, in order. The active version is found by
  replaying them (activate pushes, rollback pops back), so it is independent of any pipeline
  checkpoint and every past state can be explained.
* ``decisions``: every recorded decision (:class:`~lakegate.contracts.decisions.Decision`).

Version numbers are assigned in a transaction and guarded by the (dataset, version) primary key; a
writer that loses the race retries with the next number.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from lakegate.contracts.decisions import CONTRACT_ACTIVATED, CONTRACT_ROLLED_BACK, Decision
from lakegate.contracts.diff import ContractDiff, diff_contracts
from lakegate.contracts.model import Contract
from lakegate.core.errors import ConfigError, MissingExtraError, TerminalError, TransientError

log = logging.getLogger(__name__)

CONTRACT_FORMAT_VERSION = 1
"""The layout of a stored or exported contract this lakegate writes and the newest it reads."""
DEFAULT_REGISTRY_URL = "sqlite:///lakegate-data/contracts.db"
_RETRIES = 25


class ContractNotFoundError(TerminalError):
    """No contract (or no such version, or no active version) for a dataset."""


class HistoryEntry(BaseModel):
    """One event in a dataset's contract history."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    event: Literal["registered", "activated", "rolled_back"]
    version: int
    actor: str
    reason: str | None = None
    previous_version: int | None = None
    """For an activation or rollback, the version active before; for a registration, the parent."""
    fingerprint: str | None = None
    source: str | None = None
    rules: int | None = None


def validation_lines(err: ValidationError) -> str:
    """Each error of ``err`` as ``  field.path: message`` (unknown fields called so)."""
    lines = []
    for e in err.errors(include_url=False):
        location = ".".join(str(part) for part in e["loc"]) or "(top level)"
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


def parse_contract(data: Any, origin: str) -> Contract:
    """Validate a contract document: the JSON form of :class:`Contract`, plus ``format_version``.

    Raises:
        ConfigError: naming ``origin`` and each bad field; or the document was written by a newer
            lakegate (its ``format_version`` is above :data:`CONTRACT_FORMAT_VERSION`).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: a contract is a mapping, got {type(data).__name__}")
    body = dict(data)
    format_version = body.pop("format_version", CONTRACT_FORMAT_VERSION)
    if not isinstance(format_version, int) or isinstance(format_version, bool):
        raise ConfigError(f"{origin}: format_version: must be an integer, got {format_version!r}")
    if format_version > CONTRACT_FORMAT_VERSION:
        raise ConfigError(
            f"{origin}: format_version: {format_version} was written by a newer lakegate"
            f" (this one reads up to {CONTRACT_FORMAT_VERSION}); upgrade lakegate to read it"
        )
    try:
        return Contract.model_validate(body)
    except ValidationError as err:
        raise ConfigError(f"{origin}: invalid contract:\n{validation_lines(err)}") from err


def contract_document(contract: Contract) -> dict[str, Any]:
    """The JSON-able form of ``contract`` with its ``format_version`` (what :func:`parse_contract` reads)."""
    return {"format_version": CONTRACT_FORMAT_VERSION, **contract.model_dump(mode="json", by_alias=True)}


def _ts(moment: datetime) -> str:
    """Fixed-width ISO-8601 in UTC: sorts as text in every database."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return _ts(datetime.now(UTC))


def _active_stack(events: Sequence[tuple[str, int]]) -> list[int]:
    """Replay activations: activate pushes a version, rollback returns to it (or pushes it)."""
    stack: list[int] = []
    for kind, version in events:
        if kind == "rolled_back" and version in stack:
            del stack[len(stack) - stack[::-1].index(version) :]  # keep up to its last occurrence
        elif not stack or stack[-1] != version:
            stack.append(version)
    return stack


class ContractRegistry:
    """Versioned contracts and decisions of every dataset, in SQLite or PostgreSQL.

    Args:
        url: a SQLAlchemy URL, ``sqlite:///path/contracts.db`` or
            ``postgresql+psycopg2://user@host/db``.
        schema: a database schema for the tables (PostgreSQL only).

    Raises:
        ConfigError: the URL is not valid.
        MissingExtraError: the database driver is not installed.
        TransientError: the database cannot be reached.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as err:
            raise ConfigError(f"contract registry URL {url!r} is not a SQLAlchemy URL: {err}") from err
        self.url = parsed.render_as_string(hide_password=True)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        if self._sqlite and schema:
            raise ConfigError(f"contract registry {self.url}: a schema is for PostgreSQL, not SQLite")
        self._engine = self._create_engine(parsed)
        metadata = MetaData(schema=schema)
        self._versions = Table(
            "contract_versions",
            metadata,
            Column("dataset", String(255), primary_key=True),
            Column("version", Integer, primary_key=True, autoincrement=False),
            Column("fingerprint", String(64), nullable=False),
            Column("format_version", Integer, nullable=False),
            Column("created_at", String(40), nullable=False),
            Column("actor", String(255), nullable=False),
            Column("reason", Text),
            Column("body", Text, nullable=False),
        )
        self._activations = Table(
            "contract_activations",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("dataset", String(255), nullable=False, index=True),
            Column("version", Integer, nullable=False),
            Column("event", String(20), nullable=False),
            Column("previous_version", Integer),
            Column("at", String(40), nullable=False),
            Column("actor", String(255), nullable=False),
            Column("reason", Text),
            ForeignKeyConstraint(
                ["dataset", "version"],
                [self._versions.c.dataset, self._versions.c.version],
            ),
        )
        self._decisions = Table(
            "decisions",
            metadata,
            Column("seq", Integer, primary_key=True, autoincrement=True),
            Column("id", String(64), nullable=False, unique=True),
            Column("at", String(40), nullable=False, index=True),
            Column("dataset", String(255), nullable=False, index=True),
            Column("kind", String(64), nullable=False),
            Column("actor", String(255), nullable=False),
            Column("contract_version", Integer),
            Column("record", Text, nullable=False),
        )
        self._proposals = Table(
            "proposals",
            metadata,
            Column("id", String(64), primary_key=True),
            Column("dataset", String(255), nullable=False, index=True),
            Column("signature", String(255), nullable=False),
            Column("created_at", String(40), nullable=False),
            Column("status", String(20), nullable=False),
            Column("confidence", Float),
            Column("decided_at", String(40)),
            Column("decided_by", String(255)),
            Column("contract_version", Integer),
            Column("body", Text, nullable=False),
        )
        self._create_tables(metadata, schema)

    # -- set-up -------------------------------------------------------------------------------

    def _create_engine(self, parsed: URL) -> Engine:
        if not self._sqlite:
            try:
                return create_engine(parsed, pool_pre_ping=True)
            except ModuleNotFoundError as err:
                raise MissingExtraError(err.name or parsed.drivername, "postgres") from err
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # Take the write lock up front: read-then-write transactions never deadlock.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _create_tables(self, metadata: MetaData, schema: str | None) -> None:
        for attempt in range(3):
            try:
                with self._tx() as conn:
                    if schema:
                        quoted = conn.dialect.identifier_preparer.quote_schema(schema)
                        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
                    metadata.create_all(conn, checkfirst=True)
                return
            except (IntegrityError, ProgrammingError) as err:  # another process created them first
                if attempt == 2:
                    raise TerminalError(f"contract registry {self.url}: cannot create tables: {err}") from err

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except OperationalError as err:
            raise TransientError(f"contract registry {self.url}: {err.orig or err}") from err

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> ContractRegistry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- versions -----------------------------------------------------------------------------

    def register(self, contract: Contract, *, actor: str = "lakegate") -> Contract:
        """Store ``contract`` as the dataset's next version (its ``version`` field is ignored).

        Content identical to the latest version (same :meth:`Contract.fingerprint`) is not stored
        again: the latest version is returned. A new version's ``provenance.parent_version``
        defaults to the version it follows.

        Raises:
            TransientError: the database is unreachable, or the version race was lost too often.
        """
        if not contract.dataset:
            raise ConfigError("a contract needs a dataset name to be registered")
        fingerprint = contract.fingerprint()
        v = self._versions
        for attempt in range(_RETRIES):
            try:
                with self._tx() as conn:
                    latest = conn.execute(
                        select(v.c.version, v.c.fingerprint)
                        .where(v.c.dataset == contract.dataset)
                        .order_by(v.c.version.desc())
                        .limit(1)
                    ).first()
                    if latest is not None and latest.fingerprint == fingerprint:
                        return self._get(conn, contract.dataset, latest.version)
                    number = (latest.version if latest is not None else 0) + 1
                    provenance = contract.provenance
                    if provenance.parent_version is None and latest is not None:
                        provenance = provenance.model_copy(update={"parent_version": latest.version})
                    stored = contract.model_copy(update={"version": number, "provenance": provenance})
                    body = stored.to_json().decode()
                    conn.execute(
                        insert(v).values(
                            dataset=contract.dataset,
                            version=number,
                            fingerprint=fingerprint,
                            format_version=CONTRACT_FORMAT_VERSION,
                            created_at=_now(),
                            actor=actor,
                            reason=provenance.reason,
                            body=body,
                        )
                    )
                log.info("registered contract %s v%d (%s)", contract.dataset, number, fingerprint)
                return self._decode(contract.dataset, number, CONTRACT_FORMAT_VERSION, body)
            except IntegrityError:  # another writer took this number: try the next one
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # noqa: S311 - jitter, not crypto
        raise TransientError(
            f"contract registry {self.url}: could not assign a version to {contract.dataset!r}"
            f" after {_RETRIES} attempts (too many concurrent writers)"
        )

    def get(self, dataset: str, version: int | None = None) -> Contract:
        """A stored version (the latest when ``version`` is None).

        Raises:
            ContractNotFoundError: no such dataset or version.
            TerminalError: the stored contract is unreadable (names the dataset, version and field).
        """
        with self._tx() as conn:
            return self._get(conn, dataset, version)

    def _get(self, conn: Connection, dataset: str, version: int | None) -> Contract:
        v = self._versions
        query = select(v.c.version, v.c.format_version, v.c.body).where(v.c.dataset == dataset)
        if version is not None:
            query = query.where(v.c.version == version)
        row = conn.execute(query.order_by(v.c.version.desc()).limit(1)).first()
        if row is None:
            which = f"version {version}" if version is not None else "any version"
            known = self._version_list(conn, dataset)
            hint = f" (versions: {', '.join(map(str, known))})" if known else ""
            raise ContractNotFoundError(f"no contract for dataset {dataset!r}, {which}{hint}")
        return self._decode(dataset, row.version, row.format_version, row.body)

    def _decode(self, dataset: str, version: int, format_version: int, body: str | bytes) -> Contract:
        where = f"contract registry {self.url}: dataset {dataset!r} version {version}"
        if format_version > CONTRACT_FORMAT_VERSION:
            raise TerminalError(
                f"{where}: stored in format {format_version} by a newer lakegate"
                f" (this one reads up to {CONTRACT_FORMAT_VERSION}); upgrade lakegate"
            )
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise TerminalError(f"{where}: stored contract is not valid JSON: {err}") from err
        try:
            contract = Contract.model_validate(data)
        except ValidationError as err:
            raise TerminalError(f"{where}: stored contract is invalid:\n{validation_lines(err)}") from err
        if contract.dataset != dataset or contract.version != version:
            raise TerminalError(
                f"{where}: stored contract says dataset {contract.dataset!r} version {contract.version}"
            )
        return contract

    def _version_list(self, conn: Connection, dataset: str) -> list[int]:
        v = self._versions
        rows = conn.execute(select(v.c.version).where(v.c.dataset == dataset).order_by(v.c.version))
        return [r.version for r in rows]

    def versions(self, dataset: str) -> list[int]:
        """The stored version numbers of ``dataset``, oldest first."""
        with self._tx() as conn:
            return self._version_list(conn, dataset)

    def datasets(self) -> list[str]:
        """Every dataset with at least one stored version."""
        v = self._versions
        with self._tx() as conn:
            return [r.dataset for r in conn.execute(select(v.c.dataset).distinct().order_by(v.c.dataset))]

    def latest_version(self, dataset: str) -> int | None:
        v = self._versions
        with self._tx() as conn:
            value = conn.execute(select(func.max(v.c.version)).where(v.c.dataset == dataset)).scalar()
        return None if value is None else int(value)

    def history(self, dataset: str) -> list[HistoryEntry]:
        """Registrations (with provenance and reason) and activations/rollbacks, oldest first."""
        v, a = self._versions, self._activations
        entries: list[tuple[str, int, HistoryEntry]] = []
        with self._tx() as conn:
            for row in conn.execute(select(v).where(v.c.dataset == dataset)):
                source: str | None = None
                parent: int | None = None
                rules: int | None = None
                reason = row.reason
                try:
                    contract = self._decode(dataset, row.version, row.format_version, row.body)
                    source, parent, rules = (
                        contract.provenance.source,
                        contract.provenance.parent_version,
                        len(contract.rules),
                    )
                except TerminalError as err:  # history still shows an unreadable version
                    reason = f"{reason or ''} [unreadable: {str(err).splitlines()[0]}]".strip()
                entry = HistoryEntry(
                    at=datetime.fromisoformat(row.created_at),
                    event="registered",
                    version=row.version,
                    actor=row.actor,
                    reason=reason,
                    previous_version=parent,
                    fingerprint=row.fingerprint,
                    source=source,
                    rules=rules,
                )
                entries.append((row.created_at, 0, entry))
            for row in conn.execute(select(a).where(a.c.dataset == dataset).order_by(a.c.id)):
                entry = HistoryEntry(
                    at=datetime.fromisoformat(row.at),
                    event=row.event,
                    version=row.version,
                    actor=row.actor,
                    reason=row.reason,
                    previous_version=row.previous_version,
                )
                entries.append((row.at, row.id, entry))
        entries.sort(key=lambda item: (item[0], item[1]))
        return [entry for _, _, entry in entries]

    # -- activation ---------------------------------------------------------------------------

    def _stack(self, conn: Connection, dataset: str) -> list[int]:
        a = self._activations
        rows = conn.execute(select(a.c.event, a.c.version).where(a.c.dataset == dataset).order_by(a.c.id))
        return _active_stack([(r.event, r.version) for r in rows])

    def active_version(self, dataset: str) -> int | None:
        with self._tx() as conn:
            stack = self._stack(conn, dataset)
        return stack[-1] if stack else None

    def active(self, dataset: str) -> Contract | None:
        """The active version of ``dataset``, or None if none was ever activated."""
        with self._tx() as conn:
            stack = self._stack(conn, dataset)
            return self._get(conn, dataset, stack[-1]) if stack else None

    def resolve(self, dataset: str, pin: int | None) -> Contract | None:
        """What a pipeline enforces: the pinned version, else the active one (None if there is none).

        Raises:
            ContractNotFoundError: the pinned version does not exist.
        """
        return self.get(dataset, pin) if pin is not None else self.active(dataset)

    def activate(self, dataset: str, version: int, *, actor: str, reason: str) -> Contract:
        """Make ``version`` the active one; recorded as an activation and a decision.

        Activating the version that is already active changes nothing.

        Raises:
            ContractNotFoundError: no such version.
        """
        with self._tx() as conn:
            contract = self._get(conn, dataset, version)
            stack = self._stack(conn, dataset)
            previous = stack[-1] if stack else None
            if previous == version:
                return contract
            undo = (
                {"command": f"lakegate contract rollback {dataset} --to {previous}"}
                if previous is not None
                else {"note": f"first activation of {dataset}; activate another version to replace it"}
            )
            self._record_switch(
                conn,
                contract,
                "activated",
                previous,
                actor,
                reason,
                Decision(
                    dataset=dataset,
                    kind=CONTRACT_ACTIVATED,
                    summary=f"{dataset}: contract v{version} active"
                    + (f" (was v{previous})" if previous is not None else ""),
                    evidence={"reason": reason, "previous_version": previous, "fingerprint": contract.fingerprint()},
                    actor=actor,
                    reversal=undo,
                    contract_version=version,
                ),
            )
        log.info("%s: contract v%d active (was %s) by %s", dataset, version, previous, actor)
        return contract

    def rollback(self, dataset: str, to_version: int | None = None, *, actor: str, reason: str) -> Contract:
        """Repoint the active version: to the previously active one, or to ``to_version``.

        Nothing is deleted; the rollback is itself recorded (and can be undone by activating the
        version it replaced). Independent of any pipeline checkpoint.

        Raises:
            ContractNotFoundError: nothing is active, or ``to_version`` does not exist.
            ConfigError: there is no earlier active version, or ``to_version`` is already active.
        """
        with self._tx() as conn:
            stack = self._stack(conn, dataset)
            if not stack:
                raise ContractNotFoundError(f"{dataset!r} has no active contract to roll back")
            current = stack[-1]
            if to_version is None:
                if len(stack) < 2:
                    raise ConfigError(
                        f"{dataset}: v{current} is the first active version; nothing earlier to roll"
                        " back to (name a version with --to N)"
                    )
                to_version = stack[-2]
            if to_version == current:
                raise ConfigError(f"{dataset}: v{current} is already the active version")
            contract = self._get(conn, dataset, to_version)
            self._record_switch(
                conn,
                contract,
                "rolled_back",
                current,
                actor,
                reason,
                Decision(
                    dataset=dataset,
                    kind=CONTRACT_ROLLED_BACK,
                    summary=f"{dataset}: rolled back from contract v{current} to v{to_version}",
                    evidence={"reason": reason, "from_version": current, "fingerprint": contract.fingerprint()},
                    actor=actor,
                    reversal={"command": f"lakegate contract activate {dataset} {current}"},
                    contract_version=to_version,
                ),
            )
        log.info("%s: contract rolled back from v%d to v%d by %s", dataset, current, to_version, actor)
        return contract

    def _record_switch(
        self,
        conn: Connection,
        contract: Contract,
        kind: Literal["activated", "rolled_back"],
        previous: int | None,
        actor: str,
        reason: str,
        decision: Decision,
    ) -> None:
        conn.execute(
            insert(self._activations).values(
                dataset=contract.dataset,
                version=contract.version,
                event=kind,
                previous_version=previous,
                at=_ts(decision.at),
                actor=actor,
                reason=reason,
            )
        )
        self._insert_decision(conn, decision)

    def diff(self, dataset: str, v1: int, v2: int) -> ContractDiff:
        """Fields and rules added, removed and changed from ``v1`` to ``v2`` (with thresholds).

        Raises:
            ContractNotFoundError: either version does not exist.
        """
        with self._tx() as conn:
            old, new = self._get(conn, dataset, v1), self._get(conn, dataset, v2)
        return diff_contracts(old, new)

    # -- decisions ----------------------------------------------------------------------------

    def record_decision(self, decision: Decision) -> Decision:
        """Append ``decision`` to the decision log (a decision with the same id is refused)."""
        try:
            with self._tx() as conn:
                self._insert_decision(conn, decision)
        except IntegrityError as err:
            raise TerminalError(f"decision {decision.id} is already recorded; decisions are immutable") from err
        return decision

    def _insert_decision(self, conn: Connection, decision: Decision) -> None:
        conn.execute(
            insert(self._decisions).values(
                id=decision.id,
                at=_ts(decision.at),
                dataset=decision.dataset,
                kind=decision.kind,
                actor=decision.actor,
                contract_version=decision.contract_version,
                record=decision.model_dump_json(),
            )
        )

    def decisions(
        self, dataset: str | None = None, since: datetime | None = None, kind: str | None = None
    ) -> list[Decision]:
        """Recorded decisions, oldest first, optionally of one dataset, kind, or from ``since`` on.

        Raises:
            ConfigError: ``since`` is a naive datetime.
            TerminalError: a stored record is unreadable (names its id).
        """
        d = self._decisions
        query = select(d.c.id, d.c.record).order_by(d.c.at, d.c.seq)
        if dataset is not None:
            query = query.where(d.c.dataset == dataset)
        if kind is not None:
            query = query.where(d.c.kind == kind)
        if since is not None:
            if since.tzinfo is None:
                raise ConfigError("decisions(since=...): give a timezone-aware datetime")
            query = query.where(d.c.at >= _ts(since))
        with self._tx() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            try:
                out.append(Decision.model_validate_json(row.record))
            except ValidationError as err:
                raise TerminalError(
                    f"contract registry {self.url}: decision {row.id} is unreadable:\n{validation_lines(err)}"
                ) from err
        return out

    # -- proposals ----------------------------------------------------------------------------

    def add_proposal(self, proposal: ProposalRecord) -> ProposalRecord:
        """Store a schema-change proposal (its body is immutable; only its status moves on)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(self._proposals).values(
                        id=proposal.id,
                        dataset=proposal.dataset,
                        signature=proposal.signature,
                        created_at=_ts(proposal.created_at),
                        status=proposal.status,
                        confidence=proposal.confidence,
                        decided_at=_ts(proposal.decided_at) if proposal.decided_at else None,
                        decided_by=proposal.decided_by,
                        contract_version=proposal.contract_version,
                        body=orjson.dumps(proposal.body).decode(),
                    )
                )
        except IntegrityError as err:
            raise TerminalError(f"proposal {proposal.id} is already stored") from err
        return proposal

    def proposals(self, dataset: str | None = None, status: str | None = None) -> list[ProposalRecord]:
        """Stored proposals, oldest first, optionally of one dataset or status."""
        p = self._proposals
        query = select(p).order_by(p.c.created_at, p.c.id)
        if dataset is not None:
            query = query.where(p.c.dataset == dataset)
        if status is not None:
            query = query.where(p.c.status == status)
        with self._tx() as conn:
            return [_proposal_of(row) for row in conn.execute(query).all()]

    def proposal(self, proposal_id: str) -> ProposalRecord:
        """Raises: TerminalError when no proposal has this id (or a unique prefix of it)."""
        p = self._proposals
        with self._tx() as conn:
            rows = conn.execute(select(p).where(p.c.id.startswith(proposal_id, autoescape=True))).all()
        if len(rows) != 1:
            found = "no" if not rows else f"{len(rows)}"
            raise TerminalError(f"{found} proposal(s) match {proposal_id!r}; see `lakegate proposals list`")
        return _proposal_of(rows[0])

    def set_proposal_status(
        self,
        proposal_id: str,
        status: ProposalStatus,
        *,
        actor: str,
        contract_version: int | None = None,
        applied_checkpoint: int | None = None,
    ) -> ProposalRecord:
        """Move a proposal on (``pending`` -> ``applied``/``rejected``; ``applied`` -> ``reverted``).

        ``applied_checkpoint``: the first pipeline checkpoint whose rows the mapping shapes (kept in the
        body, so a revert can re-read what the mapping touched).
        """
        current = self.proposal(proposal_id)
        allowed = {"pending": {"applied", "rejected"}, "applied": {"reverted"}}
        if status not in allowed.get(current.status, set()):
            raise TerminalError(f"proposal {current.id} is {current.status}; it cannot become {status}")
        values: dict[str, Any] = {"status": status, "decided_at": _now(), "decided_by": actor}
        if contract_version is not None:
            values["contract_version"] = contract_version
        if applied_checkpoint is not None:
            values["body"] = orjson.dumps({**current.body, "applied_checkpoint": applied_checkpoint}).decode()
        with self._tx() as conn:
            conn.execute(update(self._proposals).where(self._proposals.c.id == current.id).values(**values))
        return self.proposal(current.id)


ProposalStatus = Literal["pending", "applied", "rejected", "reverted"]


class ProposalRecord(BaseModel):
    """A stored schema-change proposal: what schema intelligence suggested and where it stands."""

    id: str
    dataset: str
    signature: str
    """Which upstream change it answers (the unmatched incoming and contract fields)."""
    created_at: datetime
    status: ProposalStatus = "pending"
    confidence: float | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    contract_version: int | None = None
    """The contract version that applied it."""
    body: dict[str, Any] = Field(default_factory=dict)
    """Mappings, programs, evidence, validation and, where a model was asked, prompt and response."""


def _proposal_of(row: Any) -> ProposalRecord:
    return ProposalRecord(
        id=row.id,
        dataset=row.dataset,
        signature=row.signature,
        created_at=datetime.fromisoformat(row.created_at),
        status=row.status,
        confidence=row.confidence,
        decided_at=datetime.fromisoformat(row.decided_at) if row.decided_at else None,
        decided_by=row.decided_by,
        contract_version=row.contract_version,
        body=orjson.loads(row.body),
    )
