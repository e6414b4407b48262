"""Charges: idempotent, crash-safe charges of one or several invoices of one customer.

A charge is a row keyed by (account, idempotency key) that moves through
recorded phases (see ``migrations/0002_charges.sql``)::

    record (pending) -> mark processing -> gateway -> finish (succeeded | declined | failed)
    ACH: ... -> gateway -> settling -> (notification or look-up) -> succeeded | failed

Each arrow is its own committed step, so a crash anywhere leaves a row that
says what to do next: ``pending`` was never sent and is sent; ``processing``
may have been sent and is first looked up at the gateway by our charge id
(the gateway's merchant transaction id) and only re-sent, under the same id
and idempotency key, when the gateway has no such transaction. The gateway
refuses a second transaction under one merchant id, so no path charges twice.

An ACH debit is accepted first and settles days later: the charge waits in
``settling`` (still holding its invoices) until a gateway notification, or a
periodic look-up when notifications are lost, finds it settled or returned.
Only a settled payment is posted to Intacct, so a returned debit never needs
reversing there.

The partial unique index on ``charge_invoices`` allows one unfinished charge
per invoice; the amount is checked against the invoice's open balance in the
AR store less what succeeded charges not yet posted to Intacct took.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge.events.v1 import events_pb2
from arbridge.sync.v1 import sync_pb2_grpc
from arbridge_payments.arstore import get_invoice
from arbridge_payments.gateway import (
    CardGateway,
    GatewayRefused,
    GatewayTimeout,
    GatewayUnavailable,
    Transaction,
)
from arbridge_runtime import tracing
from arbridge_runtime.errors import (
    Conflict,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from arbridge_runtime.faults import NO_FAULTS, FaultInjector
from arbridge_runtime.jetstream import Outbox
from arbridge_runtime.money import from_minor

log = structlog.get_logger(__name__)

UNFINISHED = ("pending", "processing")
OPEN_STATES = (ar_pb2.INVOICE_STATE_OPEN, ar_pb2.INVOICE_STATE_PARTIALLY_PAID)
# Gateway refusals that are the issuer's answer about the card (a decline), as
# opposed to a problem with the request (a failure).
DECLINES = frozenset(
    {"DO_NOT_HONOR", "INSUFFICIENT_FUNDS", "EXPIRED_CARD", "CALL_ISSUER", "CARD_DECLINED"}
)
SOURCES = ("api", "link", "rule", "intacct_queue")
MAX_INVOICES = 100
POSTING_CLOCK_MARGIN = timedelta(seconds=2)


@dataclass(frozen=True)
class InvoicePart:
    """An invoice to pay and the amount for it (None: its whole open balance, at most
    ``maximum_minor`` when that is given)."""

    record_no: str
    amount_minor: int | None
    currency: str = ""
    maximum_minor: int | None = None


@dataclass(frozen=True)
class ChargeRequest:
    account_id: str
    idempotency_key: str
    customer_id: str
    invoices: tuple[InvoicePart, ...]
    payment_method_id: str = ""
    expected_total_minor: int | None = None
    expected_currency: str = ""
    source: str = "api"
    rule_id: str = ""
    link_id: str = ""

    def fingerprint(self) -> str:
        """What makes two requests under one key the same request."""
        body = {
            "customer": self.customer_id,
            # (A maximum only when set, so keys recorded before it keep their hashes.)
            "invoices": sorted(
                [i.record_no, i.amount_minor, i.currency.upper()]
                + ([i.maximum_minor] if i.maximum_minor is not None else [])
                for i in self.invoices
            ),
            "method": self.payment_method_id,
            "expected": [self.expected_total_minor, self.expected_currency.upper()],
            "source": self.source,
            "rule": self.rule_id,
        }
        if self.link_id:  # only when set, so keys recorded before links keep their hashes
            body["link"] = self.link_id
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ChargeView:
    """A charge with its invoices, as the API answers it."""

    row: dict[str, Any]
    invoices: tuple[tuple[str, int], ...]


class Charges:
    """Records, drives and recovers charges."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        outbox: Outbox,
        gateway: CardGateway,
        sync: sync_pb2_grpc.SyncServiceAsyncStub,
        *,
        lease_seconds: float = 30.0,
        settle_poll_seconds: float = 3600.0,
        faults: FaultInjector = NO_FAULTS,
        outcomes: Counter | None = None,
    ) -> None:
        self._outcomes = outcomes
        self._pool = pool
        self._outbox = outbox
        self._gateway = gateway
        self._sync = sync
        self._lease = lease_seconds
        self._settle_poll = settle_poll_seconds
        self._faults = faults

    # The request ---------------------------------------------------------------------

    async def charge(self, request: ChargeRequest) -> tuple[ChargeView, bool]:
        """Charges the invoices once per idempotency key; returns (charge, replayed)."""
        _validate(request)
        digest = request.fingerprint()
        existing = await self._by_key(request.account_id, request.idempotency_key)
        if existing is not None:
            return await self._replay(existing, digest), True
        try:
            plan = await self._plan(request)
        except DomainError:
            # A concurrent request with this key may have charged meanwhile, which is
            # what made the balance check fail: its answer is this request's answer.
            existing = await self._by_key(request.account_id, request.idempotency_key)
            if existing is None:
                raise
            return await self._replay(existing, digest), True
        charge_id = "ch_" + secrets.token_hex(12)
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO charges (charge_id, account_id, idempotency_key, request_hash,"
                " customer_id, source, rule_id, payment_method_id, kind, shopper_id, last4,"
                " amount_minor, currency, tax_minor, customer_reference, lease_until, entity_id,"
                " link_id, trace_parent, brand) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
                " $11, $12, $13, $14, $15, now() + make_interval(secs => $16), $17, $18, $19,"
                " $20)"
                " ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING charge_id",
                charge_id,
                request.account_id,
                request.idempotency_key,
                digest,
                request.customer_id,
                request.source,
                request.rule_id,
                plan.method["payment_method_id"],
                plan.method["kind"],
                plan.method["shopper_id"],
                plan.method["last4"],
                plan.total,
                plan.currency,
                plan.tax,
                plan.reference,
                self._lease,
                plan.entity_id,
                request.link_id,
                tracing.traceparent(),
                plan.method["brand"],
            )
            if inserted is None:
                raced = True
            else:
                raced = False
                try:
                    await conn.executemany(
                        "INSERT INTO charge_invoices (charge_id, account_id, invoice_record_no,"
                        " amount_minor) VALUES ($1, $2, $3, $4)",
                        [(charge_id, request.account_id, r, a) for r, a in plan.parts],
                    )
                except asyncpg.UniqueViolationError:
                    raise Conflict(
                        "an invoice of this request already has a charge in progress; "
                        "wait for it to finish (GetCharge) before charging again"
                    ) from None
                # Holding the invoices' live slots, check the balance again: a charge
                # that finished after the plan was made is visible now.
                taken = await self._unposted(request.account_id, plan.modified, conn)
                for record_no, amount in plan.parts:
                    if amount > plan.dues[record_no] - taken.get(record_no, 0):
                        raise FailedPrecondition(
                            f"invoice {record_no} was paid by another charge meanwhile; "
                            "read its balance again"
                        )
        if raced:
            # Another request with this key recorded its charge first.
            winner = await self._by_key(request.account_id, request.idempotency_key)
            assert winner is not None
            return await self._replay(winner, digest), True
        self._faults.hit("charge.after_record")
        return await self._drive(charge_id), False

    async def _replay(self, row: asyncpg.Record, digest: str) -> ChargeView:
        if row["request_hash"] != digest:
            raise InvalidArgument(
                f"idempotency_key {row['idempotency_key']!r} was already used for another "
                f"request (charge {row['charge_id']}); use a new key for a new charge"
            )
        if row["phase"] not in UNFINISHED:
            return await self.get(row["account_id"], row["charge_id"])
        if not await self._claim(row["charge_id"]):
            raise Conflict(
                f"charge {row['charge_id']} with this idempotency_key is in progress; "
                "retry with the same key in a few seconds"
            )
        # Its driver is gone (crashed or timed out): finish it here.
        return await self._drive(row["charge_id"])

    async def _by_key(self, account_id: str, key: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow(
            "SELECT charge_id, account_id, idempotency_key, request_hash, phase FROM charges"
            " WHERE account_id = $1 AND idempotency_key = $2",
            account_id,
            key,
        )

    async def _claim(self, charge_id: str) -> bool:
        """Takes over an unfinished charge whose lease lapsed."""
        claimed = await self._pool.fetchval(
            "UPDATE charges SET lease_until = now() + make_interval(secs => $2)"
            " WHERE charge_id = $1 AND phase IN ('pending', 'processing')"
            " AND (lease_until IS NULL OR lease_until < now()) RETURNING true",
            charge_id,
            self._lease,
        )
        return bool(claimed)

    # Checking the request against the AR store ------------------------------------------

    async def _plan(self, request: ChargeRequest) -> _Plan:
        invoices = await asyncio.gather(
            *(
                get_invoice(
                    self._sync,
                    request.account_id,
                    part.record_no,
                    "retry with the same idempotency_key",
                )
                for part in request.invoices
            )
        )
        currencies = {i.currency for i in invoices}
        if len(currencies) != 1:
            raise InvalidArgument(
                f"the invoices are in different currencies ({', '.join(sorted(currencies))}); "
                "charge each currency separately"
            )
        currency = currencies.pop()
        entities = {i.entity_id for i in invoices}
        if len(entities) != 1:
            raise InvalidArgument(
                "the invoices belong to different entities; one payment posts to one entity, "
                "so charge each entity's invoices separately"
            )
        modified = {
            part.record_no: _modified_at(invoice)
            for part, invoice in zip(request.invoices, invoices, strict=True)
        }
        balances = await self.open_balances(request.account_id, invoices)
        parts: list[tuple[str, int]] = []
        dues: dict[str, int] = {}
        tax = 0
        references: list[str] = []
        for part, invoice in zip(request.invoices, invoices, strict=True):
            if invoice.customer_id != request.customer_id:
                raise InvalidArgument(
                    f"invoice {part.record_no} belongs to customer {invoice.customer_id!r}, "
                    f"not {request.customer_id!r}; one charge pays one customer's invoices"
                )
            if invoice.state not in OPEN_STATES:
                state = ar_pb2.InvoiceState.Name(invoice.state).removeprefix("INVOICE_STATE_")
                raise FailedPrecondition(
                    f"invoice {part.record_no} is {state.lower()}, not open; nothing to charge"
                )
            open_minor = balances[part.record_no]
            if invoice.due.amount_minor <= 0:
                raise FailedPrecondition(f"invoice {part.record_no} has nothing due")
            if open_minor <= 0:
                # The AR store shows a balance, but charges Intacct does not show yet
                # took it: retry once they are posted and read back (the invoice is
                # then paid, or open again if a posting was refused).
                raise Conflict(
                    f"invoice {part.record_no} has no open balance left: charges already "
                    "made are being posted to Intacct; retry in a few minutes"
                )
            amount = open_minor if part.amount_minor is None else part.amount_minor
            if part.maximum_minor is not None:
                amount = min(amount, part.maximum_minor)
            if part.currency and part.currency.upper() != currency:
                raise InvalidArgument(
                    f"the amount for invoice {part.record_no} is in {part.currency.upper()}, "
                    f"but the invoice is in {currency}"
                )
            if amount > open_minor:
                raise InvalidArgument(
                    f"the amount for invoice {part.record_no} "
                    f"({from_minor(amount, currency)} {currency}) is above its open balance "
                    f"({from_minor(open_minor, currency)} {currency})"
                )
            if amount < open_minor and not invoice.allow_partial_payment:
                raise InvalidArgument(
                    f"invoice {part.record_no} does not allow partial payments; charge its "
                    f"whole open balance ({from_minor(open_minor, currency)} {currency})"
                )
            parts.append((part.record_no, amount))
            dues[part.record_no] = invoice.due.amount_minor
            invoice_total = invoice.total.amount_minor
            if invoice.tax.amount_minor and invoice_total:
                tax += invoice.tax.amount_minor * amount // invoice_total
            if invoice.po_number:
                references.append(invoice.po_number)
        total = sum(a for _, a in parts)
        if request.expected_total_minor is not None and (
            request.expected_total_minor != total
            or (request.expected_currency and request.expected_currency.upper() != currency)
        ):
            raise InvalidArgument(
                f"expected_total is {from_minor(request.expected_total_minor, currency)} "
                f"{request.expected_currency.upper() or currency}, but the invoices come to "
                f"{from_minor(total, currency)} {currency}; read the invoices again"
            )
        method = await self._method(request)
        return _Plan(
            method=method,
            parts=parts,
            dues=dues,
            modified=modified,
            total=total,
            currency=currency,
            tax=tax,
            reference=", ".join(dict.fromkeys(references))[:64],
            entity_id=entities.pop(),
        )

    async def open_balances(
        self, account_id: str, invoices: Sequence[ar_pb2.Invoice]
    ) -> dict[str, int]:
        """What is left to pay on each invoice: its balance in the AR store less what
        succeeded charges took that Intacct does not show yet (what a payer may pay)."""
        taken = await self._unposted(account_id, {i.record_no: _modified_at(i) for i in invoices})
        return {
            i.record_no: max(0, i.due.amount_minor - taken.get(i.record_no, 0)) for i in invoices
        }

    async def recent_link_declines(self, link_id: str, hours: int = 1) -> int:
        """Declined charges made through a link in the last ``hours`` (pay pages stop a
        link that is being used to test cards)."""
        count: int = await self._pool.fetchval(
            "SELECT count(*) FROM charges WHERE link_id = $1 AND phase = 'declined'"
            " AND created_at > now() - make_interval(hours => $2)",
            link_id,
            hours,
        )
        return count

    async def _unposted(
        self, account_id: str, modified: dict[str, datetime | None], conn: Any = None
    ) -> dict[str, int]:
        """What succeeded (or settling) charges took from each invoice that the AR store
        does not show yet.

        A payment not posted to Intacct yet is not in the invoice's balance. A posted
        one is there once the AR store holds a version of the invoice that Intacct
        modified after the posting was sent (Intacct's times are whole seconds,
        hence the margin); until then it is counted here: what was posted, which a
        refund made afterwards does not reverse, or else what the charge keeps.
        """
        db = conn or self._pool
        rows = await db.fetch(
            "SELECT ci.charge_id, ci.invoice_record_no, ci.amount_minor, ci.posted_minor,"
            " c.refunded_minor, c.posting_state, c.posting_started_at"
            " FROM charge_invoices ci JOIN charges c USING (charge_id)"
            " WHERE ci.account_id = $1 AND ci.invoice_record_no = ANY($2::text[])"
            " AND c.phase IN ('succeeded', 'settling')",
            account_id,
            list(modified),
        )
        # A refunded charge keeps less than its parts: what it keeps of each invoice
        # depends on all of its parts (kept_parts), read for those charges only.
        kept: dict[str, dict[str, int]] = {}
        refunded = {
            r["charge_id"]: int(r["refunded_minor"])
            for r in rows
            if r["refunded_minor"] and r["posted_minor"] is None
        }
        if refunded:
            parts: dict[str, list[tuple[str, int]]] = {}
            for p in await db.fetch(
                "SELECT charge_id, invoice_record_no, amount_minor FROM charge_invoices"
                " WHERE charge_id = ANY($1::text[])",
                list(refunded),
            ):
                parts.setdefault(p["charge_id"], []).append(
                    (p["invoice_record_no"], int(p["amount_minor"]))
                )
            kept = {c: dict(kept_parts(parts[c], refunded[c])) for c in refunded}
        taken: dict[str, int] = {}
        for r in rows:
            record_no = r["invoice_record_no"]
            version = modified.get(record_no)
            shown = (
                r["posting_state"] == "posted"
                and version is not None
                and r["posting_started_at"] is not None
                and version >= r["posting_started_at"] - POSTING_CLOCK_MARGIN
            )
            if shown:
                continue
            if r["posted_minor"] is not None:
                amount = int(r["posted_minor"])
            elif r["charge_id"] in kept:
                amount = kept[r["charge_id"]].get(record_no, 0)
            else:
                amount = int(r["amount_minor"])
            taken[record_no] = taken.get(record_no, 0) + amount
        return taken

    async def _method(self, request: ChargeRequest) -> asyncpg.Record:
        if request.payment_method_id:
            method = await self._pool.fetchrow(
                "SELECT payment_method_id, customer_id, kind, shopper_id, last4, brand"
                " FROM payment_methods WHERE account_id = $1 AND payment_method_id = $2"
                " AND removed_at IS NULL",
                request.account_id,
                request.payment_method_id,
            )
            if method is None or method["customer_id"] != request.customer_id:
                raise NotFound(
                    f"payment method {request.payment_method_id!r} is not on file for customer "
                    f"{request.customer_id!r}; list the customer's methods for current ids"
                )
        else:
            method = await self._pool.fetchrow(
                "SELECT payment_method_id, customer_id, kind, shopper_id, last4, brand"
                " FROM payment_methods WHERE account_id = $1 AND customer_id = $2"
                " AND is_default AND removed_at IS NULL",
                request.account_id,
                request.customer_id,
            )
            if method is None:
                raise FailedPrecondition(
                    f"customer {request.customer_id!r} has no default payment method; "
                    "add one or pass payment_method_id"
                )
        return method

    # Driving a charge to its end ------------------------------------------------------

    async def _drive(self, charge_id: str) -> ChargeView:
        """Takes a claimed charge from its recorded phase to the end, or as far as it can."""
        row = await self._pool.fetchrow(
            "UPDATE charges SET phase = 'processing', attempts = attempts + 1,"
            " lease_until = now() + make_interval(secs => $2), updated_at = now()"
            " WHERE charge_id = $1 AND phase IN ('pending', 'processing') RETURNING *",
            charge_id,
            self._lease,
        )
        if row is None:  # finished meanwhile by another driver
            return await self._get_by_id(charge_id)
        self._faults.hit("charge.after_processing")
        transaction: Transaction | None = None
        outcome: tuple[str, str, str] | None = None
        if row["attempts"] > 1:
            # It may have been sent before a crash or timeout: look before sending. A
            # lookup that fails says nothing about the charge, so nothing is decided.
            try:
                transaction = await self._gateway.lookup(charge_id, row["kind"])
            except (GatewayTimeout, GatewayUnavailable, GatewayRefused) as err:
                log.warning("charge.lookup_failed", charge_id=charge_id, error=str(err))
                return await self._outcome_unknown(charge_id)
        try:
            if transaction is None:
                transaction = await self._send(row)
        except GatewayRefused as err:
            if err.name == "PROCESSING_DUPLICATE":
                transaction = await self._lookup_quietly(charge_id, row["kind"])
            else:
                phase = "declined" if err.name in DECLINES else "failed"
                outcome = (phase, err.name, err.description)
        except (GatewayTimeout, GatewayUnavailable) as err:
            log.warning("charge.outcome_unknown", charge_id=charge_id, error=str(err))
            transaction = await self._lookup_quietly(charge_id, row["kind"])
        self._faults.hit("charge.after_gateway")
        if outcome is None:
            if transaction is None:
                return await self._outcome_unknown(charge_id)
            outcome = _outcome(transaction)
        return await self._finish(row, outcome, transaction)

    async def _outcome_unknown(self, charge_id: str) -> ChargeView:
        """Leaves the charge processing; soon after, recovery or a same-key retry resolves it."""
        await self._pool.execute(
            "UPDATE charges SET lease_until = now() + make_interval(secs => $2)"
            " WHERE charge_id = $1 AND phase = 'processing'",
            charge_id,
            min(self._lease, 5.0),
        )
        return await self._get_by_id(charge_id)

    async def _send(self, row: asyncpg.Record) -> Transaction:
        return await self._gateway.charge(
            kind=row["kind"],
            merchant_transaction_id=row["charge_id"],
            shopper_id=row["shopper_id"],
            amount_minor=row["amount_minor"],
            currency=row["currency"],
            last4=row["last4"],
            brand=row["brand"],
            tax_minor=row["tax_minor"],
            customer_reference=row["customer_reference"],
        )

    async def _lookup_quietly(self, charge_id: str, kind: str) -> Transaction | None:
        try:
            return await self._gateway.lookup(charge_id, kind)
        except (GatewayTimeout, GatewayUnavailable, GatewayRefused) as err:
            log.warning("charge.lookup_failed", charge_id=charge_id, error=str(err))
            return None

    async def _finish(
        self,
        row: asyncpg.Record,
        outcome: tuple[str, str, str],
        transaction: Transaction | None,
    ) -> ChargeView:
        phase, code, reason = outcome
        from_phases = ["settling"] if row["phase"] == "settling" else ["pending", "processing"]
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchrow(
                "UPDATE charges SET phase = $2, failure_code = $3, failure_reason = $4,"
                " gateway_transaction_id = COALESCE(NULLIF($5, ''), gateway_transaction_id),"
                " lease_until = NULL, updated_at = now(),"
                " succeeded_at = CASE WHEN $2 = 'succeeded' THEN now() END,"
                " settle_check_at = CASE WHEN $2 = 'settling'"
                " THEN now() + make_interval(secs => $7) END"
                " WHERE charge_id = $1 AND phase = ANY($6::text[]) RETURNING *",
                row["charge_id"],
                phase,
                code,
                reason,
                transaction.transaction_id if transaction else "",
                from_phases,
                self._settle_poll,
            )
            if done is not None:
                # A settling debit keeps its invoices until it settles or is returned.
                invoices = await conn.fetch(
                    "UPDATE charge_invoices SET live = (live AND $2) WHERE charge_id = $1"
                    " RETURNING invoice_record_no",
                    row["charge_id"],
                    phase == "settling",
                )
                await self._outbox.add(
                    conn,
                    f"payments.charge.{phase}",
                    charge_event(done, [r["invoice_record_no"] for r in invoices]),
                    event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"charge/{row['charge_id']}/{phase}"),
                )
        if done is not None:
            if self._outcomes is not None:
                self._outcomes.labels(source=done["source"], kind=done["kind"], outcome=phase).inc()
            log.info(
                "charge.finished",
                charge_id=row["charge_id"],
                account_id=row["account_id"],
                phase=phase,
                code=code,
                amount_minor=row["amount_minor"],
                currency=row["currency"],
            )
        return await self._get_by_id(row["charge_id"])

    # Recovery -------------------------------------------------------------------------

    async def recover_once(self, limit: int = 50) -> int:
        """Drives every unfinished charge whose lease lapsed; returns how many it took."""
        rows = await self._pool.fetch(
            "UPDATE charges SET lease_until = now() + make_interval(secs => $2)"
            " WHERE charge_id IN (SELECT charge_id FROM charges"
            " WHERE phase IN ('pending', 'processing') AND lease_until < now()"
            " ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING charge_id",
            limit,
            self._lease,
        )
        for row in rows:
            try:
                await self._drive(row["charge_id"])
            except Exception:
                log.exception("charge.recovery_failed", charge_id=row["charge_id"])
        return len(rows)

    # ACH settlement ------------------------------------------------------------------

    async def settle_due(self, limit: int = 50) -> int:
        """Looks up settling debits whose check is due (a notification came, or the poll
        interval passed) and finishes those the gateway settled or returned."""
        rows = await self._pool.fetch(
            "UPDATE charges SET settle_check_at = now() + make_interval(secs => $2)"
            " WHERE charge_id IN (SELECT charge_id FROM charges"
            " WHERE phase = 'settling' AND settle_check_at <= now()"
            " ORDER BY settle_check_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING *",
            limit,
            self._settle_poll,
        )
        for row in rows:
            transaction = await self._lookup_quietly(row["charge_id"], row["kind"])
            if transaction is None or transaction.status.upper() == "PENDING":
                continue
            await self._finish(row, _outcome(transaction), transaction)
        return len(rows)

    async def on_gateway_notification(self, conn: Any, delivery: Any) -> None:
        """A card-gateway notification (through the webhook gateway) names a transaction:
        its charge, if settling, is looked up now; if succeeded, its refunded total is
        (a refund made at the gateway, outside arbridge: ``Refunds.reconcile_due``). The
        notification is only a hint; what the charge becomes is what the gateway's API
        says, so a forged one changes nothing.
        """
        event = events_pb2.CardGatewayNotificationReceived.FromString(delivery.data)
        charge_id = _notified_charge(event.body, event.content_type)
        if not charge_id:
            log.info("gateway_notification.ignored", account_id=event.account_id)
            return
        await conn.execute(
            "UPDATE charges SET settle_check_at = CASE WHEN phase = 'settling' THEN now()"
            " ELSE settle_check_at END, refund_check_at = CASE WHEN phase = 'succeeded'"
            " THEN now() ELSE refund_check_at END"
            " WHERE account_id = $1 AND charge_id = $2 AND phase IN ('settling', 'succeeded')",
            event.account_id,
            charge_id,
        )

    # Reading --------------------------------------------------------------------------

    async def get(self, account_id: str, charge_id: str) -> ChargeView:
        if not account_id or not charge_id:
            raise InvalidArgument("account_id and charge_id must be set")
        view = await self._load("WHERE account_id = $1 AND charge_id = $2", (account_id, charge_id))
        if not view:
            raise NotFound(f"charge {charge_id!r} does not exist in account {account_id!r}")
        return view[0]

    async def list_charges(
        self, account_id: str, customer_id: str, invoice_record_no: str, size: int, after: str
    ) -> list[ChargeView]:
        """Newest first, ``size + 1`` of them (the extra one says whether a next page exists)."""
        if not account_id:
            raise InvalidArgument("account_id must be set")
        if after and not await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM charges WHERE account_id = $1 AND charge_id = $2)",
            account_id,
            after,
        ):
            raise InvalidArgument("page_token is not from an earlier ListCharges answer")
        return await self._load(
            "WHERE account_id = $1 AND ($2 = '' OR customer_id = $2)"
            " AND ($3 = '' OR charge_id IN (SELECT charge_id FROM charge_invoices"
            " WHERE account_id = $1 AND invoice_record_no = $3))"
            " AND ($4 = '' OR (created_at, charge_id) <"
            " (SELECT created_at, charge_id FROM charges WHERE charge_id = $4))"
            " ORDER BY created_at DESC, charge_id DESC LIMIT $5",
            (account_id, customer_id, invoice_record_no, after, size + 1),
        )

    async def _get_by_id(self, charge_id: str) -> ChargeView:
        return (await self._load("WHERE charge_id = $1", (charge_id,)))[0]

    async def _load(self, where: str, args: Sequence[Any]) -> list[ChargeView]:
        rows = await self._pool.fetch(f"SELECT * FROM charges {where}", *args)
        if not rows:
            return []
        parts = await self._pool.fetch(
            "SELECT charge_id, invoice_record_no, amount_minor FROM charge_invoices"
            " WHERE charge_id = ANY($1::text[]) ORDER BY invoice_record_no",
            [r["charge_id"] for r in rows],
        )
        by_charge: dict[str, list[tuple[str, int]]] = {}
        for p in parts:
            by_charge.setdefault(p["charge_id"], []).append(
                (p["invoice_record_no"], p["amount_minor"])
            )
        return [ChargeView(dict(r), tuple(by_charge.get(r["charge_id"], []))) for r in rows]


