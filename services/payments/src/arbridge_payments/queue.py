"""Charges requested from inside Intacct: the charge-queue custom object (BlueSnapARQueue).

With Platform Services and the arbridge application installed, an Intacct
user asks for a charge by adding a queue record: customer, invoice, and
optionally an amount (else the invoice's open balance) and currency. arbridge
reads new and changed records through the connector, charges each request
once through ``Charges`` (source ``intacct_queue``) and writes the outcome
back onto the record: ``status`` (Processing, Paid, Declined or Failed), a
plain ``message``, and ``paymentkey`` (the AR payment's record number) once
the payment is posted to Intacct.

A request is keyed by its record and attempt: re-reading a record charges
nothing twice (the idempotency key is ``intacct-queue:{record}:{attempt}``).
An Intacct user retries a declined or failed request by setting its status
back to Pending, which starts the next attempt; nothing is retried
automatically. The request row (with the request's fields) is written
before the charge, and the status to write is derived from the charge, so a
crash at any point leaves work the next pass finishes: a request recorded but
not charged (the process died in between, or another charge of the invoice
was in progress) is charged again under its key by the ``charge_unsent`` pass
once it has waited ``UNSENT_RETRY``, or at once when its record is read again.
While a request waits for another charge of its invoice (a bank debit settles
for days), its record says so: status Pending, and why in the message.

Each connected account's queue is read every ``poll_seconds`` (and at once
when sync forwards an Intacct event about a queue record). A company without
Platform Services has no queue object: the connector says so when the account
connects, and its queue is never read. Should a read still be refused (the
application removed later, rights withdrawn), the queue is marked unavailable
with Intacct's reason and looked at again only daily.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.events.v1 import events_pb2
from arbridge_payments.charges import ChargeRequest, Charges, InvoicePart
from arbridge_payments.methods import charged_source
from arbridge_runtime.errors import Conflict, DeadlineExceeded, DomainError, Unavailable
from arbridge_runtime.money import from_minor, to_minor
from arbridge_runtime.paging import streamed_records

log = structlog.get_logger(__name__)

QUEUE = common_pb2.OBJECT_TYPE_CHARGE_QUEUE
REQUESTED = frozenset({"", "pending", "new", "queued"})
# Intacct's times are whole seconds: each read goes back this far past the last one.
READ_OVERLAP = timedelta(seconds=2)
UNAVAILABLE_RETRY = timedelta(days=1)
# How long a request recorded but not charged waits before the next try: long enough
# that a try still in flight has recorded its charge (a repeat would only replay it).
UNSENT_RETRY = timedelta(seconds=15)
FINAL = frozenset({"Paid", "Declined", "Failed"})
# Why a request waits, as its record says it.
WAITING_FOR_CHARGE = (
    "another charge of this invoice is in progress or being posted to Intacct (a bank"
    " debit settles in a few business days); this one is charged once it is done, if a"
    " balance is left."
)
WAITING_FOR_STORE = "arbridge could not read the invoice's open balance just now."
NO_PLATFORM = (
    "the company has no Platform Services with the BlueSnap application, so it has no "
    "charge queue; charges are made from AR Automation only"
)


@dataclass(frozen=True)
class Outcome:
    """What to write onto a queue record."""

    status: str
    message: str
    payment_key: str = ""
    # Not an outcome: why the request is not charged yet (it stays Pending).
    waiting: str = ""


class ChargeQueue:
    """Reads each account's charge queue, charges its requests, writes outcomes back."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        charges: Charges,
        connector: connector_pb2_grpc.ConnectorServiceAsyncStub,
        *,
        poll_seconds: float = 300.0,
    ) -> None:
        self._pool = pool
        self._charges = charges
        self._connector = connector
        self._poll = poll_seconds

    # Which accounts to read ---------------------------------------------------------

    async def on_account_connection(self, conn: Any, delivery: Any) -> None:
        """``connector.account.*``: a connected account's queue is read from now on."""
        event = events_pb2.AccountConnectionChanged.FromString(delivery.data)
        # Without Platform Services the queue object does not exist: it is never read.
        await conn.execute(
            "INSERT INTO queue_accounts (account_id, enabled, state, last_error)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE"
            " SET enabled = EXCLUDED.enabled, state = EXCLUDED.state,"
            " last_error = EXCLUDED.last_error, next_poll_at = now(), updated_at = now()",
            event.account_id,
            event.connected and event.platform_services,
            "active" if event.platform_services else "unavailable",
            "" if event.platform_services else NO_PLATFORM,
        )

    async def on_queue_event(self, conn: Any, delivery: Any) -> None:
        """``sync.charge_queue.changed``: a queue record changed in Intacct; read it now."""
        event = events_pb2.ChargeQueueChanged.FromString(delivery.data)
        await conn.execute(
            "UPDATE queue_accounts SET next_poll_at = now() WHERE account_id = $1"
            " AND enabled AND state = 'active'",
            event.account_id,
        )

    async def status(self, account_id: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow(
            "SELECT state, last_error, cursor FROM queue_accounts WHERE account_id = $1",
            account_id,
        )

    # Reading ------------------------------------------------------------------------

    async def poll_due(self, limit: int = 10) -> int:
        """Reads the queues that are due; returns how many it read."""
        accounts = await self._pool.fetch(
            "UPDATE queue_accounts SET next_poll_at = now() + make_interval(secs => $2),"
            " updated_at = now() WHERE account_id IN (SELECT account_id FROM queue_accounts"
            " WHERE enabled AND next_poll_at <= now() ORDER BY next_poll_at LIMIT $1"
            " FOR UPDATE SKIP LOCKED) RETURNING account_id, cursor, state",
            limit,
            self._poll,
        )
        for account in accounts:
            try:
                await self._read(account["account_id"], account["cursor"])
            except Exception:
                # One account's trouble must not stop the others (nor the service): the
                # account is read again at its next poll, and requests are keyed, so a
                # read that stopped halfway charges nothing twice.
                log.exception("charge_queue.read_failed", account_id=account["account_id"])
        unsent = await self.charge_unsent()
        written = await self.write_outcomes()
        return len(accounts) + unsent + written

    async def charge_unsent(self, limit: int = 20) -> int:
        """Charges requests recorded but not charged, under their key; returns how many."""
        rows = await self._pool.fetch(
            "UPDATE queue_requests SET updated_at = now() WHERE (account_id, queue_record_no)"
            " IN (SELECT account_id, queue_record_no FROM queue_requests WHERE NOT done"
            " AND charge_id = '' AND outcome_status = '' AND written_status = ''"
            " AND updated_at < now() - $2::interval ORDER BY updated_at LIMIT $1"
            " FOR UPDATE SKIP LOCKED) RETURNING account_id, queue_record_no, attempt, fields",
            limit,
            UNSENT_RETRY,
        )
        for row in rows:
            log.info(
                "charge_queue.charging_again",
                account_id=row["account_id"],
                record_no=row["queue_record_no"],
                attempt=row["attempt"],
            )
            await self._settle(
                row["account_id"], row["queue_record_no"], row["attempt"], json.loads(row["fields"])
            )
        return len(rows)

    async def _read(self, account_id: str, cursor: datetime | None) -> None:
        request = connector_pb2.StreamRecordsRequest(account_id=account_id, object_type=QUEUE)
        if cursor is not None:
            since = Timestamp()
            since.FromDatetime(cursor - READ_OVERLAP)
            request.modified_since.CopyFrom(since)
        newest = cursor
        try:
            async for message in self._connector.StreamRecords(request, timeout=600):
                for record in streamed_records(message):
                    await self._take(account_id, record.record_no, dict(record.fields))
                    if record.HasField("when_modified"):
                        modified = record.when_modified.ToDatetime(tzinfo=UTC)
                        newest = modified if newest is None else max(newest, modified)
        except grpc.aio.AioRpcError as err:
            await self._read_failed(account_id, err)
            return
        await self._pool.execute(
            "UPDATE queue_accounts SET cursor = $2, state = 'active', last_error = '',"
            " updated_at = now() WHERE account_id = $1",
            account_id,
            newest,
        )

    async def _read_failed(self, account_id: str, err: grpc.aio.AioRpcError) -> None:
        transient = err.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
        )
        if transient:
            log.warning("charge_queue.read_later", account_id=account_id, code=err.code().name)
            return
        # No queue object (no Platform Services, or the application is not installed) or
        # no permission: say so and look again daily, not every few minutes.
        log.warning(
            "charge_queue.unavailable", account_id=account_id, reason=str(err.details())[:300]
        )
        await self._pool.execute(
            "UPDATE queue_accounts SET state = 'unavailable', last_error = $2,"
            " next_poll_at = now() + $3, updated_at = now() WHERE account_id = $1",
            account_id,
            str(err.details())[:1000],
            UNAVAILABLE_RETRY,
        )

    # One request --------------------------------------------------------------------

    async def _take(self, account_id: str, record_no: str, fields: dict[str, str]) -> None:
        status = fields.get("status", "").strip().lower()
        if status not in REQUESTED:
            return  # an outcome (ours) or a status the user set to stop it
        request = json.dumps(fields)
        attempt = await self._pool.fetchval(
            "INSERT INTO queue_requests (account_id, queue_record_no, request_name, fields)"
            " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (account_id, queue_record_no) DO UPDATE"
            " SET attempt = queue_requests.attempt + 1, charge_id = '', outcome_status = '',"
            " outcome_message = '', written_status = '', written_payment_key = '',"
            " waiting = '', written_waiting = '',"
            " done = false, fields = EXCLUDED.fields, updated_at = now()"
            # Only a request whose outcome was written and then set back to a requested
            # status by a user is a new attempt.
            " WHERE queue_requests.written_status <> '' RETURNING attempt",
            account_id,
            record_no,
            fields.get("name", ""),
            request,
        )
        if attempt is None:
            # The same attempt: if it was recorded but not charged, it is charged now
            # under its key (a charge made meanwhile is only replayed); otherwise it is
            # in flight or its outcome is on its way, and is left alone.
            attempt = await self._pool.fetchval(
                "UPDATE queue_requests SET fields = $3::jsonb, updated_at = now()"
                " WHERE account_id = $1 AND queue_record_no = $2 AND NOT done"
                " AND charge_id = '' AND outcome_status = '' AND written_status = ''"
                " RETURNING attempt",
                account_id,
                record_no,
                request,
            )
            if attempt is None:
                return
        await self._settle(account_id, record_no, attempt, fields)

    async def _settle(
        self, account_id: str, record_no: str, attempt: int, fields: dict[str, str]
    ) -> None:
        """Charges one attempt of a request, or records why it cannot be charged."""
        outcome = await self._charge(account_id, record_no, attempt, fields)
        if outcome is not None:
            await self._pool.execute(
                "UPDATE queue_requests SET outcome_status = $3, outcome_message = $4,"
                " updated_at = now() WHERE account_id = $1 AND queue_record_no = $2",
                account_id,
                record_no,
                outcome.status,
                outcome.message,
            )

    async def _charge(
        self, account_id: str, record_no: str, attempt: int, fields: dict[str, str]
    ) -> Outcome | None:
        """Charges a request; returns an outcome only when no charge was made (invalid)."""
        customer = fields.get("customerid", "").strip()
        invoice = fields.get("invoicekey", "").strip()
        currency = fields.get("currency", "").strip().upper()
        amount_text = fields.get("amount", "").strip()
        if not customer or not invoice:
            return Outcome(
                "Failed",
                "Customer ID and Invoice record number are both required; fill them "
                "in and set the status back to Pending.",
            )
        minor: int | None = None
        if amount_text and amount_text not in ("0", "0.00"):
            if not currency:
                return Outcome(
                    "Failed",
                    "An amount needs a currency; fill in Currency and set the "
                    "status back to Pending.",
                )
            try:
                minor = to_minor(amount_text, currency)
            except ValueError:
                return Outcome("Failed", f"Amount {amount_text} is not an amount in {currency}.")
            if minor <= 0:
                return Outcome("Failed", "Amount must be more than zero.")
        try:
            view, _ = await self._charges.charge(
                ChargeRequest(
                    account_id=account_id,
                    idempotency_key=f"intacct-queue:{record_no}:{attempt}",
                    customer_id=customer,
                    invoices=(InvoicePart(invoice, minor, currency),),
                    source="intacct_queue",
                )
            )
        except (Conflict, Unavailable, DeadlineExceeded) as err:
            # Another charge of the invoice is in progress, or the AR store could not be
            # read: nothing was charged, and charge_unsent tries again. The record says why.
            log.info(
                "charge_queue.charge_later",
                account_id=account_id,
                record_no=record_no,
                reason=type(err).__name__,
            )
            await self._pool.execute(
                "UPDATE queue_requests SET waiting = $4 WHERE account_id = $1"
                " AND queue_record_no = $2 AND attempt = $3 AND charge_id = ''",
                account_id,
                record_no,
                attempt,
                WAITING_FOR_CHARGE if isinstance(err, Conflict) else WAITING_FOR_STORE,
            )
            return None
        except DomainError as err:
            return Outcome("Failed", _sentence(err.message))
        await self._pool.execute(
            "UPDATE queue_requests SET charge_id = $3, waiting = '', updated_at = now()"
            " WHERE account_id = $1 AND queue_record_no = $2",
            account_id,
            record_no,
            view.row["charge_id"],
        )
        return None

    # Writing outcomes back ----------------------------------------------------------

    async def write_outcomes(self, limit: int = 100) -> int:
        """Writes every outcome Intacct does not show yet; returns how many it wrote."""
        rows = await self._pool.fetch(
            "SELECT r.*, c.phase, c.amount_minor, c.currency, c.last4, c.kind,"
            " c.failure_reason, c.posting_state, c.intacct_payment_record_no"
            " FROM queue_requests r LEFT JOIN charges c USING (charge_id)"
            " WHERE NOT r.done AND r.write_after <= now() AND ("
            # refused before charging, not written yet
            " (r.outcome_status <> '' AND r.written_status = '')"
            # or its charge changed (phase, posting) since the request row was last written
            " OR (c.charge_id IS NOT NULL AND (r.written_status = ''"
            " OR c.updated_at >= r.updated_at))"
            # or it waits, and the record does not say why yet
            " OR (r.charge_id = '' AND r.outcome_status = '' AND r.written_status = ''"
            " AND r.waiting <> r.written_waiting))"
            " ORDER BY r.updated_at LIMIT $1",
            limit,
        )
        written = 0
        for row in rows:
            outcome = _outcome(row)
            if outcome is None:
                continue
            if outcome.waiting and outcome.waiting == row["written_waiting"]:
                continue
            if not outcome.waiting and (outcome.status, outcome.payment_key) == (
                row["written_status"],
                row["written_payment_key"],
            ):
                continue
            if await self._write(row, outcome):
                written += 1
        return written

    async def _write(self, row: asyncpg.Record, outcome: Outcome) -> bool:
        key = (
            f"queue:{row['queue_record_no']}:{row['attempt']}:{outcome.status}:"
            f"{outcome.payment_key or outcome.waiting}"
        )
        try:
            reply = await self._connector.WriteRecords(
                connector_pb2.WriteRecordsRequest(
                    account_id=row["account_id"],
                    object_type=QUEUE,
                    writes=[
                        connector_pb2.RecordWrite(
                            operation=connector_pb2.WRITE_OPERATION_UPDATE,
                            record_no=row["queue_record_no"],
                            fields={
                                "status": outcome.status,
                                "message": outcome.message[:1000],
                                "paymentkey": outcome.payment_key,
                            },
                            idempotency_key=key[:100],
                        )
                    ],
                ),
                timeout=120,
            )
        except grpc.aio.AioRpcError as err:
            log.warning(
                "charge_queue.write_later",
                account_id=row["account_id"],
                record_no=row["queue_record_no"],
                code=err.code().name,
            )
            await self._back_off(row)
            return False
        result = reply.results[0] if reply.results else None
        if result is None or not (result.ok or result.already_applied):
            reason = (
                "; ".join(e.description2 or e.description for e in result.errors) if result else ""
            )
            log.warning(
                "charge_queue.write_refused",
                account_id=row["account_id"],
                record_no=row["queue_record_no"],
                reason=reason[:300],
            )
            await self._back_off(row)
            return False
        if outcome.waiting:
            # Still a request (written_status stays empty): charge_unsent goes on with it.
            await self._pool.execute(
                "UPDATE queue_requests SET written_waiting = $4, write_failures = 0"
                " WHERE account_id = $1 AND queue_record_no = $2 AND attempt = $3",
                row["account_id"],
                row["queue_record_no"],
                row["attempt"],
                outcome.waiting,
            )
            return True
        final = outcome.status in FINAL and (outcome.status != "Paid" or bool(outcome.payment_key))
        await self._pool.execute(
            "UPDATE queue_requests SET written_status = $3, written_payment_key = $4,"
            " done = $5, write_failures = 0, updated_at = now()"
            " WHERE account_id = $1 AND queue_record_no = $2"
            " AND attempt = $6",
            row["account_id"],
            row["queue_record_no"],
            outcome.status,
            outcome.payment_key,
            final,
            row["attempt"],
        )
        return True

    async def _back_off(self, row: asyncpg.Record) -> None:
        """The next try of a write that did not take: 2, 4, 8 ... seconds, at most 10 minutes."""
        await self._pool.execute(
            "UPDATE queue_requests SET write_failures = write_failures + 1,"
            " write_after = now() + make_interval(secs => least(600, 2 ^ (write_failures + 1)))"
            " WHERE account_id = $1 AND queue_record_no = $2",
            row["account_id"],
            row["queue_record_no"],
        )


