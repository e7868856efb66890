"""Find the program that turns an incoming field's values into a contract field's values.

The search is bounded and type-directed. First the incoming values are *decoded* to a canonical form
(numbers from number-like strings, timestamps from date strings in whichever format parses them,
epoch or Excel-serial numbers as timestamps, codes without their constant prefix or suffix, a part of
split strings); then each canonical form is *encoded* toward the target (a scale factor from the ratio
of medians snapped to powers of ten and common unit factors, rounding to the target's decimals, the
target's date format, affixes, letter case, padding, separators, a recoding map). Every parameter comes
from the data: nothing is tried that the values do not suggest.

Each candidate runs vectorized on a bounded sample. With linked rows (the same record on both sides)
candidates are ranked by the share of rows they reproduce exactly; otherwise by how close their output
is to the target's profile. Longer programs pay a small penalty, so the simplest explanation wins ties.
Recoding maps learned from linked rows are scored on rows they were not learned from, so a map that
merely memorizes identifiers does not win.

Each candidate says how its parameters were chosen (:data:`Fit`): a program whose every parameter is a
standard unit, format or affix read from the data's shape proves much more, when its output fits the
target, than one with a parameter fitted to the target's distribution (any numbers can be scaled onto
any others), so the matcher weighs them apart. The decoding of one incoming column is cached, as the
matcher synthesizes it against every contract field.
"""

from __future__ import annotations

import math
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import date
from difflib import SequenceMatcher
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.contracts.sketches import numbers
from lakegate.schema import dsl
from lakegate.schema.dsl import Program, Step, family_of
from lakegate.schema.profiles import (
    FieldProfile,
    as_strings,
    datetime_format_shares,
    mask,
    parse_numbers,
    profile_distance,
)

SAMPLE_ROWS = 2_000
MAX_STEPS = 4
MIN_LINKED = 5
"""Fewer linked rows than this and candidates are ranked by profile distance alone."""
LENGTH_PENALTY = 0.01
PARSE_SHARE = 0.9
AFFIX_SHARE = 0.9
MAX_RECODE_KEYS = 512
MAX_UNLINKED_CATEGORIES = 64
EXCEL_ORIGIN = date(1899, 12, 30)
EPOCH = date(1970, 1, 1)
UNIT_FACTORS: tuple[float, ...] = (
    60.0, 3600.0, 86400.0, 24.0, 7.0, 12.0, 2.54, 0.3048, 0.9144, 1.609344, 0.45359237, 28.349523125,
    3.785411784, 0.946352946, 1024.0, 1048576.0,
)  # fmt: skip
"""Common unit conversions (time, length, mass, volume, bytes); their inverses are tried too."""
UNIT_TOLERANCE = 0.15
"""How far (relative) the ratio of medians may be from a unit factor for the factor to be tried."""
STANDARD_TOLERANCE = 0.25
"""A power of ten this close (relative) to the ratio of medians is a standard unit (cents, milli, kilo);
farther, it is only the target's order of magnitude, a parameter fitted to the target."""
DECODE_CACHE_SIZE = 16
"""Incoming columns whose decoded forms are kept (the matcher works through one column at a time)."""
Fit = Literal["identity", "standard", "fitted", "learned_map"]
"""How a program's parameters were chosen: none (identity); all standard units, formats or affixes read
from the data's shape (standard); a parameter fitted to the target's values (fitted: an order of
magnitude, an offset); a recoding map learned from the values (learned_map)."""
SEPARATORS: tuple[str, ...] = ("-", "/", " ", ",", "|", "_", ":", ";", ".", "T")
NUMBER_NOISE = "$€£¥%"
"""Characters removed from number-like strings (currency symbols, percent)."""
_TIME_UNITS: tuple[tuple[dsl.TimeUnit, date], ...] = (
    ("days", EXCEL_ORIGIN),
    ("days", EPOCH),
    ("seconds", EPOCH),
    ("milliseconds", EPOCH),
    ("microseconds", EPOCH),
)
_PLAUSIBLE_US = (-2_208_988_800_000_000, 4_102_444_800_000_000)
"""1900-01-01 .. 2100-01-01 in epoch microseconds: where decoded dates must land."""
_CASES: tuple[dsl.CaseName, ...] = ("upper", "lower", "title", "capitalize")


