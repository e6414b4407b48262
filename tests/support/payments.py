"""Helpers for tests and benchmarks of payments: hosted-field tokens, open invoices."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from arbridge.common.v1 import common_pb2
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime import webhooks
from arbridge_runtime.grpc_client import service_channel
from tests.conftest import TOKEN
from tests.support.runtime_env import ServiceProcess, service_env, start_process
from tests.support.suite import WEBHOOK_SECRET, Suite, connect_and_sync, running_suite

# Payments replicas that recover crashed work at once.
FAST_RECOVERY = {
    "ARBRIDGE_PAYMENTS_CHARGE_LEASE_SECONDS": "1",
    "ARBRIDGE_PAYMENTS_RECOVERY_SECONDS": "0.2",
}


@contextlib.asynccontextmanager
async def synced_payments_suite(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    namespace: str,
    *,
    customers: int,
    invoices: int,
    service_extra: dict[str, str] | None = None,
    timeout: float = 180.0,
    services: tuple[str, ...] = ("connector", "sync", "payments"),
    sandbox_args: tuple[str, ...] = (),
) -> AsyncIterator[Suite]:
    """Both sandboxes, connector, sync and payments (and any other ``services``), with
    account "acme" connected and synced."""
    with running_suite(
        tmp_path,
        database_url,
        nats_url,
        namespace,
        customers=customers,
        invoices=invoices,
        services=services,
        service_extra=service_extra,
        sandbox_args=sandbox_args,
    ) as suite:
        initial = await connect_and_sync(suite, "acme", timeout=timeout)
        assert initial.state == sync_pb2.SYNC_STATE_SUCCEEDED, initial.error
        yield suite


def _merchant_auth(suite: Suite) -> dict[str, str]:
    """The card gateway's merchant credentials, as a request header."""
    credentials = f"{suite.cards['username']}:{suite.cards['password']}".encode()
    return {"Authorization": f"Basic {base64.b64encode(credentials).decode()}"}


async def empty_token(http: aiohttp.ClientSession, suite: Suite) -> str:
    """A hosted-fields token no card was entered into yet."""
    async with http.post(
        suite.cards["base_url"] + "/services/2/payment-fields-tokens",
        headers=_merchant_auth(suite),
    ) as reply:
        assert reply.status == 201
        return reply.headers["Location"].rsplit("/", 1)[1]


async def bank_token(
    http: aiohttp.ClientSession, suite: Suite, account: str, routing: str = "011000015"
) -> str:
    """A hosted-fields token holding a US bank account, as the payer's browser makes one."""
    token = await empty_token(http, suite)
    async with http.put(
        suite.cards["base_url"] + f"/services/2/payment-fields-tokens/{token}",
        json={
            "routingNumber": routing,
            "accountNumber": account,
            "accountType": "CONSUMER_CHECKING",
        },
    ) as reply:
        assert reply.status == 200, await reply.text()
    return token


async def card_token(
    http: aiohttp.ClientSession, suite: Suite, number: str, exp: str = "11/31"
) -> str:
    """A hosted-fields token as a payer's browser makes one: the number goes to the gateway only."""
    token = await empty_token(http, suite)
    async with http.put(
        suite.cards["base_url"] + f"/services/2/payment-fields-tokens/{token}",
        json={"ccNumber": number, "expDate": exp, "cvv": "737"},
    ) as reply:
        assert reply.status == 200, await reply.text()
    return token


async def gateway_shopper(
    http: aiohttp.ClientSession, suite: Suite, shopper_id: str
) -> dict[str, Any]:
    """A vaulted shopper as the card gateway's API shows it to the merchant."""
    async with http.get(
        suite.cards["base_url"] + f"/services/2/vaulted-shoppers/{shopper_id}",
        headers=_merchant_auth(suite),
    ) as reply:
        assert reply.status == 200, await reply.text()
        return dict(await reply.json())


async def vault_at_gateway(
    http: aiohttp.ClientSession, suite: Suite, shopper_id: str, token: str
) -> None:
    """Vaults a token's card on a shopper directly at the card gateway, as a merchant's
    other tool might, behind arbridge's back."""
    async with http.put(
        suite.cards["base_url"] + f"/services/2/vaulted-shoppers/{shopper_id}",
        headers=_merchant_auth(suite),
        json={"paymentSources": {"creditCardInfo": [{"pfToken": token}]}},
    ) as reply:
        assert reply.status == 200, await reply.text()


