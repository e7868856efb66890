"""What we know about a field's values, and how far another set of values is from it.

A :class:`FieldProfile` is built either from values (an incoming field, a table's column) or from a
contract (its learned rules and optional stored sample). :func:`profile_distance` then says how
distinguishable a set of values is from the profile, in [0, 1]: field matching uses it to tell which
contract field an incoming field resembles, and transform synthesis uses it to rank candidate programs
when rows cannot be linked.

The value recognizers every schema module shares live here too: strings that are numbers (with
thousands separators, currency symbols) and strings that are dates or timestamps (in which format).
Everything is vectorized; Python loops run over formats and rules, never over rows.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from lakegate.contracts import formats
from lakegate.contracts.sketches import kind_of, numbers
from lakegate.core.types import TIMESTAMP, type_from_str, type_to_str

Kind = Literal["numeric", "temporal", "string", "boolean", "other"]

QUANTILE_RANKS: tuple[float, ...] = tuple(i / 100 for i in range(101))
"""The rank grid numeric profiles keep: the whole quantile function at 1% steps."""
LENGTH_RANKS: tuple[float, ...] = tuple(i / 20 for i in range(21))
SAMPLE_SIZE = 256
"""Distinct values kept as a sample (the most frequent ones)."""
TOP_VALUES = 20
MAX_PATTERNS = 32
MAX_PROFILE_ROWS = 200_000
"""Longer arrays are profiled on an evenly strided subset of this many rows."""
MAX_DISTANCE_ROWS = 20_000
FORMAT_SHARE = 0.99
"""Share of distinct values that must fit a format for the field to be recognized as that format."""
DATETIME_SHARE = 0.95
TYPE_MISMATCH = 0.25
"""Distance floor when the values only resemble the target after a type conversion."""
PARSE_SHARE = 0.9
"""Values of another type are compared with a numeric/temporal target only if this share converts."""
PLAUSIBLE_YEARS = (1800, 2200)

DATETIME_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S.%fZ",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d",
    "%Y/%m/%d %H:%M:%S",
    "%Y%m%d",
    "%Y.%m.%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d-%m-%Y",
    "%m-%d-%Y",
    "%d.%m.%Y",
    "%d/%m/%y",
    "%m/%d/%y",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %I:%M:%S %p",
    "%d %b %Y",
    "%d %B %Y",
    "%b %d %Y",
    "%b %d, %Y",
    "%B %d, %Y",
    "%d-%b-%Y",
    "%d-%b-%y",
    "%a, %d %b %Y %H:%M:%S",
    "%Y-%m",
    "%Y%m%d%H%M%S",
)
"""strptime formats recognized in string fields, most specific first among equals.

``%f`` (fractional seconds, 1 to 9 digits) is handled by :func:`parse_datetimes`, as Arrow's strptime
has no such directive. Ambiguous day/month orders are settled by which one parses more values.
"""

_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_FRACTION = r"(?P<frac>\.\d{1,9})"


# ---------------------------------------------------------------------------------------------------
# Value recognizers (shared by the DSL and synthesis)


def mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as a numpy mask (null → False)."""
    filled = pc.fill_null(values, False)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks()
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)


