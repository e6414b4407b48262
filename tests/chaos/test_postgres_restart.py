"""PostgreSQL restarted in the middle of charging: once cleanly, once as a crash.

A client charges invoices (retrying the same key after transient failures)
while the database every service uses is stopped for 8 s (fast shutdown),
then later killed outright (immediate stop, recovered from the WAL on start).
Every invoice must be charged at most once, every acknowledged charge must
exist and be posted to Intacct exactly once.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import time
from pathlib import Path

import pytest

from arbridge_devinfra.infra import Infra, PrivatePostgres
from arbridge_devinfra.onboarding import onboard
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import ChargeLedger, card_targets, charge_until_answered, settle_charges
from tests.chaos.harness import Ledger, Outcome, chaos_suite, clients

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"
ROOT = Path(__file__).resolve().parents[2]
WINDOW_SECONDS = 40.0


async def _scenario(
    suite: StartedSuite, postgres: PrivatePostgres, outcome: Outcome, rng: random.Random
) -> None:
    async with clients(suite, deadline=30) as (stubs, sandbox):
        await onboard(stubs, sandbox, suite, ACCOUNT)
        targets = await card_targets(stubs, sandbox, ACCOUNT, customers=14, limit=60)
        charges = ChargeLedger()

        async def one(customer: str, invoice: str) -> None:
            await asyncio.sleep(rng.uniform(0.0, WINDOW_SECONDS))
            await charge_until_answered(stubs, charges, ACCOUNT, f"pg-{invoice}", customer, invoice)

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
        await settle_charges(
            stubs,
            sandbox,
            ACCOUNT,
            outcome,
            charges,
            [i for _, i in targets],
            fault_ended=back_at,
        )


def test_postgres_restarted_in_the_middle_of_charging(
    infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("PostgreSQL restarted mid-charging")
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
            asyncio.run(_scenario(suite, postgres, outcome, random.Random(outcome.seed)))
    finally:
        postgres.stop("immediate")
        if outcome.passed and outcome.acknowledged == outcome.attempted:
            shutil.rmtree(folder, ignore_errors=True)
    assert outcome.passed, outcome.json()