async def gateway_transactions(http: aiohttp.ClientSession, suite: Suite) -> list[dict[str, Any]]:
    """Every transaction the card gateway sandbox made."""
    async with http.get(suite.cards["base_url"] + "/sandbox/transactions") as reply:
        return list((await reply.json())["transactions"])


async def open_invoices_by_customer(suite: Suite, account_id: str) -> dict[str, list[Any]]:
    """The AR store's invoices with an amount due, by customer id."""
    channel = service_channel(suite.target("sync"), TOKEN)
    sync = sync_pb2_grpc.SyncServiceStub(channel)
    found: dict[str, list[Any]] = collections.defaultdict(list)
    token = ""
    try:
        while True:
            reply = await sync.ListInvoices(
                sync_pb2.ListInvoicesRequest(
                    account_id=account_id,
                    open_only=True,
                    page=common_pb2.PageRequest(page_size=500, page_token=token),
                )
            )
            for invoice in reply.invoices:
                if invoice.due.amount_minor > 0:
                    found[invoice.customer_id].append(invoice)
            token = reply.page.next_page_token
            if not token:
                return found
    finally:
        await channel.close(None)


class Payer:
    """Calls the payments service the way a platform team would."""

    def __init__(self, suite: Suite, http: aiohttp.ClientSession, target: str) -> None:
        self.suite = suite
        self.http = http
        self.stub = payments_pb2_grpc.PaymentsServiceStub(service_channel(target, TOKEN))

    async def add_card(self, customer: str, number: str) -> payments_pb2.PaymentMethod:
        reply = await self.stub.AddPaymentMethod(
            payments_pb2.AddPaymentMethodRequest(
                account_id="acme",
                customer_id=customer,
                gateway_token=await card_token(self.http, self.suite, number),
                make_default=True,
            )
        )
        return reply.payment_method

    async def set_deposit(
        self, entity: str, currency: str, bank_account_id: str
    ) -> payments_pb2.DepositAccount:
        reply = await self.stub.SetDepositAccount(
            payments_pb2.SetDepositAccountRequest(
                deposit_account=payments_pb2.DepositAccount(
                    account_id="acme",
                    entity_id=entity,
                    currency=currency,
                    bank_account_id=bank_account_id,
                )
            )
        )
        return reply.deposit_account

    async def refund(
        self, charge_id: str, key: str, amount: int | None, currency: str, reason: str
    ) -> payments_pb2.RefundChargeResponse:
        """Refunds ``amount`` minor units of a charge (None: all that is left)."""
        return await self.stub.RefundCharge(
            payments_pb2.RefundChargeRequest(
                account_id="acme",
                charge_id=charge_id,
                idempotency_key=key,
                reason=reason,
                amount=(
                    common_pb2.Money(amount_minor=amount, currency=currency)
                    if amount is not None
                    else None
                ),
            )
        )

    async def get_charge(self, charge_id: str) -> payments_pb2.Charge:
        reply = await self.stub.GetCharge(
            payments_pb2.GetChargeRequest(account_id="acme", charge_id=charge_id)
        )
        return reply.charge

    async def charge(
        self,
        key: str,
        customer: str,
        invoices: list[tuple[str, int | None]],
        currency: str = "USD",
        **extra: Any,
    ) -> payments_pb2.ChargeInvoicesResponse:
        return await self.stub.ChargeInvoices(
            payments_pb2.ChargeInvoicesRequest(
                account_id="acme",
                idempotency_key=key,
                customer_id=customer,
                invoices=[
                    payments_pb2.InvoiceAmount(
                        invoice_record_no=record_no,
                        amount=(
                            common_pb2.Money(amount_minor=amount, currency=currency)
                            if amount is not None
                            else None
                        ),
                    )
                    for record_no, amount in invoices
                ],
                **extra,
            )
        )


