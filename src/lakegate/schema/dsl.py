"""A small typed language of value transformations, compiled to vectorized Arrow operations.

A :class:`Program` is an ordered list of steps (composition); each step is a frozen pydantic model
whose ``op`` field names it, so programs are plain JSON: they are stored in proposals, contract
versions and the audit log, and may come from a language model. Parsing is strict (unknown ops, extra
keys and wrong types are rejected with the step and field named) and nothing is ever ``eval``-ed.

Applying a program never raises on data: a row a step cannot transform (an unparseable date, a word
where a number should be) becomes null and is flagged in :attr:`Applied.failed`, so the caller can
dead-letter exactly those rows. Every op is an Arrow compute kernel or numpy expression over the whole
array; the only Python loop builds a recoding map's lookup arrays once.

:class:`FieldMapping` and :class:`TableTransform` lift programs to tables: a rename is a mapping with an
empty program, a moved nested field is a mapping between flattened paths (``a__b``).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, ClassVar, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lakegate.contracts.sketches import numbers
from lakegate.core.types import TIMESTAMP, type_from_str
from lakegate.schema.profiles import DATETIME_FORMATS, as_strings, mask, parse_datetimes, parse_numbers

TimeUnit = Literal["days", "seconds", "milliseconds", "microseconds"]
CaseName = Literal["upper", "lower", "title", "capitalize", "swapcase"]
Family = Literal["string", "numeric", "temporal", "boolean", "other"]
Scalar = str | bool | int | float | None

UNIT_MICROS: dict[str, int] = {"days": 86_400_000_000, "seconds": 1_000_000, "milliseconds": 1_000, "microseconds": 1}
_EPOCH = date(1970, 1, 1)
_ISO_FORMATS = tuple(f for f in DATETIME_FORMATS if f.startswith("%Y-%m-%d"))
_TRUE = pa.array(["true", "t", "yes", "y", "1"])
_FALSE = pa.array(["false", "f", "no", "n", "0"])
_INT64_LIMIT = 9.2e18


class ProgramError(ValueError):
    """A program that cannot run on a given input type (names the step and the op)."""


def family_of(t: pa.DataType) -> Family:
    """The family an Arrow type belongs to, as the ops see it."""
    if pa.types.is_dictionary(t):
        return family_of(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    if pa.types.is_boolean(t):
        return "boolean"
    return "other"


def _failed(before: pa.Array, after: pa.Array) -> np.ndarray:
    """Rows that had a value and lost it."""
    return mask(pc.and_(pc.is_valid(before), pc.is_null(after)))


def _floats(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Numeric values as float64 with their validity (nulls → NaN)."""
    x = np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return x, mask(pc.is_valid(values))


def _from_numpy(x: np.ndarray, valid: np.ndarray, t: pa.DataType) -> pa.Array:
    return pa.array(x, type=t, mask=~valid)


def _micros(origin: date) -> int:
    return (origin - _EPOCH).days * UNIT_MICROS["days"]


