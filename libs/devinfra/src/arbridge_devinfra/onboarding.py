"""Bringing a sandbox company on, as a platform team does: connect, initial sync, smart
events, deposit accounts. Used by ``make demo`` and the chaos scenarios."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc.aio

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.rules.v1 import rules_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_devinfra.sandboxes import Sandbox, SandboxRefused
from arbridge_devinfra.suite import StartedSuite
from arbridge_runtime.grpc_client import service_channel

T = TypeVar("T")


async def until(
    what: str, check: Callable[[], Awaitable[T | None]], timeout: float, every: float = 0.25
) -> T:
    """Asks ``check`` every ``every`` seconds until it answers something true; returns that.
    Raises TimeoutError naming ``what`` (and the last answer) when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f}s (last: {last!r})")


@dataclass
class Stubs:
    """One channel per service and its stub; close() when done."""

    channels: dict[str, grpc.aio.Channel]
    connector: connector_pb2_grpc.ConnectorServiceAsyncStub
    sync: sync_pb2_grpc.SyncServiceAsyncStub
    payments: payments_pb2_grpc.PaymentsServiceAsyncStub
    rules: rules_pb2_grpc.RulesServiceAsyncStub

    @classmethod
    def of(cls, suite: StartedSuite, deadline: float = 120) -> Stubs:
        names = ("connector", "sync", "payments", "rules")
        channels = {
            n: service_channel(suite.target(n), suite.token, deadline=deadline) for n in names
        }
        return cls(
            channels,
            connector_pb2_grpc.ConnectorServiceStub(channels["connector"]),
            sync_pb2_grpc.SyncServiceStub(channels["sync"]),
            payments_pb2_grpc.PaymentsServiceStub(channels["payments"]),
            rules_pb2_grpc.RulesServiceStub(channels["rules"]),
        )

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(None)


async def connect(
    stubs: Stubs, suite: StartedSuite, account: str, time_zone: str = "America/New_York"
) -> connector_pb2.CheckPermissionsResponse:
    """Connects the sandbox company as ``account``; returns the permission check."""
    await stubs.connector.ConnectAccount(
        connector_pb2.ConnectAccountRequest(
            account_id=account,
            company_id=str(suite.sandbox["company_id"]),
            user_id=str(suite.sandbox["user_id"]),
            user_password=str(suite.sandbox["user_password"]),
            sender_id=str(suite.sandbox["sender_id"]),
            sender_password=str(suite.sandbox["sender_password"]),
            time_zone=time_zone,
        )
    )
    return await stubs.connector.CheckPermissions(
        connector_pb2.CheckPermissionsRequest(account_id=account)
    )


class HasSync(Protocol):
    """What the sync helpers below use of :class:`Stubs` (a test's own stub will do)."""

    @property
    def sync(self) -> sync_pb2_grpc.SyncServiceAsyncStub: ...


async def wait_for_sync(
    stubs: HasSync,
    account: str,
    *,
    sync_id: str = "",
    timeout: float = 600,
    progress: Callable[[sync_pb2.Sync], None] | None = None,
    every: float = 0.5,
) -> sync_pb2.Sync:
    """Waits until the account's newest sync (or ``sync_id``) ends; returns it."""
    deadline = time.monotonic() + timeout
    ended = (sync_pb2.SYNC_STATE_SUCCEEDED, sync_pb2.SYNC_STATE_FAILED)
    while time.monotonic() < deadline:
        syncs = (await stubs.sync.ListSyncs(sync_pb2.ListSyncsRequest(account_id=account))).syncs
        current = next((s for s in syncs if s.sync_id == sync_id), None) if sync_id else None
        current = current or (syncs[0] if syncs and not sync_id else None)
        if current is not None:
            if progress is not None:
                progress(current)
            if current.state in ended:
                return current
        await asyncio.sleep(every)
    raise TimeoutError(f"the sync of {account} did not end within {timeout:.0f}s")


