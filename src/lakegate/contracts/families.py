"""The rule families the learner and the enforcer use, in evaluation order."""

from __future__ import annotations

from lakegate.contracts.api import Family


def default_families() -> list[Family]:
    """Column rules first (cheap, most specific reasons), then relationships, then temporal."""
    from lakegate.contracts.columns import COLUMN_FAMILY
    from lakegate.contracts.relationships import RELATIONSHIP_FAMILY
    from lakegate.contracts.temporal import TEMPORAL_FAMILY

    return [COLUMN_FAMILY, RELATIONSHIP_FAMILY, TEMPORAL_FAMILY]


def family_of(kind: str, families: list[Family]) -> Family | None:
    return next((f for f in families if kind in f.kinds), None)