@dataclass(frozen=True)
class _Plan:
    method: asyncpg.Record
    parts: list[tuple[str, int]]
    dues: dict[str, int]
    modified: dict[str, datetime | None]
    entity_id: str
    total: int
    currency: str
    tax: int
    reference: str


def kept_parts(parts: Sequence[tuple[str, int]], refunded_minor: int) -> list[tuple[str, int]]:
    """What a charge keeps of each invoice's part once ``refunded_minor`` of it went back,
    leaving out parts it keeps nothing of.

    A refund names no invoice: it comes off the parts last in record-number order
    first (the order posting applies them in), so the invoices earlier in that order
    stay paid in full and at most one is left part paid.
    """
    kept: list[tuple[str, int]] = []
    left = sum(amount for _, amount in parts) - refunded_minor
    # Record numbers are Intacct's integers: by length, then text, is their numeric order.
    for record_no, amount in sorted(parts, key=lambda p: (len(p[0]), p[0])):
        share = min(amount, left)
        if share <= 0:
            break
        kept.append((record_no, share))
        left -= share
    return kept


def _modified_at(invoice: Any) -> datetime | None:
    """When Intacct last modified the AR store's version of the invoice (UTC), if known."""
    if not invoice.HasField("intacct_modified_at"):
        return None
    modified: datetime = invoice.intacct_modified_at.ToDatetime(tzinfo=UTC)
    return modified


