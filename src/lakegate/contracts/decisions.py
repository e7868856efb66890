"""Decision records: every automated (or manual) change to how a dataset is governed, and its undo.

A decision says what was decided (``kind``, ``summary``), why (``evidence``: scores, counts, and the
prompt and response where a model was asked), who or what decided or approved it (``actor``), and how
to reverse it (``reversal``: a command or the steps). Decisions are appended to the registry's
``decisions`` table and never changed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

CONTRACT_LEARNED = "contract.learned"
CONTRACT_REGISTERED = "contract.registered"
CONTRACT_IMPORTED = "contract.imported"
CONTRACT_ACTIVATED = "contract.activated"
CONTRACT_ROLLED_BACK = "contract.rolled_back"
MODE_ENFORCE = "mode.enforce"

KIND_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"
"""A dotted kind: ``area.what`` (``contract.activated``, ``mode.enforce``, ``alert.volume``)."""


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Decision(BaseModel):
    """One recorded decision about a dataset (immutable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=_new_id, min_length=1)
    at: AwareDatetime = Field(default_factory=_now)
    """When it was decided (timezone-aware; stored in UTC)."""
    dataset: str = Field(min_length=1)
    kind: str = Field(pattern=KIND_PATTERN)
    summary: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    """Why: scores, counts, thresholds; ``prompt`` and ``response`` when a model was asked."""
    actor: str = "lakegate"
    """``lakegate`` for automated decisions, otherwise the user who made or approved it."""
    reversal: dict[str, Any] = Field(default_factory=dict)
    """How to undo it, e.g. ``{"command": "lakegate contract rollback orders --to 3"}``."""
    contract_version: int | None = None

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def render(self) -> str:
        """One line for a terminal: when, what, who, and the undo command if there is one."""
        version = f" v{self.contract_version}" if self.contract_version is not None else ""
        undo = self.reversal.get("command")
        tail = f"  (undo: {undo})" if undo else ""
        when = f"{self.at:%Y-%m-%d %H:%M:%S}Z"
        return f"{when}  {self.kind:<22} {self.dataset}{version}  {self.summary}  [{self.actor}]{tail}"
