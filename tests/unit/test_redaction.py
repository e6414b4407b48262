"""Secrets, session ids and card numbers never reach a log line."""

from __future__ import annotations

import io
import json

import structlog

from arbridge_runtime.logs import configure_logging
from arbridge_runtime.redaction import contains_card_number, luhn_valid, redact_text, redact_value

CANARY_PAN = "4111 1111 1111 1111"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def test_card_numbers_are_masked_in_text_but_other_numbers_are_not() -> None:
    text = f"charge with {CANARY_PAN} and 5555-5555-5555-4444 for invoice 1234567890123"
    redacted = redact_text(text)
    assert "4111" not in redacted
    assert "5555" not in redacted
    assert "1234567890123" in redacted  # not Luhn-valid: an ordinary number
    assert contains_card_number(text)
    assert not contains_card_number(redacted)


def test_intacct_xml_secrets_and_bearer_tokens_are_masked() -> None:
    xml = (
        "<login><userid>u</userid><password>hunter2!</password></login>"
        "<authentication><sessionid>sEsSiOn..</sessionid></authentication>"
    )
    out = redact_text(xml + " Authorization: Bearer abc.def.ghi ?token=s3cr3t&x=1")
    for secret in ("hunter2!", "sEsSiOn..", "abc.def.ghi", "s3cr3t"):
        assert secret not in out
    assert "x=1" in out


def test_sensitive_keys_are_masked_recursively() -> None:
    value = {
        "user_password": "pw",
        "nested": {"sessionid": "s", "ok": "fine"},
        "cards": [{"card_number": "4111111111111111"}],
    }
    out = redact_value("payload", value)
    assert out == {
        "user_password": "[REDACTED]",
        "nested": {"sessionid": "[REDACTED]", "ok": "fine"},
        "cards": [{"card_number": "[REDACTED]"}],
    }


def test_log_lines_are_json_with_context_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging("testsvc", "debug", stream=stream)
    structlog.contextvars.bind_contextvars(request_id="req-1")
    structlog.get_logger("t").info(
        "charge_attempted", sender_password="topsecret", note=f"card {CANARY_PAN}"
    )
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "charge_attempted"
    assert line["service"] == "testsvc"
    assert line["request_id"] == "req-1"
    assert line["sender_password"] == "[REDACTED]"
    assert "4111" not in line["note"]
