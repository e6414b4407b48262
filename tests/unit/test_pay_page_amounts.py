"""What a payer types as an amount on a pay page: read exactly, or refused, never guessed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arbridge_payments.pages import AmbiguousAmount, _amount, entered_minor
from arbridge_runtime.money import from_minor


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.50", "USD", 1250),
        (" $12.5 ", "USD", 1250),
        ("€ 1,234.50", "EUR", 123450),
        ("1,234,567", "USD", 123456700),
        ("12", "USD", 1200),
        ("1,250", "JPY", 1250),
        ("7.", "EUR", 700),
    ],
)
def test_amounts_as_the_page_writes_them_are_read(text: str, currency: str, minor: int) -> None:
    assert entered_minor(text, currency) == minor


@pytest.mark.parametrize("text", ["12,50", "1,25", "1,2345.00", "1.234,50", ",50", "12,"])
def test_a_comma_that_is_not_thousands_grouping_is_refused(text: str) -> None:
    # "12,50" is 12.50 to a European payer and 1250 to a naive parser: refused.
    with pytest.raises(AmbiguousAmount):
        entered_minor(text, "EUR")


@pytest.mark.parametrize("text", ["", "twelve", "1e3", "1_000", "-5", "+5", "NaN", "$$5", "12.345"])
def test_what_is_not_an_amount_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"not an amount|more decimals than USD allows"):
        entered_minor(text, "USD")


@given(st.integers(min_value=0, max_value=10**15), st.sampled_from(["USD", "EUR", "JPY"]))
def test_every_amount_the_page_shows_reads_back_the_same(minor: int, currency: str) -> None:
    assert entered_minor(_amount(minor, currency), currency) == minor
    assert entered_minor(from_minor(minor, currency), currency) == minor
