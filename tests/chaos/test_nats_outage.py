"""NATS stopped for 30 s in the middle of a webhook flood and a sync.

An Intacct user edits invoices 15 times a second for a minute (each edit fires
a smart event to the gateway) while a Sync Account runs; 15 s in, NATS stops
for 30 s. The gateway answers 503 while it cannot store an event (Intacct
retries a few times, then gives up); sync keeps writing its AR store and
outbox, which publish once NATS is back.

Checked: every event the gateway acknowledged reaches the AR store (nothing
acknowledged is lost); no AR event is published twice for one record version;
after the daily sync's repair (a Sync Account), the AR store agrees with
Intacct on every edited invoice.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path
from typing import Any

import pytest

from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.infra import Infra, PrivateNats, with_database
from arbridge_devinfra.onboarding import (
    connect,
    install_smart_events,
    manual_sync,
    until,
    wait_for_sync,
)
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import invoices_by_record, republished_events
from tests.chaos.harness import Ledger, Outcome, chaos_suite, clients

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"
FLOOD_SECONDS = 60.0
RATE = 15
OUTAGE_AT, OUTAGE_SECONDS = 15.0, 30.0


async def _scenario(
    suite: StartedSuite, nats: PrivateNats, dsn: str, outcome: Outcome, rng: random.Random
) -> None:
    async with clients(suite, deadline=60) as (stubs, sandbox):
        await connect(stubs, suite, ACCOUNT)
        assert (await wait_for_sync(stubs, ACCOUNT)).state == sync_pb2.SYNC_STATE_SUCCEEDED
        await install_smart_events(stubs, sandbox, suite, ACCOUNT)
        keys = sorted(await invoices_by_record(stubs, ACCOUNT))
        rng.shuffle(keys)
        keys = keys[:200]
        last_value: dict[str, str] = {}
        began = time.monotonic()

        async def flood() -> int:
            made = 0
            while (elapsed := time.monotonic() - began) < FLOOD_SECONDS:
                key = keys[made % len(keys)]
                value = f"F-{made}"
                await sandbox.update_record("ARINVOICE", key, {"DOCNUMBER": value})
                last_value[key] = value
                made += 1
                await asyncio.sleep(max(0.0, made / RATE - elapsed))
            return made

        async def resync() -> sync_pb2.Sync:
            await asyncio.sleep(10)
            return await manual_sync(stubs, ACCOUNT, timeout=300)

        async def outage() -> float:
            await asyncio.sleep(OUTAGE_AT)
            await asyncio.to_thread(nats.stop)
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(nats.start)
            return time.monotonic()

        made, synced, back_at = await asyncio.gather(flood(), resync(), outage())
        outcome.faults = 1
        outcome.attempted = made
        outcome.notes.append(
            f"the Sync Account during the outage ended {sync_pb2.SyncState.Name(synced.state)}"
        )
        # Let Intacct's retries finish (1 + 3 + 9 s).
        await asyncio.sleep(15)
        log = [e for e in await sandbox.smart_event_log() if e["object"] == "ARINVOICE"]
        delivered = [e for e in log if e["status"] == "delivered"]
        outcome.acknowledged = len(delivered)
        outcome.notes.append(
            "deliveries: "
            + ", ".join(
                f"{k} {v}" for k, v in collections.Counter(e["status"] for e in log).items()
            )
        )
        # The last edit of each invoice, if its event was acknowledged, is in the store.
        last_delivery: dict[str, dict[str, Any]] = {}
        for entry in log:
            last_delivery[str(entry["recordno"])] = entry
        acknowledged = {
            key: value
            for key, value in last_value.items()
            if last_delivery.get(key, {}).get("status") == "delivered"
        }

        async def stored() -> bool:
            store = await invoices_by_record(stubs, ACCOUNT)
            return all(store[k].po_number == v for k, v in acknowledged.items())

        try:
            await until("acknowledged edits in the AR store", stored, timeout=120, every=1.0)
        except TimeoutError as exc:
            outcome.notes.append(str(exc))
        outcome.recovery_seconds = round(time.monotonic() - back_at, 1)
        store = await invoices_by_record(stubs, ACCOUNT)
        lost = [k for k, v in acknowledged.items() if store[k].po_number != v]
        outcome.lost = len(lost)
        if lost:
            outcome.notes.append(f"acknowledged but lost: {lost[:5]}")

        # The daily sync's repair: then every edited invoice agrees with Intacct.
        repaired = await manual_sync(stubs, ACCOUNT, timeout=300)
        assert repaired.state == sync_pb2.SYNC_STATE_SUCCEEDED, repaired.error
        store = await invoices_by_record(stubs, ACCOUNT)
        wrong = [k for k, v in last_value.items() if store[k].po_number != v]
        outcome.wrong = len(wrong)
        if wrong:
            outcome.notes.append(f"wrong after the repair: {wrong[:5]}")
        outcome.duplicated = await republished_events(dsn)


def test_nats_stopped_for_30s_during_a_webhook_flood_and_a_sync(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("NATS down 30 s: flood and sync")
    nats = PrivateNats(tmp_path / "nats")
    nats.start()
    try:
        private = Infra(database_url=infra.database_url, nats_url=nats.url)
        with chaos_suite(
            tmp_path,
            private,
            unique,
            services=("connector", "sync", "gateway"),
            customers=200,
            invoices=3000,
            outcome=outcome,
        ) as suite:
            dsn = with_database(infra.database_url, f"arbridge_{unique}")
            asyncio.run(_scenario(suite, nats, dsn, outcome, random.Random(outcome.seed)))
    finally:
        nats.stop()
    assert outcome.passed, outcome.json()
