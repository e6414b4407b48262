"""Intacct credentials encrypted at rest: AES-256-GCM under keys from configuration.

The associated data binds each ciphertext to its account and key id, so a
ciphertext copied onto another account's row does not decrypt. Keys are
configured as ``kid:base64url(32 bytes)`` items, newest first; the first
encrypts, any decrypts, and rotation re-encrypts every row under the first.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class CredentialKeyError(ValueError):
    """The key configuration is invalid, or a ciphertext's key is unknown."""


@dataclass(frozen=True)
class Secrets:
    user_password: str
    sender_password: str

    def __repr__(self) -> str:
        return "Secrets(***)"


@dataclass(frozen=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes


def parse_keys(spec: str) -> list[tuple[str, bytes]]:
    """``kid:base64url,kid:base64url`` → [(kid, 32-byte key)], newest first."""
    keys: list[tuple[str, bytes]] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not kid:
            raise CredentialKeyError("each key is kid:base64url-of-32-bytes")
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            raise CredentialKeyError(f"key {kid} is not base64url") from None
        if len(raw) != 32:
            raise CredentialKeyError(f"key {kid} must be 32 bytes (AES-256), not {len(raw)}")
        keys.append((kid, raw))
    if not keys:
        raise CredentialKeyError("at least one key is required")
    if len({k for k, _ in keys}) != len(keys):
        raise CredentialKeyError("key ids must be unique")
    return keys


def new_key_spec(kid: str = "k1") -> str:
    return f"{kid}:{base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip('=')}"


class CredentialCipher:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        self._keys = dict(keys)
        self.primary = keys[0][0]

    @staticmethod
    def _aad(account_id: str, key_id: str) -> bytes:
        return f"arbridge.connector.credentials|{account_id}|{key_id}".encode()

    def seal(self, account_id: str, secrets: Secrets) -> Sealed:
        nonce = os.urandom(12)
        plaintext = json.dumps(
            {"user_password": secrets.user_password, "sender_password": secrets.sender_password}
        ).encode()
        ciphertext = AESGCM(self._keys[self.primary]).encrypt(
            nonce, plaintext, self._aad(account_id, self.primary)
        )
        return Sealed(self.primary, nonce, ciphertext)

    def open(self, account_id: str, sealed: Sealed) -> Secrets:
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise CredentialKeyError(
                f"credentials are sealed under key {sealed.key_id}, which is not "
                "configured; add it back to ARBRIDGE_CONNECTOR_KEYS"
            )
        try:
            plaintext = AESGCM(key).decrypt(
                sealed.nonce, sealed.ciphertext, self._aad(account_id, sealed.key_id)
            )
        except InvalidTag:
            raise CredentialKeyError("stored credentials do not decrypt for this account") from None
        data = json.loads(plaintext)
        return Secrets(str(data["user_password"]), str(data["sender_password"]))
