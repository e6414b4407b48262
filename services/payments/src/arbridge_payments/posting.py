"""Posting succeeded payments to Intacct as AR payments applied to their invoices.

A worker takes succeeded charges whose posting is pending and due
(``FOR UPDATE SKIP LOCKED``, so replicas share the work), finds the deposit
account configured for the charge's entity and currency, and asks the
connector to post the payment under the charge id as its idempotency key, so
a retry after a crash or a lost answer posts it once. Transient failures
(the connector or Intacct unavailable, throttled, no deposit account yet)
are retried with exponential backoff until Intacct has the payment; a
refusal by Intacct marks the posting refused with Intacct's reason and
announces ``payments.payment.refused`` for operators.

Intacct gets what the charge kept: a posting waits while a refund of the charge
is being settled; refunds settled before it come off the payment (see
``charges.kept_parts``), and a charge refunded in full is not posted at all
(``refunded``). Refunds of a charge settle under the same lock as its posting
holds, so none is made while it is posted; one made after cannot be reversed in
Intacct by arbridge (it has no permission to reverse payments): it is announced
as ``payments.payment.reversal_needed`` and lands in sync's unsynced registry
for someone to reverse it there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import structlog

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.events.v1 import events_pb2
from arbridge_payments.charges import charge_event, kept_parts, refund_lock, refund_pending
from arbridge_runtime import tracing
from arbridge_runtime.errors import InvalidArgument
from arbridge_runtime.jetstream import Outbox

log = structlog.get_logger(__name__)

# Intacct's answer about the payment itself: posting it again gives the same answer.
REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
)
MAX_BACKOFF_SECONDS = 900.0


@dataclass(frozen=True)
class DepositAccount:
    account_id: str
    entity_id: str
    currency: str
    bank_account_id: str
    undeposited_funds_gl_account: str


class Posting:
    """Deposit-account configuration and the posting worker."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        outbox: Outbox,
        connector: connector_pb2_grpc.ConnectorServiceAsyncStub,
        *,
        base_backoff_seconds: float = 5.0,
        lease_seconds: float = 60.0,
    ) -> None:
        self._lease = lease_seconds
        self._pool = pool
        self._outbox = outbox
        self._connector = connector
        self._backoff = base_backoff_seconds

    async def set_deposit_account(self, account: DepositAccount) -> DepositAccount:
        if not account.account_id:
            raise InvalidArgument("deposit_account.account_id must be set")
        currency = account.currency.upper()
        if len(currency) != 3 or not currency.isalpha():
            raise InvalidArgument("deposit_account.currency must be an ISO 4217 code such as USD")
        if bool(account.bank_account_id) == bool(account.undeposited_funds_gl_account):
            raise InvalidArgument(
                "set exactly one of bank_account_id and undeposited_funds_gl_account"
            )
        row = await self._pool.fetchrow(
            "INSERT INTO deposit_accounts (account_id, entity_id, currency, bank_account_id,"
            " undeposited_funds_gl_account) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (account_id, entity_id, currency) DO UPDATE SET"
            " bank_account_id = EXCLUDED.bank_account_id,"
            " undeposited_funds_gl_account = EXCLUDED.undeposited_funds_gl_account,"
            " updated_at = now()"
            " RETURNING account_id, entity_id, currency, bank_account_id,"
            " undeposited_funds_gl_account",
            account.account_id,
            account.entity_id,
            currency,
            account.bank_account_id,
            account.undeposited_funds_gl_account,
        )
        # Postings that waited for this account are due now.
        await self._pool.execute(
            "UPDATE charges SET posting_next_at = now() WHERE account_id = $1"
            " AND entity_id = $2 AND currency = $3 AND phase = 'succeeded'"
            " AND posting_state = 'pending'",
            account.account_id,
            account.entity_id,
            currency,
        )
        return DepositAccount(**dict(row))

    async def deposit_accounts(self, account_id: str) -> list[DepositAccount]:
        if not account_id:
            raise InvalidArgument("account_id must be set")
        rows = await self._pool.fetch(
            "SELECT account_id, entity_id, currency, bank_account_id, undeposited_funds_gl_account"
            " FROM deposit_accounts WHERE account_id = $1 ORDER BY entity_id, currency",
            account_id,
        )
        return [DepositAccount(**dict(r)) for r in rows]

    async def post_due(self, limit: int = 20) -> int:
        """Posts the due charges it can claim; returns how many it took."""
        rows = await self._pool.fetch(
            # The claim is a lease: a worker that dies mid-post leaves the row to another
            # once it lapses; the connector's idempotency key makes the second post a no-op.
            "UPDATE charges SET posting_next_at = now() + make_interval(secs => $2),"
            " posting_started_at = now() WHERE charge_id IN (SELECT charge_id FROM charges"
            " WHERE phase = 'succeeded'"
            " AND posting_state = 'pending' AND posting_next_at <= now()"
            " ORDER BY posting_next_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING *",
            limit,
            self._lease,
        )
        for row in rows:
            try:
                with tracing.span(
                    "payments.post",
                    parent=row["trace_parent"],
                    attributes={
                        "arbridge.account_id": row["account_id"],
                        "arbridge.charge_id": row["charge_id"],
                    },
                ):
                    await self._post(row)
            except Exception:
                log.exception("posting.failed_unexpectedly", charge_id=row["charge_id"])
                await self._later(row, "internal error while posting; retrying")
        return len(rows)

    async def _post(self, claimed: asyncpg.Record) -> None:
        # Refunds of the charge wait while it is posted (they settle under this lock), so
        # a refund either comes off the payment or is made after it is posted, when it is
        # announced as needing a reversal in Intacct (``Refunds``): never lost between.
        async with refund_lock(self._pool, claimed["charge_id"]) as db:
            charge = await db.fetchrow(
                "SELECT * FROM charges WHERE charge_id = $1", claimed["charge_id"]
            )
            await self._post_locked(db, charge)

    async def _post_locked(self, db: Any, charge: asyncpg.Record) -> None:
        # Intacct gets what the charge kept: a refund settled before the posting comes
        # off the payment (one made later is announced for a reversal by hand).
        if await refund_pending(db, charge["charge_id"]):
            await self._later(
                charge, "a refund of this payment is being settled; posting after it", db
            )
            return
        if charge["refunded_minor"] >= charge["amount_minor"]:
            await self._refunded(charge, db)
            return
        deposit = await db.fetchrow(
            "SELECT bank_account_id, undeposited_funds_gl_account FROM deposit_accounts"
            " WHERE account_id = $1 AND entity_id = $2 AND currency = $3",
            charge["account_id"],
            charge["entity_id"],
            charge["currency"],
        )
        if deposit is None:
            entity = charge["entity_id"] or "the top level"
            await self._later(
                charge,
                f"no deposit account for {entity} in {charge['currency']}; "
                "set one with SetDepositAccount",
                db,
            )
            return
        parts = kept_parts(
            [
                (p["invoice_record_no"], p["amount_minor"])
                for p in await db.fetch(
                    "SELECT invoice_record_no, amount_minor FROM charge_invoices"
                    " WHERE charge_id = $1",
                    charge["charge_id"],
                )
            ],
            charge["refunded_minor"],
        )
        currency = charge["currency"]
        request = connector_pb2.PostArPaymentRequest(
            account_id=charge["account_id"],
            idempotency_key=charge["charge_id"],
            customer_id=charge["customer_id"],
            amount=common_pb2.Money(
                amount_minor=charge["amount_minor"] - charge["refunded_minor"], currency=currency
            ),
            bank_account_id=deposit["bank_account_id"],
            undeposited_funds_account=deposit["undeposited_funds_gl_account"],
            payment_method="Credit Card" if charge["kind"] == "card" else "EFT",
            applications=[
                ar_pb2.PaymentApplication(
                    invoice_record_no=record_no,
                    amount=common_pb2.Money(amount_minor=amount, currency=currency),
                )
                for record_no, amount in parts
            ],
            reference=charge["gateway_transaction_id"],
            entity_id=charge["entity_id"],
        )
        # Dated by when the money came (the connector puts it on the company's calendar).
        # updated_at only for a charge a replica of an older release marked succeeded
        # after migration 0010 ran (a rolling deploy): it set no succeeded_at.
        request.received_at.FromDatetime(charge["succeeded_at"] or charge["updated_at"])
        try:
            reply = await self._connector.PostArPayment(request, timeout=self._lease / 2)
        except grpc.aio.AioRpcError as err:
            if err.code() in REFUSALS:
                await self._refused(charge, str(err.details()), db)
            else:
                await self._later(charge, f"{err.code().name}: {err.details()}", db)
            return
        async with db.transaction():
            row = await db.fetchrow(
                "UPDATE charges SET posting_state = 'posted', intacct_payment_record_no = $2,"
                " posting_error = '', posting_attempts = posting_attempts + 1, updated_at = now()"
                " WHERE charge_id = $1 RETURNING *",
                charge["charge_id"],
                reply.payment_record_no,
            )
            # What Intacct now holds of each invoice: 0 for those a refund took whole.
            await db.execute(
                "UPDATE charge_invoices SET posted_minor = COALESCE((SELECT p.amount"
                " FROM unnest($2::text[], $3::bigint[]) AS p(record_no, amount)"
                " WHERE p.record_no = invoice_record_no), 0) WHERE charge_id = $1",
                charge["charge_id"],
                [record_no for record_no, _ in parts],
                [amount for _, amount in parts],
            )
            await self._outbox.add(
                db,
                "payments.payment.posted",
                charge_event(
                    row,
                    [record_no for record_no, _ in parts],
                    state="posted",
                    amount_minor=row["amount_minor"] - row["refunded_minor"],
                ),
                event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"posting/{charge['charge_id']}/posted"),
            )
        log.info(
            "posting.posted",
            charge_id=charge["charge_id"],
            record_no=reply.payment_record_no,
            already_posted=reply.already_posted,
        )

    async def on_resync_requested(self, conn: Any, delivery: Any) -> None:
        """Sync was asked to re-sync a payment Intacct refused: its posting is due again,
        under the same key (Intacct ran nothing for the refused attempt)."""
        event = events_pb2.PaymentResyncRequested.FromString(delivery.data)
        again = await conn.fetchval(
            "UPDATE charges SET posting_state = 'pending', posting_error = '',"
            " posting_attempts = 0, posting_next_at = now(), updated_at = now()"
            " WHERE account_id = $1 AND charge_id = $2 AND posting_state = 'refused'"
            " RETURNING true",
            event.account_id,
            event.charge_id,
        )
        log.info("posting.resync_requested", charge_id=event.charge_id, due=bool(again))

    async def _refunded(self, charge: asyncpg.Record, db: Any) -> None:
        """Refunded in full before it was posted: nothing was collected, so Intacct gets
        no payment and the invoices stay open there."""
        await db.execute(
            "UPDATE charges SET posting_state = 'refunded', posting_error = '', updated_at = now()"
            " WHERE charge_id = $1 AND posting_state = 'pending'",
            charge["charge_id"],
        )
        log.info("posting.not_needed_refunded", charge_id=charge["charge_id"])

    async def _later(self, charge: asyncpg.Record, reason: str, db: Any = None) -> None:
        attempts = charge["posting_attempts"] + 1
        delay = min(self._backoff * 2 ** min(attempts - 1, 20), MAX_BACKOFF_SECONDS)
        await (db or self._pool).execute(
            "UPDATE charges SET posting_attempts = $2, posting_error = $3,"
            " posting_next_at = now() + make_interval(secs => $4) WHERE charge_id = $1",
            charge["charge_id"],
            attempts,
            reason,
            delay,
        )
        log.warning("posting.retry_later", charge_id=charge["charge_id"], reason=reason)

    async def _refused(self, charge: asyncpg.Record, reason: str, conn: Any) -> None:
        async with conn.transaction():
            row = await conn.fetchrow(
                "UPDATE charges SET posting_state = 'refused', posting_error = $2,"
                " posting_attempts = posting_attempts + 1, updated_at = now()"
                " WHERE charge_id = $1 RETURNING *",
                charge["charge_id"],
                reason,
            )
            invoices = await conn.fetch(
                "SELECT invoice_record_no FROM charge_invoices WHERE charge_id = $1",
                charge["charge_id"],
            )
            await self._outbox.add(
                conn,
                "payments.payment.refused",
                charge_event(
                    row,
                    [r["invoice_record_no"] for r in invoices],
                    state="posting_refused",
                    failure_reason=row["posting_error"],
                ),
                # One per refusal: a payment re-synced and refused again is announced
                # again (one id for all would be dropped as a repeat of the first).
                event_id=uuid.uuid5(
                    uuid.NAMESPACE_URL,
                    f"posting/{charge['charge_id']}/refused/{row['updated_at'].isoformat()}",
                ),
            )
        log.warning("posting.refused", charge_id=charge["charge_id"], reason=reason)