@dataclass(frozen=True)
class Candidate:
    """One program with the evidence for it."""

    program: Program
    score: float
    """0..1, higher is better (row match when rows are linked, else closeness to the target profile)."""
    row_match: float | None
    """Share of linked rows whose output equals the linked target value (None without links)."""
    profile_distance: float
    failures: float
    """Share of non-null sampled rows the program failed on."""
    sample: list[tuple[Any, Any]]
    """A few (before, after) pairs."""
    fit: Fit = "standard"
    """How the program's parameters were chosen (see :data:`Fit`)."""

    def describe(self) -> str:
        match = "" if self.row_match is None else f", rows {self.row_match:.1%}"
        distance = f"distance {self.profile_distance:.3f}"
        return f"{self.program.describe()} ({self.fit}, score {self.score:.3f}{match}, {distance})"


def synthesize(
    incoming: pa.Array | pa.ChunkedArray,
    target: FieldProfile,
    linked_target: pa.Array | pa.ChunkedArray | None = None,
    max_candidates: int = 5,
) -> list[Candidate]:
    """The best programs mapping ``incoming`` to the field ``target`` describes, best first.

    Args:
        incoming: the incoming field's values.
        target: the target field's profile (from a contract or from values).
        linked_target: the target values of the same records, aligned row by row with ``incoming``
            (null where a row has no link), when rows can be linked by a key.
        max_candidates: how many candidates to return. The identity program is always evaluated.
    """
    x, y, decoded = _decoded_sample(incoming, linked_target)
    linked = y is not None and int(np.sum(mask(pc.is_valid(y)))) >= MIN_LINKED
    search = _Search(x, target, y if linked else None, decoded)
    scored = [search.evaluate(program) for program in search.programs()]
    scored.sort(key=lambda c: (-c.score, len(c.program), c.program.describe()))
    return scored[: max(1, max_candidates)]


_DECODED: OrderedDict[int, tuple[pa.Array | pa.ChunkedArray, pa.Array, _Decoded]] = OrderedDict()
"""Per incoming column (by identity; the entry keeps the column alive so its id cannot be reused): its
sample and the decoded forms of the sample."""


def _decoded_sample(
    incoming: pa.Array | pa.ChunkedArray, linked_target: pa.Array | pa.ChunkedArray | None
) -> tuple[pa.Array, pa.Array | None, _Decoded]:
    """The sampled rows and their decoded forms, reused when the same column meets another target.

    The sample of a column depends only on the column unless linked rows pick it (more rows than
    :data:`SAMPLE_ROWS` and links), which is never cached.
    """
    x = _plain(incoming)
    y = None if linked_target is None else _plain(linked_target)
    if y is not None and (len(x) != len(y) or len(x) > SAMPLE_ROWS):
        x, y = _sample(x, y)
        return x, y, _Decoded(x)
    entry = _DECODED.get(id(incoming))
    if entry is None or entry[0] is not incoming:
        sampled, _ = _sample(x, None)
        entry = (incoming, sampled, _Decoded(sampled))
        _DECODED[id(incoming)] = entry
        while len(_DECODED) > DECODE_CACHE_SIZE:
            _DECODED.popitem(last=False)
    _DECODED.move_to_end(id(incoming))
    return entry[1], y, entry[2]


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _sample(x: pa.Array, y: pa.Array | None) -> tuple[pa.Array, pa.Array | None]:
    """At most :data:`SAMPLE_ROWS` rows, evenly strided; linked rows first when there are links."""
    n = len(x) if y is None else min(len(x), len(y))
    x = x.slice(0, n)
    y = None if y is None else y.slice(0, n)
    if n <= SAMPLE_ROWS:
        return x, y
    if y is not None:
        linked = np.flatnonzero(mask(pc.is_valid(y)))
        if len(linked) >= MIN_LINKED:
            rows = linked[np.linspace(0, len(linked) - 1, min(SAMPLE_ROWS, len(linked))).astype(np.int64)]
            take = pa.array(rows)
            return x.take(take), y.take(take)
    take = pa.array(np.linspace(0, n - 1, SAMPLE_ROWS).astype(np.int64))
    return x.take(take), None if y is None else y.take(take)


# ---------------------------------------------------------------------------------------------------
# Comparing outputs with linked values