class _Op(BaseModel):
    """One step. Subclasses set ``accepts`` and implement ``run`` (on an accepted input) and ``describe``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    accepts: ClassVar[tuple[Family, ...]] = ("string", "numeric", "temporal", "boolean", "other")

    def run(self, values: pa.Array) -> pa.Array:
        raise NotImplementedError

    def failures(self, before: pa.Array, after: pa.Array) -> np.ndarray:
        """Rows this step failed on: by default, those that had a value and lost it."""
        return _failed(before, after)

    def describe(self) -> str:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# Types and numbers


class Cast(_Op):
    """Change the type (``string``, ``long``, ``int``, ``double``, ``boolean``, ``date``, ``timestamp``,
    ``decimal(P,S)``); a value that does not convert exactly becomes a failure, never a wrong value."""

    op: Literal["cast"] = "cast"
    to: str

    @field_validator("to")
    @classmethod
    def _known_type(cls, value: str) -> str:
        type_from_str(value)
        return value.strip().lower()

    def run(self, values: pa.Array) -> pa.Array:
        target = type_from_str(self.to)
        source = family_of(values.type)
        goal = family_of(target)
        if values.type == target:
            return values
        if goal == "string":
            return as_strings(values)
        if goal == "numeric":
            if source == "string":
                values = parse_numbers(values)
            elif source == "boolean":
                values = pc.cast(values, pa.int8())
            elif source == "temporal":
                values = pa.array(numbers(values)[0], mask=~mask(pc.is_valid(values)))
            if pa.types.is_integer(target):
                x, valid = _floats(values)
                ok = valid & np.isfinite(x) & (x == np.floor(x)) & (np.abs(x) < _INT64_LIMIT)
                out = _from_numpy(np.where(ok, x, 0).astype(np.int64), ok, pa.int64())
                return pc.cast(out, target, safe=False) if target != pa.int64() else out
            if pa.types.is_decimal(target):
                x, valid = _floats(values)
                ok = valid & np.isfinite(x) & (np.abs(x) < 10.0 ** (target.precision - target.scale))
                rounded = pc.round(_from_numpy(np.where(ok, x, 0), ok, pa.float64()), target.scale)
                return pc.cast(rounded, target, safe=False)
            return pc.cast(values, target)
        if goal == "temporal":
            if source == "string":
                parsed = _parse_iso(values)
                return parsed if target == TIMESTAMP else pc.cast(parsed, target, safe=False)
            if source == "temporal":
                if pa.types.is_date(target):
                    return pc.cast(values, target, safe=False)
                if pa.types.is_date(values.type):
                    return pc.cast(values, TIMESTAMP)
                micros = pa.array(numbers(values)[0], mask=~mask(pc.is_valid(values)))
                return micros.cast(pa.int64()).cast(TIMESTAMP).cast(target, safe=False)
            raise ProgramError("a number needs number_to_datetime (with its unit) to become a date or timestamp")
        if goal == "boolean":
            if source == "string":
                text = pc.utf8_lower(pc.utf8_trim_whitespace(values))
                truthy, falsy = pc.is_in(text, value_set=_TRUE), pc.is_in(text, value_set=_FALSE)
                return pc.if_else(truthy, True, pc.if_else(falsy, False, pa.scalar(None, pa.bool_())))
            if source == "numeric":
                return pc.not_equal(values, 0)
        raise ProgramError(f"cannot cast {values.type} to {self.to}")

    def describe(self) -> str:
        return f"cast(→{self.to})"


def _parse_iso(values: pa.Array) -> pa.Array:
    """ISO-8601-like strings (date, date-time, fractions, zones) as UTC timestamps."""
    out: pa.Array | None = None
    for fmt in _ISO_FORMATS:
        parsed = parse_datetimes(values, fmt)
        out = parsed if out is None else pc.coalesce(out, parsed)
    assert out is not None
    return out


class Scale(_Op):
    """Multiply by a constant (unit changes: ×100 dollars→cents, ×0.001 g→kg)."""

    op: Literal["scale"] = "scale"
    factor: float
    accepts: ClassVar[tuple[Family, ...]] = ("numeric",)

    def run(self, values: pa.Array) -> pa.Array:
        return pc.multiply(pc.cast(values, pa.float64()), self.factor)

    def describe(self) -> str:
        return f"scale(×{self.factor:g})"


class Offset(_Op):
    """Add a constant (with :class:`Scale`, affine unit changes such as °F→°C)."""

    op: Literal["offset"] = "offset"
    amount: float
    accepts: ClassVar[tuple[Family, ...]] = ("numeric",)

    def run(self, values: pa.Array) -> pa.Array:
        return pc.add(pc.cast(values, pa.float64()), self.amount)

    def describe(self) -> str:
        return f"offset({self.amount:+g})"


class Round(_Op):
    """Round half to even to ``digits`` decimals; ``digits <= 0`` yields integers (long)."""

    op: Literal["round"] = "round"
    digits: int = Field(0, ge=-18, le=18)
    accepts: ClassVar[tuple[Family, ...]] = ("numeric",)

    def run(self, values: pa.Array) -> pa.Array:
        rounded = pc.round(pc.cast(values, pa.float64()), self.digits)
        if self.digits > 0:
            return rounded
        x, valid = _floats(rounded)
        ok = valid & np.isfinite(x) & (np.abs(x) < _INT64_LIMIT)
        return _from_numpy(np.where(ok, x, 0).astype(np.int64), ok, pa.int64())

    def describe(self) -> str:
        return f"round({self.digits})"


class ParseNumber(_Op):
    """Read numbers written for people: ``$1,234.50``, ``1.234,5``, ``12 %`` (→ double)."""

    op: Literal["parse_number"] = "parse_number"
    thousands: Literal["", ",", ".", " ", "'", "_"] = ""
    decimal: Literal[".", ","] = "."
    strip: str = ""
    """Characters removed before parsing (currency symbols, percent signs)."""
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        return parse_numbers(values, thousands=self.thousands, decimal=self.decimal, strip=self.strip)

    def describe(self) -> str:
        extras = [f"thousands={self.thousands!r}"] if self.thousands else []
        extras += [f"decimal={self.decimal!r}"] if self.decimal != "." else []
        extras += [f"strip={self.strip!r}"] if self.strip else []
        return f"parse_number({', '.join(extras)})"


class FormatNumber(_Op):
    """Write numbers with a fixed number of decimals and an optional thousands separator (→ string)."""

    op: Literal["format_number"] = "format_number"
    decimals: int = Field(0, ge=0, le=9)
    thousands: Literal["", ",", ".", " ", "'", "_"] = ""
    decimal: Literal[".", ","] = "."
    accepts: ClassVar[tuple[Family, ...]] = ("numeric",)

    def run(self, values: pa.Array) -> pa.Array:
        x, valid = _floats(values)
        unit = 10**self.decimals
        scaled = np.round(np.abs(np.where(valid, x, 0.0)) * unit)
        ok = valid & np.isfinite(scaled) & (scaled < _INT64_LIMIT)
        whole = np.where(ok, scaled, 0).astype(np.int64)
        integer = pc.cast(pa.array(whole // unit, mask=~ok), pa.string())
        if self.thousands:
            # Group digits from the right: reverse, add a separator after every 3 digits, reverse back.
            grouped = pc.replace_substring_regex(pc.utf8_reverse(integer), r"(\d{3})", r"\1" + self.thousands)
            integer = pc.utf8_reverse(pc.utf8_rtrim(grouped, characters=self.thousands))
        sign = pa.array(np.where((x < 0) & (whole > 0), "-", ""), pa.string())
        parts = [sign, integer]
        if self.decimals:
            fraction = pc.utf8_lpad(pc.cast(pa.array(whole % unit), pa.string()), self.decimals, "0")
            parts += [pa.array(np.full(len(x), self.decimal), pa.string()), fraction]
        return pc.binary_join_element_wise(*parts, "")

    def describe(self) -> str:
        sep = f", thousands={self.thousands!r}" if self.thousands else ""
        return f"format_number({self.decimals}{sep})"


# ---------------------------------------------------------------------------------------------------
# Strings


class Strip(_Op):
    """Trim whitespace (or the given characters) on both sides, the left or the right."""

    op: Literal["strip"] = "strip"
    chars: str | None = None
    side: Literal["both", "left", "right"] = "both"
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        if self.chars is None:
            fn = {"both": pc.utf8_trim_whitespace, "left": pc.utf8_ltrim_whitespace, "right": pc.utf8_rtrim_whitespace}
            return fn[self.side](values)
        trim = {"both": pc.utf8_trim, "left": pc.utf8_ltrim, "right": pc.utf8_rtrim}[self.side]
        return trim(values, characters=self.chars)

    def describe(self) -> str:
        return "strip" + (f"({self.chars!r})" if self.chars else "") + ("" if self.side == "both" else f"[{self.side}]")


class Case(_Op):
    """Change letter case."""

    op: Literal["case"] = "case"
    to: CaseName
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        fn = {
            "upper": pc.utf8_upper,
            "lower": pc.utf8_lower,
            "title": pc.utf8_title,
            "capitalize": pc.utf8_capitalize,
            "swapcase": pc.utf8_swapcase,
        }[self.to]
        return fn(values)

    def describe(self) -> str:
        return self.to


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (re.error, pa.ArrowInvalid) as err:
        raise ValueError(f"invalid regular expression {pattern!r}: {err}") from err
    return pattern


class Replace(_Op):
    """Replace every occurrence of ``old`` (a literal, or a regular expression when ``regex``)."""

    op: Literal["replace"] = "replace"
    old: str = Field(min_length=1)
    new: str = ""
    regex: bool = False
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    @model_validator(mode="after")
    def _valid_pattern(self) -> Replace:
        if self.regex:
            _check_regex(self.old)
        return self

    def run(self, values: pa.Array) -> pa.Array:
        if self.regex:
            return pc.replace_substring_regex(values, self.old, self.new)
        return pc.replace_substring(values, self.old, self.new)

    def describe(self) -> str:
        return f"replace({'/' + self.old + '/' if self.regex else repr(self.old)}→{self.new!r})"


class Extract(_Op):
    """Keep the part a regular expression's capture group matches; no match is a failure."""

    op: Literal["extract"] = "extract"
    pattern: str
    group: int = Field(1, ge=1, le=9)
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        _check_regex(value)
        if re.compile(value).groups < 1:
            raise ValueError(f"pattern {value!r} has no capture group to extract")
        return value

    def run(self, values: pa.Array) -> pa.Array:
        if re.compile(self.pattern).groups < self.group:
            raise ProgramError(f"pattern {self.pattern!r} has no group {self.group}")
        hit = pc.match_substring_regex(values, self.pattern)
        taken = pc.replace_substring_regex(values, f"(?s)^.*?(?:{self.pattern}).*$", f"\\{self.group}")
        return pc.if_else(hit, taken, pa.scalar(None, pa.string()))

    def describe(self) -> str:
        return f"extract(/{self.pattern}/)"


