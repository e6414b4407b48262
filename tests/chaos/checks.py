"""Counting from the systems of record after a scenario: money, Intacct, the AR store."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc

from arbridge.events.v1 import events_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge_devinfra.onboarding import Stubs, add_card, invoices, open_invoices, until
from arbridge_devinfra.sandboxes import Sandbox
from arbridge_runtime.money import to_minor
from tests.chaos.harness import Outcome

RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


@dataclass
class ChargeLedger:
    """What a platform team's client asked for and was told, per idempotency key."""

    asked: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (customer, invoice)
    acknowledged: dict[str, str] = field(default_factory=dict)  # key -> charge id
    refused: dict[str, str] = field(default_factory=dict)  # key -> why
    retries: int = 0


async def charge_until_answered(
    stubs: Stubs,
    ledger: ChargeLedger,
    account: str,
    key: str,
    customer: str,
    invoice: str,
    *,
    give_up_after: float = 240.0,
) -> None:
    """Charges one invoice under ``key`` and, like a careful client, retries the same key
    after any transient failure until an answer (success or a refusal) comes back."""
    ledger.asked[key] = (customer, invoice)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    while loop.time() < deadline:
        try:
            reply = await stubs.payments.ChargeInvoices(
                payments_pb2.ChargeInvoicesRequest(
                    account_id=account,
                    idempotency_key=key,
                    customer_id=customer,
                    invoices=[payments_pb2.InvoiceAmount(invoice_record_no=invoice)],
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in RETRYABLE:
                ledger.retries += 1
                await asyncio.sleep(0.5)
                continue
            ledger.refused[key] = f"{err.code().name}: {err.details()}"
            return
        if reply.charge.state == payments_pb2.CHARGE_STATE_SUCCEEDED:
            ledger.acknowledged[key] = reply.charge.charge_id
            return
        if reply.charge.state in (
            payments_pb2.CHARGE_STATE_PENDING,
            payments_pb2.CHARGE_STATE_PROCESSING,
        ):
            await asyncio.sleep(0.5)  # the outcome is being found out; ask again
            continue
        ledger.refused[key] = payments_pb2.ChargeState.Name(reply.charge.state)
        return
    ledger.refused[key] = "no answer before giving up"


@dataclass
class MoneyCount:
    """Charges by invoice, gateway transactions and Intacct payments, side by side."""

    succeeded_by_invoice: dict[str, list[str]]
    charges: dict[str, Any]
    gateway_approved: dict[str, int]
    intacct_by_reference: dict[str, int]
    unposted: list[str]

    @property
    def double_charged_invoices(self) -> list[str]:
        return [i for i, ids in self.succeeded_by_invoice.items() if len(ids) > 1]

    @property
    def orphan_gateway_charges(self) -> list[str]:
        """Money taken at the gateway that payments has no succeeded charge for."""
        return [t for t in self.gateway_approved if t not in self.charges]

    @property
    def double_gateway_charges(self) -> list[str]:
        return [t for t, n in self.gateway_approved.items() if n > 1]

    @property
    def double_postings(self) -> list[str]:
        return [r for r, n in self.intacct_by_reference.items() if n > 1]

    @property
    def missing_postings(self) -> list[str]:
        """Succeeded charges with no payment in Intacct."""
        return [c for c in self.charges if intacct_reference(c) not in self.intacct_by_reference]

    def duplicates(self) -> int:
        return (
            len(self.double_charged_invoices)
            + len(self.orphan_gateway_charges)
            + len(self.double_gateway_charges)
            + len(self.double_postings)
        )


def intacct_reference(charge_id: str) -> str:
    """The DOCNUMBER the connector gives the Intacct payment of a charge."""
    return "ARB-" + hashlib.sha256(charge_id.encode()).hexdigest()[:20].upper()


async def count_money(
    stubs: Stubs, sandbox: Sandbox, account: str, invoices: Iterable[str]
) -> MoneyCount:
    succeeded: dict[str, list[str]] = {}
    charges: dict[str, Any] = {}
    for invoice in invoices:
        found = (
            await stubs.payments.ListCharges(
                payments_pb2.ListChargesRequest(account_id=account, invoice_record_no=invoice)
            )
        ).charges
        ok = [c for c in found if c.state == payments_pb2.CHARGE_STATE_SUCCEEDED]
        succeeded[invoice] = [c.charge_id for c in ok]
        for charge in ok:
            charges[charge.charge_id] = charge
    approved = collections.Counter(
        t["merchantTransactionId"]
        for t in await sandbox.gateway_transactions()
        if t["processingInfo"]["processingStatus"] == "success"
    )
    payments = await sandbox.records("ARPYMT")
    # The connector posts each charge under "ARB-" + a digest of its charge id.
    by_reference = collections.Counter(
        str(p["DOCNUMBER"]) for p in payments.values() if str(p.get("DOCNUMBER")).startswith("ARB-")
    )
    unposted = [
        c.charge_id
        for c in charges.values()
        if c.posting_state != payments_pb2.POSTING_STATE_POSTED
    ]
    return MoneyCount(succeeded, charges, dict(approved), dict(by_reference), unposted)


async def store_differences(
    stubs: Stubs, sandbox: Sandbox, account: str, invoices: Iterable[str]
) -> list[str]:
    """Invoices whose amount due differs between Intacct and the AR store."""
    intacct = await sandbox.records("ARINVOICE")
    stored = {i.record_no: i for i in await open_invoices(stubs, account)}
    wrong = []
    for record_no in invoices:
        values = intacct.get(record_no)
        if values is None:
            wrong.append(f"{record_no}: not in Intacct")
            continue
        currency = str(values.get("CURRENCY") or values.get("BASECURR"))
        due = to_minor(str(values["TRX_TOTALDUE"]), currency)
        held = stored[record_no].due.amount_minor if record_no in stored else 0
        if due != held:
            wrong.append(f"{record_no}: Intacct due {due}, AR store {held}")
    return wrong


async def card_targets(
    stubs: Stubs,
    sandbox: Sandbox,
    account: str,
    *,
    customers: int,
    limit: int,
    currency: str = "USD",
) -> list[tuple[str, str]]:
    """(customer, invoice) pairs to charge: open invoices of the first ``customers``
    customers with invoices in ``currency``, each customer given a stored card."""
    by_customer: dict[str, list[str]] = {}
    for invoice in await open_invoices(stubs, account):
        if invoice.currency == currency:
            by_customer.setdefault(invoice.customer_id, []).append(invoice.record_no)
    chosen = sorted(by_customer)[:customers]
    for customer in chosen:
        await add_card(stubs, sandbox, account, customer)
    return [(c, i) for c in chosen for i in by_customer[c]][:limit]


async def settle_charges(
    stubs: Stubs,
    sandbox: Sandbox,
    account: str,
    outcome: Outcome,
    charges: ChargeLedger,
    invoices: list[str],
    *,
    fault_ended: float,
    must_be_charged: Iterable[str] = (),
    timeout: float = 240.0,
) -> MoneyCount:
    """Waits for every charge to be made and posted, then counts into ``outcome``: lost
    (acknowledged charges missing, ``must_be_charged`` invoices not charged, succeeded
    charges not posted in Intacct by the end, questions never answered) and duplicated
    (double charges, orphan gateway charges, double postings)."""
    required = list(must_be_charged)

    async def settled() -> bool:
        money = await count_money(stubs, sandbox, account, invoices)
        charged = all(money.succeeded_by_invoice.get(i) for i in required)
        return charged and not money.unposted and not money.missing_postings

    try:
        await until("every charge made and posted", settled, timeout=timeout, every=1.0)
    except TimeoutError as exc:
        outcome.notes.append(str(exc))
    outcome.recovery_seconds = round(time.monotonic() - fault_ended, 1)
    money = await count_money(stubs, sandbox, account, invoices)
    lost = [k for k, c in charges.acknowledged.items() if c not in money.charges]
    lost += [i for i in required if not money.succeeded_by_invoice.get(i)]
    lost += money.missing_postings + money.unposted
    lost += [k for k, why in charges.refused.items() if why.startswith("no answer")]
    outcome.lost += len(set(lost))
    outcome.duplicated += money.duplicates()
    refusals = sorted({why for why in charges.refused.values() if not why.startswith("no answer")})
    if refusals:
        outcome.notes.append(f"refused: {refusals[:3]}")
    for what, items in (
        ("lost", lost),
        ("double-charged invoices", money.double_charged_invoices),
        ("orphan gateway charges", money.orphan_gateway_charges),
        ("double postings", money.double_postings),
    ):
        if items:
            outcome.notes.append(f"{what}: {items[:5]}")
    return money


async def agree_with_intacct(
    stubs: Stubs,
    sandbox: Sandbox,
    account: str,
    outcome: Outcome,
    invoices: list[str],
    *,
    fault_ended: float,
    timeout: float = 120.0,
) -> None:
    """Waits for the AR store to agree with Intacct on ``invoices``; counts the invoices that
    still differ as wrong and the wait as recovery."""

    async def agrees() -> bool:
        return not await store_differences(stubs, sandbox, account, invoices)

    try:
        await until("the AR store agreeing with Intacct", agrees, timeout=timeout, every=1.0)
    except TimeoutError as exc:
        outcome.notes.append(str(exc))
    wrong = await store_differences(stubs, sandbox, account, invoices)
    outcome.recovery_seconds = round(time.monotonic() - fault_ended, 1)
    outcome.wrong += len(wrong)
    if wrong:
        outcome.notes.append(f"wrong records: {wrong[:5]}")


async def invoices_by_record(stubs: Stubs, account: str) -> dict[str, Any]:
    """Every invoice of the AR store, open or not, by RECORDNO."""
    return {i.record_no: i for i in await invoices(stubs, account)}


async def republished_events(dsn: str) -> int:
    """AR invoice events in sync's outbox that repeat a (record, version) already there."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT subject, payload FROM sync.outbox_events WHERE subject LIKE 'ar.invoice.%'"
        )
    finally:
        await conn.close()
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    for row in rows:
        if row["subject"] == "ar.invoice.bundle":  # a sync job's
            changes = list(events_pb2.InvoiceChanges.FromString(row["payload"]).changes)
        else:
            changes = [events_pb2.InvoiceChanged.FromString(row["payload"])]
        for event in changes:
            seen[(event.invoice.record_no, event.invoice.version)] += 1
    return sum(n - 1 for n in seen.values() if n > 1)
