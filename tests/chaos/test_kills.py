"""Every service killed with SIGKILL at random points, many times, while money moves.

While a platform team's client charges invoices (retrying the same key after
any transient failure) and an Intacct user creates invoices that an "on
creation" rule charges, a seeded killer sends SIGKILL to a random service every
0.3 to 1.5 s and starts it again. Afterwards, as the daily sync would, a Sync
Account repairs what smart events could not deliver while the gateway was
down. Then every invoice must be charged exactly once, every charge the
client was told about must exist, every succeeded charge must be posted to
Intacct exactly once, and the AR store must agree with Intacct.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.demo import on_creation
from arbridge_devinfra.infra import Infra
from arbridge_devinfra.onboarding import add_card, manual_sync, onboard, open_invoices
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import (
    ChargeLedger,
    agree_with_intacct,
    charge_until_answered,
    intacct_reference,
    settle_charges,
)
from tests.chaos.harness import Ledger, Outcome, chaos_suite, clients

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"
SERVICES = ("connector", "sync", "payments", "rules", "gateway")
WINDOW_SECONDS = 30.0


async def _killer(
    suite: StartedSuite, rng: random.Random, seconds: float, kills: list[str]
) -> None:
    """SIGKILLs a random service at random moments (the supervisor starts it again)."""
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        victim = rng.choice(SERVICES)
        await asyncio.to_thread(suite.kill, victim)  # the supervisor starts it again
        kills.append(victim)


async def _scenario(suite: StartedSuite, outcome: Outcome, rng: random.Random) -> None:
    async with clients(suite, deadline=30) as (stubs, sandbox):
        await onboard(stubs, sandbox, suite, ACCOUNT)
        open_now = await open_invoices(stubs, ACCOUNT)
        by_customer: dict[str, list[Any]] = {}
        for invoice in open_now:
            by_customer.setdefault(invoice.customer_id, []).append(invoice)
        usd = sorted(
            c for c, found in by_customer.items() if {i.currency for i in found} == {"USD"}
        )
        direct_customers, rule_customers = usd[:-3], usd[-3:]
        for customer in direct_customers + rule_customers:
            await add_card(stubs, sandbox, ACCOUNT, customer)
        for customer in rule_customers:
            await stubs.rules.CreateRule(
                rules_pb2.CreateRuleRequest(rule=on_creation(ACCOUNT, customer, "USD"))
            )
        targets = [(c, i.record_no) for c in direct_customers for i in by_customer[c]][:40]

        charges = ChargeLedger()
        created: list[str] = []

        async def create_invoices() -> None:
            for n in range(16):
                customer = rule_customers[n % len(rule_customers)]
                for _ in range(100):  # the sandbox is never killed; retry only its hiccups
                    try:
                        created.append(await sandbox.create_invoice(customer, "50.00", f"K-{n}"))
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.2)
                await asyncio.sleep(rng.uniform(0.5, 2.5))

        async def charge_all() -> None:
            # Spread over the whole fault window, so that kills land mid-call.
            async def one(customer: str, invoice: str) -> None:
                await asyncio.sleep(rng.uniform(0.0, WINDOW_SECONDS))
                await charge_until_answered(
                    stubs, charges, ACCOUNT, f"chaos-{invoice}", customer, invoice
                )

            await asyncio.gather(*(one(c, i) for c, i in targets))

        kills: list[str] = []
        work = asyncio.gather(create_invoices(), charge_all())
        await _killer(suite, rng, WINDOW_SECONDS, kills)
        fault_ended = time.monotonic()
        await work
        outcome.faults = len(kills)
        outcome.notes.append(
            "kills: "
            + ", ".join(f"{s} {kills.count(s)}" for s in SERVICES)
            + f"; client retries {charges.retries}"
        )

        # The daily sync's repair (smart events sent while the gateway was down
        # are retried by Intacct only briefly).
        repaired = await manual_sync(stubs, ACCOUNT)
        assert repaired.state == sync_pb2.SYNC_STATE_SUCCEEDED, repaired.error

        invoices = [i for _, i in targets] + created
        outcome.attempted = len(targets) + len(created)
        outcome.acknowledged = len(charges.acknowledged) + len(created)
        money = await settle_charges(
            stubs,
            sandbox,
            ACCOUNT,
            outcome,
            charges,
            invoices,
            fault_ended=fault_ended,
            must_be_charged=created,
        )

        await agree_with_intacct(
            stubs, sandbox, ACCOUNT, outcome, invoices, fault_ended=fault_ended
        )
        # Every client-acknowledged charge is one succeeded charge posted once.
        for charge_id in charges.acknowledged.values():
            reference = intacct_reference(charge_id)
            assert money.intacct_by_reference.get(reference, 0) <= 1
        assert all(c.state == payments_pb2.CHARGE_STATE_SUCCEEDED for c in money.charges.values())


def test_sigkill_every_service_at_random_points(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("sigkill every service")
    with chaos_suite(
        tmp_path, infra, unique, customers=80, invoices=1500, outcome=outcome
    ) as suite:
        asyncio.run(_scenario(suite, outcome, random.Random(outcome.seed)))
    assert outcome.passed, outcome.json()
