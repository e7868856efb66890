"""String shapes and recognized formats, computed with Arrow kernels (meant for distinct values).

A *shape* abstracts a string to its character classes: letters become ``A``, digits ``9``, anything
else is kept (``"N14228"`` → ``"A99999"``, ``"AB-12"`` → ``"AA-99"``). A *collapsed* shape merges runs
(``"A9"`` for ``"N14228"``), for columns whose values vary in length but not in structure.

A *format* is a named, well-known syntax (email, uuid, url, phone, ISO date, ISO 4217 currency code).
Every function here is vectorized; callers pass the distinct values of a column (its dictionary), not
its rows, so the regular expressions run once per distinct value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Format = Literal["uuid", "email", "url", "iso_date", "currency_code", "phone"]
FORMATS: tuple[Format, ...] = ("uuid", "email", "url", "iso_date", "currency_code", "phone")
"""In detection order: the first format that fits a column wins."""

CURRENCY_CODES: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB
    RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD
    TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG
    XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWG ZWL
    """.split()
)
"""ISO 4217 alphabetic codes (current, funds and precious metals)."""

_CURRENCY_SET = pa.array(sorted(CURRENCY_CODES))
_REGEX: dict[str, str] = {
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "email": r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$",
    "url": r"^(?i:https?|ftp)://[^\s/?#]+\.[^\s/?#]+(:\d+)?([/?#]\S*)?$",
    "iso_date": (
        r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
        r"([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)?)?$"
    ),
    "phone": r"^\+?[0-9(][0-9 ().\-/]{5,22}[0-9]$",
}
_PHONE_DIGITS = (7, 15)
"""E.164 allows at most 15 digits; fewer than 7 is no dialable number."""

MAX_SHAPE_LENGTH = 64
"""Shapes of longer strings are not tracked (free text has no shape worth a rule)."""


def _as_strings(values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return values


def _lookup_table(collapse: bool) -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    table[ord("a") : ord("z") + 1] = ord("A")
    table[ord("A") : ord("Z") + 1] = ord("A")
    table[ord("0") : ord("9") + 1] = ord("9")
    if collapse:
        table[[9, 10, 11, 12, 13]] = ord(" ")
    return table


_ASCII_SHAPE = {False: _lookup_table(False), True: _lookup_table(True)}
_RUNS = np.asarray([ord("A"), ord("9"), ord(" ")], dtype=np.uint8)


def _ascii_shapes(strings: pa.StringArray, collapse: bool) -> pa.Array | None:
    """Shapes through a byte lookup table (no regex), or None when the strings are not all ASCII."""
    n = len(strings)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32, count=n + 1, offset=strings.offset * 4)
    data_buffer = strings.buffers()[2]
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buffer, dtype=np.uint8)[first:last] if data_buffer is not None else np.empty(0, np.uint8)
    if data.size and data.max() >= 128:
        return None
    mapped = _ASCII_SHAPE[collapse][data]
    local = (offsets - first).astype(np.int64)
    if collapse and mapped.size:
        repeat = np.zeros(mapped.size, dtype=bool)
        repeat[1:] = (mapped[1:] == mapped[:-1]) & np.isin(mapped[1:], _RUNS)
        starts = local[:-1][local[:-1] < mapped.size]
        repeat[starts] = False  # a run never continues across two strings
        keep = ~repeat
        mapped = mapped[keep]
        local = np.concatenate([[0], np.cumsum(keep)])[local]
    validity = strings.is_valid().buffers()[1] if strings.null_count else None
    return pa.Array.from_buffers(
        pa.string(),
        n,
        [validity, pa.py_buffer(local.astype(np.int32)), pa.py_buffer(mapped)],
        null_count=strings.null_count,
    )


def shapes(values: pa.Array, *, collapse: bool = False) -> pa.Array:
    """The shape of each string: letters → ``A``, digits → ``9``, other characters kept.

    ASCII strings go through a byte lookup table; others through Unicode-aware regular expressions
    (letters of any script are ``A``, decimal digits of any script ``9``).

    Args:
        values: strings (typically the distinct values of a column).
        collapse: merge runs of ``A``, of ``9`` and of whitespace into one character.
    """
    strings = _as_strings(values)
    if isinstance(strings, pa.StringArray):
        fast = _ascii_shapes(strings, collapse)
        if fast is not None:
            return fast
    out = pc.replace_substring_regex(strings, r"\p{L}", "A")
    out = pc.replace_substring_regex(out, r"\p{Nd}", "9")
    if collapse:
        out = pc.replace_substring_regex(out, r"A+", "A")
        out = pc.replace_substring_regex(out, r"9+", "9")
        out = pc.replace_substring_regex(out, r"\s+", " ")
    return out


def shape(text: str, *, collapse: bool = False) -> str:
    """The shape of one string (see :func:`shapes`)."""
    return str(shapes(pa.array([text]), collapse=collapse)[0].as_py())


def matches(values: pa.Array, fmt: str) -> pa.Array:
    """Whether each string is in ``fmt`` (null stays null).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    strings = _as_strings(values)
    if fmt == "currency_code":
        return pc.if_else(pc.is_valid(strings), pc.is_in(strings, value_set=_CURRENCY_SET), None)
    if fmt not in _REGEX:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    trimmed = pc.utf8_trim_whitespace(strings)
    ok = pc.match_substring_regex(trimmed, _REGEX[fmt])
    if fmt == "phone":
        digits = pc.utf8_length(pc.replace_substring_regex(trimmed, r"\D", ""))
        low, high = _PHONE_DIGITS
        ok = pc.and_(ok, pc.and_(pc.greater_equal(digits, low), pc.less_equal(digits, high)))
    return ok


def detect(counts: dict[str, int], total: int, *, min_share: float = 0.995) -> str | None:
    """The first format that at least ``min_share`` of ``total`` values fit, if any."""
    if total <= 0:
        return None
    for fmt in FORMATS:
        if counts.get(fmt, 0) >= min_share * total:
            return fmt
    return None
