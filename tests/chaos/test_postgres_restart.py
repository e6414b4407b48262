"""PostgreSQL restarted in the middle of charging: once cleanly, once as a crash.

A client charges invoices (retrying the same key after transient failures)
while the database every service uses is stopped for 8 s (fast shutdown),
then later killed outright (immediate stop, recovered from the WAL on start).
Every invoice must be charged at most once, every acknowledged charge must
exist and be posted to Intacct exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from arbridge_devinfra.infra import Infra, PrivatePostgres
from arbridge_devinfra.onboarding import Stubs, add_card, onboard, open_invoices
from arbridge_devinfra.sandboxes import Sandbox
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import ChargeLedger, charge_until_answered, count_money
from tests.chaos.harness import Ledger, Outcome, chaos_suite, until

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"
ROOT = Path(__file__).resolve().parents[2]
WINDOW_SECONDS = 40.0


async def _scenario(
    suite: StartedSuite, postgres: PrivatePostgres, outcome: Outcome, rng: random.Random
) -> None:
    stubs = Stubs.of(suite, deadline=30)
    try:
        async with aiohttp.ClientSession() as http:
            sandbox = Sandbox(http, suite)
            await onboard(stubs, sandbox, suite, ACCOUNT)
            by_customer: dict[str, list[str]] = {}
            for invoice in await open_invoices(stubs, ACCOUNT):
                if invoice.currency == "USD":
                    by_customer.setdefault(invoice.customer_id, []).append(invoice.record_no)
            customers = sorted(by_customer)[:14]
            for customer in customers:
                await add_card(stubs, sandbox, ACCOUNT, customer)
            targets = [(c, i) for c in customers for i in by_customer[c]][:60]
            charges = ChargeLedger()

            async def one(customer: str, invoice: str) -> None:
                await asyncio.sleep(rng.uniform(0.0, WINDOW_SECONDS))
                await charge_until_answered(
                    stubs, charges, ACCOUNT, f"pg-{invoice}", customer, invoice
                )

            async def restarts() -> float:
                await asyncio.sleep(10)
                await asyncio.to_thread(postgres.stop, "fast")
                await asyncio.sleep(8)
                await asyncio.to_thread(postgres.start)
                await asyncio.sleep(12)
                await asyncio.to_thread(postgres.stop, "immediate")
                await asyncio.sleep(3)
                await asyncio.to_thread(postgres.start)
                return time.monotonic()

            results = await asyncio.gather(restarts(), *(one(c, i) for c, i in targets))
            back_at = float(results[0] or 0.0)
            outcome.faults = 2
            outcome.attempted = len(targets)
            outcome.acknowledged = len(charges.acknowledged)
            outcome.notes.append(f"client retries {charges.retries}")
            unanswered = [k for k, why in charges.refused.items() if why.startswith("no answer")]
            if unanswered:
                outcome.notes.append(f"never answered within 240 s: {len(unanswered)}")
            keys = [i for _, i in targets]

            async def settled() -> bool:
                money = await count_money(stubs, sandbox, ACCOUNT, keys)
                return not money.unposted and not money.missing_postings

            try:
                await until("every charge posted", settled, timeout=240, every=1.0)
            except AssertionError as exc:
                outcome.notes.append(str(exc))
            outcome.recovery_seconds = round(time.monotonic() - back_at, 1)
            money = await count_money(stubs, sandbox, ACCOUNT, keys)
            lost = [k for k, c in charges.acknowledged.items() if c not in money.charges]
            lost += money.missing_postings + list(money.unposted) + unanswered
            outcome.lost = len(set(lost))
            outcome.duplicated = money.duplicates()
            if charges.refused:
                outcome.notes.append(f"refused: {sorted(set(charges.refused.values()))[:3]}")
            for what, items in (
                ("lost", lost),
                ("double-charged invoices", money.double_charged_invoices),
                ("orphan gateway charges", money.orphan_gateway_charges),
                ("double postings", money.double_postings),
            ):
                if items:
                    outcome.notes.append(f"{what}: {items[:5]}")
    finally:
        await stubs.close()


def test_postgres_restarted_in_the_middle_of_charging(
    infra: Infra, unique: str, ledger: Ledger
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "7"))
    outcome = ledger.record(Outcome("PostgreSQL restarted mid-charging", seed))
    # Under the checkout (not /tmp), where the postgres user may reach its files.
    folder = ROOT / ".infra" / f"chaos-{secrets.token_hex(4)}"
    postgres = PrivatePostgres(folder / "pg")
    postgres.start()
    try:
        private = Infra(database_url=postgres.url, nats_url=infra.nats_url)
        with chaos_suite(
            folder,
            private,
            unique,
            services=("connector", "sync", "payments"),
            outcome=outcome,
        ) as suite:
            asyncio.run(_scenario(suite, postgres, outcome, random.Random(seed)))
    finally:
        postgres.stop("immediate")
        if outcome.passed and outcome.acknowledged == outcome.attempted:
            shutil.rmtree(folder, ignore_errors=True)
    assert outcome.passed, outcome.json()
