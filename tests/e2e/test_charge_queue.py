"""Charges requested inside Intacct through the charge-queue custom object (BlueSnapARQueue).

An Intacct user adds a queue record; the smart event reaches sync through the
webhook gateway, payments reads the queue, charges the request once, and the
record shows the outcome and, once posted, the AR payment's key. A company
without Platform Services has no queue: arbridge says so and does not try.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import from_minor, to_minor
from tests.conftest import TOKEN
from tests.e2e.test_ach import _add_bank, _usd_setup
from tests.support.payments import (
    Payer,
    deposit_everywhere,
    eventually,
    gateway_transactions,
    intacct_values,
    notify_url,
    open_invoices_by_customer,
    sandbox_notifications,
    synced_payments_suite,
)
from tests.support.suite import Suite, install_smart_events, sandbox_record

QUEUE = "bluesnaparqueue"


async def _queue_values(http: aiohttp.ClientSession, suite: Suite) -> Any:
    return await intacct_values(http, suite.sandbox_admin, suite.sandbox["company_id"], QUEUE)


@pytest.mark.timeout(300)
async def test_queue_requests_are_charged_once_and_their_outcome_written_back(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=160,
        services=("connector", "sync", "payments", "gateway"),
        # Reads after the first come from smart events only (the poll is an hour).
        service_extra={"ARBRIDGE_PAYMENTS_QUEUE_POLL_SECONDS": "3600"},
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        banks = (
            await sync.ListBankAccounts(sync_pb2.ListBankAccountsRequest(account_id="acme"))
        ).bank_accounts
        by_customer = await open_invoices_by_customer(suite, "acme")
        async with aiohttp.ClientSession() as http:
            assert await install_smart_events(http, suite, objects={QUEUE}) == 2
            payer = Payer(suite, http, suite.target("payments"))
            await deposit_everywhere(payer, suite)
            currencies = {b.currency for b in banks}
            payable = [
                c
                for c, found in by_customer.items()
                if len(found) >= 2 and found[0].currency in currencies
            ]
            good, bad, nothing = payable[0], payable[1], payable[2]
            await payer.add_card(good, "4242424242424242")
            await payer.add_card(bad, "4000000000000002")  # declines

            # 1. The whole open balance of an invoice, paid and posted.
            paid_invoice = by_customer[good][0]
            first = await sandbox_record(
                http,
                suite,
                QUEUE,
                {
                    "name": "REQ-1",
                    "customerid": good,
                    "invoicekey": paid_invoice.record_no,
                    "status": "Pending",
                },
            )
            # 2. A part of an invoice, by a card that declines; retried by the user later.
            part_invoice = by_customer[bad][0]
            part = min(1000, part_invoice.due.amount_minor)
            second = await sandbox_record(
                http,
                suite,
                QUEUE,
                {
                    "name": "REQ-2",
                    "customerid": bad,
                    "invoicekey": part_invoice.record_no,
                    "amount": from_minor(part, part_invoice.currency),
                    "currency": part_invoice.currency,
                    "status": "Pending",
                },
            )
            # 3. A customer with no payment method, and 4. a request without its invoice.
            third = await sandbox_record(
                http,
                suite,
                QUEUE,
                {
                    "name": "REQ-3",
                    "customerid": nothing,
                    "invoicekey": by_customer[nothing][0].record_no,
                    "status": "Pending",
                },
            )
            fourth = await sandbox_record(
                http, suite, QUEUE, {"name": "REQ-4", "customerid": good, "status": "Pending"}
            )

            async def outcomes() -> dict[str, Any] | None:
                found = await _queue_values(http, suite)
                ready = (
                    found[first]["status"] == "Paid"
                    and found[first]["paymentkey"]
                    and found[second]["status"] == "Declined"
                    and found[third]["status"] == "Failed"
                    and found[fourth]["status"] == "Failed"
                )
                return found if ready else None

            found = await eventually(outcomes, timeout=60)
            assert found is not None, f"outcomes not written: {await _queue_values(http, suite)}"
            assert "Charged" in found[first]["message"]
            assert "declined" in found[second]["message"].lower()
            assert "Pending" in found[second]["message"]  # how to retry
            assert "no default payment method" in found[third]["message"]
            assert "Invoice record number" in found[fourth]["message"]
            payments_in_intacct = await intacct_values(
                http, suite.sandbox_admin, suite.sandbox["company_id"], "ARPYMT"
            )
            payment = payments_in_intacct[found[first]["paymentkey"]]
            assert payment["CUSTOMERID"] == good
            assert (
                to_minor(payment["TRX_TOTALENTERED"], paid_invoice.currency)
                == paid_invoice.due.amount_minor
            )

            # The user fixes the card and sets the declined request back to Pending.
            fixed = await payer.add_card(bad, "5555555555554444")
            assert fixed.is_default
            await sandbox_record(http, suite, QUEUE, {"status": "Pending"}, record_no=second)

            async def retried() -> dict[str, Any] | None:
                found = await _queue_values(http, suite)
                return found if found[second]["paymentkey"] else None

            found = await eventually(retried, timeout=60)
            assert found is not None, f"retry not written: {await _queue_values(http, suite)}"
            assert found[second]["status"] == "Paid"

            # Every request was read several times (each write-back is an Intacct change
            # with its own smart event): still one charge per attempt at the gateway.
            charges = (
                await payer.stub.ListCharges(payments_pb2.ListChargesRequest(account_id="acme"))
            ).charges
            assert sorted(c.idempotency_key for c in charges) == sorted(
                [
                    f"intacct-queue:{first}:1",
                    f"intacct-queue:{second}:1",
                    f"intacct-queue:{second}:2",
                ]
            )
            assert all(c.source == payments_pb2.CHARGE_SOURCE_INTACCT_QUEUE for c in charges)
            statuses = sorted(
                t["processingInfo"]["processingStatus"]
                for t in await gateway_transactions(http, suite)
            )
            assert statuses == ["declined", "success", "success"]
            retry = next(c for c in charges if c.idempotency_key.endswith(":2"))
            assert retry.amount.amount_minor == part


@pytest.mark.timeout(300)
async def test_a_company_without_platform_services_has_no_queue_and_it_is_never_read(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=4,
        invoices=20,
        service_extra={"ARBRIDGE_PAYMENTS_QUEUE_POLL_SECONDS": "1"},
    ) as suite:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{suite.sandbox_admin}/companies",
                json={
                    "company_id": "PLAIN-CO",
                    "customers": 3,
                    "invoices": 6,
                    "platform_services": False,
                    "user_id": "xmlgw-plain",
                    "user_password": "plain-password-123",
                    "sender_id": suite.sandbox["sender_id"],
                },
            ) as reply,
        ):
            assert reply.status == 201, await reply.text()
            assert (await reply.json())["platform_services"] is False
        connector = connector_pb2_grpc.ConnectorServiceStub(
            service_channel(suite.target("connector"), TOKEN)
        )
        await connector.ConnectAccount(
            connector_pb2.ConnectAccountRequest(
                account_id="plain",
                company_id="PLAIN-CO",
                user_id="xmlgw-plain",
                user_password="plain-password-123",
                sender_id=suite.sandbox["sender_id"],
                sender_password=suite.sandbox["sender_password"],
            )
        )
        db = await asyncpg.connect(database_url)
        try:

            async def states() -> list[asyncpg.Record] | None:
                rows = await db.fetch(
                    f'SELECT account_id, state, last_error FROM "{unique}_payments".queue_accounts'
                    " ORDER BY account_id"
                )
                return rows if len(rows) == 2 and rows[1]["state"] == "unavailable" else None

            rows = await eventually(states, timeout=30)
            assert rows is not None
            acme, plain_row = rows
            assert (acme["account_id"], acme["state"]) == ("acme", "active")
            assert plain_row["account_id"] == "plain"
            assert "no Platform Services" in plain_row["last_error"]
            # It is never read: the connector said at connection that there is no queue.
            read = await db.fetchval(
                f'SELECT enabled OR cursor IS NOT NULL FROM "{unique}_payments".queue_accounts'
                " WHERE account_id = 'plain'"
            )
            assert read is False
            await asyncio.sleep(2)  # several poll intervals
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{suite.sandbox_admin}/stats?company=PLAIN-CO") as reply,
            ):
                stats = (await reply.json())["companies"]["PLAIN-CO"]
            assert stats["failed_functions"] == {}  # the sync's reads all succeeded too
        finally:
            await db.close()


@pytest.mark.timeout(300)
async def test_a_request_that_meets_another_charge_of_its_invoice_is_charged_when_it_ends(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """A request whose invoice has a charge in progress (here a bank debit settling) is
    not charged then; it is charged once that charge ends, under its own key, without
    the record being edited or read again."""
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=160,
        services=("connector", "sync", "payments", "gateway"),
        service_extra={"ARBRIDGE_PAYMENTS_QUEUE_POLL_SECONDS": "3600"},
    ) as suite:
        notify = notify_url(suite)
        async with aiohttp.ClientSession() as http:
            assert await install_smart_events(http, suite, objects={QUEUE}) == 2
            payer = Payer(suite, http, suite.target("payments"))
            [(customer, invoices)] = await _usd_setup(suite, payer, 1)
            await _add_bank(payer, customer, "7392046789")
            invoice = invoices[0]
            # The debit settles after 8 s: the request meets it in progress (and says so)
            # even when a loaded machine reads the queue late.
            await sandbox_notifications(http, suite, notify, 8)
            debit = (await payer.charge("api-debit", customer, [(invoice.record_no, 100)])).charge
            assert debit.state == payments_pb2.CHARGE_STATE_SETTLING
            record = await sandbox_record(
                http,
                suite,
                QUEUE,
                {
                    "name": "REQ-BUSY",
                    "customerid": customer,
                    "invoicekey": invoice.record_no,
                    "amount": "2.00",
                    "currency": "USD",
                    "status": "Pending",
                },
            )

            # Meanwhile the record says why it waits (it stays a request: Pending).
            async def told_why() -> dict[str, Any] | None:
                found = (await _queue_values(http, suite))[record]
                return found if found.get("message") else None

            waiting = await eventually(told_why, timeout=20)
            assert waiting is not None, "the waiting request's record never said why"
            assert waiting["status"] == "Pending", waiting
            assert waiting["message"].startswith(
                "Not charged yet: another charge of this invoice is in progress"
            ), waiting

            async def charged() -> dict[str, Any] | None:
                found = (await _queue_values(http, suite))[record]
                return found if found["status"] in ("Processing", "Paid") else None

            found = await eventually(charged, timeout=90)
            assert found is not None, (
                f"the request was never charged: {(await _queue_values(http, suite))[record]}"
            )
            charges = (
                await payer.stub.ListCharges(payments_pb2.ListChargesRequest(account_id="acme"))
            ).charges
            mine = [c for c in charges if c.source == payments_pb2.CHARGE_SOURCE_INTACCT_QUEUE]
            assert [(c.idempotency_key, c.amount.amount_minor) for c in mine] == [
                (f"intacct-queue:{record}:1", 200)
            ]
            assert (await payer.get_charge(debit.charge_id)).state in (
                payments_pb2.CHARGE_STATE_SUCCEEDED,
                payments_pb2.CHARGE_STATE_SETTLING,
            )
