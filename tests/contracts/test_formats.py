"""String shapes and recognized formats."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakegate.contracts import formats


def test_shapes_map_letters_digits_and_keep_the_rest() -> None:
    values = pa.array(["N14228", "ab-12 Zz", None, "", "1.5e3", "EWR"])
    assert formats.shapes(values).to_pylist() == ["A99999", "AA-99 AA", None, "", "9.9A9", "AAA"]


def test_collapsed_shapes_merge_runs_but_not_across_values() -> None:
    values = pa.array(["N14228", "ab--12  Zz", "AA", "AB", "99"])
    assert formats.shapes(values, collapse=True).to_pylist() == ["A9", "A--9 A", "A", "A", "9"]


def test_shapes_of_a_sliced_array() -> None:
    values = pa.array(["xx", "AB-12", None, "7a"]).slice(1, 3)
    assert formats.shapes(values).to_pylist() == ["AA-99", None, "9A"]
    assert formats.shapes(values, collapse=True).to_pylist() == ["A-9", None, "9A"]


def test_shapes_of_non_ascii_text_use_unicode_classes() -> None:
    values = pa.array(["Zé12", "Ωμ-٣", None])
    assert formats.shapes(values).to_pylist() == ["AA99", "AA-9", None]
    assert formats.shape("Straße 12", collapse=True) == "A 9"


def test_dictionary_input_is_decoded() -> None:
    values = pa.array(["AB1", "AB1", "C"]).dictionary_encode()
    assert formats.shapes(values).to_pylist() == ["AA9", "AA9", "A"]


_ALPHABET = "aZ09-_ ./\t@xY5"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(alphabet=_ALPHABET, max_size=12)), max_size=30), st.booleans())
def test_ascii_fast_path_agrees_with_the_regex_path(values: list[str | None], collapse: bool) -> None:
    array = pa.array(values, pa.string())
    fast = formats.shapes(array, collapse=collapse).to_pylist()
    # A non-ASCII sentinel forces the regex path for the same values.
    slow = formats.shapes(pa.array([*values, "é"], pa.string()), collapse=collapse).to_pylist()[:-1]
    assert fast == slow


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("uuid", "123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-42661417400"),
        ("email", "jane.doe+news@example.co.uk", "jane.doe@example"),
        ("url", "https://lakegate.dev/docs?x=1", "lakegate.dev/docs"),
        ("iso_date", "2024-02-29", "2024-13-01"),
        ("iso_date", "2024-02-29T12:30:00Z", "2024-02-29T25:30"),
        ("currency_code", "EUR", "EUX"),
        ("phone", "+1 (212) 555-0100", "555-01"),
        ("phone", "+442071838750", "+44207183875012345678"),
    ],
)
def test_formats_accept_and_reject(fmt: str, good: str, bad: str) -> None:
    result = formats.matches(pa.array([good, bad, None]), fmt).to_pylist()
    assert result == [True, False, None]


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown format 'zip'"):
        formats.matches(pa.array(["1"]), "zip")


def test_detect_needs_the_share() -> None:
    assert formats.detect({"email": 996, "url": 0}, 1000) == "email"
    assert formats.detect({"email": 994}, 1000) is None
    assert formats.detect({"email": 999}, 1000, min_share=0.9995) is None
    assert formats.detect({}, 0) is None


def test_currency_codes_are_iso_4217() -> None:
    assert {"USD", "EUR", "JPY", "CHF", "XAU"} <= formats.CURRENCY_CODES
    assert "JFK" not in formats.CURRENCY_CODES
    assert all(len(code) == 3 and code.isupper() for code in formats.CURRENCY_CODES)
