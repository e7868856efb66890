"""Name evidence without a model: tokens, abbreviations and character n-grams of two field names.

Embeddings read words, so they miss what people do to names: ``cust`` for ``customer``, ``amt`` for
``amount``, ``qty`` for ``quantity``, a ``tbl_`` prefix, an ``_x`` suffix. The rules here are generic,
not a dictionary of one schema's names: a short token abbreviates a long one when it is its prefix, an
in-order subsequence starting with the same letter, or its consonant skeleton; a few very common
abbreviations that no rule finds (``no`` for number) are listed in :data:`COMMON_ABBREVIATIONS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_DIGITS = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")
_VOWELS = frozenset("aeiou")

COMMON_ABBREVIATIONS: dict[str, tuple[str, ...]] = {
    "no": ("number",),
    "nbr": ("number",),
    "num": ("number",),
    "id": ("identifier", "number", "code", "key"),
    "ts": ("timestamp", "time"),
    "dt": ("date",),
    "addr": ("address",),
    "tel": ("telephone", "phone"),
    "pct": ("percent", "percentage"),
}
"""Abbreviations the prefix/subsequence/skeleton rules cannot find, or words used for one another."""

MIN_ABBREVIATION = 2
ABBREVIATION_CREDIT = 0.85
"""How much an abbreviation counts compared with the identical token."""


def tokenize(name: str) -> list[str]:
    """Lower-case word tokens of a field name: ``tblSchool_year2`` -> ``[tbl, school, year, 2]``."""
    spaced = _SEPARATORS.sub(" ", name)
    spaced = _CAMEL.sub(" ", spaced)
    spaced = _DIGITS.sub(" ", spaced)
    return spaced.lower().split()


def _skeleton(word: str) -> str:
    """The first letter plus the consonants, repeated letters collapsed: ``quantity`` -> ``qntty`` -> ``qnty``."""
    if not word:
        return word
    kept = word[0] + "".join(c for c in word[1:] if c not in _VOWELS)
    return re.sub(r"(.)\1+", r"\1", kept)


def _is_subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(c in letters for c in short)


@lru_cache(maxsize=65_536)
def abbreviates(short: str, long: str) -> bool:
    """Whether token ``short`` is a plausible abbreviation of the longer token ``long``.

    A prefix (``cust`` -> ``customer``), an in-order subsequence with the same first letter
    (``amt`` -> ``amount``, ``qty`` -> ``quantity``, ``cls`` -> ``class``), the consonant skeleton, or
    a listed common abbreviation. Numbers and one-letter tokens never abbreviate.
    """
    if short == long or len(short) < MIN_ABBREVIATION or len(short) >= len(long):
        return long in COMMON_ABBREVIATIONS.get(short, ())
    if short.isdigit() or long.isdigit():
        return False
    if long in COMMON_ABBREVIATIONS.get(short, ()):
        return True
    if short[0] != long[0]:
        return False
    if long.startswith(short):
        return True
    # a subsequence must keep most of the word's consonant frame, else ``ad`` abbreviates everything
    if _is_subsequence(short, long) and len(short) >= max(MIN_ABBREVIATION + 1, len(_skeleton(long)) // 2):
        return True
    return len(short) > MIN_ABBREVIATION and _skeleton(short) == _skeleton(long)


def token_similarity(left: str, right: str) -> float:
    """1 for the same token, :data:`ABBREVIATION_CREDIT` when one abbreviates the other, else 0."""
    if left == right:
        return 1.0
    if abbreviates(left, right) or abbreviates(right, left):
        return ABBREVIATION_CREDIT
    return 0.0


def _soft_overlap(left: list[str], right: list[str]) -> float:
    """Sum of the best one-to-one token similarities (greedy; names have a handful of tokens)."""
    pairs = sorted(
        ((token_similarity(a, b), i, j) for i, a in enumerate(left) for j, b in enumerate(right)),
        reverse=True,
    )
    used_left: set[int] = set()
    used_right: set[int] = set()
    total = 0.0
    for score, i, j in pairs:
        if score <= 0:
            break
        if i in used_left or j in used_right:
            continue
        used_left.add(i)
        used_right.add(j)
        total += score
    return total


def _char_ngrams(text: str, n: int = 3) -> set[str]:
    padded = f"#{text}#"
    if len(padded) <= n:
        return {padded}
    return {padded[i : i + n] for i in range(len(padded) - n + 1)}


def trigram_similarity(left: str, right: str) -> float:
    """Dice coefficient of the character 3-grams of the two names with separators removed."""
    a = _char_ngrams("".join(tokenize(left)))
    b = _char_ngrams("".join(tokenize(right)))
    if not a or not b:
        return 0.0
    return 2 * len(a & b) / (len(a) + len(b))


def _initials_match(left: list[str], right: list[str]) -> bool:
    """``sfcode`` vs ``san fac ...``: one single-token name starts with the other's initials (>= 2)."""
    for one, many in ((left, right), (right, left)):
        if len(one) == 1 and len(many) >= 2:
            initials = "".join(t[0] for t in many[:-1])
            if len(initials) >= 2 and one[0].startswith(initials):
                return True
    return False


@dataclass(frozen=True)
class LexicalScore:
    """The lexical evidence for one pair of names, each part in [0, 1]."""

    jaccard: float
    """Soft token Jaccard: matched token weight / (tokens on both sides - matched)."""
    containment: float
    """Matched token weight / tokens of the shorter name (``session_x`` contains ``session``)."""
    trigram: float
    initials: bool

    @property
    def score(self) -> float:
        """One summary figure: the strongest of the views, containment discounted."""
        return max(self.jaccard, 0.8 * self.containment, self.trigram, 0.5 if self.initials else 0.0)


@lru_cache(maxsize=65_536)
def lexical_similarity(left: str, right: str) -> LexicalScore:
    """How alike two field names are, by tokens (with abbreviations) and character 3-grams."""
    a, b = tokenize(left), tokenize(right)
    if not a or not b:
        return LexicalScore(0.0, 0.0, trigram_similarity(left, right), False)
    overlap = _soft_overlap(a, b)
    union = len(a) + len(b) - overlap
    return LexicalScore(
        jaccard=overlap / union if union > 0 else 0.0,
        containment=overlap / min(len(a), len(b)),
        trigram=trigram_similarity(left, right),
        initials=_initials_match(a, b),
    )
