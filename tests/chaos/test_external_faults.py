"""Intacct and the card gateway misbehaving: throttling, 5xx, 524, expired sessions, slow
answers, and charges whose answer is lost after the card was charged.

The initial sync runs against a sandbox Intacct that throttles, fails, cuts
answers after doing the work (524), expires sessions and answers slowly; then
a client charges invoices through a card gateway that loses a third of its
answers after charging, and every succeeded charge is posted to that same
Intacct. Every invoice must be charged at most once at the gateway, every
acknowledged charge must exist and be posted exactly once, and the AR store
must agree with Intacct.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import aiohttp
import pytest

from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.infra import Infra
from arbridge_devinfra.onboarding import (
    Stubs,
    add_card,
    connect,
    deposit_everywhere,
    install_smart_events,
    open_invoices,
    wait_for_sync,
)
from arbridge_devinfra.sandboxes import Sandbox
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import ChargeLedger, charge_until_answered, count_money, store_differences
from tests.chaos.harness import Ledger, Outcome, chaos_suite, until

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"
INTACCT_FAULTS = {
    "latency_ms": 120,
    "throttle_rate": 0.15,
    "error_5xx_rate": 0.08,
    "error_524_rate": 0.05,
    "session_expiry_calls": 6,
}


async def _scenario(suite: StartedSuite, outcome: Outcome, rng: random.Random) -> None:
    stubs = Stubs.of(suite, deadline=120)
    try:
        async with aiohttp.ClientSession() as http:
            sandbox = Sandbox(http, suite)
            await sandbox.set_faults(**INTACCT_FAULTS)
            started = time.monotonic()
            await connect(stubs, suite, ACCOUNT)
            initial = await wait_for_sync(stubs, ACCOUNT)
            assert initial.state == sync_pb2.SYNC_STATE_SUCCEEDED, initial.error
            outcome.notes.append(f"initial sync under faults: {time.monotonic() - started:.1f}s")
            await install_smart_events(stubs, sandbox, suite, ACCOUNT)
            await deposit_everywhere(stubs, ACCOUNT)
            invoices = await open_invoices(stubs, ACCOUNT)
            by_customer: dict[str, list[str]] = {}
            for invoice in invoices:
                if invoice.currency == "USD":
                    by_customer.setdefault(invoice.customer_id, []).append(invoice.record_no)
            customers = sorted(by_customer)[:10]
            for customer in customers:
                await add_card(stubs, sandbox, ACCOUNT, customer)
            targets = [(c, i) for c in customers for i in by_customer[c]][:40]
            rng.shuffle(targets)

            await sandbox.set_card_faults(timeout_after_charge_rate=0.33, latency_ms=50)
            charges = ChargeLedger()
            gate = asyncio.Semaphore(6)

            async def one(customer: str, invoice: str) -> None:
                async with gate:
                    await charge_until_answered(
                        stubs, charges, ACCOUNT, f"faults-{invoice}", customer, invoice
                    )

            await asyncio.gather(*(one(c, i) for c, i in targets))
            fault_ended = time.monotonic()
            stats = await sandbox.intacct_stats()
            outcome.faults = (
                int(stats.get("throttled", 0))
                + int(stats.get("server_errors", 0))
                + int(stats.get("gateway_timeouts", 0))
            )
            outcome.notes.append(
                f"Intacct throttled {stats.get('throttled')}, 5xx {stats.get('server_errors')},"
                f" 524 {stats.get('gateway_timeouts')}; client retries {charges.retries}"
            )
            outcome.attempted = len(targets)
            outcome.acknowledged = len(charges.acknowledged)
            keys = [i for _, i in targets]

            async def settled() -> bool:
                money = await count_money(stubs, sandbox, ACCOUNT, keys)
                return not money.unposted and not money.missing_postings

            try:
                await until("every charge posted", settled, timeout=240, every=1.0)
            except AssertionError as exc:
                outcome.notes.append(str(exc))
            money = await count_money(stubs, sandbox, ACCOUNT, keys)
            # The faults stop; smart events then bring the posted payments to the AR store.
            await sandbox.set_faults(
                **{k: 0 for k in INTACCT_FAULTS}, smart_event_retry_delays=[1, 3, 9]
            )

            async def agrees() -> bool:
                return not await store_differences(stubs, sandbox, ACCOUNT, keys)

            try:
                await until("the AR store agreeing with Intacct", agrees, timeout=120, every=1.0)
            except AssertionError as exc:
                outcome.notes.append(str(exc))
            wrong = await store_differences(stubs, sandbox, ACCOUNT, keys)
            outcome.recovery_seconds = round(time.monotonic() - fault_ended, 1)
            lost = [k for k, c in charges.acknowledged.items() if c not in money.charges]
            lost += money.missing_postings + [c for c in money.unposted]
            outcome.lost = len(set(lost))
            outcome.duplicated = money.duplicates()
            outcome.wrong = len(wrong)
            declined = sorted(set(charges.refused.values()))
            if declined:
                outcome.notes.append(f"refused: {declined}")
            for what, items in (
                ("lost", lost),
                ("double-charged invoices", money.double_charged_invoices),
                ("orphan gateway charges", money.orphan_gateway_charges),
                ("double postings", money.double_postings),
                ("wrong records", wrong),
            ):
                if items:
                    outcome.notes.append(f"{what}: {items[:5]}")
    finally:
        await stubs.close()


def test_intacct_and_card_gateway_faults(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "7"))
    outcome = ledger.record(Outcome("Intacct and card gateway faults", seed))
    with chaos_suite(
        tmp_path, infra, unique, customers=60, invoices=1200, outcome=outcome
    ) as suite:
        asyncio.run(_scenario(suite, outcome, random.Random(seed)))
    assert outcome.passed, outcome.json()
