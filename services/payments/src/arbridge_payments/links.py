"""Links for payers: a Payment Link per invoice, Pay Balance and payment-method links per customer.

A link's URL is ``{base}/l/{link_id}.{expires}.{signature}``: the id is 96
random bits, the expiry Unix seconds, and the signature an HMAC-SHA256 over
account, id, kind and expiry under the first of the configured link secrets
(any of them verifies, so secrets rotate without breaking links in flight).
Nothing secret is stored: the URL is rebuilt from the row when it is read.
A link is honoured only while the signature holds, it has not expired, and
its row says it is not revoked.

Every change is a ``payments.link.changed`` event (through the outbox), which
sync writes back to the Intacct custom fields when the account wants it. When
a link is revoked, or expires, while another live link serves the same invoice
or customer, the event carries that link's URL instead of an empty one.
Expiry is announced by a periodic pass (``announce_expired``, with recovery),
once per link.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.common.v1 import ar_pb2
from arbridge.events.v1 import events_pb2
from arbridge.sync.v1 import sync_pb2_grpc
from arbridge_payments.arstore import get_customer, get_invoice
from arbridge_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from arbridge_runtime.jetstream import Outbox

KINDS = ("payment", "pay_balance", "payment_method")
MAX_TTL_SECONDS = 366 * 24 * 3600
_COLUMNS = (
    "link_id, account_id, kind, customer_id, invoice_record_no, expires_at, revoked_at, created_at"
)


@dataclasses.dataclass(frozen=True)
class Link:
    link_id: str
    account_id: str
    kind: str
    customer_id: str
    invoice_record_no: str
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime
    url: str = ""

    @property
    def live(self) -> bool:
        return self.revoked_at is None and self.expires_at > datetime.now(UTC)


class LinkRefused(Exception):
    """A link a payer opened that is not honoured; ``reason`` is ``invalid``, ``expired`` or
    ``revoked`` (the page tells the payer which, and what to do)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LinkSigner:
    """Builds and checks link tokens; ``secrets[0]`` signs, every secret verifies."""

    def __init__(self, link_secrets: Sequence[str], base_url: str) -> None:
        if not link_secrets:
            raise ValueError("at least one link secret is needed")
        self._keys = [s.encode() for s in link_secrets]
        self._base = base_url.rstrip("/")

    def _sign(self, key: bytes, account_id: str, link_id: str, kind: str, expires: int) -> str:
        message = f"{account_id}\x1f{link_id}\x1f{kind}\x1f{expires}".encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, account_id: str, link_id: str, kind: str, expires_at: datetime) -> str:
        expires = int(expires_at.timestamp())
        return (
            f"{link_id}.{expires}.{self._sign(self._keys[0], account_id, link_id, kind, expires)}"
        )

    def url(self, account_id: str, link_id: str, kind: str, expires_at: datetime) -> str:
        return f"{self._base}/l/{self.token(account_id, link_id, kind, expires_at)}"

    def check(self, token: str, account_id: str, kind: str, now: float | None = None) -> str:
        """The link id of a well-signed, unexpired token; ValueError (with why) otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError("malformed")
        link_id, expires_text, signature = parts
        expires = int(expires_text)
        if not any(
            hmac.compare_digest(signature, self._sign(key, account_id, link_id, kind, expires))
            for key in self._keys
        ):
            raise ValueError("bad signature")
        if expires <= (time.time() if now is None else now):
            raise ValueError("expired")
        return link_id

    @staticmethod
    def link_id_of(token: str) -> str:
        """The id a token names (unverified: use it only to find the row to check against)."""
        return token.split(".", 1)[0]


class Links:
    """Creates, lists, revokes and resolves links."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        outbox: Outbox,
        sync: sync_pb2_grpc.SyncServiceAsyncStub,
        signer: LinkSigner,
        default_ttl_seconds: int,
    ) -> None:
        self._pool = pool
        self._outbox = outbox
        self._sync = sync
        self._signer = signer
        self._default_ttl = default_ttl_seconds

    def _link(self, row: asyncpg.Record) -> Link:
        link = Link(**dict(row))
        url = self._signer.url(link.account_id, link.link_id, link.kind, link.expires_at)
        return dataclasses.replace(link, url=url)

    async def create(
        self,
        *,
        account_id: str,
        kind: str,
        customer_id: str,
        invoice_record_no: str,
        ttl_seconds: int,
    ) -> Link:
        missing = [
            n for n, v in (("account_id", account_id), ("customer_id", customer_id)) if not v
        ]
        if missing:
            raise InvalidArgument(f"{', '.join(missing)} must be set")
        if kind not in KINDS:
            raise InvalidArgument("kind must be LINK_KIND_PAYMENT, _PAY_BALANCE or _PAYMENT_METHOD")
        if kind == "payment" and not invoice_record_no:
            raise InvalidArgument("a payment link needs invoice_record_no")
        if kind != "payment" and invoice_record_no:
            raise InvalidArgument(
                "invoice_record_no is only for payment links; a pay-balance or payment-method "
                "link is for the customer"
            )
        if ttl_seconds < 0 or ttl_seconds > MAX_TTL_SECONDS:
            raise InvalidArgument(
                f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS} (0 for the default)"
            )
        await self._check_target(account_id, customer_id, invoice_record_no)
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(
            seconds=ttl_seconds or self._default_ttl
        )
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO links (link_id, account_id, kind, customer_id, invoice_record_no,"
                f" expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
                "lk_" + secrets.token_hex(12),
                account_id,
                kind,
                customer_id,
                invoice_record_no,
                expires_at,
            )
            link = self._link(row)
            await self._announce(conn, link, link.url)
        return link

    async def _check_target(
        self, account_id: str, customer_id: str, invoice_record_no: str
    ) -> None:
        await get_customer(self._sync, account_id, customer_id)
        if not invoice_record_no:
            return
        invoice = await get_invoice(self._sync, account_id, invoice_record_no)
        if invoice.customer_id != customer_id:
            raise InvalidArgument(
                f"invoice {invoice_record_no} belongs to customer {invoice.customer_id!r}, "
                f"not {customer_id!r}"
            )
        if invoice.state in (ar_pb2.INVOICE_STATE_PAID, ar_pb2.INVOICE_STATE_VOID):
            state = "paid" if invoice.state == ar_pb2.INVOICE_STATE_PAID else "void"
            raise FailedPrecondition(
                f"invoice {invoice_record_no} is {state}; there is nothing to pay through a link"
            )

    async def list_links(
        self, account_id: str, customer_id: str, invoice_record_no: str, include_inactive: bool
    ) -> list[Link]:
        if not account_id:
            raise InvalidArgument("account_id must be set")
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM links WHERE account_id = $1"
            " AND ($2 = '' OR customer_id = $2) AND ($3 = '' OR invoice_record_no = $3)"
            " AND ($4 OR (revoked_at IS NULL AND expires_at > now()))"
            " ORDER BY created_at DESC, link_id LIMIT 1000",
            account_id,
            customer_id,
            invoice_record_no,
            include_inactive,
        )
        return [self._link(r) for r in rows]

    async def revoke(self, account_id: str, link_id: str) -> Link:
        """Revokes a link (again: the same answer); announces the URL that now serves its target."""
        if not account_id or not link_id:
            raise InvalidArgument("account_id and link_id must be set")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM links WHERE account_id = $1 AND link_id = $2 FOR UPDATE",
                account_id,
                link_id,
            )
            if row is None:
                raise NotFound(f"link {link_id!r} does not exist in account {account_id!r}")
            if row["revoked_at"] is not None:
                return self._link(row)
            row = await conn.fetchrow(
                f"UPDATE links SET revoked_at = now() WHERE link_id = $1 RETURNING {_COLUMNS}",
                link_id,
            )
            link = self._link(row)
            await self._announce(conn, link, await self._successor_url(conn, link))
        return link

    async def announce_expired(self, limit: int = 100) -> int:
        """Announces links that expired (once each): the URL that serves the target now,
        or none, so the Intacct field never keeps an expired link. Returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE links SET expiry_announced_at = now() WHERE link_id IN"
                " (SELECT link_id FROM links WHERE revoked_at IS NULL"
                " AND expiry_announced_at IS NULL AND expires_at <= now()"
                f" ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
                limit,
            )
            for row in rows:
                link = self._link(row)
                await self._announce(conn, link, await self._successor_url(conn, link))
        return len(rows)

    async def _successor_url(self, conn: Any, link: Link) -> str:
        """The URL of the newest live link for the same target as ``link`` (none: "")."""
        successor = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM links WHERE account_id = $1 AND kind = $2"
            " AND customer_id = $3 AND invoice_record_no = $4 AND revoked_at IS NULL"
            " AND expires_at > now() ORDER BY created_at DESC, link_id LIMIT 1",
            link.account_id,
            link.kind,
            link.customer_id,
            link.invoice_record_no,
        )
        return self._link(successor).url if successor else ""

    async def resolve(self, token: str) -> Link:
        """The link a payer's token names, if it is honoured; LinkRefused says why not.

        The signature is checked against the row's account and kind, so a token
        cannot be moved to another account or kind; expiry is in the signed token
        and revocation in the row.
        """
        link_id = LinkSigner.link_id_of(token)
        row = None
        if link_id.startswith("lk_") and len(link_id) <= 64:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM links WHERE link_id = $1", link_id
            )
        if row is None:
            raise LinkRefused("invalid")
        try:
            self._signer.check(token, row["account_id"], row["kind"])
        except ValueError as err:
            raise LinkRefused("expired" if str(err) == "expired" else "invalid") from None
        link = self._link(row)
        if link.revoked_at is not None:
            raise LinkRefused("revoked")
        return link

    async def _announce(self, conn: Any, link: Link, url: str) -> None:
        occurred = Timestamp()
        occurred.FromDatetime(datetime.now(UTC))
        await self._outbox.add(
            conn,
            "payments.link.changed",
            events_pb2.LinkChanged(
                account_id=link.account_id,
                link_id=link.link_id,
                kind=link.kind,
                customer_id=link.customer_id,
                invoice_record_no=link.invoice_record_no,
                url=url,
                occurred_at=occurred,
            ),
        )