def as_strings(values: pa.Array) -> pa.Array:
    """Any array as strings (numbers via Arrow's cast, dictionaries decoded)."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        return pc.cast(values, pa.string())
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.string())
    return pc.cast(values, pa.string())


def parse_numbers(values: pa.Array, *, thousands: str = "", decimal: str = ".", strip: str = "") -> pa.Array:
    """Strings as float64; a value that is not a number becomes null (never an exception).

    Args:
        values: strings.
        thousands: the thousands separator to remove (``","``, ``"."``, ``" "``, ``"'"`` or none).
        decimal: the decimal separator (``"."`` or ``","``).
        strip: characters removed anywhere before parsing (currency symbols, ``%``, spaces).
    """
    text = pc.utf8_trim_whitespace(as_strings(values))
    for char in strip + thousands:
        text = pc.replace_substring(text, char, "")
    if decimal != ".":
        text = pc.replace_substring(text, decimal, ".")
    ok = pc.match_substring_regex(text, _NUMBER)
    clean = pc.if_else(ok, text, pa.scalar(None, pa.string()))
    return pc.cast(clean, pa.float64())


def parse_datetimes(values: pa.Array, fmt: str) -> pa.Array:
    """Strings in strptime format ``fmt`` as UTC microsecond timestamps; unparseable values → null.

    ``%f`` stands for 1 to 9 fractional digits (Arrow's strptime lacks it): they are cut out before
    parsing and added back as microseconds.
    """
    text = pc.utf8_trim_whitespace(as_strings(values))
    fraction_us: pa.Array | None = None
    if "%f" in fmt:
        # The fraction follows the seconds: cut ".123" after the first "HH:MM:SS".
        frac = pc.extract_regex(text, r":\d{2}" + _FRACTION)
        digits = pc.utf8_slice_codeunits(pc.struct_field(frac, "frac"), 1, 7)
        padded = pc.utf8_rpad(digits, 6, "0")
        fraction_us = pc.cast(padded, pa.int64())
        text = pc.replace_substring_regex(text, r"(:\d{2})\.\d{1,9}", r"\1", max_replacements=1)
        fmt = fmt.replace(".%f", "")
    parsed = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
    if "%z" not in fmt and "%Z" not in fmt:
        # Arrow's strptime rolls impossible days over (31/02 → 02/03); printing the value back in the
        # same format catches it (digit runs compared without leading zeros, letters without case).
        again = pc.strftime(pc.cast(parsed, pa.timestamp("s"), safe=False), format=fmt)
        same = pc.equal(_normalized(again), _normalized(text))
        parsed = pc.if_else(same, parsed, pa.scalar(None, parsed.type))
    if parsed.type.tz is None:
        parsed = pc.assume_timezone(parsed, "UTC")
    if fraction_us is not None:
        micros = pc.add(parsed.cast(pa.int64()), pc.if_else(pc.is_valid(fraction_us), fraction_us, 0))
        parsed = micros.cast(TIMESTAMP)
    return parsed.cast(TIMESTAMP)


def _normalized(text: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(pc.utf8_lower(text), r"(^|\D)0+(\d)", r"\1\2")


def _plausible(parsed: pa.Array) -> pa.Array:
    years = pc.year(parsed)
    return pc.and_(pc.greater_equal(years, PLAUSIBLE_YEARS[0]), pc.less_equal(years, PLAUSIBLE_YEARS[1]))


def datetime_format_shares(values: pa.Array) -> dict[str, float]:
    """For each known format, the share of the non-null strings it parses to a plausible date."""
    text = as_strings(values).drop_null()
    if len(text) == 0:
        return {}
    shares: dict[str, float] = {}
    for fmt in DATETIME_FORMATS:
        parsed = parse_datetimes(text, fmt)
        good = pc.sum(pc.fill_null(_plausible(parsed), False)).as_py() or 0
        shares[fmt] = good / len(text)
    return shares


def detect_datetime_format(values: pa.Array, min_share: float = DATETIME_SHARE) -> str | None:
    """The strptime format (from :data:`DATETIME_FORMATS`) most of the strings are in, if any.

    Pass distinct values: it tries every format. The first format with the highest share wins.
    """
    shares = datetime_format_shares(values)
    if not shares:
        return None
    best = max(shares, key=lambda f: shares[f])  # max keeps the first of equals
    return best if shares[best] >= min_share else None


def fraction_digits(values: pa.Array) -> int:
    """The most common number of fractional-second digits in timestamp strings (0, 3, 6 or 9)."""
    frac = pc.extract_regex(as_strings(values).drop_null(), r":\d{2}" + _FRACTION)
    lengths = pc.utf8_length(pc.struct_field(frac, "frac")).drop_null()
    if len(lengths) == 0:
        return 0
    counts = np.bincount(np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64))
    return int(np.argmax(counts)) - 1


# ---------------------------------------------------------------------------------------------------
# The profile


class FieldProfile(BaseModel):
    """A field's values in summary: type, nulls, quantiles, lengths, frequent values, shapes, format.

    Temporal quantiles are epoch microseconds (as in contract rules). ``sample`` holds the most
    frequent distinct values and ``sample_coverage`` the share of non-null rows they account for
    (1.0 when the sample is the field's whole domain), so a membership test knows what it can prove.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    kind: Kind = "other"
    type: str | None = None
    """lakegate type name (``long``, ``string``, ``timestamp``...), when known."""
    origin: Literal["values", "contract"] = "values"
    count: int = 0
    null_rate: float = 0.0
    distinct: int | None = None
    integral: bool | None = None
    quantile_ranks: list[float] = Field(default_factory=list)
    quantiles: list[float] = Field(default_factory=list)
    low: float | None = None
    high: float | None = None
    length_ranks: list[float] = Field(default_factory=list)
    length_quantiles: list[float] = Field(default_factory=list)
    length_low: int | None = None
    length_high: int | None = None
    top_values: list[tuple[Any, float]] = Field(default_factory=list)
    """Most frequent values with their share of non-null rows."""
    sample: list[Any] = Field(default_factory=list)
    sample_coverage: float = 0.0
    patterns: dict[str, float] = Field(default_factory=dict)
    """Character shapes (``AAA-999``) with their share of non-null rows."""
    patterns_collapsed: bool = False
    patterns_exhaustive: bool = False
    """True when ``patterns`` is an allowed set (from a contract rule) rather than measured shares."""
    format: str | None = None
    """A recognized format: email, uuid, url, phone, iso_date, currency_code."""
    datetime_format: str | None = None
    """The strptime format of a string field holding dates or timestamps."""
    fraction_digits: int = 0

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_values(
        cls, array: pa.Array | pa.ChunkedArray, sample_size: int = SAMPLE_SIZE, name: str | None = None
    ) -> FieldProfile:
        """Profile an array (longer arrays on an evenly strided subset of :data:`MAX_PROFILE_ROWS`)."""
        values = _single(array)
        total = len(values)
        values = _strided(values, MAX_PROFILE_ROWS)
        kind: Kind = kind_of(values.type)
        try:
            type_name: str | None = type_to_str(values.type)
        except ValueError:
            type_name = None
        nulls = values.null_count
        valid = values.drop_null() if nulls else values
        base: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "type": type_name,
            "count": total,
            "null_rate": nulls / len(values) if len(values) else 0.0,
        }
        if len(valid) == 0:
            return cls(**base, distinct=0)
        if kind in ("numeric", "temporal", "string", "boolean"):
            base.update(_frequencies(valid, sample_size))
        if kind in ("numeric", "temporal"):
            base.update(_numeric_summary(valid))
        if kind == "string":
            base.update(_string_summary(valid))
        return cls(**base)

    @classmethod
    def from_contract(cls, contract: Any, field_name: str) -> FieldProfile:
        """A profile from a contract's rules for ``field_name`` and its stored sample, if any.

        Reads ``range`` (bounds and quantiles), ``drift`` baselines (quantile function, top categories),
        ``allowed_values``, ``pattern``, ``format``, ``length`` and ``not_null`` rules, and
        ``contract.profiles[field_name]`` (``sample``, ``quantiles``) when the contract carries one.

        Raises:
            KeyError: the contract has no field of that name.
        """
        schema_field = contract.schema_.field(field_name)
        if schema_field is None:
            raise KeyError(f"contract {contract.dataset!r} has no field {field_name!r}")
        try:
            arrow_type = type_from_str(schema_field.type)
            kind: Kind = kind_of(arrow_type)
        except ValueError:
            kind = "other"
        data: dict[str, Any] = {"name": field_name, "kind": kind, "type": schema_field.type, "origin": "contract"}
        for rule in contract.rules:
            if list(rule.columns) != [field_name]:
                continue
            data.update(_from_rule(rule, kind, data))
        stored = (getattr(contract, "profiles", None) or {}).get(field_name) or {}
        data.update(_from_stored(stored, kind, data))
        return cls(**data)

    # -- helpers ------------------------------------------------------------------------------------

    def known_values(self) -> list[Any]:
        """Every value the profile knows the field takes (sample and top values)."""
        seen = list(self.sample)
        extra = [v for v, _ in self.top_values if v not in set(seen)] if self.top_values else []
        return seen + extra

    def scale(self) -> float:
        """The spread numeric distances are measured in: IQR, else 5–95% span, else |median| or 1."""
        if not self.quantiles:
            if self.low is not None and self.high is not None and self.high > self.low:
                return (self.high - self.low) / 2
            return 1.0
        q = _quantile_at(self.quantile_ranks, self.quantiles, [0.25, 0.75, 0.05, 0.95, 0.5])
        for spread in (q[1] - q[0], q[3] - q[2]):
            if spread > 0:
                return float(spread)
        return max(abs(float(q[4])), 1.0)


def _single(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _strided(values: pa.Array, limit: int) -> pa.Array:
    if len(values) <= limit:
        return values
    return values.take(pa.array(np.linspace(0, len(values) - 1, limit).astype(np.int64)))


def _frequencies(valid: pa.Array, sample_size: int) -> dict[str, Any]:
    counts = pc.value_counts(valid)
    distinct_values = counts.field("values")
    freq = np.asarray(counts.field("counts").to_numpy(zero_copy_only=False), dtype=np.int64)
    order = np.argsort(-freq, kind="stable")
    n = float(freq.sum())
    keep = order[:sample_size]
    sample = distinct_values.take(pa.array(keep)).to_pylist()
    top = [(v, float(freq[i] / n)) for v, i in zip(sample[:TOP_VALUES], keep[:TOP_VALUES], strict=False)]
    return {
        "distinct": len(distinct_values),
        "sample": sample,
        "sample_coverage": float(freq[keep].sum() / n),
        "top_values": top,
    }


def _numeric_summary(valid: pa.Array) -> dict[str, Any]:
    x, _ = numbers(valid)
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    return {
        "quantile_ranks": list(QUANTILE_RANKS),
        "quantiles": np.quantile(x, QUANTILE_RANKS).tolist(),
        "low": float(x.min()),
        "high": float(x.max()),
        "integral": bool(np.all(x == np.floor(x))),
    }


def _string_summary(valid: pa.Array) -> dict[str, Any]:
    counts = pc.value_counts(valid)
    distinct_values = counts.field("values")
    freq = np.asarray(counts.field("counts").to_numpy(zero_copy_only=False), dtype=np.float64)
    n = freq.sum()
    lengths = np.asarray(pc.utf8_length(distinct_values).to_numpy(zero_copy_only=False), dtype=np.float64)
    patterns, collapsed = _pattern_shares(distinct_values, freq)
    fmt = None
    for candidate in formats.FORMATS:
        ok = mask(formats.matches(distinct_values, candidate))
        if freq[ok].sum() >= FORMAT_SHARE * n:
            fmt = candidate
            break
    probe = distinct_values if len(distinct_values) <= 512 else _strided(distinct_values, 512)
    dt_fmt = detect_datetime_format(probe)
    return {
        "length_ranks": list(LENGTH_RANKS),
        "length_quantiles": _weighted_quantiles(lengths, freq, LENGTH_RANKS).tolist(),
        "length_low": int(lengths.min()),
        "length_high": int(lengths.max()),
        "patterns": patterns,
        "patterns_collapsed": collapsed,
        "format": fmt,
        "datetime_format": dt_fmt,
        "fraction_digits": fraction_digits(probe) if dt_fmt and "%f" in dt_fmt else 0,
    }


def _pattern_shares(
    distinct_values: pa.Array, freq: np.ndarray, limit: int = MAX_PATTERNS
) -> tuple[dict[str, float], bool]:
    """Shape shares of the most common shapes; collapsed shapes when plain ones are too many."""
    n = freq.sum()
    for collapse in (False, True):
        shapes = formats.shapes(distinct_values, collapse=collapse)
        grouped = pa.table({"s": shapes, "c": pa.array(freq)}).group_by("s").aggregate([("c", "sum")])
        names = grouped.column("s").to_pylist()
        sums = np.asarray(grouped.column("c_sum").to_numpy(), dtype=np.float64)
        if len(names) <= limit or collapse:
            order = np.argsort(-sums, kind="stable")[:limit]
            return {str(names[i]): float(sums[i] / n) for i in order}, collapse
    return {}, False


def _weighted_quantiles(x: np.ndarray, w: np.ndarray, ranks: tuple[float, ...] | list[float]) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cdf = np.cumsum(ws) / ws.sum()
    idx = np.searchsorted(cdf, np.asarray(ranks) - 1e-12, side="left")
    return np.asarray(xs[np.minimum(idx, len(xs) - 1)], dtype=np.float64)


def _quantile_at(ranks: list[float], quantiles: list[float], at: list[float] | tuple[float, ...]) -> np.ndarray:
    return np.interp(np.asarray(at, dtype=np.float64), np.asarray(ranks), np.asarray(quantiles, dtype=np.float64))


def _from_rule(rule: Any, kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
    """What one contract rule says about the field's values."""
    p = rule.params
    out: dict[str, Any] = {}
    if rule.kind == "not_null":
        out["null_rate"] = 0.0
    elif rule.kind == "range":
        if p.get("observed_min") is not None:
            out["low"] = float(p["observed_min"])
        elif p.get("low") is not None:
            out["low"] = float(p["low"])
        if p.get("observed_max") is not None:
            out["high"] = float(p["observed_max"])
        elif p.get("high") is not None:
            out["high"] = float(p["high"])
        ranks, q_low, q_high = p.get("quantiles"), p.get("q_low"), p.get("q_high")
        if not data.get("quantiles") and isinstance(ranks, list) and len(ranks) == 2 and q_low is not None:
            out["quantile_ranks"] = [float(r) for r in ranks]
            out["quantiles"] = [float(q_low), float(q_high)]
    elif rule.kind == "allowed_values":
        values = list(p.get("values", []))
        out["sample"] = values
        out["distinct"] = len(values)
        out["sample_coverage"] = 1.0 if p.get("closed", True) else 1.0 - float(p.get("new_value_tolerance", 0.0))
    elif rule.kind == "pattern":
        allowed = list(p.get("patterns", []))
        out["patterns"] = {s: 1.0 / len(allowed) for s in allowed} if allowed else {}
        out["patterns_collapsed"] = bool(p.get("collapse", False))
        out["patterns_exhaustive"] = True
    elif rule.kind == "format":
        out["format"] = p.get("format")
    elif rule.kind == "length":
        out["length_low"] = p.get("low")
        out["length_high"] = p.get("high")
    elif rule.kind == "drift":
        baseline = p.get("baseline") or {}
        if p.get("metric") == "wasserstein" and baseline.get("quantiles"):
            out["quantile_ranks"] = [float(r) for r in baseline["ranks"]]
            out["quantiles"] = [float(q) for q in baseline["quantiles"]]
        elif p.get("metric") == "psi" and baseline.get("values"):
            out["top_values"] = [(v, float(pr)) for v, pr in zip(baseline["values"], baseline["probs"], strict=False)]
            if not data.get("sample"):
                out["sample"] = list(baseline["values"])
                out["sample_coverage"] = max(0.0, 1.0 - float(baseline.get("other", 0.0)))
    return out


def _from_stored(stored: dict[str, Any], kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
    """A stored profile (``contract.profiles[field]``): a sample of values and/or quantiles."""
    out: dict[str, Any] = {}
    sample = stored.get("sample")
    if isinstance(sample, list) and sample:
        known = list(data.get("sample") or [])
        out["sample"] = known + [v for v in sample if v not in set(known)] if known else list(sample)
        if not data.get("sample_coverage"):
            out["sample_coverage"] = float(stored.get("sample_coverage", 1.0 if len(sample) < SAMPLE_SIZE else 0.5))
        if kind == "string":
            strings = pa.array([str(v) for v in out["sample"]], pa.string())
            measured = _string_summary(strings)
            if data.get("patterns"):
                measured.pop("patterns")
                measured.pop("patterns_collapsed")
            for key in ("format", "length_low", "length_high"):
                if data.get(key) is not None:
                    measured.pop(key)
            out.update(measured)
    quantiles = stored.get("quantiles")
    if isinstance(quantiles, dict) and quantiles.get("quantiles"):
        out["quantiles"] = [float(q) for q in quantiles["quantiles"]]
        out["quantile_ranks"] = [float(r) for r in quantiles.get("ranks", np.linspace(0, 1, len(out["quantiles"])))]
    elif isinstance(quantiles, list) and len(quantiles) >= 2:
        out["quantiles"] = [float(q) for q in quantiles]
        out["quantile_ranks"] = np.linspace(0, 1, len(quantiles)).tolist()
    return out


# ---------------------------------------------------------------------------------------------------
# Distance


def profile_distance(values: pa.Array | pa.ChunkedArray, target: FieldProfile) -> float:
    """How distinguishable ``values`` are from ``target``: 0 = indistinguishable, 1 = nothing alike.

    Type-aware: numeric and temporal values are compared by their quantile functions (Wasserstein-1 in
    units of the target's spread) and the share outside the target's bounds; strings by the share of
    values the target is known not to take, their shape and length distributions and format. Values
    that only resemble the target after a conversion (number-like strings for a numeric target, date
    strings for a temporal one, numbers for a string target) score at least :data:`TYPE_MISMATCH`.
    Null rates are not compared (a renamed field keeps its values, not always its nulls).
    """
    array = _strided(_single(values), MAX_DISTANCE_ROWS)
    valid = array.drop_null() if array.null_count else array
    if len(valid) == 0:
        return 1.0
    kind = kind_of(valid.type)
    if target.kind in ("numeric", "temporal"):
        converted, penalty = _as_numbers(valid, kind, target)
        if converted is None:
            return 1.0
        return _with_penalty(_numeric_distance(converted, target), penalty)
    if target.kind == "string":
        penalty = 0.0 if kind == "string" else TYPE_MISMATCH
        return _with_penalty(_string_distance(as_strings(valid), target), penalty)
    if target.kind == "boolean":
        if kind != "boolean":
            return 1.0
        return _boolean_distance(valid, target)
    return 0.0 if kind == target.kind else 1.0


def _with_penalty(distance: float, penalty: float) -> float:
    return float(min(1.0, max(0.0, penalty + (1.0 - penalty) * distance)))


def _as_numbers(valid: pa.Array, kind: Kind, target: FieldProfile) -> tuple[np.ndarray | None, float]:
    """Values on the target's numeric axis (temporal → epoch µs) and the type penalty paid to get there."""
    if kind == target.kind:
        x, _ = numbers(valid)
        return np.asarray(x, dtype=np.float64), 0.0
    if kind != "string":
        return None, 1.0
    if target.kind == "numeric":
        parsed = parse_numbers(valid)
    else:
        fmt = target.datetime_format or detect_datetime_format(pc.unique(valid))
        if fmt is None:
            return None, 1.0
        parsed = parse_datetimes(valid, fmt)
    if parsed.null_count > (1 - PARSE_SHARE) * len(parsed):
        return None, 1.0
    x, _ = numbers(parsed.drop_null())
    return np.asarray(x, dtype=np.float64), TYPE_MISMATCH


def _numeric_distance(x: np.ndarray, target: FieldProfile) -> float:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 1.0
    parts: list[tuple[float, float]] = []
    if len(target.quantiles) >= 2:
        ranks = np.asarray(target.quantile_ranks, dtype=np.float64)
        mine = np.quantile(x, ranks)
        w1 = float(np.abs(mine - np.asarray(target.quantiles)).mean() / target.scale())
        parts.append((w1 / (1.0 + w1), 2.0))
    if target.low is not None or target.high is not None:
        low = -math.inf if target.low is None else target.low
        high = math.inf if target.high is None else target.high
        span = (high - low) if math.isfinite(high - low) else 0.0
        slack = 0.01 * span
        outside = float(np.mean((x < low - slack) | (x > high + slack)))
        parts.append((outside, 1.0))
    if target.sample and target.sample_coverage >= 0.5 and target.kind == "numeric":
        known = np.asarray([v for v in target.sample if isinstance(v, int | float)], dtype=np.float64)
        inside = float(np.isin(x, known).mean())
        parts.append((max(0.0, target.sample_coverage - inside) / target.sample_coverage, 2.0 * target.sample_coverage))
    return _weighted(parts)


def _weighted(parts: list[tuple[float, float]]) -> float:
    total = sum(w for _, w in parts)
    if total <= 0:
        return 0.0
    return float(sum(d * w for d, w in parts) / total)


def _string_distance(strings: pa.Array, target: FieldProfile) -> float:
    counts = pc.value_counts(strings)
    distinct_values = counts.field("values")
    freq = np.asarray(counts.field("counts").to_numpy(zero_copy_only=False), dtype=np.float64)
    n = freq.sum()
    parts: list[tuple[float, float]] = []
    known = [str(v) for v in target.known_values() if v is not None]
    if known and target.sample_coverage > 0:
        member = mask(pc.is_in(distinct_values, value_set=pa.array(known, pa.string())))
        inside = float(freq[member].sum() / n)
        cov = min(target.sample_coverage, 1.0)
        parts.append((max(0.0, cov - inside) / cov, 3.0 * cov))
    if target.patterns:
        mine, _ = _pattern_shares(distinct_values, freq, limit=10_000)
        if target.patterns_collapsed:
            mine = _collapsed_shares(distinct_values, freq)
        if target.patterns_exhaustive:
            parts.append((1.0 - sum(s for p, s in mine.items() if p in target.patterns), 1.0))
        else:
            keys = set(mine) | set(target.patterns)
            tv = 0.5 * sum(abs(mine.get(k, 0.0) - target.patterns.get(k, 0.0)) for k in keys)
            # Shapes beyond the target's kept ones are unknown mass, not a difference.
            unknown = max(0.0, 1.0 - sum(target.patterns.values()))
            parts.append((max(0.0, tv - unknown) / max(1.0 - unknown, 1e-9), 1.0))
    lengths = np.asarray(pc.utf8_length(distinct_values).to_numpy(zero_copy_only=False), dtype=np.float64)
    if target.length_quantiles:
        mine_q = _weighted_quantiles(lengths, freq, target.length_ranks)
        theirs = np.asarray(target.length_quantiles, dtype=np.float64)
        q25, q75, q50 = _quantile_at(target.length_ranks, target.length_quantiles, [0.25, 0.75, 0.5])
        scale = max(float(q75 - q25), 0.1 * float(q50), 1.0)
        w1 = float(np.abs(mine_q - theirs).mean() / scale)
        parts.append((w1 / (1.0 + w1), 0.5))
    elif target.length_low is not None or target.length_high is not None:
        low = target.length_low if target.length_low is not None else 0
        high = target.length_high if target.length_high is not None else math.inf
        outside = float(freq[(lengths < low) | (lengths > high)].sum() / n)
        parts.append((outside, 0.5))
    if target.format:
        ok = mask(formats.matches(distinct_values, target.format))
        parts.append((1.0 - float(freq[ok].sum() / n), 1.0))
    if target.datetime_format:
        parsed = parse_datetimes(distinct_values, target.datetime_format)
        ok = mask(_plausible(parsed))
        parts.append((1.0 - float(freq[ok].sum() / n), 1.0))
    return _weighted(parts) if parts else 0.5


def _collapsed_shares(distinct_values: pa.Array, freq: np.ndarray) -> dict[str, float]:
    shapes = formats.shapes(distinct_values, collapse=True)
    grouped = pa.table({"s": shapes, "c": pa.array(freq)}).group_by("s").aggregate([("c", "sum")])
    n = freq.sum()
    return {
        str(s): float(c / n)
        for s, c in zip(grouped.column("s").to_pylist(), grouped.column("c_sum").to_pylist(), strict=True)
    }


def _boolean_distance(valid: pa.Array, target: FieldProfile) -> float:
    true_share = float(pc.mean(pc.cast(valid, pa.float64())).as_py() or 0.0)
    expected = next((share for value, share in target.top_values if value is True), None)
    if expected is None:
        return 0.0
    return abs(true_share - expected)