def equal_values(out: pa.Array, expected: pa.Array) -> np.ndarray:
    """Row-wise equality that respects types: numbers within 1e-9 relative, instants by time,
    strings exactly; values of different families are compared by their string forms."""
    a_family, b_family = family_of(out.type), family_of(expected.type)
    valid = mask(pc.and_(pc.is_valid(out), pc.is_valid(expected)))
    if a_family == b_family == "numeric":
        a = np.asarray(pc.cast(out, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        b = np.asarray(pc.cast(expected, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return valid & np.isclose(a, b, rtol=1e-9, atol=1e-9)
    if a_family == b_family == "temporal":
        a_us, _ = numbers(out)
        b_us, _ = numbers(expected)
        return valid & (np.asarray(a_us) == np.asarray(b_us))
    if a_family == b_family:
        return valid & mask(pc.equal(out, expected))
    return valid & mask(pc.equal(as_strings(out), _canonical_strings(expected)))


def _canonical_strings(values: pa.Array) -> pa.Array:
    """Strings of values as a program would write them (integral doubles without ``.0``)."""
    if pa.types.is_floating(values.type):
        x = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
        if np.all(np.isnan(x) | (x == np.floor(x))):
            return as_strings(pc.cast(values, pa.int64(), safe=False))
    return as_strings(values)


# ---------------------------------------------------------------------------------------------------
# The search


class _Decoded:
    """What synthesis derives from the incoming sample alone, computed once per column, on demand."""

    def __init__(self, x: pa.Array) -> None:
        self.x = x
        self._forms: list[tuple[list[Step], pa.Array]] | None = None
        self._affixes: dict[int, tuple[str, str]] = {}
        self._punctuation: dict[int, set[str]] = {}

    def forms(self) -> list[tuple[list[Step], pa.Array]]:
        if self._forms is None:
            self._forms = _decode(self.x)
        return self._forms

    def affixes(self, canonical: pa.Array) -> tuple[str, str]:
        """The common prefix and suffix of a canonical form (forms are kept, so their ids are stable)."""
        key = id(canonical)
        if key not in self._affixes:
            self._affixes[key] = _common_affixes(canonical.drop_null().to_pylist()[:SAMPLE_ROWS])
        return self._affixes[key]

    def punctuation(self, canonical: pa.Array) -> set[str]:
        key = id(canonical)
        if key not in self._punctuation:
            self._punctuation[key] = _punctuation(canonical.drop_null().to_pylist()[:SAMPLE_ROWS])
        return self._punctuation[key]


class _Search:
    def __init__(self, x: pa.Array, target: FieldProfile, y: pa.Array | None, decoded: _Decoded | None = None) -> None:
        self.x = x
        self.target = target
        self.y = y
        self.decoded = decoded if decoded is not None else _Decoded(x)
        self.holdout: dict[str, float] = {}
        """Row match of learned recoding maps on rows they were not learned from, by program JSON."""
        self.fitted: set[str] = set()
        """Programs (JSON) with a parameter fitted to the target rather than read as a standard unit."""
        self.fitted_factors: set[float] = set()
        """Scale factors :func:`_factors` found only as the target's order of magnitude."""

    # -- evaluation ---------------------------------------------------------------------------------

    def evaluate(self, program: Program) -> Candidate:
        applied = program.apply(self.x)
        present = mask(pc.is_valid(self.x))
        failures = float(applied.failed[present].mean()) if present.any() else 0.0
        distance = profile_distance(applied.values, self.target) if applied.values.null_count < len(self.x) else 1.0
        row_match: float | None = None
        if self.y is not None:
            wanted = mask(pc.is_valid(self.y))
            hits = equal_values(applied.values, self.y)
            row_match = float(hits[wanted].mean()) if wanted.any() else 0.0
            honest = self.holdout.get(program.model_dump_json())
            effective = row_match if honest is None else min(row_match, honest)
            score = 0.95 * effective + 0.05 * (1.0 - distance) - LENGTH_PENALTY * _complexity(program)
        else:
            score = (1.0 - distance) * (1.0 - failures) - LENGTH_PENALTY * _complexity(program)
        rows = np.flatnonzero(present)[:5].tolist()
        before, after = self.x.take(pa.array(rows, pa.int64())), applied.values.take(pa.array(rows, pa.int64()))
        pairs = list(zip(before.to_pylist(), after.to_pylist(), strict=True))
        score = float(min(1.0, max(0.0, score)))
        return Candidate(program, score, row_match, float(distance), failures, pairs, self.fit_of(program))

    def fit_of(self, program: Program) -> Fit:
        if not program.steps:
            return "identity"
        if any(isinstance(step, dsl.Recode) for step in program.steps):
            return "learned_map"
        return "fitted" if program.model_dump_json() in self.fitted else "standard"

    # -- enumeration --------------------------------------------------------------------------------

    def programs(self) -> list[Program]:
        found: dict[str, Program] = {}

        def add(steps: list[Step], fitted: bool = False) -> None:
            if len(steps) <= MAX_STEPS:
                program = Program(steps=steps)
                key = program.model_dump_json()
                if key not in found and fitted:
                    self.fitted.add(key)
                found.setdefault(key, program)

        add([])
        for prefix, canonical in self.decoded.forms():
            for suffix in self._encoders(canonical):
                add([*prefix, *suffix], fitted=self._is_fitted(suffix))
        for steps in self._recodings():
            add(steps)
        return list(found.values())

    def _is_fitted(self, steps: list[Step]) -> bool:
        """Whether an encoder has a parameter fitted to the target: an offset, or a scale that is only the
        target's order of magnitude (:func:`_factors`)."""
        return any(
            isinstance(step, dsl.Offset) or (isinstance(step, dsl.Scale) and step.factor in self.fitted_factors)
            for step in steps
        )

    def _encoders(self, canonical: pa.Array) -> list[list[Step]]:
        """Step lists that take a canonical form toward the target."""
        family = family_of(canonical.type)
        target = self.target
        out: list[list[Step]] = [[]]
        if target.kind == "numeric":
            if family == "numeric":
                out += self._numeric_encoders(canonical, self._target_numbers())
            elif family == "temporal":
                out += [[dsl.DatetimeToNumber(unit=u, origin=o)] for u, o in self._number_units(canonical)]
        elif target.kind == "temporal":
            if family == "temporal" and target.type and target.type != _type_name(canonical.type):
                out.append([dsl.Cast(to=target.type)])
            elif family == "numeric":
                out += [
                    [*steps] + ([dsl.Cast(to=target.type)] if target.type == "date" else [])
                    for steps, _ in _as_instants(canonical)
                ]
        elif target.kind == "string":
            if family == "temporal" and target.datetime_format:
                fmt = target.datetime_format
                digits = 0
                if "%f" in fmt:
                    fmt, digits = fmt.replace(".%f", ""), min((3, 6), key=lambda d: abs(d - target.fraction_digits))
                out.append([dsl.FormatDatetime(format=fmt, fraction_digits=digits)])  # type: ignore[arg-type]
            elif family == "numeric":
                out += self._number_to_string(canonical)
            elif family == "temporal" and self._number_like_target():
                for unit, origin in self._number_units(canonical):
                    out.append([dsl.DatetimeToNumber(unit=unit, origin=origin), dsl.Cast(to="string")])
            elif family == "string":
                out += self._string_encoders(canonical)
        elif target.kind == "boolean" and family in ("string", "numeric"):
            out.append([dsl.Cast(to="boolean")])
        return out

    # -- numbers ------------------------------------------------------------------------------------

    def _target_numbers(self) -> np.ndarray:
        """The target's values as numbers (its sample, else its quantiles; number-like strings parsed)."""
        values = [v for v in self.target.sample if isinstance(v, int | float) and not isinstance(v, bool)]
        if values:
            return np.asarray(values, dtype=np.float64)
        if self.target.kind == "string" and self.target.sample:
            parsed = parse_numbers(pa.array([str(v) for v in self.target.sample], pa.string())).drop_null()
            return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype=np.float64)
        return np.asarray(self.target.quantiles, dtype=np.float64)

    def _number_like_target(self) -> bool:
        sample = [v for v in self.target.sample if v is not None]
        return bool(sample) and self._target_numbers().size >= PARSE_SHARE * len(sample)

    def _numeric_encoders(self, canonical: pa.Array, wanted: np.ndarray) -> list[list[Step]]:
        x, _ = numbers(canonical.drop_null())
        x = np.asarray(x, dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size == 0 or wanted.size == 0:
            return []
        decimals = _decimals(wanted)
        integral_target = decimals == 0
        finish: list[Step] = [dsl.Round(digits=decimals)] if decimals < 7 else []
        out: list[list[Step]] = [finish] if finish else []
        for factor in self._factors(x, wanted):
            out.append([dsl.Scale(factor=factor), *finish])
        fit = self._affine_fit(canonical)
        if fit is not None:
            scale, offset = fit
            steps: list[Step] = [] if scale == 1 else [dsl.Scale(factor=scale)]
            out.append([*steps, dsl.Offset(amount=offset), *finish])
        if integral_target and self.target.type in ("long", "int") and not pa.types.is_integer(canonical.type):
            out.append([dsl.Cast(to=self.target.type)])
        return out

    def _factors(self, x: np.ndarray, wanted: np.ndarray) -> list[float]:
        """:func:`_factors`, remembering which of them are fitted to the target."""
        found = _factors(x, wanted)
        self.fitted_factors.update(factor for factor, standard in found if not standard)
        return [factor for factor, _ in found]

    def _affine_fit(self, canonical: pa.Array) -> tuple[float, float] | None:
        """``a·x + b`` through the linked rows when it fits them exactly (unit changes with an offset)."""
        if self.y is None or family_of(self.y.type) != "numeric" or family_of(canonical.type) != "numeric":
            return None
        a = np.asarray(pc.cast(canonical, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        b = np.asarray(pc.cast(self.y, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < MIN_LINKED or np.ptp(a[ok]) == 0:
            return None
        slope, intercept = np.polyfit(a[ok], b[ok], 1)
        residual = b[ok] - (slope * a[ok] + intercept)
        if np.abs(residual).max() > 1e-6 * max(1.0, np.abs(b[ok]).max()) + 0.51 * 10.0 ** -_decimals(b[ok]):
            return None
        if abs(intercept) < 1e-9:
            return None  # a plain scale, found by the ratio of medians
        return float(f"{slope:.8g}"), float(f"{intercept:.8g}")

    def _number_units(self, canonical: pa.Array) -> list[tuple[dsl.TimeUnit, date]]:
        """Time units whose numbers land near the target's median (by order of magnitude)."""
        wanted = self._target_numbers()
        instants, _ = numbers(canonical.drop_null())
        if wanted.size == 0 or len(instants) == 0:
            return []
        median_us = float(np.median(np.asarray(instants, dtype=np.float64)))
        goal = float(np.median(wanted))
        units: list[tuple[dsl.TimeUnit, date]] = []
        for unit, origin in _TIME_UNITS:
            origin_us = (origin - EPOCH).days * 86_400_000_000
            predicted = (median_us - origin_us) / dsl.UNIT_MICROS[unit]
            if goal != 0 and predicted != 0 and 0.5 <= predicted / goal <= 2.0:
                units.append((unit, origin))
        return units

    def _number_to_string(self, canonical: pa.Array) -> list[list[Step]]:
        """Numbers written as the target writes them: digits, decimals, separators, affixes."""
        sample = [str(v) for v in self.target.sample if v is not None]
        if not sample:
            return [[dsl.Cast(to="string")]]
        texts = pa.array(sample, pa.string())
        prefix, suffix = _common_affixes(sample)
        core = texts
        if prefix or suffix:
            core = pc.utf8_slice_codeunits(texts, len(prefix), -len(suffix) if suffix else None)
        thousands = "," if mask(pc.match_substring_regex(core, r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")).any() else ""
        parsed = parse_numbers(core, thousands=thousands)
        wanted = np.asarray(parsed.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)
        if wanted.size < PARSE_SHARE * len(sample):
            return [[dsl.Cast(to="string")]]
        fractions = pc.extract_regex(core, r"\.(?P<d>\d+)$")
        digit_counts = pc.utf8_length(pc.struct_field(fractions, "d")).drop_null().to_pylist()
        decimals = Counter(digit_counts).most_common(1)[0][0] if digit_counts else 0
        writers: list[Step]
        if decimals == 0 and not thousands:
            writers = [dsl.Round(digits=0), dsl.Cast(to="string")]
        else:
            writers = [dsl.FormatNumber(decimals=min(decimals, 9), thousands=thousands)]  # type: ignore[arg-type]
        affix: list[Step] = [dsl.AddPrefix(text=prefix)] if prefix else []
        affix += [dsl.AddSuffix(text=suffix)] if suffix else []
        x, _ = numbers(canonical.drop_null())
        x = np.asarray(x, dtype=np.float64)
        out: list[list[Step]] = [[dsl.Cast(to="string"), *affix], [*writers, *affix]]
        for factor in self._factors(x[np.isfinite(x)], wanted):
            out.append([dsl.Scale(factor=factor), *writers, *affix])
        return out

    # -- strings ------------------------------------------------------------------------------------

    def _string_encoders(self, canonical: pa.Array) -> list[list[Step]]:
        sample = [str(v) for v in self.target.sample if v is not None]
        if not sample:
            return []
        mine = canonical.drop_null()
        if len(mine) == 0:
            return []
        out: list[list[Step]] = []
        cases = _target_cases(sample)
        for case in cases:
            if not mask(pc.equal(Program(steps=[dsl.Case(to=case)]).apply(mine).values, mine)).all():
                out.append([dsl.Case(to=case)])
        prefix, suffix = _common_affixes(sample)
        mine_prefix, mine_suffix = self.decoded.affixes(canonical)
        affix: list[Step] = []
        if prefix and not prefix.startswith(mine_prefix or "\0"):
            affix.append(dsl.AddPrefix(text=prefix))
        elif prefix and mine_prefix and prefix.startswith(mine_prefix) and prefix != mine_prefix:
            affix.append(dsl.AddPrefix(text=prefix[: len(prefix) - len(mine_prefix)]))
        if suffix and not suffix.endswith(mine_suffix or "\0"):
            affix.append(dsl.AddSuffix(text=suffix))
        if affix:
            out.append(affix)
            out += [[dsl.Case(to=case), *affix] for case in cases]
        lengths = {len(s) for s in sample}
        if len(lengths) == 1 and all(s.isdigit() for s in sample) and any(s.startswith("0") for s in sample):
            out.append([dsl.Pad(width=lengths.pop(), fill="0")])
        theirs, ours = _punctuation(sample), self.decoded.punctuation(canonical)
        for old in sorted(ours - theirs)[:3]:
            for new in [*sorted(theirs - ours)[:3], ""]:
                out.append([dsl.Replace(old=old, new=new)])
        return out

    def _recodings(self) -> list[list[Step]]:
        """Recoding maps: learned from linked rows, or aligned between two small categorical sets."""
        if self.y is not None:
            learned = self._learned_map()
            return [learned] if learned else []
        return self._aligned_map()

    def _learned_map(self) -> list[Step]:
        assert self.y is not None
        scalar_families = ("string", "numeric", "boolean")
        if family_of(self.x.type) not in scalar_families or family_of(self.y.type) not in scalar_families:
            return []  # maps hold JSON scalars; instants are handled by the date ops
        both = mask(pc.and_(pc.is_valid(self.x), pc.is_valid(self.y)))
        rows = np.flatnonzero(both)
        if len(rows) < MIN_LINKED:
            return []
        keys = self.x.take(pa.array(rows)).to_pylist()
        values = self.y.take(pa.array(rows)).to_pylist()
        distinct = len(set(keys))
        if distinct > MAX_RECODE_KEYS or distinct > len(rows) / 2:
            return []  # a map this size would memorize rows, not learn codes
        mapping = _majority_map(keys, values)
        steps: list[Step] = [dsl.Recode(mapping=sorted(mapping.items(), key=lambda kv: str(kv[0])), default="keep")]
        # Honest estimate: learn on even rows, test on odd rows (and the other way round).
        hits = 0
        for learn, test in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
            part = _majority_map(keys[learn], values[learn])
            hits += sum(1 for k, v in zip(keys[test], values[test], strict=True) if part.get(k, k) == v)
        self.holdout[Program(steps=steps).model_dump_json()] = hits / len(keys)
        return steps

    def _aligned_map(self) -> list[list[Step]]:
        """Map small categorical sets onto each other by string similarity (else by frequency rank)."""
        target = self.target
        if target.kind not in ("string", "numeric") or target.sample_coverage < 0.95:
            return []
        if family_of(self.x.type) not in ("string", "numeric", "boolean"):
            return []  # maps hold JSON scalars; instants are handled by the date ops
        theirs = [v for v, _ in target.top_values] or target.sample
        theirs = [v for v in target.sample if v is not None][:MAX_UNLINKED_CATEGORIES] if not theirs else theirs
        counts = pc.value_counts(self.x.drop_null())
        mine = counts.field("values").to_pylist()
        freq = counts.field("counts").to_pylist()
        if not mine or len(mine) > MAX_UNLINKED_CATEGORIES or len(target.sample) > MAX_UNLINKED_CATEGORIES:
            return []
        known = set(map(str, target.sample))
        if all(str(v) in known for v in mine):
            return []
        by_rank = [v for _, v in sorted(zip(freq, mine, strict=True), key=lambda p: -p[0])]
        ranked_targets = [v for v, _ in target.top_values] if target.top_values else list(target.sample)
        mapping: dict[Any, Any] = {}
        used: set[str] = set()
        for value in by_rank:
            best = max(target.sample, key=lambda t: _similarity(str(value), str(t)), default=None)
            if best is not None and _similarity(str(value), str(best)) >= 0.5 and str(best) not in used:
                mapping[value] = best
                used.add(str(best))
        out: list[list[Step]] = []
        if mapping and any(str(k) != str(v) for k, v in mapping.items()):
            out.append([dsl.Recode(mapping=list(mapping.items()), default="keep")])
        if len(by_rank) == len(ranked_targets):
            rank_map = dict(zip(by_rank, ranked_targets, strict=True))
            out.append([dsl.Recode(mapping=list(rank_map.items()), default="keep")])
        return out


# ---------------------------------------------------------------------------------------------------
# Data-derived parameters


def _complexity(program: Program) -> float:
    """Steps, with a recoding map weighing more the more entries it has (a long map explains little)."""
    return sum(1.0 + (len(step.mapping) / 8 if isinstance(step, dsl.Recode) else 0.0) for step in program.steps)


def _type_name(t: pa.DataType) -> str | None:
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return None


def _decode(x: pa.Array) -> list[tuple[list[Step], pa.Array]]:
    """Canonical forms of the incoming values: (steps that produce it, its values). Depends on the
    incoming values alone, so it is computed once per column (:class:`_Decoded`)."""
    forms: list[tuple[list[Step], pa.Array]] = [([], x)]
    family = family_of(x.type)
    if family == "string":
        text = x
        blanks: list[Step] = []
        if mask(pc.equal(text, "")).any():
            # Empty strings are missing values upstream; read them as nulls before anything else.
            blanks = [dsl.NullIf(values=[""])]
            text = blanks[0].run(text)
            forms.append((blanks, text))
        stripped = pc.utf8_trim_whitespace(text)
        if not mask(pc.equal(stripped, text)).all():
            forms.append(([*blanks, dsl.Strip()], stripped))
        bases: list[tuple[list[Step], pa.Array]] = [(blanks, text)]
        for affix_steps in _affix_removals(text):
            out = Program(steps=affix_steps).apply(text)
            bases.append(([*blanks, *affix_steps], out.values))
            forms.append(([*blanks, *affix_steps], out.values))
        for sep in _separators(text):
            for index in (0, -1):
                steps: list[Step] = [*blanks, dsl.SplitTake(separator=sep, index=index)]
                out = Program(steps=steps[len(blanks) :]).apply(text)
                bases.append((steps, out.values))
                forms.append((steps, out.values))
        for base_steps, base in bases:
            forms.extend((base_steps + steps, values) for steps, values in _parsed(base))
    elif family == "numeric":
        forms.extend(_as_instants(x))
    return forms


def _parsed(text: pa.Array) -> list[tuple[list[Step], pa.Array]]:
    """Strings read as numbers or instants, where most of them parse."""
    if family_of(text.type) != "string":
        return []
    present = text.drop_null()
    n = len(present)
    if n == 0:
        return []
    out: list[tuple[list[Step], pa.Array]] = []
    plain = parse_numbers(present)
    if plain.null_count <= (1 - PARSE_SHARE) * n:
        x = np.asarray(plain.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)
        to = "long" if np.all(x == np.floor(x)) and np.all(np.abs(x) < 9e18) else "double"
        out.append(([dsl.Cast(to=to)], Program(steps=[dsl.Cast(to=to)]).apply(text).values))
    else:
        for thousands in (",", ".", " ", "'"):
            decimal = "," if thousands == "." else "."
            step = dsl.ParseNumber(thousands=thousands, decimal=decimal, strip=NUMBER_NOISE)  # type: ignore[arg-type]
            parsed = step.run(present)
            if parsed.null_count <= (1 - PARSE_SHARE) * n:
                out.append(([step], step.run(text)))
                break
    distinct = pc.unique(present)
    if len(distinct) > 512:
        distinct = distinct.take(pa.array(np.linspace(0, len(distinct) - 1, 512).astype(np.int64)))
    shares = datetime_format_shares(distinct)
    good = sorted((f for f, s in shares.items() if s >= PARSE_SHARE), key=lambda f: -shares[f])[:2]
    for fmt in good:
        step_dt = dsl.ParseDatetime(format=fmt)
        out.append(([step_dt], step_dt.run(text)))
    return out


def _as_instants(values: pa.Array) -> list[tuple[list[Step], pa.Array]]:
    """Numbers read as epoch/Excel instants, for each unit that puts them in 1900..2100."""
    x, _ = numbers(values.drop_null())
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return []
    out: list[tuple[list[Step], pa.Array]] = []
    for unit, origin in _TIME_UNITS:
        micros = x * dsl.UNIT_MICROS[unit] + (origin - EPOCH).days * 86_400_000_000
        inside = (micros >= _PLAUSIBLE_US[0]) & (micros <= _PLAUSIBLE_US[1])
        if inside.mean() >= PARSE_SHARE and np.median(np.abs(x)) >= 1:
            step = dsl.NumberToDatetime(unit=unit, origin=origin)
            out.append(([step], Program(steps=[step]).apply(values).values))
    return out


def _affix_removals(text: pa.Array) -> list[list[Step]]:
    values = [v for v in text.drop_null().to_pylist()[:SAMPLE_ROWS]]
    prefix, suffix = _common_affixes(values)
    out: list[list[Step]] = []
    if prefix:
        out.append([dsl.RemovePrefix(text=prefix)])
    if suffix:
        out.append([dsl.RemoveSuffix(text=suffix)])
    return out


def _common_affixes(values: list[Any]) -> tuple[str, str]:
    """The prefix and suffix (almost) every value shares, cut back to a non-alphanumeric boundary or
    to letters, so ``District 14``/``District 2`` yields ``District `` and ``2019``/``2020`` nothing."""
    texts = [str(v) for v in values if v is not None and str(v) != ""]
    if len(texts) < 2:
        return "", ""
    prefix = _clean_affix(os.path.commonprefix(texts), at_start=True)
    reversed_suffix = os.path.commonprefix([t[::-1] for t in texts])[::-1]
    suffix = _clean_affix(reversed_suffix, at_start=False)
    shortest = min(len(t) for t in texts)
    if len(prefix) >= shortest:
        prefix = ""
    if len(suffix) >= shortest or len(prefix) + len(suffix) >= shortest:
        suffix = ""
    return prefix, suffix


def _clean_affix(affix: str, *, at_start: bool) -> str:
    """An affix without trailing digits: a shared leading digit of numbers is not a prefix."""
    if at_start:
        while affix and affix[-1].isdigit():
            affix = affix[:-1]
    else:
        while affix and affix[0].isdigit():
            affix = affix[1:]
    return affix


def _separators(text: pa.Array) -> list[str]:
    present = text.drop_null()
    if len(present) == 0:
        return []
    out = []
    for sep in SEPARATORS:
        share = float(np.mean(mask(pc.match_substring(present, sep))))
        if share >= 0.3:
            out.append(sep)
    return out[:4]


def _decimals(values: np.ndarray) -> int:
    """The fewest decimals that write every value exactly (7 = more than 6)."""
    values = values[np.isfinite(values)]
    for d in range(7):
        scaled = values * 10**d
        if np.all(np.abs(scaled - np.round(scaled)) < 1e-6 * np.maximum(1.0, np.abs(scaled))):
            return d
    return 7


def _factors(x: np.ndarray, wanted: np.ndarray) -> list[tuple[float, bool]]:
    """Scale factors the data suggests: the ratio of medians snapped to a power of ten or a unit factor,
    each with whether it is a standard unit (the ratio lies within :data:`STANDARD_TOLERANCE` of a power
    of ten or :data:`UNIT_TOLERANCE` of a unit factor) or only the target's order of magnitude."""
    mine, theirs = float(np.median(np.abs(x))), float(np.median(np.abs(wanted)))
    if mine == 0 or theirs == 0 or not math.isfinite(mine / theirs):
        return []
    ratio = theirs / mine
    out: list[tuple[float, bool]] = []
    power = 10.0 ** round(math.log10(ratio))
    if power != 1.0 and 0.3 <= ratio / power <= 3.0:
        out.append((float(f"{power:.12g}"), abs(ratio / power - 1.0) <= STANDARD_TOLERANCE))
    for unit in UNIT_FACTORS:
        for factor in (unit, 1.0 / unit):
            if abs(ratio / factor - 1.0) <= UNIT_TOLERANCE:
                out.append((float(f"{factor:.12g}"), True))
    return out


def _target_cases(sample: list[str]) -> list[dsl.CaseName]:
    """The letter cases (nearly) every target value is already in."""
    lettered = [s for s in sample if any(c.isalpha() for c in s)]
    if not lettered:
        return []
    checks = {"upper": str.upper, "lower": str.lower, "title": str.title, "capitalize": str.capitalize}
    return [name for name in _CASES if sum(checks[name](s) == s for s in lettered) >= 0.9 * len(lettered)]


def _punctuation(values: list[Any]) -> set[str]:
    chars: Counter[str] = Counter()
    for v in values[:200]:
        chars.update(c for c in str(v) if not c.isalnum() and not c.isspace())
    return {c for c, n in chars.items() if n >= 0.3 * min(len(values), 200)}


def _majority_map(keys: list[Any], values: list[Any]) -> dict[Any, Any]:
    votes: dict[Any, Counter[Any]] = {}
    for k, v in zip(keys, values, strict=True):
        votes.setdefault(k, Counter())[v] += 1
    return {k: c.most_common(1)[0][0] for k, c in votes.items()}


def _similarity(a: str, b: str) -> float:
    left, right = _normalize(a), _normalize(b)
    if not left or not right:
        return 0.0
    if left == right:
        return 1.0
    if right.startswith(left) or left.startswith(right):
        return 0.9  # abbreviations: "NY" ~ "NYC", "Mgr" ~ "Manager"
    return SequenceMatcher(None, left, right).ratio()


def _normalize(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())