class SplitTake(_Op):
    """Split on a separator and keep one part (negative index counts from the end); a missing part fails."""

    op: Literal["split_take"] = "split_take"
    separator: str = Field(min_length=1)
    index: int = 0
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        parts = pc.split_pattern(values, self.separator)
        if isinstance(parts, pa.ChunkedArray):
            parts = parts.combine_chunks()
        offsets = np.asarray(parts.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        counts = np.diff(offsets)
        index = self.index if self.index >= 0 else counts + self.index
        ok = mask(pc.is_valid(values)) & (index >= 0) & (index < counts)
        flat = pc.list_flatten(parts)
        positions = np.where(ok, offsets[:-1] - offsets[0] + index, 0)
        if len(flat) == 0:
            return pa.nulls(len(values), pa.string())
        return pc.if_else(pa.array(ok), flat.take(pa.array(positions)), pa.scalar(None, pa.string()))

    def describe(self) -> str:
        return f"split({self.separator!r})[{self.index}]"


class Slice(_Op):
    """Keep characters ``start`` to ``stop`` (Python slice semantics)."""

    op: Literal["slice"] = "slice"
    start: int = 0
    stop: int | None = None
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        return pc.utf8_slice_codeunits(values, self.start, self.stop)

    def describe(self) -> str:
        return f"slice[{self.start}:{'' if self.stop is None else self.stop}]"


class Pad(_Op):
    """Pad to ``width`` characters with ``fill`` (zero-padded codes: 42 → 00042)."""

    op: Literal["pad"] = "pad"
    width: int = Field(ge=1, le=4096)
    fill: str = Field(" ", min_length=1, max_length=1)
    side: Literal["left", "right"] = "left"
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        pad = pc.utf8_lpad if self.side == "left" else pc.utf8_rpad
        return pad(values, self.width, self.fill)

    def describe(self) -> str:
        return f"pad({self.width}, {self.fill!r}, {self.side})"


class AddPrefix(_Op):
    op: Literal["add_prefix"] = "add_prefix"
    text: str = Field(min_length=1)
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        return pc.binary_join_element_wise(self.text, values, "")

    def describe(self) -> str:
        return f"prefix({self.text!r})"


class AddSuffix(_Op):
    op: Literal["add_suffix"] = "add_suffix"
    text: str = Field(min_length=1)
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        return pc.binary_join_element_wise(values, self.text, "")

    def describe(self) -> str:
        return f"suffix({self.text!r})"


class RemovePrefix(_Op):
    """Drop a leading text where present (values without it pass unchanged, like ``str.removeprefix``)."""

    op: Literal["remove_prefix"] = "remove_prefix"
    text: str = Field(min_length=1)
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        has = pc.starts_with(values, self.text)
        return pc.if_else(has, pc.utf8_slice_codeunits(values, len(self.text)), values)

    def describe(self) -> str:
        return f"remove_prefix({self.text!r})"


class RemoveSuffix(_Op):
    op: Literal["remove_suffix"] = "remove_suffix"
    text: str = Field(min_length=1)
    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    def run(self, values: pa.Array) -> pa.Array:
        has = pc.ends_with(values, self.text)
        cut = pc.utf8_slice_codeunits(values, 0, -len(self.text))
        return pc.if_else(has, cut, values)

    def describe(self) -> str:
        return f"remove_suffix({self.text!r})"


# ---------------------------------------------------------------------------------------------------
# Dates and times


def _check_datetime_format(value: str) -> str:
    if "%" not in value:
        raise ValueError(f"datetime format {value!r} has no % directive")
    try:
        pc.strptime(pa.array([], pa.string()), format=value.replace(".%f", ""), unit="us", error_is_null=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ValueError(f"invalid datetime format {value!r}: {err}") from err
    return value


class ParseDatetime(_Op):
    """Read date/time strings in a strptime format (``%f`` = fractional seconds) as UTC timestamps."""

    op: Literal["parse_datetime"] = "parse_datetime"
    format: str

    accepts: ClassVar[tuple[Family, ...]] = ("string",)

    @field_validator("format")
    @classmethod
    def _valid_format(cls, value: str) -> str:
        return _check_datetime_format(value)

    def run(self, values: pa.Array) -> pa.Array:
        return parse_datetimes(values, self.format)

    def describe(self) -> str:
        return f"parse_datetime({self.format!r})"


class FormatDatetime(_Op):
    """Write dates/timestamps in a strftime format; ``fraction_digits`` (0, 3, 6) makes ``%S`` carry them."""

    op: Literal["format_datetime"] = "format_datetime"
    format: str
    fraction_digits: Literal[0, 3, 6] = 0
    accepts: ClassVar[tuple[Family, ...]] = ("temporal",)

    @field_validator("format")
    @classmethod
    def _valid_format(cls, value: str) -> str:
        if "%f" in value:
            raise ValueError("format_datetime writes fractional seconds through fraction_digits, not %f")
        return _check_datetime_format(value)

    def run(self, values: pa.Array) -> pa.Array:
        unit = {0: "s", 3: "ms", 6: "us"}[self.fraction_digits]
        if pa.types.is_date(values.type):
            values = pc.cast(values, TIMESTAMP)
        tz = values.type.tz
        # Arrow prints %S with as many fraction digits as the timestamp's unit has.
        timestamps = pc.floor_temporal(values, unit={"s": "second", "ms": "millisecond", "us": "microsecond"}[unit])
        return pc.strftime(pc.cast(timestamps, pa.timestamp(unit, tz=tz)), format=self.format)

    def describe(self) -> str:
        digits = f", {self.fraction_digits} fraction digits" if self.fraction_digits else ""
        return f"format_datetime({self.format!r}{digits})"


class DatetimeToNumber(_Op):
    """Dates/timestamps as whole units since an origin (epoch seconds; Excel days: origin 1899-12-30)."""

    op: Literal["datetime_to_number"] = "datetime_to_number"
    unit: TimeUnit = "seconds"
    origin: date = _EPOCH
    accepts: ClassVar[tuple[Family, ...]] = ("temporal",)

    def run(self, values: pa.Array) -> pa.Array:
        micros, _ = numbers(values)
        valid = mask(pc.is_valid(values))
        since = np.asarray(micros, dtype=np.int64) - _micros(self.origin)
        return _from_numpy(np.floor_divide(since, UNIT_MICROS[self.unit]), valid, pa.int64())

    def describe(self) -> str:
        origin = "" if self.origin == _EPOCH else f" since {self.origin.isoformat()}"
        return f"to_{self.unit}{origin}"


class NumberToDatetime(_Op):
    """Numbers of units since an origin as UTC timestamps (epoch seconds/ms, Excel serial days)."""

    op: Literal["number_to_datetime"] = "number_to_datetime"
    unit: TimeUnit = "seconds"
    origin: date = _EPOCH
    accepts: ClassVar[tuple[Family, ...]] = ("numeric",)

    def run(self, values: pa.Array) -> pa.Array:
        x, valid = _floats(values)
        micros = np.where(valid, x, 0.0) * UNIT_MICROS[self.unit] + _micros(self.origin)
        # Keep to years 0001..9999 so the result stays a valid Iceberg timestamp.
        ok = valid & np.isfinite(micros) & (micros > -62_135_596_800e6) & (micros < 253_402_300_800e6)
        whole = np.round(np.where(ok, micros, 0.0)).astype(np.int64)
        return _from_numpy(whole, ok, pa.int64()).cast(TIMESTAMP)

    def describe(self) -> str:
        origin = "" if self.origin == _EPOCH else f" since {self.origin.isoformat()}"
        return f"from_{self.unit}{origin}"


# ---------------------------------------------------------------------------------------------------
# Values and nulls


class Recode(_Op):
    """Map values through a table (learned code maps: ``"M"`` → ``"male"``).

    ``default`` says what happens to a value not in the table: keep it, make it null, or fail the row.
    Keys are matched on the value's string form when the key and value types differ (JSON keys are
    often strings).
    """

    op: Literal["recode"] = "recode"
    mapping: list[tuple[Scalar, Scalar]] = Field(min_length=1)
    default: Literal["keep", "null", "fail"] = "keep"

    @field_validator("mapping")
    @classmethod
    def _unique_keys(cls, value: list[tuple[Scalar, Scalar]]) -> list[tuple[Scalar, Scalar]]:
        keys = [k for k, _ in value]
        if len(set(map(repr, keys))) != len(keys):
            raise ValueError("recode mapping has a key twice")
        return value

    def run(self, values: pa.Array) -> pa.Array:
        keys = pa.array([k for k, _ in self.mapping])
        targets = pa.array([v for _, v in self.mapping])
        lookup = values
        if keys.type != values.type:
            lookup, keys = as_strings(values), as_strings(keys)
        position = pc.index_in(lookup, value_set=keys)
        mapped = targets.take(position)
        if self.default != "keep":
            return mapped
        kept = values
        if mapped.type != values.type and not pa.types.is_null(mapped.type):
            try:
                kept = pc.cast(values, mapped.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                mapped, kept = as_strings(mapped), as_strings(values)
        elif pa.types.is_null(mapped.type):
            mapped = pa.nulls(len(values), values.type)
        return pc.if_else(pc.is_valid(position), mapped, kept)

    def failures(self, before: pa.Array, after: pa.Array) -> np.ndarray:
        if self.default != "fail":
            return np.zeros(len(before), dtype=bool)
        keys = pa.array([k for k, _ in self.mapping])
        lookup = before if keys.type == before.type else as_strings(before)
        found = pc.is_in(lookup, value_set=keys if keys.type == before.type else as_strings(keys))
        return mask(pc.and_(pc.is_valid(before), pc.invert(found)))

    def describe(self) -> str:
        shown = ", ".join(f"{k!r}→{v!r}" for k, v in self.mapping[:3])
        more = f", … {len(self.mapping)} in all" if len(self.mapping) > 3 else ""
        return f"recode({shown}{more})"


class FillNull(_Op):
    """Replace nulls by a constant (its type must fit the values')."""

    op: Literal["fill_null"] = "fill_null"
    value: Scalar

    def run(self, values: pa.Array) -> pa.Array:
        return pc.fill_null(values, pa.scalar(self.value).cast(values.type))

    def describe(self) -> str:
        return f"fill_null({self.value!r})"


class NullIf(_Op):
    """Turn placeholder values (``""``, ``"N/A"``, ``-1``) into nulls; not a failure."""

    op: Literal["null_if"] = "null_if"
    values: list[Scalar] = Field(min_length=1)

    def run(self, values: pa.Array) -> pa.Array:
        placeholders = pa.array(self.values)
        probe = values
        if placeholders.type != values.type:
            probe, placeholders = as_strings(values), as_strings(placeholders)
        hit = pc.is_in(probe, value_set=placeholders)
        return pc.if_else(hit, pa.scalar(None, values.type), values)

    def failures(self, before: pa.Array, after: pa.Array) -> np.ndarray:
        return np.zeros(len(before), dtype=bool)

    def describe(self) -> str:
        return f"null_if({', '.join(repr(v) for v in self.values)})"


Step = Annotated[
    Cast
    | Scale
    | Offset
    | Round
    | ParseNumber
    | FormatNumber
    | Strip
    | Case
    | Replace
    | Extract
    | SplitTake
    | Slice
    | Pad
    | AddPrefix
    | AddSuffix
    | RemovePrefix
    | RemoveSuffix
    | ParseDatetime
    | FormatDatetime
    | DatetimeToNumber
    | NumberToDatetime
    | Recode
    | FillNull
    | NullIf,
    Field(discriminator="op"),
]
OPS: tuple[str, ...] = tuple(
    cls.model_fields["op"].default
    for cls in (
        Cast, Scale, Offset, Round, ParseNumber, FormatNumber, Strip, Case, Replace, Extract, SplitTake, Slice,
        Pad, AddPrefix, AddSuffix, RemovePrefix, RemoveSuffix, ParseDatetime, FormatDatetime, DatetimeToNumber,
        NumberToDatetime, Recode, FillNull, NullIf,
    )
)  # fmt: skip
"""Every op name the language knows."""


# ---------------------------------------------------------------------------------------------------
# Programs


class Applied(NamedTuple):
    """A program's output: the values, the rows it failed on (output null there) and why."""

    values: pa.Array
    failed: np.ndarray
    errors: list[str]

    @property
    def failures(self) -> int:
        return int(self.failed.sum())


class Program(BaseModel):
    """Steps applied in order. The empty program is the identity (a plain rename)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    steps: list[Step] = Field(default_factory=list)

    def apply(self, values: pa.Array | pa.ChunkedArray) -> Applied:
        """Run every step over the whole array; never raises on data.

        A step given a type it does not accept, or failing outright, fails every row that still has a
        value (output null), with the reason in ``errors``.
        """
        current = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        if pa.types.is_dictionary(current.type):
            current = current.dictionary_decode()
        failed = np.zeros(len(current), dtype=bool)
        errors: list[str] = []
        for i, step in enumerate(self.steps):
            family = family_of(current.type)
            try:
                if family not in step.accepts and not pa.types.is_null(current.type):
                    raise ProgramError(f"takes {'/'.join(step.accepts)} values, got {current.type}")
                out = step.run(current if not pa.types.is_null(current.type) else _null_input(step, len(current)))
                if isinstance(out, pa.ChunkedArray):
                    out = out.combine_chunks()
            except (ProgramError, pa.ArrowException, ValueError, TypeError, OverflowError) as err:
                errors.append(f"step {i + 1} {step.describe()}: {err}")
                failed |= mask(pc.is_valid(current))
                return Applied(pa.nulls(len(current), current.type), failed, errors)
            failed |= step.failures(current, out)
            current = out
        if failed.any() and current.null_count < int(failed.sum()):
            current = pc.if_else(pa.array(~failed), current, pa.scalar(None, current.type))
        return Applied(current, failed, errors)

    def output_type(self, input_type: pa.DataType) -> pa.DataType:
        """The type the program produces from ``input_type``.

        Raises:
            ProgramError: a step does not accept the type its predecessor produces (names the step).
        """
        current = pa.array([], input_type)
        for i, step in enumerate(self.steps):
            family = family_of(current.type)
            if family not in step.accepts:
                raise ProgramError(
                    f"step {i + 1} {step.describe()} takes {'/'.join(step.accepts)} values, but gets {current.type}"
                )
            try:
                current = step.run(current)
            except (ProgramError, pa.ArrowException, ValueError, TypeError) as err:
                raise ProgramError(f"step {i + 1} {step.describe()} cannot run on {current.type}: {err}") from err
        return current.type

    def describe(self) -> str:
        """A one-line human reading: ``cast(→double) | scale(×0.01) | round(2)``."""
        return " | ".join(step.describe() for step in self.steps) or "identity"

    def then(self, *steps: Step) -> Program:
        """This program followed by more steps."""
        return Program(steps=[*self.steps, *steps])

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def parse(cls, data: str | bytes) -> Program:
        """A program from JSON, with a readable error naming the failing step and field.

        Raises:
            ProgramError: the JSON is not a valid program.
        """
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)
            )
            raise ProgramError(f"invalid program: {problems}") from err


def _null_input(step: _Op, n: int) -> pa.Array:
    """An all-null input in a type the step accepts (a field that is null in a whole batch)."""
    family = step.accepts[0]
    t = {"string": pa.string(), "numeric": pa.float64(), "temporal": TIMESTAMP, "boolean": pa.bool_()}.get(
        family, pa.string()
    )
    return pa.nulls(n, t)


# ---------------------------------------------------------------------------------------------------
# Tables


class FieldMapping(BaseModel):
    """Produce ``target`` from ``sources`` through ``program``.

    Several sources are joined as strings with ``separator`` first (first + last name → full name).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str = Field(min_length=1)
    sources: list[str] = Field(min_length=1)
    program: Program = Field(default_factory=Program)
    separator: str = " "

    def describe(self) -> str:
        src = " + ".join(self.sources)
        return f"{self.target} ← {src}" + ("" if not self.program.steps else f" : {self.program.describe()}")


class TransformOutput(NamedTuple):
    table: pa.Table
    failed: np.ndarray
    """Rows any mapping failed on."""
    failures: dict[str, int]
    """Failed rows per target field."""


class TableTransform(BaseModel):
    """Mappings, plus fields to drop; other fields pass through unchanged when ``keep_unmapped``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mappings: list[FieldMapping] = Field(default_factory=list)
    dropped: list[str] = Field(default_factory=list)
    keep_unmapped: bool = True

    @field_validator("mappings")
    @classmethod
    def _one_mapping_per_target(cls, value: list[FieldMapping]) -> list[FieldMapping]:
        targets = [m.target for m in value]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"field {twice[0]!r} is the target of more than one mapping")
        return value

    def apply(self, table: pa.Table) -> TransformOutput:
        """Map a table; a missing source field fails its mapping's rows (null output), never the batch."""
        n = table.num_rows
        failed = np.zeros(n, dtype=bool)
        failures: dict[str, int] = {}
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        consumed: set[str] = set()
        for mapping in self.mappings:
            missing = [s for s in mapping.sources if s not in table.column_names]
            if missing:
                failures[mapping.target] = n
                failed[:] = True
                columns[mapping.target] = pa.nulls(n, pa.string())
                continue
            consumed.update(mapping.sources)
            if len(mapping.sources) == 1:
                source: pa.Array | pa.ChunkedArray = table.column(mapping.sources[0])
            else:
                parts = [as_strings(table.column(s).combine_chunks()) for s in mapping.sources]
                source = pc.binary_join_element_wise(*parts, mapping.separator)
            result = mapping.program.apply(source)
            columns[mapping.target] = result.values
            failures[mapping.target] = result.failures
            failed |= result.failed
        out: dict[str, pa.Array | pa.ChunkedArray] = {}
        if self.keep_unmapped:
            skip = set(self.dropped) | consumed | set(columns)
            out.update({name: table.column(name) for name in table.column_names if name not in skip})
        out.update(columns)
        ordered = [name for name in table.column_names if name in out] + [m.target for m in self.mappings]
        seen: dict[str, None] = dict.fromkeys(ordered)
        return TransformOutput(pa.table({name: out[name] for name in seen}), failed, failures)

    def describe(self) -> str:
        lines = [m.describe() for m in self.mappings] + [f"drop {name}" for name in self.dropped]
        return "; ".join(lines) or "identity"
