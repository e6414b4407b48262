"""Webhook credentials: per-account URL tokens and HMAC-SHA256 signatures with a timestamp.

Tokens and signing secrets are derived from one configured master secret
(``ARBRIDGE_WEBHOOK_SECRET``; several comma separated during rotation), so
the gateway, the gRPC ingest and the set-up document agree without storing
per-account secrets. Every comparison is constant time.

* Intacct smart events cannot sign: they authenticate with a 256-bit token in
  the URL path (``/v1/intacct/{account}/{token}``).
* Senders that can sign send ``X-Arbridge-Timestamp`` and
  ``X-Arbridge-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>``;
  the timestamp must be within the replay window.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

REPLAY_WINDOW_SECONDS = 300


def _derive(master: str, purpose: str, account_id: str) -> bytes:
    return hmac.new(master.encode(), f"{purpose}|{account_id}".encode(), hashlib.sha256).digest()


def url_token(master: str, account_id: str) -> str:
    return _derive(master, "url-token", account_id).hex()


def signing_secret(master: str, account_id: str) -> bytes:
    return _derive(master, "signing-secret", account_id)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return (
        "v1=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    )


def token_ok(masters: Sequence[str], account_id: str, token: str) -> bool:
    ok = False
    for master in masters:
        if master and hmac.compare_digest(url_token(master, account_id).encode(), token.encode()):
            ok = True
    return ok


def signature_problem(
    masters: Sequence[str],
    account_id: str,
    body: bytes,
    timestamp: str,
    signature: str,
    now: float | None = None,
) -> str:
    """Why a signed delivery is refused; empty when it is authentic and fresh."""
    if not timestamp or not signature:
        return "unsigned: send X-Arbridge-Timestamp and X-Arbridge-Signature"
    try:
        stamp = int(timestamp)
    except ValueError:
        return "X-Arbridge-Timestamp must be Unix seconds"
    current = time.time() if now is None else now
    if abs(current - stamp) > REPLAY_WINDOW_SECONDS:
        return f"stale: the timestamp is outside the {REPLAY_WINDOW_SECONDS}-second window"
    given = [part.strip() for part in signature.split(",") if part.strip().startswith("v1=")]
    valid = False
    for master in masters:
        expected = sign(signing_secret(master, account_id), stamp, body).encode()
        for candidate in given:
            if master and hmac.compare_digest(expected, candidate.encode()):
                valid = True
    return "" if valid else "the signature does not match the body"