def _validate(request: ChargeRequest) -> None:
    missing = [
        name
        for name, value in (
            ("account_id", request.account_id),
            ("idempotency_key", request.idempotency_key),
            ("customer_id", request.customer_id),
        )
        if not value
    ]
    if not request.invoices:
        missing.append("invoices")
    if missing:
        raise InvalidArgument(f"{', '.join(missing)} must be set")
    if len(request.idempotency_key) > 255:
        raise InvalidArgument("idempotency_key is at most 255 characters")
    if len(request.invoices) > MAX_INVOICES:
        raise InvalidArgument(f"one charge pays at most {MAX_INVOICES} invoices")
    seen: set[str] = set()
    for part in request.invoices:
        if not part.record_no:
            raise InvalidArgument("every invoice needs invoice_record_no")
        if part.record_no in seen:
            raise InvalidArgument(f"invoice {part.record_no} is listed twice")
        seen.add(part.record_no)
        if part.amount_minor is not None and part.amount_minor <= 0:
            raise InvalidArgument(
                f"the amount for invoice {part.record_no} must be positive, in minor units"
            )
        if part.maximum_minor is not None:
            if part.amount_minor is not None:
                raise InvalidArgument(
                    f"invoice {part.record_no} has both an amount and a maximum; give the "
                    "amount, or the maximum for its open balance up to it"
                )
            if part.maximum_minor <= 0:
                raise InvalidArgument(
                    f"the maximum for invoice {part.record_no} must be positive, in minor units"
                )
    if request.source not in SOURCES:
        raise InvalidArgument(f"source must be one of {', '.join(SOURCES)}")