def _outcome(row: asyncpg.Record) -> Outcome | None:
    """What the record should say now, from the request's own outcome or its charge."""
    if row["outcome_status"]:
        return Outcome(row["outcome_status"], row["outcome_message"])
    phase = row["phase"]
    if phase is None and row["waiting"] and not row["charge_id"]:
        return Outcome(
            "Pending",
            f"Not charged yet: {row['waiting']} arbridge tries again every "
            f"{int(UNSENT_RETRY.total_seconds())} seconds and never charges twice.",
            waiting=row["waiting"],
        )
    if phase is None:
        return None  # not charged yet (in flight)
    amount = f"{from_minor(row['amount_minor'], row['currency'])} {row['currency']}"
    source = charged_source(row["kind"], row["last4"])
    charge = row["charge_id"]
    if phase == "succeeded" and row["posting_state"] == "refunded":
        return Outcome(
            "Failed",
            f"Charged {amount} to the {source}, then refunded in full before the payment "
            f"was posted: nothing was collected (arbridge charge {charge}). Set the status "
            "back to Pending to charge again.",
        )
    if phase == "succeeded":
        posted = row["posting_state"] == "posted"
        message = f"Charged {amount} to the {source} (arbridge charge {charge})."
        if not posted:
            message += " The AR payment is being posted."
        return Outcome("Paid", message, row["intacct_payment_record_no"] if posted else "")
    if phase == "settling":
        return Outcome(
            "Processing",
            f"Debit of {amount} from the {source} submitted; bank debits settle in a few "
            f"business days (arbridge charge {charge}).",
        )
    if phase == "declined":
        return Outcome(
            "Declined",
            f"{row['failure_reason']} Set the status back to Pending to try again.",
        )
    if phase == "failed":
        return Outcome(
            "Failed",
            f"{row['failure_reason']} Set the status back to Pending to try again.",
        )
    return Outcome("Processing", f"Charging {amount} to the {source}.")


def _sentence(message: str) -> str:
    text = message.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
