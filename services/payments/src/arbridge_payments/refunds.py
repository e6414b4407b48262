"""Refunds of succeeded charges: idempotent, bounded by what is left, never sent twice.

A refund is recorded (``pending``) with the amount reserved against the
charge, then settled. The gateway's refund call carries no merchant id to
look up, so the witness of whether a refund happened is the transaction's
refunded total: refunds of one charge are settled one at a time under an
advisory lock, in the order they were recorded, and before each is sent the
gateway's total is compared with ours. Equal: not sent yet, send it. Ours plus
this refund: it was sent before a crash or a lost answer, record it.

A refund made at the gateway outside arbridge (the merchant's console, another
tool) raises the gateway's total above ours, which would hold every later
refund: ``reconcile`` records it, when a gateway notification names the charge
(``reconcile_due``) and before each refund arbridge records. Only while no
refund of ours is pending, so that what ours sent is never taken for another's.
One made while ours is pending holds ours: each is sent with its refund id as
the reason, which the merchant's console shows, and ``resolve`` takes an
operator's reading of it (sent or not sent).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

import asyncpg
import structlog

from arbridge_payments.charges import (
    Charges,
    ChargeView,
    charge_event,
    refund_lock,
    refund_pending,
)
from arbridge_payments.gateway import (
    CardGateway,
    GatewayRefused,
    GatewayTimeout,
    GatewayUnavailable,
    Transaction,
)
from arbridge_runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from arbridge_runtime.faults import NO_FAULTS, FaultInjector
from arbridge_runtime.jetstream import Outbox
from arbridge_runtime.money import from_minor

log = structlog.get_logger(__name__)

EXTERNAL_REASON = "refunded at the card gateway, outside arbridge"
OPERATOR_NOT_SENT = "an operator found it was not made at the card gateway; it is never sent"
# What reconcile found: a refund recorded, the totals agree, a refund of ours pending
# (so it did not look), or the gateway could not be asked.
RECORDED, AGREES, PENDING, UNREACHABLE = "recorded", "agrees", "pending", "unreachable"
# How long a charge waits before reconcile_due looks at it again after PENDING or
# UNREACHABLE.
RECHECK_SECONDS = 60.0


class Refunds:
    """Records and settles refunds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        outbox: Outbox,
        gateway: CardGateway,
        charges: Charges,
        *,
        settle_after_seconds: float = 30.0,
        faults: FaultInjector = NO_FAULTS,
    ) -> None:
        self._pool = pool
        self._outbox = outbox
        self._gateway = gateway
        self._charges = charges
        self._settle_after = settle_after_seconds
        self._faults = faults

    async def refund(
        self,
        *,
        account_id: str,
        charge_id: str,
        amount_minor: int | None,
        reason: str,
        idempotency_key: str,
    ) -> tuple[dict[str, Any], ChargeView]:
        """Refunds part or all of what is left of a charge; returns (refund, charge)."""
        missing = [
            name
            for name, value in (
                ("account_id", account_id),
                ("charge_id", charge_id),
                ("idempotency_key", idempotency_key),
            )
            if not value
        ]
        if missing:
            raise InvalidArgument(f"{', '.join(missing)} must be set")
        if amount_minor is not None and amount_minor <= 0:
            raise InvalidArgument("amount must be positive, in minor units (or unset for all)")
        if len(reason) > 500:
            raise InvalidArgument("reason is at most 500 characters")
        digest = hashlib.sha256(f"{charge_id}\x1f{amount_minor}\x1f{reason}".encode()).hexdigest()
        refund = await self._by_key(account_id, idempotency_key)
        if refund is None:
            # What was refunded at the gateway outside arbridge counts first: it bounds
            # what is left, and the gateway's total must match ours when this is sent.
            await self.reconcile(charge_id, account_id)
            refund = await self._record(
                account_id, charge_id, amount_minor, reason, idempotency_key, digest
            )
            self._faults.hit("refund.after_record")
        elif refund["request_hash"] != digest:
            raise InvalidArgument(
                f"idempotency_key {idempotency_key!r} was already used for another refund "
                f"({refund['refund_id']}); use a new key for a new refund"
            )
        if refund["phase"] == "pending":
            await self._settle(refund["charge_id"])
            refund = await self._by_key(account_id, idempotency_key)
            assert refund is not None
        return dict(refund), await self._charges.get(account_id, refund["charge_id"])

    async def _by_key(self, account_id: str, key: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow(
            "SELECT * FROM refunds WHERE account_id = $1 AND idempotency_key = $2",
            account_id,
            key,
        )

    async def _record(
        self,
        account_id: str,
        charge_id: str,
        amount_minor: int | None,
        reason: str,
        key: str,
        digest: str,
    ) -> asyncpg.Record:
        async with self._pool.acquire() as conn, conn.transaction():
            charge = await conn.fetchrow(
                "SELECT phase, amount_minor, refunded_minor, currency FROM charges"
                " WHERE account_id = $1 AND charge_id = $2 FOR UPDATE",
                account_id,
                charge_id,
            )
            if charge is None:
                raise NotFound(f"charge {charge_id!r} does not exist in account {account_id!r}")
            if charge["phase"] != "succeeded":
                raise FailedPrecondition(
                    f"charge {charge_id} is {charge['phase']}; only succeeded charges can be "
                    "refunded"
                )
            reserved = await conn.fetchval(
                "SELECT coalesce(sum(amount_minor), 0)::bigint FROM refunds"
                " WHERE charge_id = $1 AND phase = 'pending'",
                charge_id,
            )
            currency = charge["currency"]
            left = charge["amount_minor"] - charge["refunded_minor"] - reserved
            if left <= 0:
                raise FailedPrecondition(f"charge {charge_id} is already refunded in full")
            amount = left if amount_minor is None else amount_minor
            if amount > left:
                raise InvalidArgument(
                    f"at most {from_minor(left, currency)} {currency} of charge {charge_id} "
                    f"can be refunded; {from_minor(amount, currency)} was asked"
                )
            row = await conn.fetchrow(
                "INSERT INTO refunds (refund_id, charge_id, account_id, idempotency_key,"
                " request_hash, amount_minor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING *",
                "rf_" + secrets.token_hex(12),
                charge_id,
                account_id,
                key,
                digest,
                amount,
                reason,
            )
        if row is None:  # a concurrent request with this key recorded it first
            row = await self._by_key(account_id, key)
            assert row is not None
            if row["request_hash"] != digest:
                raise InvalidArgument(
                    f"idempotency_key {key!r} was already used for another refund"
                )
        return row

    async def _settle(self, charge_id: str) -> None:
        """Settles the charge's pending refunds in order, one driver per charge at a time."""
        async with refund_lock(self._pool, charge_id) as lock:
            pending = await lock.fetch(
                "SELECT * FROM refunds WHERE charge_id = $1 AND phase = 'pending'"
                " ORDER BY created_at, refund_id",
                charge_id,
            )
            for refund in pending:
                await self._settle_one(lock, refund)

    async def _settle_one(self, conn: Any, refund: asyncpg.Record) -> None:
        charge = await conn.fetchrow(
            "SELECT * FROM charges WHERE charge_id = $1", refund["charge_id"]
        )
        ours = charge["refunded_minor"]
        transaction = await self._witness(charge)
        if transaction.refunded_minor == ours + refund["amount_minor"]:
            await self._done(conn, refund, charge)  # sent before a crash or a lost answer
            return
        if transaction.refunded_minor != ours:
            log.error(
                "refund.totals_disagree",
                refund_id=refund["refund_id"],
                gateway_refunded_minor=transaction.refunded_minor,
                recorded_refunded_minor=ours,
            )
            raise FailedPrecondition(
                f"the gateway's refunded total for charge {charge['charge_id']} does not match "
                f"arbridge's; refund {refund['refund_id']} is held until an operator says "
                "whether the gateway shows it (ResolveRefund)"
            )
        try:
            await self._gateway.refund(
                charge["gateway_transaction_id"],
                refund["amount_minor"],
                charge["currency"],
                idempotency_key=refund["refund_id"],
                reason=refund["refund_id"],  # how an operator knows ours in the console
            )
        except GatewayRefused as err:
            await self._fail(conn, refund, f"{err.description} ({err.name})")
            return
        except (GatewayTimeout, GatewayUnavailable):
            transaction = await self._witness(charge)
            if transaction.refunded_minor != ours + refund["amount_minor"]:
                raise Unavailable(
                    f"the card gateway did not confirm refund {refund['refund_id']}; it stays "
                    "pending and is settled by retrying with the same key or by recovery"
                ) from None
        self._faults.hit("refund.after_gateway")
        await self._done(conn, refund, charge)

    async def _witness(self, charge: asyncpg.Record) -> Transaction:
        try:
            transaction = await self._gateway.lookup(charge["charge_id"], charge["kind"])
        except (GatewayTimeout, GatewayUnavailable, GatewayRefused) as err:
            raise Unavailable(
                f"the card gateway could not be asked about the charge: {err}"
            ) from None
        if transaction is None:
            raise FailedPrecondition(
                f"the card gateway has no transaction for charge {charge['charge_id']}"
            )
        return transaction

    async def _done(self, conn: Any, refund: asyncpg.Record, charge: asyncpg.Record) -> None:
        async with conn.transaction():
            updated = await conn.fetchval(
                "UPDATE refunds SET phase = 'succeeded', updated_at = now()"
                " WHERE refund_id = $1 AND phase = 'pending' RETURNING true",
                refund["refund_id"],
            )
            if not updated:
                return
            row = await conn.fetchrow(
                "UPDATE charges SET refunded_minor = refunded_minor + $2, updated_at = now()"
                " WHERE charge_id = $1 RETURNING *",
                charge["charge_id"],
                refund["amount_minor"],
            )
            invoices = await conn.fetch(
                "SELECT invoice_record_no FROM charge_invoices WHERE charge_id = $1",
                charge["charge_id"],
            )
            full = row["refunded_minor"] >= row["amount_minor"]
            await self._outbox.add(
                conn,
                "payments.charge.refunded",
                charge_event(
                    row,
                    [r["invoice_record_no"] for r in invoices],
                    state="refunded" if full else "partially_refunded",
                    amount_minor=refund["amount_minor"],
                    failure_reason="",
                    idempotency_key=refund["idempotency_key"],
                ),
                event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"refund/{refund['refund_id']}"),
            )
            if row["posting_state"] == "posted":
                # Intacct holds the payment as posted, this refund included: arbridge
                # cannot reverse it there, so it is announced for someone who can.
                await self._outbox.add(
                    conn,
                    "payments.payment.reversal_needed",
                    charge_event(
                        row,
                        [r["invoice_record_no"] for r in invoices],
                        state="reversal_needed",
                        amount_minor=refund["amount_minor"],
                        failure_reason="",
                        idempotency_key=refund["idempotency_key"],
                        refund_id=refund["refund_id"],
                    ),
                    event_id=uuid.uuid5(
                        uuid.NAMESPACE_URL, f"refund/{refund['refund_id']}/reversal"
                    ),
                )
        log.info(
            "refund.succeeded",
            refund_id=refund["refund_id"],
            charge_id=charge["charge_id"],
            amount_minor=refund["amount_minor"],
        )

    async def _fail(self, conn: Any, refund: asyncpg.Record, reason: str) -> None:
        await conn.execute(
            "UPDATE refunds SET phase = 'failed', failure_reason = $2, updated_at = now()"
            " WHERE refund_id = $1 AND phase = 'pending'",
            refund["refund_id"],
            reason,
        )
        log.warning("refund.failed", refund_id=refund["refund_id"], reason=reason)

    async def resolve(
        self, account_id: str, refund_id: str, sent: bool
    ) -> tuple[dict[str, Any], ChargeView]:
        """An operator's answer for a pending refund arbridge cannot settle alone (held:
        the gateway's total matches neither ours nor ours plus it). ``sent``: the
        gateway's console shows it (each is sent with its refund id as the reason), so
        it is recorded as made; otherwise it ends failed and is never sent. Then what
        else the gateway refunded is recorded as made outside arbridge, and the charge's
        other pending refunds are settled. Returns (refund, charge)."""
        missing = [n for n, v in (("account_id", account_id), ("refund_id", refund_id)) if not v]
        if missing:
            raise InvalidArgument(f"{', '.join(missing)} must be set")
        found = await self._pool.fetchrow(
            "SELECT charge_id FROM refunds WHERE account_id = $1 AND refund_id = $2",
            account_id,
            refund_id,
        )
        if found is None:
            raise NotFound(f"refund {refund_id!r} does not exist in account {account_id!r}")
        charge_id = found["charge_id"]
        async with refund_lock(self._pool, charge_id) as lock:
            refund = await lock.fetchrow("SELECT * FROM refunds WHERE refund_id = $1", refund_id)
            if refund["phase"] != "pending":
                raise FailedPrecondition(
                    f"refund {refund_id} is {refund['phase']}; only a pending refund can be "
                    "resolved"
                )
            charge = await lock.fetchrow("SELECT * FROM charges WHERE charge_id = $1", charge_id)
            if sent:
                transaction = await self._witness(charge)
                expected = charge["refunded_minor"] + refund["amount_minor"]
                if transaction.refunded_minor < expected:
                    currency = charge["currency"]
                    gateway = from_minor(transaction.refunded_minor, currency)
                    raise FailedPrecondition(
                        f"the card gateway has refunded {gateway} {currency} of charge "
                        f"{charge_id}, less than the "
                        f"{from_minor(charge['refunded_minor'], currency)} arbridge recorded plus "
                        f"this refund's {from_minor(refund['amount_minor'], currency)}: it cannot "
                        "have been sent; look at the gateway again"
                    )
                await self._done(lock, refund, charge)
            else:
                await self._fail(lock, refund, OPERATOR_NOT_SENT)
            log.warning("refund.resolved_by_operator", refund_id=refund_id, sent=sent)
        await self.reconcile(charge_id, account_id)
        try:
            await self._settle(charge_id)
        except (FailedPrecondition, Unavailable) as exc:
            # Another pending refund of the charge is held too (or the gateway is out of
            # reach): it waits for its own answer or for recovery; this one is resolved.
            log.warning("refund.still_held", charge_id=charge_id, error=str(exc))
        row = await self._pool.fetchrow("SELECT * FROM refunds WHERE refund_id = $1", refund_id)
        return dict(row), await self._charges.get(account_id, charge_id)

    async def reconcile(self, charge_id: str, account_id: str = "") -> str:
        """Records a refund made at the gateway outside arbridge, if any: the gateway's
        refunded total above ours, when no refund of ours is pending, is one refund of
        the difference (announced as ours are). ``account_id``, when given, must own the
        charge. Returns RECORDED, AGREES, PENDING or UNREACHABLE."""
        async with refund_lock(self._pool, charge_id) as lock:
            charge = await lock.fetchrow(
                "SELECT * FROM charges WHERE charge_id = $1 AND ($2 = '' OR account_id = $2)",
                charge_id,
                account_id,
            )
            if charge is None or charge["phase"] != "succeeded":
                return AGREES  # nothing a refund could have been made of
            if await refund_pending(lock, charge_id):
                return PENDING
            try:
                transaction = await self._witness(charge)
            except Unavailable:
                return UNREACHABLE
            except FailedPrecondition:
                log.error("refund.no_gateway_transaction", charge_id=charge_id)
                return AGREES  # nothing there to reconcile with
            extra = transaction.refunded_minor - charge["refunded_minor"]
            if extra < 0:
                log.error(
                    "refund.totals_disagree",
                    charge_id=charge_id,
                    gateway_refunded_minor=transaction.refunded_minor,
                    recorded_refunded_minor=charge["refunded_minor"],
                )
            if extra <= 0:
                return AGREES
            async with lock.transaction():
                # Recorded and settled in one transaction: never left pending, so never
                # sent to the gateway as if it were ours.
                row = await lock.fetchrow(
                    "INSERT INTO refunds (refund_id, charge_id, account_id, idempotency_key,"
                    " request_hash, amount_minor, reason) VALUES ($1, $2, $3, $4, '', $5, $6)"
                    " ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING *",
                    "rf_" + secrets.token_hex(12),
                    charge_id,
                    charge["account_id"],
                    f"gateway:{charge_id}:{transaction.refunded_minor}",
                    extra,
                    EXTERNAL_REASON,
                )
                if row is None:
                    return AGREES
                await self._done(lock, row, charge)
            log.warning(
                "refund.external_recorded",
                charge_id=charge_id,
                refund_id=row["refund_id"],
                amount_minor=extra,
            )
            return RECORDED

    async def reconcile_due(self, limit: int = 50) -> int:
        """The recovery pass: reconciles the charges a gateway notification named; returns
        how many refunds made outside arbridge it recorded."""
        rows = await self._pool.fetch(
            "UPDATE charges SET refund_check_at = now() + make_interval(secs => $2)"
            " WHERE charge_id IN (SELECT charge_id FROM charges WHERE refund_check_at <= now()"
            " ORDER BY refund_check_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING charge_id",
            limit,
            RECHECK_SECONDS,
        )
        recorded = 0
        for row in rows:
            outcome = await self.reconcile(row["charge_id"])
            recorded += outcome == RECORDED
            if outcome in (RECORDED, AGREES):
                await self._pool.execute(
                    "UPDATE charges SET refund_check_at = NULL WHERE charge_id = $1"
                    " AND refund_check_at > now()",
                    row["charge_id"],
                )
        return recorded

    async def recover_once(self, limit: int = 50) -> int:
        """Settles charges whose refunds stayed pending past the settle delay."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT charge_id FROM refunds WHERE phase = 'pending'"
            " AND updated_at < now() - make_interval(secs => $1) LIMIT $2",
            self._settle_after,
            limit,
        )
        for row in rows:
            try:
                await self._settle(row["charge_id"])
            except Exception:
                log.exception("refund.recovery_failed", charge_id=row["charge_id"])
        return 0  # settled or not, wait for the next pass rather than spin
