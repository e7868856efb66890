"""Type inference, vectorized coercion and Iceberg promotion rules.

Only Iceberg-compatible Arrow types come out: bool, int32, int64, float32, float64, decimal128,
string, binary, date32, timestamp[us, UTC] and lists of those.

Every conversion is *safe*: a value that does not fit becomes null instead of raising, so a misfit is
found by comparing validity before and after (``bad = valid_before & ~valid_after``). The fast path
is one Arrow cast of the whole array; only when it raises do the slower, per-value-safe kernels run
(a regex prefilter, then a bisecting cast that isolates the few values Arrow still rejects).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakegate.core.types import TIMESTAMP
from lakegate.normalize.event_time import epoch_to_timestamp, localize
from lakegate.normalize.flatten import as_list, is_list_type, list_values, to_json

_NAIVE_US = pa.timestamp("us")
_INT32 = (-(2**31), 2**31 - 1)
_EMPTY = np.empty(0, dtype=np.int64)

_RE_INT = r"^[+-]?\d+$"
_RE_FLOAT = r"(?i)^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|nan|inf|infinity)$"
_RE_DECIMAL = r"^[+-]?(\d+\.?\d*|\.\d+)$"
_RE_DATE = r"^\d{4}-\d{2}-\d{2}$"
_RE_ISO = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)?)?$"
_RE_OFFSET = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)$"
_TRUE = pa.array(["true", "t", "yes", "y", "1"])
DOMINANT_SHARE = 0.95
"""A sample of text whose values do not all parse as one type still gets the type that at least this
share of them parses as (the others are dead-lettered as misfits): a few ``"n/a"`` among numbers do
not turn a numeric column into text forever."""
DOMINANT_MIN_SAMPLE = 20
_FALSE = pa.array(["false", "f", "no", "n", "0"])


def _is_str(t: pa.DataType) -> bool:
    return any(f(t) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view))


def _is_bin(t: pa.DataType) -> bool:
    kinds = (
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_fixed_size_binary,
        pa.types.is_binary_view,
    )
    return any(f(t) for f in kinds)


def _null(t: pa.DataType) -> pa.Scalar:
    return pa.scalar(None, t)


def _mask(arr: pa.Array) -> np.ndarray:
    """A boolean array as numpy, null as False."""
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _all(mask: pa.Array) -> bool:
    return bool(pc.all(mask.fill_null(False)).as_py())


def _clean(strings: pa.Array) -> pa.Array:
    """Trimmed strings with blanks as null: an empty CSV field is a missing value, not a misfit."""
    s = pc.utf8_trim_whitespace(pc.cast(strings, pa.string()))
    return pc.if_else(pc.equal(s, ""), _null(pa.string()), s)


def _only(strings: pa.Array, pattern: str) -> pa.Array:
    """The strings matching ``pattern``; the others become null."""
    return pc.if_else(pc.match_substring_regex(strings, pattern), strings, _null(strings.type))


def _parse(strings: pa.Array, target: pa.DataType, pattern: str) -> pa.Array:
    """Strings as ``target``: one cast when all parse, else per value (prefiltered by ``pattern``)."""
    try:
        return pc.cast(strings, target)
    except pa.ArrowInvalid:
        return _cast_or_null(_only(_clean(strings), pattern), target)


def _cast_or_null(arr: pa.Array, target: pa.DataType, *, safe: bool = True) -> pa.Array:
    """``cast`` that turns the values Arrow rejects into nulls, isolating them by bisection."""
    try:
        return pc.cast(arr, target, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) <= 1:
            return pa.nulls(len(arr), target)
        mid = len(arr) // 2
        left = _cast_or_null(arr.slice(0, mid), target, safe=safe)
        right = _cast_or_null(arr.slice(mid), target, safe=safe)
        return pa.concat_arrays([left, right])


# ---------------------------------------------------------------------------------------------------
# Inference: the first batch carrying a column decides its type.


def infer(arr: pa.Array, *, zone: str = "UTC") -> pa.DataType | None:
    """The established type for a column from a sample; None when the sample has no value.

    Strings are tried as int, float, boolean, date and timestamp, in that order, and each needs every
    non-blank value to parse; mixed samples take the wider type (ints and floats → double; anything
    else mixed → string). Integers are int32 when every value fits. In a sample of at least
    ``DOMINANT_MIN_SAMPLE`` values where no type fits all, the type ``DOMINANT_SHARE`` of the values
    parse as wins, and the few others become misfits.
    """
    t = arr.type
    if pa.types.is_dictionary(t):
        return infer(arr.dictionary_decode(), zone=zone)
    if arr.null_count == len(arr):
        return None
    if is_list_type(t):
        inner = infer(list_values(arr), zone=zone)
        return None if inner is None else pa.list_(inner)
    if pa.types.is_integer(t):
        return _int_width(arr)
    if _is_str(t):
        return _infer_strings(arr, zone)
    return _canonical(t)


def _int_width(arr: pa.Array) -> pa.DataType:
    bounds = pc.min_max(arr).as_py()
    low, high = bounds["min"], bounds["max"]
    if low is None or (low >= _INT32[0] and high <= _INT32[1]):
        return pa.int32()
    return pa.int64()


def _canonical(t: pa.DataType) -> pa.DataType:
    """The Iceberg-compatible type for an already typed (non-string, non-list) Arrow type."""
    if pa.types.is_boolean(t):
        return pa.bool_()
    if pa.types.is_floating(t):
        return pa.float64() if pa.types.is_float64(t) else pa.float32()
    if pa.types.is_decimal(t):
        return pa.decimal128(t.precision, t.scale) if t.precision <= 38 else pa.string()
    if pa.types.is_timestamp(t):
        return TIMESTAMP
    if pa.types.is_date(t):
        return pa.date32()
    if _is_bin(t):
        return pa.binary()
    return pa.string()  # time, duration, interval, struct-like leftovers: kept as text


def _infer_strings(arr: pa.Array, zone: str) -> pa.DataType | None:
    strings = pc.cast(arr, pa.string())
    start = 0
    if len(strings) - strings.null_count > 256:
        # the head's type is a lower bound of the sample's: skip the narrower tries (a failing cast
        # is slow in Arrow) and stop at once when the head is already plain text
        head = _clean(strings.slice(0, 1024).drop_null().slice(0, 256)).drop_null()
        if len(head):
            start = _LADDER.index(_rung(_infer_clean(head, zone)))
            if _LADDER[start] == "string":
                return pa.string()
    present = _clean(strings).drop_null()
    if not len(present):
        return None
    return _infer_clean(present, zone, start)


_LADDER = ("int", "float", "bool", "date", "timestamp", "string")
_RUNGS = {
    pa.int32(): "int",
    pa.int64(): "int",
    pa.float64(): "float",
    pa.bool_(): "bool",
    pa.date32(): "date",
}


def _rung(t: pa.DataType) -> str:
    return _RUNGS.get(t, "timestamp" if t == TIMESTAMP else "string")


def _any_prefix(strings: pa.Array, prefix: str, longer_than: int = 0) -> bool:
    """Whether some string starts with ``prefix`` and is longer than ``longer_than`` bytes."""
    starts = pc.starts_with(strings, prefix)
    if longer_than:
        starts = pc.and_(starts, pc.greater(pc.binary_length(strings), longer_than))
    return bool(pc.any(starts).as_py())


def _fits(strings: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(strings, target)
    except pa.ArrowInvalid:
        return False
    return True


def _infer_clean(s: pa.Array, zone: str, start: int = 0) -> pa.DataType:
    """The type of trimmed, non-null strings (see :func:`infer`)."""
    exact = _infer_exact(s, zone, start)
    if exact != pa.string() or len(s) < DOMINANT_MIN_SAMPLE:
        return exact
    return _infer_dominant(s, zone, start)


def _infer_exact(s: pa.Array, zone: str, start: int) -> pa.DataType:
    """The narrowest type every value parses as: int, float, boolean, date, timestamp (from
    ``_LADDER[start]`` on), else string."""
    tries = _LADDER[start:]
    if "int" in tries:
        try:
            plus = _any_prefix(s, "+")
            ints: pa.Array | None = pc.cast(pc.replace_substring_regex(s, r"^\+", "") if plus else s, pa.int64())
        except pa.ArrowInvalid:
            ints = None
        if ints is not None:
            # "007" and "0x1F" parse, but are identifiers: such a column stays text
            padded = _any_prefix(s, "0", 1) or _any_prefix(s, "-0", 2) or _any_prefix(s, "+0", 2)
            return pa.string() if padded else _int_width(ints)
    if "float" in tries and _fits(s, pa.float64()):
        if not any(pc.any(pc.match_substring(s, c)).as_py() for c in ".eEnN"):
            return pa.string()  # integers beyond long: identifiers, not approximate doubles
        return pa.float64()
    if "bool" in tries and _all(pc.is_in(pc.utf8_lower(s), pa.array(["true", "false"]))):
        return pa.bool_()
    if "date" in tries and _all(pc.match_substring_regex(s, _RE_DATE)) and _fits(s, pa.date32()):
        return pa.date32()
    if _all(pc.match_substring_regex(s, _RE_ISO)) and _strings_to_timestamp(s, zone).null_count == 0:
        return TIMESTAMP
    return pa.string()


def _infer_dominant(s: pa.Array, zone: str, start: int) -> pa.DataType:
    """When no type fits every value: the type most values parse as, if that is at least
    ``DOMINANT_SHARE`` of them (ties go to the narrower type); its misfits are dead-lettered later."""
    ints = _cast_or_null(_only(s, _RE_INT), pa.int64())
    padded = pc.any(pc.match_substring_regex(s, r"^[+-]?0\d")).as_py()  # identifiers, not numbers
    candidates: dict[str, pa.Array | None] = {
        "int": None if padded else ints,
        "float": None if padded else _parse(s, pa.float64(), _RE_FLOAT),
        "bool": pc.if_else(pc.is_in(pc.utf8_lower(s), pa.array(["true", "false"])), True, _null(pa.bool_())),
        "date": _parse(s, pa.date32(), _RE_DATE),
        "timestamp": _strings_to_timestamp(s, zone),
    }
    best, best_count = "string", 0
    for rung in _LADDER[start:-1]:
        parsed = candidates[rung]
        count = 0 if parsed is None else len(parsed) - parsed.null_count
        if count > best_count:
            best, best_count = rung, count
    if best_count < DOMINANT_SHARE * len(s):
        return pa.string()
    types = {"float": pa.float64(), "bool": pa.bool_(), "date": pa.date32(), "timestamp": TIMESTAMP}
    return _int_width(ints) if best == "int" else types[best]


# ---------------------------------------------------------------------------------------------------
# Coercion: later batches are converted to the established type.


@dataclass(frozen=True)
class Coercion:
    """The result of converting a column to its established type.

    Attributes:
        array: the converted values; misfits are null.
        type: the type of ``array``: the established type, or its legal promotion when some values
            only fit that way (int → long, float → double, wider decimal precision).
        bad: indices of values that do not fit, ascending.
    """

    array: pa.Array
    type: pa.DataType
    bad: np.ndarray


def coerce(arr: pa.Array, target: pa.DataType, *, zone: str = "UTC", epoch: bool = False) -> Coercion:
    """Convert a column to ``target``, promoting the type when only a legal promotion fits.

    Args:
        arr: the column in its source type.
        target: the established type.
        zone: the zone of naive timestamps (values are stored in UTC).
        epoch: numbers are epoch timestamps (seconds, ms, us or ns, chosen by magnitude).

    Returns:
        The converted column, its (possibly promoted) type and the indices of misfits.
    """
    if arr.type == target:
        return Coercion(arr, target, _EMPTY)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return Coercion(pa.nulls(len(arr), target), target, _EMPTY)
    if pa.types.is_list(target):
        return _coerce_list(arr, target, zone, epoch)
    out, final = _convert(arr, target, zone, epoch)
    if out.null_count == arr.null_count:
        return Coercion(out, final, _EMPTY)
    before = arr.is_valid()
    if _is_str(arr.type) and final != pa.string():
        before = pc.and_(before, pc.not_equal(pc.utf8_trim_whitespace(pc.cast(arr, pa.string())), ""))
    bad = np.flatnonzero(_mask(before) & ~_mask(out.is_valid()))
    return Coercion(out, final, bad)


def _coerce_list(arr: pa.Array, target: pa.DataType, zone: str, epoch: bool) -> Coercion:
    if not is_list_type(arr.type):
        return Coercion(pa.nulls(len(arr), target), target, np.flatnonzero(_mask(arr.is_valid())))
    lists = as_list(arr)
    inner = coerce(list_values(lists), target.value_type, zone=zone, epoch=epoch)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int32, copy=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    final = pa.list_(inner.type)
    out = pa.ListArray.from_arrays(pa.array(offsets), inner.array, type=final, mask=lists.is_null())
    bad = _EMPTY
    if len(inner.bad):
        parents = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
        bad = np.unique(parents[inner.bad])
    return Coercion(out, final, bad)


def _convert(arr: pa.Array, target: pa.DataType, zone: str, epoch: bool) -> tuple[pa.Array, pa.DataType]:
    """``arr`` as ``target`` (or its promotion) with misfits as null."""
    if pa.types.is_string(target):
        return _to_string(arr), target
    if pa.types.is_binary(target):
        ok = _is_bin(arr.type) or _is_str(arr.type)
        return (pc.cast(arr, target) if ok else pa.nulls(len(arr), target)), target
    if pa.types.is_boolean(target):
        return _to_bool(arr), target
    if pa.types.is_integer(target):
        ints = _to_int64(arr)
        if target == pa.int32():
            if _int_width(ints) == pa.int64():
                return ints, pa.int64()  # promotion int -> long
            return pc.cast(ints, pa.int32()), target
        return ints, pa.int64()
    if pa.types.is_floating(target):
        if pa.types.is_float32(target) and (arr.type in (pa.float16(), pa.int8(), pa.int16())):
            return pc.cast(arr, target), target
        doubles = _to_float64(arr)
        if pa.types.is_float32(target):
            singles = pc.cast(doubles, pa.float32(), safe=False)
            same = pc.or_(pc.equal(pc.cast(singles, pa.float64()), doubles), pc.is_nan(doubles))
            if _all(pc.or_kleene(same, doubles.is_null())):
                return singles, target
            return doubles, pa.float64()  # promotion float -> double
        return doubles, target
    if pa.types.is_decimal(target):
        return _to_decimal(arr, target)
    if pa.types.is_date(target):
        return _to_date(arr), target
    if pa.types.is_timestamp(target):
        return _to_timestamp(arr, zone, epoch), target
    raise TypeError(f"{target} is not an established lakegate type")


def _to_string(arr: pa.Array) -> pa.Array:
    t = arr.type
    if _is_str(t):
        return pc.cast(arr, pa.string())
    if _is_bin(t):
        return _cast_or_null(arr, pa.string())  # invalid UTF-8 does not fit
    if is_list_type(t) or pa.types.is_struct(t) or pa.types.is_map(t):
        return to_json(arr)
    if pa.types.is_timestamp(t):
        return pc.replace_substring(pc.cast(arr, pa.string()), " ", "T", max_replacements=1)
    return pc.cast(arr, pa.string())


def _to_bool(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_boolean(t):
        return arr
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return pc.if_else(pc.equal(arr, 1), True, pc.if_else(pc.equal(arr, 0), False, _null(pa.bool_())))
    if _is_str(t):
        try:
            return pc.cast(arr, pa.bool_())
        except pa.ArrowInvalid:
            s = pc.utf8_lower(_clean(arr))
            no = pc.if_else(pc.is_in(s, _FALSE), False, _null(pa.bool_()))
            return pc.if_else(pc.is_in(s, _TRUE), True, no)
    return pa.nulls(len(arr), pa.bool_())


def _integral_floats(doubles: pa.Array) -> pa.Array:
    ok = pc.and_(pc.equal(pc.floor(doubles), doubles), pc.less(pc.abs(doubles), 2.0**63))
    return pc.cast(pc.if_else(ok, doubles, _null(pa.float64())), pa.int64())


def _to_int64(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_integer(t):
        if t == pa.uint64():
            arr = pc.if_else(pc.greater(arr, pa.scalar(2**63 - 1, t)), _null(t), arr)
        return pc.cast(arr, pa.int64())
    if pa.types.is_floating(t):
        return _integral_floats(pc.cast(arr, pa.float64()))
    if pa.types.is_decimal(t):
        return _cast_or_null(arr, pa.int64())
    if _is_str(t):
        s = pc.cast(arr, pa.string())
        try:
            if not (pc.any(pc.starts_with(s, "0x")).as_py() or pc.any(pc.starts_with(s, "0X")).as_py()):
                return pc.cast(s, pa.int64())
        except pa.ArrowInvalid:
            pass
        s = pc.replace_substring_regex(_clean(s), r"^\+", "")
        is_int = pc.match_substring_regex(s, _RE_INT)
        ints = _cast_or_null(pc.if_else(is_int, s, _null(pa.string())), pa.int64())
        rest = pc.if_else(is_int, _null(pa.string()), s)
        if rest.null_count == len(rest):
            return ints
        return pc.coalesce(ints, _integral_floats(_to_float64(rest)))  # "12.0", "1e3"
    return pa.nulls(len(arr), pa.int64())


def _to_float64(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.float64(), safe=False)
    if _is_str(t):
        return _parse(arr, pa.float64(), _RE_FLOAT)
    return pa.nulls(len(arr), pa.float64())


def _to_decimal(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, pa.DataType]:
    wide = pa.decimal128(38, target.scale)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_decimal(t):
        dec = _cast_or_null(arr, wide)
    elif pa.types.is_floating(t):
        doubles = pc.cast(arr, pa.float64())
        finite = pc.if_else(pc.is_finite(doubles), doubles, _null(pa.float64()))
        dec = _cast_or_null(finite, wide, safe=False)
        exact = pc.equal(pc.cast(dec, pa.float64()), finite)  # 12.345 into scale 2 is not exact
        dec = pc.if_else(exact, dec, _null(wide))
    elif _is_str(t):
        dec = _parse(arr, wide, _RE_DECIMAL)
    else:
        return pa.nulls(len(arr), target), target
    bounds = pc.min_max(dec).as_py()
    if bounds["min"] is None:
        return pc.cast(dec, target), target
    largest = max(abs(bounds["min"]), abs(bounds["max"]))
    digits = int(largest.adjusted()) + 1 if largest >= 1 else 0
    needed = digits + target.scale
    final = target if needed <= target.precision else pa.decimal128(needed, target.scale)
    return pc.cast(dec, final), final  # wider precision, same scale: a legal promotion


def _to_date(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_date(t):
        return pc.cast(arr, pa.date32())
    if pa.types.is_timestamp(t):
        days = pc.cast(arr, pa.date32())
        midnight = pc.equal(pc.cast(days, t), arr)
        return pc.if_else(midnight, days, _null(pa.date32()))
    if _is_str(t):
        return _parse(arr, pa.date32(), _RE_DATE)
    return pa.nulls(len(arr), pa.date32())


def _strings_to_timestamp(s: pa.Array, zone: str) -> pa.Array:
    s = pc.cast(s, pa.string())
    try:
        return pc.cast(s, TIMESTAMP)  # every value has an offset
    except pa.ArrowInvalid:
        pass
    try:
        return localize(pc.cast(s, _NAIVE_US), zone)  # every value is naive
    except pa.ArrowInvalid:
        pass
    s = _only(_clean(s), _RE_ISO)
    s = pc.replace_substring_regex(s, r"(\.\d{6})\d+", r"\1")  # nanoseconds: keep microseconds
    has_offset = pc.match_substring_regex(s, _RE_OFFSET)
    aware = _cast_or_null(pc.if_else(has_offset, s, _null(pa.string())), TIMESTAMP)
    naive = _cast_or_null(pc.if_else(has_offset, _null(pa.string()), s), _NAIVE_US)
    return pc.coalesce(aware, localize(naive, zone))


def _to_timestamp(arr: pa.Array, zone: str, epoch: bool) -> pa.Array:
    t = arr.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            return localize(arr, zone)
        return pc.cast(arr, TIMESTAMP, safe=False)
    if pa.types.is_date(t):
        return localize(pc.cast(arr, _NAIVE_US), zone)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if numeric:
        return epoch_to_timestamp(arr) if epoch else pa.nulls(len(arr), TIMESTAMP)
    if _is_str(t):
        stamps = _strings_to_timestamp(arr, zone)
        if epoch and stamps.null_count > arr.null_count:  # "1700000000" in a CSV event-time column
            rest = pc.if_else(stamps.is_null(), pc.cast(arr, pa.string()), _null(pa.string()))
            numbers = pc.coalesce(epoch_to_timestamp(_to_int64(rest)), epoch_to_timestamp(_to_float64(rest)))
            stamps = pc.coalesce(stamps, numbers)
        return stamps
    return pa.nulls(len(arr), TIMESTAMP)