def _outcome(transaction: Transaction) -> tuple[str, str, str]:
    status = transaction.status.lower()
    if status == "success":
        return ("succeeded", "", "")
    if status == "pending":
        return ("settling", "", "")
    if status == "declined":
        return ("declined", "DECLINED", "The card was declined.")
    if status == "returned":
        return (
            "failed",
            "ACH_RETURNED",
            "The bank returned the debit; no money was collected.",
        )
    return ("failed", status.upper(), f"The gateway reports the payment as {status}.")


def _notified_charge(body: bytes, content_type: str) -> str:
    """Our charge id (the merchant transaction id) in a gateway notification, if any."""
    try:
        if "json" in content_type:
            data = json.loads(body)
            value = data.get("merchantTransactionId", "") if isinstance(data, dict) else ""
        else:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            value = (form.get("merchantTransactionId") or [""])[0]
    except (ValueError, UnicodeDecodeError):
        return ""
    value = str(value)
    return value if value.startswith("ch_") and len(value) <= 64 else ""


@contextlib.asynccontextmanager
async def refund_lock(pool: asyncpg.Pool, charge_id: str) -> AsyncIterator[Any]:
    """Holds the charge's refund lock (an advisory lock) on a connection of its own and
    yields that connection. Refunds settle, refunds made outside arbridge are recorded,
    and the payment is posted under it, one at a time. Whoever holds it does all its
    database work on the yielded connection: it never waits for a second one, which
    others waiting on the lock may hold."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 11))", charge_id)
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 11))", charge_id)


async def refund_pending(db: Any, charge_id: str) -> bool:
    """Whether a refund of the charge is recorded and not yet settled."""
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM refunds WHERE charge_id = $1 AND phase = 'pending')",
            charge_id,
        )
    )


def charge_event(
    row: Any,
    invoices: Sequence[str],
    *,
    state: str = "",
    amount_minor: int | None = None,
    failure_reason: str | None = None,
    idempotency_key: str = "",
    refund_id: str = "",
) -> events_pb2.ChargeChanged:
    """A ``ChargeChanged`` event from a charge row; refunds and postings override the parts
    that are theirs (state, amount, reason, key)."""
    occurred = Timestamp()
    occurred.FromDatetime(row["updated_at"])
    return events_pb2.ChargeChanged(
        account_id=row["account_id"],
        charge_id=row["charge_id"],
        customer_id=row["customer_id"],
        invoice_record_nos=sorted(invoices),
        amount=common_pb2.Money(
            amount_minor=row["amount_minor"] if amount_minor is None else amount_minor,
            currency=row["currency"],
        ),
        state=state or row["phase"],
        source=row["source"],
        rule_id=row["rule_id"],
        failure_reason=row["failure_reason"] if failure_reason is None else failure_reason,
        occurred_at=occurred,
        idempotency_key=idempotency_key or row["idempotency_key"],
        refund_id=refund_id,
        intacct_payment_record_no=row["intacct_payment_record_no"] or "",
    )