async def intacct_values(http: aiohttp.ClientSession, admin: str, company: str, obj: str) -> Any:
    """Every record of ``obj`` in the sandbox company: {RECORDNO: field values}."""
    async with http.get(f"{admin}/companies/{company}/records/{obj}") as reply:
        rows = (await reply.json())["records"]
    return {str(r["recordno"]): r["values"] for r in rows}


async def eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def leaks(database_url: str, schema: str, logs: str, numbers: list[str]) -> list[str]:
    """Where any of ``numbers`` (card or bank account numbers a test entered) appears in
    a table of ``schema`` or in ``logs``; empty when arbridge kept none of them."""
    found: list[str] = []
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            schema,
        )
        for table in tables:
            rows = await conn.fetch(
                f'SELECT t::text AS row FROM "{schema}"."{table["table_name"]}" t'
            )
            dump = "\n".join(r["row"] for r in rows)
            found += [f"{number} in {table['table_name']}" for number in numbers if number in dump]
    finally:
        await conn.close()
    found += [f"{number} in a log" for number in numbers if number in logs]
    return found


def arbridge_logs(suite: Suite) -> str:
    """The logs of arbridge's own processes (not the sandboxes, which play Intacct and the
    card gateway and so may hold what arbridge must not)."""
    return "\n".join(process.logs() for name, process in suite.processes.items() if name != "cards")


async def deposit_everywhere(payer: Payer, suite: Suite) -> None:
    """A deposit account for every currency the sandbox company has a bank account in, in
    every entity that has open invoices, so every payment can be posted."""
    channel = service_channel(suite.target("sync"), TOKEN)
    try:
        banks = (
            await sync_pb2_grpc.SyncServiceStub(channel).ListBankAccounts(
                sync_pb2.ListBankAccountsRequest(account_id="acme")
            )
        ).bank_accounts
    finally:
        await channel.close(None)
    by_currency = {b.currency: b for b in banks}
    entities = {
        i.entity_id
        for found in (await open_invoices_by_customer(suite, "acme")).values()
        for i in found
    }
    for currency, bank in sorted(by_currency.items()):
        for entity in sorted(entities):
            await payer.set_deposit(entity, currency, bank.bank_account_id)


async def doomed_replica(
    tmp_path: Path,
    suite: Suite,
    database_url: str,
    nats_url: str,
    namespace: str,
    fault: str,
    name: str,
) -> ServiceProcess:
    """A second payments replica, sharing the database, that SIGKILLs itself at ``fault``."""
    ready = tmp_path / f"doomed-{name}.ready"
    env = service_env(
        database_url=database_url,
        nats_url=nats_url,
        namespace=namespace,
        schema=f"{namespace}_payments",
        token=TOKEN,
        ready_file=ready,
        ARBRIDGE_SYNC_TARGET=suite.target("sync"),
        ARBRIDGE_CARD_GATEWAY_URL=suite.cards["base_url"],
        ARBRIDGE_CARD_GATEWAY_PASSWORD=suite.cards["password"],
        ARBRIDGE_FAULTS=f"{fault}:kill",
        **FAST_RECOVERY,
    )
    return await asyncio.to_thread(
        start_process,
        ["-m", "arbridge_payments"],
        env,
        ready,
        tmp_path / f"doomed-{name}.log",
    )


def notify_url(suite: Suite) -> str:
    """The webhook gateway's door for the card gateway's notifications about "acme"."""
    return f"{suite.gateway_base}/v1/cards/acme/{webhooks.url_token(WEBHOOK_SECRET, 'acme')}"


async def sandbox_notifications(
    http: aiohttp.ClientSession, suite: Suite, url: str, settle_seconds: float
) -> None:
    async with http.put(
        suite.cards["base_url"] + "/sandbox/notifications",
        json={"url": url, "ach_settle_seconds": settle_seconds},
    ) as reply:
        assert reply.status == 200


async def refund_at_gateway(
    http: aiohttp.ClientSession, suite: Suite, transaction_id: str, amount: str
) -> None:
    """Refunds part of a transaction at the card gateway, as the merchant's console
    does, outside arbridge."""
    async with http.put(
        suite.cards["base_url"] + f"/services/2/transaction/{transaction_id}/refund",
        params={"amount": amount},
        headers=_merchant_auth(suite),
    ) as reply:
        assert reply.status == 204, await reply.text()
