"""Payer link tokens: signed, expiring, bound to account and kind, verifiable across rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from arbridge_payments.links import LinkSigner

OLD = "old-link-secret-0123456789abcdef0123456789"
NEW = "new-link-secret-0123456789abcdef0123456789"


def test_a_token_verifies_and_names_its_link() -> None:
    signer = LinkSigner([NEW], "https://pay.example.com/")
    expires = datetime.now(UTC) + timedelta(days=1)
    url = signer.url("acme", "lk_1", "payment", expires)
    assert url.startswith("https://pay.example.com/l/lk_1.")
    token = url.rsplit("/", 1)[1]
    assert signer.check(token, "acme", "payment") == "lk_1"
    assert LinkSigner.link_id_of(token) == "lk_1"


@pytest.mark.parametrize(
    ("account", "kind", "mutate", "reason"),
    [
        ("other", "payment", lambda t: t, "bad signature"),
        ("acme", "pay_balance", lambda t: t, "bad signature"),
        ("acme", "payment", lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "bad"),
        ("acme", "payment", lambda t: t.replace("lk_1", "lk_2"), "bad signature"),
        ("acme", "payment", lambda t: t.split(".")[0] + ".99999999999." + t.split(".")[2], "bad"),
        ("acme", "payment", lambda t: "garbage", "malformed"),
    ],
)
def test_tampered_or_misused_tokens_are_refused(
    account: str, kind: str, mutate: object, reason: str
) -> None:
    signer = LinkSigner([NEW], "https://pay.example.com")
    token = signer.token("acme", "lk_1", "payment", datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(ValueError, match=reason):
        signer.check(mutate(token), account, kind)  # type: ignore[operator]


def test_expired_tokens_are_refused() -> None:
    signer = LinkSigner([NEW], "https://pay.example.com")
    expires = datetime.now(UTC) + timedelta(hours=1)
    token = signer.token("acme", "lk_1", "payment", expires)
    later = (expires + timedelta(seconds=1)).timestamp()
    with pytest.raises(ValueError, match="expired"):
        signer.check(token, "acme", "payment", now=later)


def test_rotation_new_secret_signs_old_still_verifies_until_dropped() -> None:
    expires = datetime.now(UTC) + timedelta(days=1)
    old_token = LinkSigner([OLD], "https://p").token("acme", "lk_1", "payment", expires)
    rotating = LinkSigner([NEW, OLD], "https://p")
    assert rotating.check(old_token, "acme", "payment") == "lk_1"
    assert rotating.token("acme", "lk_1", "payment", expires) != old_token
    with pytest.raises(ValueError, match="bad signature"):
        LinkSigner([NEW], "https://p").check(old_token, "acme", "payment")
