"""Stored payment methods: add from a hosted-fields token, list, set default, remove.

A method is a reference to a source vaulted at the card gateway: a card or an
ACH bank account, both entered by the payer into the gateway's hosted fields
(arbridge never sees the numbers). Adding one:

1. the token's card or account is read from the gateway (brand, last four,
   expiry or account type, fingerprint); if the customer already has it on
   file, that method is the answer and nothing is vaulted twice;
2. the customer's vaulted shopper is created once, under an idempotency key
   derived from the account and customer, so a retry after a crash finds the
   same shopper;
3. the card is vaulted on the shopper and the method recorded.

Steps 2-3 run under a per-customer advisory lock, so two concurrent adds for a
customer cannot create two shoppers or two defaults.

The gateway names a shopper's stored card by its type and last four digits (a
bank account by its last four), so a customer keeps one method per such name: a
new card with the name of one on file (most often that card reissued with a new
expiry) replaces it, default and all. Removing a method deletes its source from
the gateway's vault too, so a removed card can never be charged: the removal
commits first and is never held up by the gateway, and a deletion the gateway
could not take is retried by the recovery pass (``delete_pending_sources``);
one the gateway refuses outright is tried again later and later (from a minute
to a day apart) and logged as an error each time. A new source is never vaulted
beside a removed one of its name that the gateway may still hold.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from arbridge.events.v1 import events_pb2
from arbridge.sync.v1 import sync_pb2_grpc
from arbridge_payments.arstore import get_customer
from arbridge_payments.gateway import (
    CARD,
    CardGateway,
    GatewayRefused,
    GatewayTimeout,
    GatewayUnavailable,
)
from arbridge_runtime.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from arbridge_runtime.faults import NO_FAULTS, FaultInjector
from arbridge_runtime.jetstream import Outbox

log = structlog.get_logger(__name__)

# Outcomes of a vault deletion (see ``PaymentMethods._delete_from_vault``).
DELETED, LATER, REFUSED = "deleted", "later", "refused"
# A deletion the gateway refused is tried again after this, doubling up to the maximum.
REFUSED_BACKOFF_FIRST = 60.0
REFUSED_BACKOFF_MAX = 24 * 3600.0

_COLUMNS = (
    "payment_method_id, account_id, customer_id, kind, shopper_id, brand, last4, exp_month,"
    " exp_year, fingerprint, bank_account_type, is_default, created_at"
)


@dataclass(frozen=True)
class PaymentMethod:
    """A stored method as the API shows it."""

    payment_method_id: str
    account_id: str
    customer_id: str
    kind: str
    shopper_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    bank_account_type: str
    is_default: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> PaymentMethod:
        return cls(**dict(row))


def _require(**values: str) -> None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InvalidArgument(f"{', '.join(missing)} must be set")


class PaymentMethods:
    """The payment-method part of the payments service."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        gateway: CardGateway,
        sync: sync_pb2_grpc.SyncServiceAsyncStub,
        outbox: Outbox,
        faults: FaultInjector = NO_FAULTS,
    ) -> None:
        self._pool = pool
        self._gateway = gateway
        self._sync = sync
        self._outbox = outbox
        self._faults = faults

    async def add(
        self,
        *,
        account_id: str,
        customer_id: str,
        token: str,
        make_default: bool,
        idempotency_key: str = "",
        kind: str = "",
        replace: bool = True,
    ) -> tuple[PaymentMethod, bool, str]:
        """Stores the card or bank account behind a hosted-fields token; returns
        (method, already_on_file, id of the method it replaced or ""). ``kind``
        (``card`` or ``ach``), when given, is what the token must hold. Without
        ``replace``, a method on file with the new one's name is an error rather than
        replaced.

        A retry with the same idempotency key (or, without one, the same token)
        answers with the method the first request stored, and the one it replaced.
        """
        _require(account_id=account_id, customer_id=customer_id, gateway_token=token)
        if len(idempotency_key) > 255:
            raise InvalidArgument("idempotency_key is at most 255 characters")
        token_hash = hashlib.sha256(token.encode()).hexdigest()
        # The token is single use, so it names the request too; both keys are remembered.
        request_keys = [f"token:{token_hash}"]
        if idempotency_key:
            request_keys.insert(0, idempotency_key)
        request_hash = hashlib.sha256(
            f"{customer_id}\x1f{token_hash}\x1f{make_default}".encode()
        ).hexdigest()
        answered = await self._answered(account_id, request_keys, request_hash)
        if answered is not None:
            return answered
        name = (await get_customer(self._sync, account_id, customer_id)).name
        source = await self._gateway_call(self._gateway.token_source(token))
        if len(source.last4) != 4 or not source.fingerprint:
            raise InvalidArgument(
                "gateway_token holds no card or bank account yet; the payer must submit the "
                "hosted fields first"
            )
        if kind and source.kind != kind:
            held = "a card" if source.kind == CARD else "a bank account"
            raise InvalidArgument(
                f"gateway_token holds {held}, not the {'card' if kind == CARD else 'bank account'}"
                " the request's type asks for; send the matching type or none"
            )
        # (A default replaced leaves none, so the new method becomes the default.)
        # The token's key names the replacing request: a retry after a crash between
        # retiring the old method and saving the new one still tells what it replaced.
        replacing = request_keys[-1]
        replaced = await self._retire_namesake(account_id, customer_id, source, replace, replacing)
        replaced_id = (
            replaced.payment_method_id
            if replaced
            else await self._pool.fetchval(
                "SELECT coalesce(max(payment_method_id), '') FROM payment_methods"
                " WHERE account_id = $1 AND customer_id = $2 AND replaced_by_request = $3",
                account_id,
                customer_id,
                replacing,
            )
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_customer(conn, account_id, customer_id)
            # A concurrent request with this key may have finished while we waited.
            answered = await self._answered(account_id, request_keys, request_hash, conn)
            if answered is not None:
                return answered
            existing = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM payment_methods WHERE account_id = $1"
                " AND customer_id = $2 AND fingerprint = $3 AND removed_at IS NULL",
                account_id,
                customer_id,
                source.fingerprint,
            )
            if existing is not None:
                method = PaymentMethod.from_row(existing)
                if make_default and not method.is_default:
                    method = await self._make_default(conn, method)
                await self._remember(conn, account_id, request_keys, request_hash, method, True)
                return method, True, ""
            if await self._live_namesake(conn, account_id, customer_id, source) is not None:
                # Another add of this name committed since the namesake was retired.
                raise Conflict(
                    "a card or account with the same type and last four digits was saved for "
                    "this customer meanwhile; retry with the same token to replace it"
                )
            await self._settle_namesake_deletions(conn, account_id, customer_id, source)
            shopper_id = await conn.fetchval(
                "SELECT shopper_id FROM gateway_shoppers WHERE account_id = $1"
                " AND customer_id = $2",
                account_id,
                customer_id,
            )
            if shopper_id is None:
                merchant_shopper_id = _merchant_shopper_id(account_id, customer_id)
                shopper = await self._gateway_call(
                    self._gateway.create_shopper(
                        merchant_shopper_id=merchant_shopper_id,
                        name=name,
                        idempotency_key=f"shopper-{merchant_shopper_id}",
                    )
                )
                shopper_id = shopper.shopper_id
                await conn.execute(
                    "INSERT INTO gateway_shoppers (account_id, customer_id, shopper_id)"
                    " VALUES ($1, $2, $3)",
                    account_id,
                    customer_id,
                    shopper_id,
                )
            vaulted = await self._gateway_call(
                self._gateway.add_source(shopper_id, token, source.kind)
            )
            if all(s.fingerprint != source.fingerprint for s in vaulted.sources):
                raise Unavailable(
                    "the card gateway did not vault the payment method; retry with a new token"
                )
            has_default = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM payment_methods WHERE account_id = $1"
                " AND customer_id = $2 AND is_default AND removed_at IS NULL)",
                account_id,
                customer_id,
            )
            if make_default and has_default:
                await _clear_default(conn, account_id, customer_id)
            row = await conn.fetchrow(
                "INSERT INTO payment_methods (payment_method_id, account_id, customer_id, kind,"
                " shopper_id, brand, last4, exp_month, exp_year, fingerprint, is_default,"
                " bank_account_type) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                f" RETURNING {_COLUMNS}",
                "pm_" + secrets.token_hex(12),
                account_id,
                customer_id,
                source.kind,
                shopper_id,
                source.brand,
                source.last4,
                source.exp_month,
                source.exp_year,
                source.fingerprint,
                make_default or not has_default,
                source.bank_account_type,
            )
            method = PaymentMethod.from_row(row)
            await self._remember(
                conn, account_id, request_keys, request_hash, method, False, replaced_id
            )
            await self._announce(conn, account_id, customer_id)
        log.info(
            "payment_method.added",
            account_id=account_id,
            payment_method_id=method.payment_method_id,
            brand=method.brand,
            replaced=replaced_id,
        )
        return method, False, replaced_id

    async def _retire_namesake(
        self, account_id: str, customer_id: str, source: Any, replace: bool, replacing: str
    ) -> PaymentMethod | None:
        """Removes the customer's method that the gateway would name as it names the new
        source (same type and last four digits, another card): with both vaulted, a
        charge or a deletion could reach either. Done before the new one is vaulted, and
        committed on its own, so the vault and the table agree at every step; the new
        method takes over the default. None when there is no such method. ``replacing``
        names the add (its token's request key), recorded on the retired method."""
        namesake = await self._live_namesake(self._pool, account_id, customer_id, source)
        if namesake is None:
            return None
        if not replace:
            what = (
                f"bank account ending {source.last4}"
                if source.kind != CARD
                else f"{source.brand or 'card'} ending {source.last4}"
            )
            raise FailedPrecondition(
                f"a {what} is already saved for this customer, and the card gateway tells"
                " saved methods apart only by type and last four digits: use the saved one,"
                " or save this one to replace it"
            )
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_customer(conn, account_id, customer_id)
            await self._remove(conn, namesake, pass_default=False, replaced_by=replacing)
        self._faults.hit("method.after_retire")
        await self._delete_from_vault(namesake)
        log.info(
            "payment_method.replaced",
            account_id=account_id,
            payment_method_id=namesake.payment_method_id,
        )
        return namesake

    @staticmethod
    async def _live_namesake(
        db: Any, account_id: str, customer_id: str, source: Any
    ) -> PaymentMethod | None:
        """The customer's method on file that the gateway names as it names ``source``
        (same type and last four digits) but that is another card or account."""
        row = await db.fetchrow(
            f"SELECT {_COLUMNS} FROM payment_methods WHERE account_id = $1 AND customer_id = $2"
            " AND kind = $3 AND brand = $4 AND last4 = $5 AND fingerprint <> $6"
            " AND removed_at IS NULL",
            account_id,
            customer_id,
            source.kind,
            source.brand,
            source.last4,
            source.fingerprint,
        )
        return None if row is None else PaymentMethod.from_row(row)

    async def _answered(
        self, account_id: str, request_keys: list[str], request_hash: str, conn: Any = None
    ) -> tuple[PaymentMethod, bool, str] | None:
        """The stored answer to the first of ``request_keys`` seen before, if any."""
        row = await (conn or self._pool).fetchrow(
            "SELECT r.request_hash, r.already_on_file, r.replaced_payment_method_id,"
            f" {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))}"
            " FROM payment_method_requests r JOIN payment_methods m USING (payment_method_id)"
            " WHERE r.account_id = $1 AND r.request_key = ANY($2::text[])"
            " ORDER BY array_position($2::text[], r.request_key) LIMIT 1",
            account_id,
            request_keys,
        )
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise InvalidArgument(
                "idempotency_key was already used with a different request; "
                "use a new key for a new payment method"
            )
        data = dict(row)
        on_file = data.pop("already_on_file")
        replaced_id = data.pop("replaced_payment_method_id")
        data.pop("request_hash")
        return PaymentMethod(**data), on_file, replaced_id

    @staticmethod
    async def _remember(
        conn: Any,
        account_id: str,
        request_keys: list[str],
        request_hash: str,
        method: PaymentMethod,
        on_file: bool,
        replaced_id: str = "",
    ) -> None:
        await conn.executemany(
            "INSERT INTO payment_method_requests (account_id, request_key, request_hash,"
            " payment_method_id, already_on_file, replaced_payment_method_id)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            [
                (account_id, key, request_hash, method.payment_method_id, on_file, replaced_id)
                for key in request_keys
            ],
        )

    async def for_customer(self, account_id: str, customer_id: str) -> list[PaymentMethod]:
        _require(account_id=account_id, customer_id=customer_id)
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM payment_methods WHERE account_id = $1 AND customer_id = $2"
            " AND removed_at IS NULL ORDER BY is_default DESC, created_at, payment_method_id",
            account_id,
            customer_id,
        )
        return [PaymentMethod.from_row(r) for r in rows]

    async def get(self, account_id: str, payment_method_id: str) -> PaymentMethod:
        _require(account_id=account_id, payment_method_id=payment_method_id)
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM payment_methods WHERE account_id = $1"
            " AND payment_method_id = $2 AND removed_at IS NULL",
            account_id,
            payment_method_id,
        )
        if row is None:
            raise NotFound(
                f"payment method {payment_method_id!r} is not on file for account {account_id!r}"
                " (it may have been removed); list the customer's methods for current ids"
            )
        return PaymentMethod.from_row(row)

    async def set_default(self, account_id: str, payment_method_id: str) -> PaymentMethod:
        method = await self.get(account_id, payment_method_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_customer(conn, account_id, method.customer_id)
            return await self._make_default(conn, method)

    async def _make_default(self, conn: Any, method: PaymentMethod) -> PaymentMethod:
        await _clear_default(conn, method.account_id, method.customer_id)
        row = await conn.fetchrow(
            "UPDATE payment_methods SET is_default = true WHERE payment_method_id = $1"
            f" AND removed_at IS NULL RETURNING {_COLUMNS}",
            method.payment_method_id,
        )
        if row is None:
            raise NotFound(f"payment method {method.payment_method_id!r} was removed meanwhile")
        return PaymentMethod.from_row(row)

    async def remove(self, account_id: str, payment_method_id: str) -> None:
        """Removes a method from use and its source from the gateway's vault; a removed
        default passes to the newest remaining method."""
        method = await self.get(account_id, payment_method_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_customer(conn, account_id, method.customer_id)
            await self._remove(conn, method, pass_default=True)
        await self._delete_from_vault(method)

    async def _remove(
        self, conn: Any, method: PaymentMethod, *, pass_default: bool, replaced_by: str = ""
    ) -> None:
        """Removes a method inside the caller's transaction, which holds the customer's
        lock, and marks its source for deletion from the vault (done after the commit
        by ``_delete_from_vault``, or by the recovery pass). ``replaced_by``: the
        request key of the add that replaces it, if one does."""
        removed = await conn.fetchval(
            "UPDATE payment_methods SET removed_at = now(), is_default = false,"
            " vault_delete_pending = true, replaced_by_request = nullif($2, '')"
            " WHERE payment_method_id = $1 AND removed_at IS NULL RETURNING true",
            method.payment_method_id,
            replaced_by,
        )
        if not removed:
            return
        await self._announce(conn, method.account_id, method.customer_id)
        if pass_default and method.is_default:
            await conn.execute(
                "UPDATE payment_methods SET is_default = true WHERE payment_method_id = ("
                " SELECT payment_method_id FROM payment_methods WHERE account_id = $1"
                " AND customer_id = $2 AND removed_at IS NULL"
                " ORDER BY created_at DESC, payment_method_id DESC LIMIT 1)",
                method.account_id,
                method.customer_id,
            )

    async def _delete_from_vault(self, method: PaymentMethod, conn: Any = None) -> str:
        """Deletes a removed method's source at the gateway (one already gone counts as
        deleted): DELETED; LATER when the gateway could not be asked (the next recovery
        pass tries again); REFUSED when it refused (tried again after a backoff that
        doubles from a minute to a day, and logged as an error each time).

        The gateway deletes by name (type and last four digits), so this runs under the
        customer's lock (taken here, unless ``conn`` holds it) and only while the
        deletion is still pending: a deletion decided earlier can never reach a newer
        source of the same name that an add vaulted meanwhile."""
        if conn is None:
            async with self._pool.acquire() as own, own.transaction():
                await _lock_customer(own, method.account_id, method.customer_id)
                return await self._delete_from_vault(method, own)
        pending = await conn.fetchval(
            "SELECT vault_delete_pending FROM payment_methods WHERE payment_method_id = $1",
            method.payment_method_id,
        )
        if not pending:
            return DELETED
        try:
            await self._gateway.remove_source(
                method.shopper_id, method.kind, method.brand, method.last4
            )
        except (GatewayUnavailable, GatewayTimeout) as err:
            log.warning(
                "payment_method.vault_delete_later",
                payment_method_id=method.payment_method_id,
                error=str(err),
            )
            await conn.execute(
                "UPDATE payment_methods SET vault_delete_error = $2 WHERE payment_method_id = $1",
                method.payment_method_id,
                type(err).__name__,
            )
            return LATER
        except GatewayRefused as err:
            # Recorded on a connection of its own: an add refused for it rolls back.
            refusals, next_at = await self._pool.fetchrow(
                "UPDATE payment_methods SET vault_delete_refusals = vault_delete_refusals + 1,"
                " vault_delete_error = $2, vault_delete_next_at = now() + make_interval("
                "secs => least($3 * 2 ^ least(vault_delete_refusals, 20), $4))"
                " WHERE payment_method_id = $1"
                " RETURNING vault_delete_refusals, vault_delete_next_at",
                method.payment_method_id,
                err.name or f"HTTP {err.status}",
                REFUSED_BACKOFF_FIRST,
                REFUSED_BACKOFF_MAX,
            )
            log.error(
                "payment_method.vault_delete_refused",
                payment_method_id=method.payment_method_id,
                shopper_id=method.shopper_id,
                error=str(err),
                refusals=refusals,
                next_attempt_at=next_at.isoformat(),
                fix="the card gateway keeps a source arbridge removed; have the gateway's"
                " support delete it from the shopper",
            )
            return REFUSED
        await conn.execute(
            "UPDATE payment_methods SET vault_delete_pending = false, vault_delete_error = ''"
            " WHERE payment_method_id = $1",
            method.payment_method_id,
        )
        return DELETED

    async def delete_pending_sources(self, limit: int = 50) -> int:
        """The recovery pass: deletes from the vault the sources of removed methods the
        gateway has not confirmed deleted, but for those it refused whose next attempt
        is not due; returns how many it deleted."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM payment_methods WHERE vault_delete_pending"
            " AND (vault_delete_next_at IS NULL OR vault_delete_next_at <= now())"
            " ORDER BY removed_at LIMIT $1",
            limit,
        )
        deleted = 0
        for row in rows:
            deleted += await self._delete_from_vault(PaymentMethod.from_row(row)) == DELETED
        return deleted

    async def _settle_namesake_deletions(
        self, conn: Any, account_id: str, customer_id: str, source: Any
    ) -> None:
        """Before a source is vaulted: a removed method of the customer with its name
        whose deletion the gateway has not confirmed is deleted now (whatever its
        backoff), or the add waits (Unavailable), or is refused while the gateway
        refuses the deletion: with both vaulted, the gateway could not tell them apart."""
        for row in await conn.fetch(
            f"SELECT {_COLUMNS} FROM payment_methods WHERE account_id = $1 AND customer_id = $2"
            " AND vault_delete_pending AND kind = $3 AND brand = $4 AND last4 = $5",
            account_id,
            customer_id,
            source.kind,
            source.brand,
            source.last4,
        ):
            removed = PaymentMethod.from_row(row)
            outcome = await self._delete_from_vault(removed, conn)
            if outcome == LATER:
                raise Unavailable(
                    "the card gateway has not yet deleted the removed card or account this "
                    "one replaces; retry in a minute with the same token"
                )
            if outcome == REFUSED:
                raise FailedPrecondition(
                    f"the card gateway refuses to delete the removed {_named(removed)} from"
                    f" shopper {removed.shopper_id}, and a new one of that name cannot be"
                    " told apart from it there: have the gateway's support delete it, then"
                    " retry with a new token"
                )

    async def _announce(self, conn: Any, account_id: str, customer_id: str) -> None:
        """``payments.method.changed`` with the types the customer has on file now (the
        caller holds the customer's lock, so versions follow the changes)."""
        rows = await conn.fetch(
            "SELECT DISTINCT kind FROM payment_methods WHERE account_id = $1"
            " AND customer_id = $2 AND removed_at IS NULL ORDER BY kind",
            account_id,
            customer_id,
        )
        version = await conn.fetchval(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint"
        )
        event = events_pb2.PaymentMethodsChanged(
            account_id=account_id,
            customer_id=customer_id,
            types=[r["kind"] for r in rows],
            version=version,
        )
        event.occurred_at.GetCurrentTime()
        await self._outbox.add(conn, "payments.method.changed", event)

    @staticmethod
    async def _gateway_call(call: Any) -> Any:
        try:
            return await call
        except GatewayRefused as err:
            if err.name == "EXPIRED_TOKEN":
                raise InvalidArgument(
                    "gateway_token is unknown, expired or already used; "
                    "have the payer enter the card again for a new token"
                ) from None
            raise FailedPrecondition(
                f"the card gateway refused the card: {err.description} ({err.name})"
            ) from None
        except (GatewayUnavailable, GatewayTimeout) as err:
            raise Unavailable(f"{err}; retry") from None


def _named(method: PaymentMethod) -> str:
    """How the gateway names a method: type and last four digits."""
    if method.kind != CARD:
        return f"bank account ending {method.last4}"
    return f"{method.brand or 'card'} ending {method.last4}"


def charged_source(kind: str, last4: str) -> str:
    """How a charge's source reads to people: "card ending 4242", "bank account ending 6789"."""
    return f"bank account ending {last4}" if kind == "ach" else f"card ending {last4}"


def _merchant_shopper_id(account_id: str, customer_id: str) -> str:
    """Our id for the customer at the gateway: stable, opaque, within the gateway's limits."""
    return hashlib.sha256(f"{account_id}\x1f{customer_id}".encode()).hexdigest()[:32]


async def _clear_default(conn: Any, account_id: str, customer_id: str) -> None:
    """Unmarks the customer's default (before another method becomes it, in one transaction)."""
    await conn.execute(
        "UPDATE payment_methods SET is_default = false WHERE account_id = $1"
        " AND customer_id = $2 AND is_default AND removed_at IS NULL",
        account_id,
        customer_id,
    )


async def _lock_customer(conn: Any, account_id: str, customer_id: str) -> None:
    """Serialises changes to one customer's methods until the transaction ends."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", f"{account_id}\x1f{customer_id}"
    )
