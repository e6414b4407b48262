"""Smart events duplicated, reordered and dropped between Intacct and the gateway.

A chaotic network sits between the sandbox Intacct and the gateway: it
answers Intacct at once, then (seeded) forwards each event once, twice, late
(after newer events of the same invoice) or never. An Intacct user edits 120
invoices three times each, quickly.

Checked: nothing the gateway acknowledged is lost and no AR event is announced
twice for one record version; an event overtaken by a newer one never rolls a
record back; after the daily sync's repair (a Sync Account) the AR store
agrees with Intacct on every invoice, including those whose events were lost.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from lxml import etree

from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.infra import Infra, with_database
from arbridge_devinfra.onboarding import Stubs, connect, manual_sync, until, wait_for_sync
from arbridge_devinfra.sandboxes import Sandbox
from arbridge_devinfra.suite import StartedSuite
from tests.chaos.checks import invoices_by_record, republished_events
from tests.chaos.harness import Ledger, Outcome, chaos_suite

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"


class ChaoticNetwork:
    """An HTTP hop that duplicates, delays past newer events, or drops what it carries."""

    def __init__(self, target: str, rng: random.Random) -> None:
        self.target = target
        self.rng = rng
        self.fate: collections.Counter[str] = collections.Counter()
        self.forwarded: list[tuple[bytes, int]] = []
        self.pending: set[asyncio.Task[None]] = set()
        self.http: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/xml")}
        roll = self.rng.random()
        if roll < 0.10:
            self.fate["dropped"] += 1
        elif roll < 0.25:
            self.fate["duplicated"] += 1
            self._send(request.path_qs, body, headers, 0.0)
            self._send(request.path_qs, body, headers, self.rng.uniform(0.0, 2.0))
        elif roll < 0.40:
            self.fate["delayed"] += 1  # arrives after newer edits of the same invoice
            self._send(request.path_qs, body, headers, self.rng.uniform(2.0, 5.0))
        else:
            self.fate["forwarded"] += 1
            self._send(request.path_qs, body, headers, 0.0)
        return web.Response(status=202)  # Intacct is told it was delivered, whatever happens

    def _send(self, path: str, body: bytes, headers: dict[str, str], delay: float) -> None:
        task = asyncio.create_task(self._forward(path, body, headers, delay))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _forward(self, path: str, body: bytes, headers: dict[str, str], delay: float) -> None:
        await asyncio.sleep(delay)
        assert self.http is not None
        for _ in range(20):
            try:
                async with self.http.post(self.target + path, data=body, headers=headers) as r:
                    self.forwarded.append((body, r.status))
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)


async def _scenario(suite: StartedSuite, dsn: str, outcome: Outcome, rng: random.Random) -> None:
    stubs = Stubs.of(suite, deadline=60)
    network = ChaoticNetwork(suite.webhooks_base, rng)
    app = web.Application()
    app.router.add_post("/{tail:.*}", network.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            network.http = http
            sandbox = Sandbox(http, suite)
            await connect(stubs, suite, ACCOUNT)
            assert (await wait_for_sync(stubs, ACCOUNT)).state == sync_pb2.SYNC_STATE_SUCCEEDED
            # Intacct's smart events point at the chaotic hop, which forwards to the gateway.
            setup = await stubs.sync.GetSmartEventSetup(
                sync_pb2.GetSmartEventSetupRequest(
                    account_id=ACCOUNT, gateway_base_url=f"http://127.0.0.1:{port}"
                )
            )
            for spec in setup.events:
                await sandbox.add_smart_event(spec)
            keys = sorted(await invoices_by_record(stubs, ACCOUNT))
            rng.shuffle(keys)
            keys = keys[:120]
            last: dict[str, str] = {}
            for round_no in range(3):
                for key in keys:
                    value = f"E{round_no}-{key}"
                    await sandbox.update_record("ARINVOICE", key, {"DOCNUMBER": value})
                    last[key] = value
            outcome.attempted = 3 * len(keys)
            began = time.monotonic()
            await until(
                "every event forwarded", lambda: _done(network, sandbox), timeout=120, every=0.5
            )
            outcome.acknowledged = sum(1 for _, status in network.forwarded if status in (200, 202))
            outcome.faults = sum(v for k, v in network.fate.items() if k != "forwarded")
            outcome.notes.append(
                "events: " + ", ".join(f"{k} {v}" for k, v in network.fate.items())
            )

            # No roll-back: a record never holds an older edit than one already applied.
            # Checked once sync has handled every event the gateway stored, before any repair.
            stored_events = sum(1 for _, status in network.forwarded if status == 202)

            async def handled() -> bool:
                conn = await asyncpg.connect(dsn)
                try:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM sync.inbox WHERE consumer = 'sync-intacct-events'"
                    )
                finally:
                    await conn.close()
                return int(done) >= stored_events

            await until("sync handling every stored event", handled, timeout=180, every=0.5)
            store = await invoices_by_record(stubs, ACCOUNT)
            newest = _newest_delivered(network)
            rolled_back = [
                k
                for k in keys
                if k in newest
                and (
                    not store[k].po_number.startswith("E") or _round(store[k].po_number) < newest[k]
                )
            ]
            store_before_repair = {k: store[k].po_number for k in keys}
            # The repair (the daily sync): then everything agrees with Intacct.
            repaired = await manual_sync(stubs, ACCOUNT, timeout=300)
            assert repaired.state == sync_pb2.SYNC_STATE_SUCCEEDED, repaired.error
            store = await invoices_by_record(stubs, ACCOUNT)
            wrong = [k for k in keys if store[k].po_number != last[k]]
            outcome.recovery_seconds = round(time.monotonic() - began, 1)
            outcome.wrong = len(wrong) + len(rolled_back)
            outcome.duplicated = await republished_events(dsn)
            for what, items in (("rolled back", rolled_back), ("wrong after repair", wrong)):
                if items:
                    outcome.notes.append(f"{what}: {items[:5]}")
            for key in rolled_back[:3]:
                outcome.notes.append(
                    f"{key}: store {store_before_repair[key]}, newest delivered round {newest[key]}"
                )
    finally:
        await runner.cleanup()
        await stubs.close()


async def _done(network: ChaoticNetwork, sandbox: Sandbox) -> bool:
    log = await sandbox.smart_event_log()
    delivering = any(e["status"] in ("pending", "retrying") for e in log)
    return not delivering and not network.pending


def _round(value: str) -> int:
    return int(value[1 : value.index("-")])


def _newest_delivered(network: ChaoticNetwork) -> dict[str, int]:
    """The newest edit round of each invoice among the events the gateway accepted."""
    newest: dict[str, int] = {}
    for body, status in network.forwarded:
        if status not in (200, 202):
            continue
        record = etree.fromstring(body).find("record")
        if record is None:
            continue
        key, value = record.findtext("RECORDNO") or "", record.findtext("DOCNUMBER") or ""
        if value.startswith("E"):
            newest[key] = max(newest.get(key, -1), _round(value))
    return newest


def test_duplicated_reordered_and_dropped_smart_events(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("smart events dup/reordered/dropped")
    with chaos_suite(
        tmp_path,
        infra,
        unique,
        services=("connector", "sync", "gateway"),
        customers=100,
        invoices=2000,
        outcome=outcome,
    ) as suite:
        dsn = with_database(infra.database_url, f"arbridge_{unique}")
        asyncio.run(_scenario(suite, dsn, outcome, random.Random(outcome.seed)))
    assert outcome.passed, outcome.json()
