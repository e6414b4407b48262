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
import random
import time
from pathlib import Path

import pytest

from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.infra import Infra
from arbridge_devinfra.onboarding import (
    connect,
    deposit_everywhere,
    install_smart_events,
    wait_for_sync,
)
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import (
    ChargeLedger,
    agree_with_intacct,
    card_targets,
    charge_until_answered,
    settle_charges,
)
from tests.chaos.harness import Ledger, Outcome, chaos_suite, clients

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
    async with clients(suite, deadline=120) as (stubs, sandbox):
        await sandbox.set_faults(**INTACCT_FAULTS)
        started = time.monotonic()
        await connect(stubs, suite, ACCOUNT)
        initial = await wait_for_sync(stubs, ACCOUNT)
        assert initial.state == sync_pb2.SYNC_STATE_SUCCEEDED, initial.error
        outcome.notes.append(f"initial sync under faults: {time.monotonic() - started:.1f}s")
        await install_smart_events(stubs, sandbox, suite, ACCOUNT)
        await deposit_everywhere(stubs, ACCOUNT)
        targets = await card_targets(stubs, sandbox, ACCOUNT, customers=10, limit=40)
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
        await settle_charges(
            stubs, sandbox, ACCOUNT, outcome, charges, keys, fault_ended=fault_ended
        )
        # The faults stop; smart events then bring the posted payments to the AR store.
        await sandbox.set_faults(
            **{k: 0 for k in INTACCT_FAULTS}, smart_event_retry_delays=[1, 3, 9]
        )

        await agree_with_intacct(stubs, sandbox, ACCOUNT, outcome, keys, fault_ended=fault_ended)


def test_intacct_and_card_gateway_faults(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("Intacct and card gateway faults")
    with chaos_suite(
        tmp_path, infra, unique, customers=60, invoices=1200, outcome=outcome
    ) as suite:
        asyncio.run(_scenario(suite, outcome, random.Random(outcome.seed)))
    assert outcome.passed, outcome.json()
