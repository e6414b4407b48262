"""Redaction of secrets, card data and session ids.

Used by the log pipeline and by anything that builds a message from outside
data (error messages, event bodies kept for diagnosis). It removes:

* values under sensitive keys (passwords, tokens, session ids, card fields);
* Intacct XML elements that carry secrets (``<password>``, ``<sessionid>``);
* bearer tokens and URL tokens;
* anything that looks like a card number (13 to 19 digits, spaces or dashes
  allowed between them, that pass the Luhn check).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

_SENSITIVE_KEY = re.compile(
    r"(pass(word)?|secret|token|session_?id|authorization|api_?key|private_?key|"
    r"card_?number|pan|cvv|cvc|cvv2|security_?code|account_?number|routing_?number|"
    r"credential|cookie|signature)",
    re.IGNORECASE,
)
_XML_SECRET = re.compile(
    r"<(password|sessionid|userpassword|senderpassword)>[^<]*</\1>", re.IGNORECASE
)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_QUERY_SECRET = re.compile(
    r"((?:token|sig|signature|secret|session_?id)=)[^&\s\"']+", re.IGNORECASE
)
# Candidate card numbers: 13-19 digits, optionally separated by single spaces or dashes.
_CARD_CANDIDATE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"[ -]", "", text)
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return "[CARD REDACTED]"
    return text


def contains_card_number(text: str) -> bool:
    """True when ``text`` holds something that looks like a card number."""
    for match in _CARD_CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return True
    return False


def redact_text(text: str) -> str:
    """Removes secrets and card numbers from free text."""
    text = _XML_SECRET.sub(lambda m: f"<{m.group(1)}>{REDACTED}</{m.group(1)}>", text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    return _CARD_CANDIDATE.sub(_mask_card, text)


def is_sensitive_key(key: str) -> bool:
    return bool(_SENSITIVE_KEY.search(key))


def redact_value(key: str, value: Any) -> Any:
    """Redacts one value, recursing into mappings and sequences."""
    if is_sensitive_key(key) and value not in (None, "", b""):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value
