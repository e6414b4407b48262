"""SIGTERM during load: no call in flight when the signal arrives fails.

Clients keep every service busy (charges retried under their keys, reads of
invoices, charges, usage and rules) while each service in turn gets SIGTERM and
is started again once it has exited (as Kubernetes replaces a pod). A call
that was in flight when its server got the signal must complete normally; a
call that arrives after the server stopped taking calls may be refused with
UNAVAILABLE (the client retries). Charges end exactly once, posted once.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from arbridge.connector.v1 import connector_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.infra import Infra
from arbridge_devinfra.onboarding import onboard, until
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import ChargeLedger, card_targets, charge_until_answered, settle_charges
from tests.chaos.harness import Ledger, Outcome, chaos_suite, clients

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"
ORDER = ("payments", "sync", "connector", "rules", "payments", "sync")


@dataclass
class Calls:
    """Every read call: which service, when it started and ended, and its status."""

    done: list[tuple[str, float, float, grpc.StatusCode]] = field(default_factory=list)

    async def call(self, service: str, make: Callable[[], Awaitable[object]]) -> None:
        started = time.monotonic()
        try:
            await make()
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
        self.done.append((service, started, time.monotonic(), code))
        if code != grpc.StatusCode.OK:
            await asyncio.sleep(0.1)  # a client backs off before trying again


async def _scenario(suite: StartedSuite, outcome: Outcome, rng: random.Random) -> None:
    async with clients(suite, deadline=30) as (stubs, sandbox):
        await onboard(stubs, sandbox, suite, ACCOUNT)
        targets = await card_targets(stubs, sandbox, ACCOUNT, customers=12, limit=50)
        charges = ChargeLedger()
        calls = Calls()
        signals: list[tuple[str, float]] = []
        stop = asyncio.Event()
        reads: dict[str, Callable[[], Awaitable[object]]] = {
            "sync": lambda: stubs.sync.ListInvoices(
                sync_pb2.ListInvoicesRequest(account_id=ACCOUNT), timeout=10
            ),
            "payments": lambda: stubs.payments.ListCharges(
                payments_pb2.ListChargesRequest(account_id=ACCOUNT), timeout=10
            ),
            "connector": lambda: stubs.connector.GetApiUsage(
                connector_pb2.GetApiUsageRequest(account_id=ACCOUNT), timeout=10
            ),
            "rules": lambda: stubs.rules.ListRules(
                rules_pb2.ListRulesRequest(account_id=ACCOUNT), timeout=10
            ),
        }

        async def reader(service: str) -> None:
            while not stop.is_set():
                await calls.call(service, reads[service])

        async def charger(customer: str, invoice: str) -> None:
            await asyncio.sleep(rng.uniform(0.0, 25.0))
            await charge_until_answered(
                stubs, charges, ACCOUNT, f"term-{invoice}", customer, invoice
            )

        async def terminator() -> None:
            for service in ORDER:
                await asyncio.sleep(rng.uniform(2.0, 4.0))
                signals.append((service, time.monotonic()))
                await asyncio.to_thread(suite.kill, service, signal.SIGTERM)
                await until(
                    f"{service} back",
                    lambda s=service: _serving(suite, s),  # type: ignore[misc]
                    timeout=60,
                )

        readers = [asyncio.create_task(reader(s)) for s in reads for _ in range(3)]
        await asyncio.gather(terminator(), *(charger(c, i) for c, i in targets))
        stop.set()
        await asyncio.gather(*readers)
        fault_ended = time.monotonic()
        outcome.faults = len(signals)

        # Calls in flight at a signal to their own server: every one must have ended OK.
        in_flight = [
            (service, code)
            for service, started, ended, code in calls.done
            for target, at in signals
            if service == target and started < at < ended
        ]
        failed = [(s, c.name) for s, c in in_flight if c != grpc.StatusCode.OK]
        refused_later = sum(1 for *_, code in calls.done if code == grpc.StatusCode.UNAVAILABLE)
        outcome.attempted = len(calls.done) + len(targets)
        outcome.acknowledged = len(calls.done) - refused_later + len(charges.acknowledged)
        outcome.notes.append(
            f"{len(calls.done)} reads, {len(in_flight)} in flight at a SIGTERM;"
            f" {refused_later} refused UNAVAILABLE after intake stopped (retried);"
            f" charge retries {charges.retries}"
        )
        await settle_charges(
            stubs,
            sandbox,
            ACCOUNT,
            outcome,
            charges,
            [i for _, i in targets],
            fault_ended=fault_ended,
        )
        outcome.lost += len(failed)
        if failed:
            outcome.notes.append(f"in-flight calls that failed: {failed[:5]}")


async def _serving(suite: StartedSuite, service: str) -> bool:
    running = suite.process(service)
    return running.process.poll() is None and running.ready_file.exists()


def test_sigterm_during_load_fails_no_call_in_flight(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("SIGTERM during load")
    with chaos_suite(
        tmp_path,
        infra,
        unique,
        services=("connector", "sync", "payments", "rules"),
        outcome=outcome,
        service_env={"ARBRIDGE_DRAIN_DELAY_SECONDS": "1"},
    ) as suite:
        asyncio.run(_scenario(suite, outcome, random.Random(outcome.seed)))
    assert outcome.passed, outcome.json()
