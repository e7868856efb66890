"""Lexical name evidence: tokens, abbreviations, n-grams."""

from __future__ import annotations

import pytest

from lakegate.schema.lexical import abbreviates, lexical_similarity, tokenize, trigram_similarity


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("customer_id", ["customer", "id"]),
        ("customerID", ["customer", "id"]),
        ("HTTPServerName", ["http", "server", "name"]),
        ("tblSchool_year2", ["tbl", "school", "year", "2"]),
        ("address-line 1", ["address", "line", "1"]),
        ("__", []),
    ],
)
def test_tokenize(name: str, tokens: list[str]) -> None:
    assert tokenize(name) == tokens


@pytest.mark.parametrize(
    ("short", "long"),
    [("cust", "customer"), ("amt", "amount"), ("qty", "quantity"), ("cls", "class"), ("no", "number"), ("id", "code")],
)
def test_abbreviations_found_by_rule(short: str, long: str) -> None:
    assert abbreviates(short, long)


@pytest.mark.parametrize(
    ("short", "long"),
    [("amt", "customer"), ("ty", "quantity"), ("a", "amount"), ("12", "123"), ("customer", "cust"), ("dt", "data")],
)
def test_non_abbreviations(short: str, long: str) -> None:
    assert not abbreviates(short, long)


def test_abbreviated_names_score_high_and_unrelated_low() -> None:
    assert lexical_similarity("cust_id", "customer_id").score > 0.8
    assert lexical_similarity("amt", "amount").score > 0.7
    assert lexical_similarity("qty", "quantity").score > 0.7
    assert lexical_similarity("amount", "customer_id").score < 0.2
    assert lexical_similarity("UrbanZone", "city").score == 0.0
    assert lexical_similarity("pid", "pid").score == 1.0


def test_containment_sees_prefixes_and_suffixes() -> None:
    tagged = lexical_similarity("session_x", "session")
    assert tagged.containment == 1.0 and tagged.jaccard == 0.5
    assert lexical_similarity("tbl_school_year", "school_year").containment == 1.0
    # both "total" names contain "total_changes": lexical evidence alone cannot choose
    schedule = lexical_similarity("total_changes", "total_schedule_changes")
    budget = lexical_similarity("total_changes", "total_budget_changes")
    assert schedule.containment == budget.containment == 1.0


def test_initials() -> None:
    assert lexical_similarity("SanFacID", "sfcode").initials
    assert not lexical_similarity("location", "longitude").initials


def test_trigram_similarity_is_symmetric_and_bounded() -> None:
    assert trigram_similarity("email", "email_address") == trigram_similarity("email_address", "email")
    assert 0.0 < trigram_similarity("email", "email_address") < 1.0
    assert trigram_similarity("abc", "abc") == 1.0
