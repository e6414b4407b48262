"""Money as integer minor units and an ISO 4217 code, and its decimal text at the edges.

Amounts travel inside arbridge as integers (cents for USD, yen for JPY) and
become decimal text only where a foreign API wants it (Intacct XML, the card
gateway's JSON). Nothing here uses floats.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# ISO 4217 minor-unit exponents other than 2 (the list maintained by SIX for ISO,
# table A.1). A wrong one moves money: a Kuwaiti dinar has 1,000 fils, so KWD 12.345
# is 12345 minor units, where the two-digit default refused it.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def exponent(currency: str) -> int:
    """Digits after the decimal point in ``currency`` (ISO 4217's minor unit)."""
    return _EXPONENTS.get(currency.upper(), 2)


def to_minor(value: str, currency: str) -> int:
    """Decimal text (``"12.30"``) to minor units; ValueError when it is not an exact amount."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount")
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more decimals than {currency} allows")
    return int(scaled)


def from_minor(minor: int, currency: str) -> str:
    """Minor units to decimal text with the currency's digits (``1230, "USD"`` -> ``"12.30"``)."""
    digits = exponent(currency)
    return str(Decimal(minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits)))
