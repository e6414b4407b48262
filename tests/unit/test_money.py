"""Money at the edges: decimal text to integer minor units and back, exactly."""

from __future__ import annotations

import pytest

from arbridge_runtime.money import exponent, from_minor, to_minor


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.30", "USD", 1230),
        ("12.3", "usd", 1230),
        ("0.01", "EUR", 1),
        ("-5.00", "USD", -500),
        ("1500", "JPY", 1500),
        ("99999999999.99", "USD", 9_999_999_999_999),
        # Three-digit currencies: 1,000 fils to the dinar.
        ("12.345", "KWD", 12_345),
        ("0.5", "BHD", 500),
        ("15000", "PYG", 15_000),
        ("1.0001", "CLF", 10_001),
    ],
)
def test_to_minor(text: str, currency: str, minor: int) -> None:
    assert to_minor(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "reason"),
    [
        ("12.345", "USD", "more decimals than USD allows"),
        ("1.5", "JPY", "more decimals than JPY allows"),
        ("12.3456", "KWD", "more decimals than KWD allows"),
        ("100.5", "PYG", "more decimals than PYG allows"),
        ("abc", "USD", "is not an amount"),
        ("NaN", "USD", "is not an amount"),
        ("Infinity", "USD", "is not an amount"),
    ],
)
def test_to_minor_refuses_inexact_amounts(text: str, currency: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        to_minor(text, currency)


def test_from_minor_has_the_currency_digits_and_round_trips() -> None:
    assert from_minor(1230, "USD") == "12.30"
    assert from_minor(5, "USD") == "0.05"
    assert from_minor(-500, "USD") == "-5.00"
    assert from_minor(1500, "JPY") == "1500"
    assert from_minor(12_345, "KWD") == "12.345"
    assert from_minor(500, "OMR") == "0.500"
    assert (exponent("usd"), exponent("KRW"), exponent("kwd"), exponent("XPF")) == (2, 0, 3, 0)
    for minor in (0, 1, 99, 100, 123_456_789):
        for currency in ("USD", "JPY", "KWD", "CLF"):
            assert to_minor(from_minor(minor, currency), currency) == minor