async def manual_sync(stubs: HasSync, account: str, timeout: float = 600) -> sync_pb2.Sync:
    """Sync Account: the estimate, then the sync, waited for."""
    estimate = await stubs.sync.EstimateSync(sync_pb2.EstimateSyncRequest(account_id=account))
    started = await stubs.sync.StartSync(
        sync_pb2.StartSyncRequest(
            account_id=account,
            kind=sync_pb2.SYNC_KIND_MANUAL,
            confirmation_token=estimate.confirmation_token,
        )
    )
    return await wait_for_sync(stubs, account, sync_id=started.sync.sync_id, timeout=timeout)


async def install_smart_events(
    stubs: Stubs, sandbox: Sandbox, suite: StartedSuite, account: str
) -> int:
    """Creates in the sandbox company every smart event sync's set-up asks for."""
    setup = await stubs.sync.GetSmartEventSetup(
        sync_pb2.GetSmartEventSetupRequest(account_id=account, gateway_base_url=suite.webhooks_base)
    )
    for spec in setup.events:
        await sandbox.add_smart_event(spec)
    return len(setup.events)


async def invoices(stubs: Stubs, account: str, *, open_only: bool = False) -> list[Any]:
    """Every invoice of the AR store (only those with an amount due, with ``open_only``)."""
    found: list[Any] = []
    token = ""
    while True:
        reply = await stubs.sync.ListInvoices(
            sync_pb2.ListInvoicesRequest(
                account_id=account,
                open_only=open_only,
                page=common_pb2.PageRequest(page_size=500, page_token=token),
            )
        )
        found.extend(reply.invoices)
        token = reply.page.next_page_token
        if not token:
            return found


async def open_invoices(stubs: Stubs, account: str) -> list[Any]:
    """Every invoice of the AR store with an amount due."""
    return await invoices(stubs, account, open_only=True)


async def deposit_everywhere(stubs: Stubs, account: str) -> tuple[list[str], list[str]]:
    """A deposit account for every currency with a bank account, in every entity with open
    invoices; returns (currencies, entities)."""
    banks = {
        b.currency: b
        for b in (
            await stubs.sync.ListBankAccounts(sync_pb2.ListBankAccountsRequest(account_id=account))
        ).bank_accounts
    }
    entities = sorted({i.entity_id for i in await open_invoices(stubs, account)})
    for currency, bank in sorted(banks.items()):
        for entity in entities:
            await stubs.payments.SetDepositAccount(
                payments_pb2.SetDepositAccountRequest(
                    deposit_account=payments_pb2.DepositAccount(
                        account_id=account,
                        entity_id=entity,
                        currency=currency,
                        bank_account_id=bank.bank_account_id,
                    )
                )
            )
    return sorted(banks), entities


async def add_card(
    stubs: Stubs, sandbox: Sandbox, account: str, customer: str, number: str = "4242424242424242"
) -> payments_pb2.PaymentMethod:
    """A card stored for ``customer`` through the gateway's hosted fields."""
    reply = await stubs.payments.AddPaymentMethod(
        payments_pb2.AddPaymentMethodRequest(
            account_id=account,
            customer_id=customer,
            gateway_token=await sandbox.card_token(number),
            make_default=True,
        )
    )
    return reply.payment_method


async def onboard(
    stubs: Stubs, sandbox: Sandbox, suite: StartedSuite, account: str
) -> sync_pb2.Sync:
    """Connect, initial sync, smart events, deposit accounts: the account ready to collect."""
    checked = await connect(stubs, suite, account)
    if not checked.all_granted:
        raise SandboxRefused("the sandbox user lacks permissions the integration needs")
    initial = await wait_for_sync(stubs, account)
    if initial.state != sync_pb2.SYNC_STATE_SUCCEEDED:
        raise SandboxRefused(f"the initial sync failed: {initial.error}")
    await install_smart_events(stubs, sandbox, suite, account)
    await deposit_everywhere(stubs, account)
    return initial
