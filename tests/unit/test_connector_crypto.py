"""Credentials at rest: AES-GCM bound to the account, with key rotation."""

from __future__ import annotations

import pytest

from arbridge_connector.crypto import (
    CredentialCipher,
    CredentialKeyError,
    Secrets,
    new_key_spec,
    parse_keys,
)
from arbridge_connector.settings import Settings
from arbridge_runtime.settings import SettingsError


def test_seal_and_open_round_trip_without_clear_text() -> None:
    cipher = CredentialCipher(parse_keys(new_key_spec("k1")))
    sealed = cipher.seal("acct-1", Secrets("user-pw-canary", "sender-pw-canary"))
    assert b"canary" not in sealed.ciphertext
    assert cipher.open("acct-1", sealed) == Secrets("user-pw-canary", "sender-pw-canary")
    assert "canary" not in repr(cipher.open("acct-1", sealed))


def test_a_ciphertext_does_not_open_for_another_account() -> None:
    cipher = CredentialCipher(parse_keys(new_key_spec("k1")))
    sealed = cipher.seal("acct-1", Secrets("a", "b"))
    with pytest.raises(CredentialKeyError, match="do not decrypt"):
        cipher.open("acct-2", sealed)


def test_rotation_keeps_old_ciphertexts_readable_and_seals_under_the_new_key() -> None:
    old = new_key_spec("k1")
    sealed = CredentialCipher(parse_keys(old)).seal("a", Secrets("u", "s"))
    rotated = CredentialCipher(parse_keys(f"{new_key_spec('k2')},{old}"))
    assert rotated.open("a", sealed) == Secrets("u", "s")
    assert rotated.seal("a", Secrets("u", "s")).key_id == "k2"
    retired = CredentialCipher(parse_keys(new_key_spec("k2")))
    with pytest.raises(CredentialKeyError, match="not configured"):
        retired.open("a", sealed)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k1", "kid:base64url"),
        ("k1:AAAA", "32 bytes"),
        ("", "at least one key"),
        (f"{new_key_spec('k1')},{new_key_spec('k1')}", "unique"),
    ],
)
def test_bad_key_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(CredentialKeyError, match=message):
        parse_keys(spec)


def test_connector_settings_report_every_problem_without_echoing_keys() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "ARBRIDGE_SERVICE_TOKEN": "t" * 20,
                "ARBRIDGE_CONNECTOR_KEYS": "k1:c2VjcmV0LXNob3J0",
                "ARBRIDGE_INTACCT_CONCURRENCY": "0",
            }
        )
    text = str(caught.value)
    assert "ARBRIDGE_CONNECTOR_KEYS is invalid" in text
    assert "ARBRIDGE_INTACCT_CONCURRENCY" in text
    assert "c2VjcmV0LXNob3J0" not in text
