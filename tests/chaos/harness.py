"""What every chaos scenario shares: a suite it may break, a ledger, and the checks.

A scenario runs the services as processes (on fixed ports, so a killed one
comes back where the others call it), drives work through them the way their
users do, breaks something (seeded, so a run can be repeated), lets the suite
recover, then counts from the systems of record (the card gateway's
transactions, the sandbox Intacct's records, arbridge's own tables):

* attempted: operations the scenario asked for;
* acknowledged: operations a service said it had done (202, a charge, ...);
* lost: acknowledged operations whose effect is missing after recovery;
* duplicated: effects that happened more than once (gateway charges per
  idempotency key, Intacct payments per charge, records stored twice);
* wrong: records that differ between Intacct and the AR store after recovery;
* cross-account: reads that answered with another account's data;
* recovery: seconds from the end of the fault to every check holding.

A scenario passes only with 0 lost, 0 duplicated, 0 wrong and 0 cross-account.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from arbridge_devinfra.infra import Infra
from arbridge_devinfra.onboarding import Stubs
from arbridge_devinfra.sandboxes import Sandbox
from arbridge_devinfra.suite import StartedSuite, drop_streams, free_ports, started_suite

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "chaos.json"


@dataclass
class Outcome:
    scenario: str
    seed: int
    attempted: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    cross_account: int = 0
    recovery_seconds: float = 0.0
    faults: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.wrong == 0
            and (self.cross_account == 0)
        )

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


class Ledger:
    """Outcomes of the scenarios run in this session, written to bench/chaos.json."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def start(self, scenario: str) -> Outcome:
        """A scenario's outcome, recorded, with the run's seed (``CHAOS_SEED``, else 7)."""
        outcome = Outcome(scenario, int(os.environ.get("CHAOS_SEED", "7")))
        self.outcomes.append(outcome)
        return outcome

    def write(self) -> None:
        if not self.outcomes:
            return
        kept: dict[str, Any] = {}
        if RESULTS.exists():
            kept = {o["scenario"]: o for o in json.loads(RESULTS.read_text())["scenarios"]}
        for outcome in self.outcomes:
            kept[outcome.scenario] = outcome.json()
        RESULTS.write_text(
            json.dumps(
                {
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "scenarios": sorted(kept.values(), key=lambda o: o["scenario"]),
                },
                indent=1,
            )
        )

    def table(self) -> list[str]:
        header = (
            f"{'scenario':<34} {'seed':>6} {'attempted':>9} {'acked':>7} {'lost':>5} "
            f"{'dup':>4} {'wrong':>5} {'xacct':>5} {'faults':>6} {'recovery':>9}  result"
        )
        lines = [header, "-" * len(header)]
        for o in self.outcomes:
            lines.append(
                f"{o.scenario:<34} {o.seed:>6} {o.attempted:>9} {o.acknowledged:>7} "
                f"{o.lost:>5} {o.duplicated:>4} {o.wrong:>5} {o.cross_account:>5} "
                f"{o.faults:>6} {o.recovery_seconds:>8.1f}s  {'pass' if o.passed else 'FAIL'}"
            )
        return lines


@contextmanager
def chaos_suite(
    tmp_path: Path,
    infra: Infra,
    name: str,
    *,
    services: tuple[str, ...] = ("connector", "sync", "payments", "rules", "gateway"),
    customers: int = 40,
    invoices: int = 600,
    service_env: dict[str, str] | None = None,
    outcome: Outcome | None = None,
) -> Iterator[StartedSuite]:
    """The suite on fixed free ports, in database ``arbridge_<name>`` and NATS namespace
    ``<name>``, both made afresh and removed after."""
    lines: list[str] = []
    try:
        with started_suite(
            tmp_path,
            ports=free_ports(),
            database=f"arbridge_{name}",
            namespace=name,
            fresh=True,
            infra=infra,
            services=services,
            sandbox_args=("--customers", str(customers), "--invoices", str(invoices)),
            service_env={
                "ARBRIDGE_RULES_TICK_SECONDS": "0.2",
                "ARBRIDGE_PAYMENTS_RECOVERY_SECONDS": "0.5",
                "ARBRIDGE_PAYMENTS_CHARGE_LEASE_SECONDS": "3",
                "ARBRIDGE_RULES_LEASE_SECONDS": "5",
                "ARBRIDGE_SHUTDOWN_GRACE_SECONDS": "5",
                "ARBRIDGE_PAYMENTS_POSTING_LEASE_SECONDS": "10",
                "ARBRIDGE_PAYMENTS_POSTING_BACKOFF_SECONDS": "1",
                **(service_env or {}),
            },
            say=lines.append,
        ) as suite:
            # A service that exits on its own is started again, as Kubernetes would.
            stop = threading.Event()
            supervisor = threading.Thread(
                target=suite.supervise, args=(stop, services), name="supervisor", daemon=True
            )
            supervisor.start()
            try:
                yield suite
            finally:
                stop.set()
                supervisor.join(30)
                if outcome is not None and suite.restarts:
                    outcome.notes.append(f"started again by the supervisor: {suite.restarts}")
    finally:
        if not os.environ.get("CHAOS_KEEP"):  # CHAOS_KEEP=1 keeps the data to look at
            asyncio.run(_drop(infra, name))


async def _drop(infra: Infra, name: str) -> None:
    try:
        conn = await asyncpg.connect(infra.database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "arbridge_{name}" WITH (FORCE)')
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError):
        pass  # a private server already gone
    with contextlib.suppress(Exception):  # a private server already gone
        await drop_streams(infra.nats_url, name)


@asynccontextmanager
async def clients(suite: StartedSuite, deadline: float) -> AsyncIterator[tuple[Stubs, Sandbox]]:
    """What a scenario drives the suite with: gRPC stubs (calls end after ``deadline``
    seconds) and the sandboxes' admin (its ``http`` session serves any other HTTP);
    closed when it ends."""
    stubs = Stubs.of(suite, deadline=deadline)
    try:
        async with aiohttp.ClientSession() as http:
            yield stubs, Sandbox(http, suite)
    finally:
        await stubs.close()
