"""Intacct events over gRPC and through the HTTP gateway at once: each change applied once."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from xml.sax.saxutils import escape

import aiohttp
import asyncpg
import grpc.aio
import pytest

from arbridge.events.v1 import events_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime import webhooks
from arbridge_runtime.grpc_client import service_channel
from tests.conftest import TOKEN
from tests.support.suite import WEBHOOK_SECRET, Suite, connect_and_sync, running_suite

ACCOUNT = "acme"
MERGE = re.compile(r"\{!ARINVOICE\.([A-Z0-9_.]+)!\}")


async def _changed_bodies(
    http: aiohttp.ClientSession, suite: Suite, template: str, keys: list[str], tag: str
) -> dict[str, bytes]:
    """Changes invoices in the sandbox (no smart events) and renders their event bodies."""
    company = suite.sandbox["company_id"]
    base = f"{suite.sandbox_admin}/companies/{company}/records/ARINVOICE"
    gate = asyncio.Semaphore(16)

    async def change(key: str) -> None:
        async with (
            gate,
            http.put(f"{base}/{key}", json={"values": {"DOCNUMBER": f"{tag}-{key}"}}) as reply,
        ):
            assert reply.status == 200

    await asyncio.gather(*(change(k) for k in keys))
    async with http.get(base) as reply:
        values = {str(r["recordno"]): r["values"] for r in (await reply.json())["records"]}

    def render(record: dict[str, str]) -> bytes:
        return MERGE.sub(lambda m: escape(record.get(m.group(1), "")), template).encode()

    return {k: render(values[k]) for k in keys}


async def _store_po(db: asyncpg.Connection, schema: str, keys: list[str]) -> dict[str, str]:
    rows = await db.fetch(
        f'SELECT record_no, po_number FROM "{schema}".invoices'
        " WHERE account_id = $1 AND record_no = ANY($2::text[])",
        ACCOUNT,
        keys,
    )
    return {r["record_no"]: r["po_number"] for r in rows}


async def _synced_invoice_event(
    suite: Suite, sync: sync_pb2_grpc.SyncServiceAsyncStub, timeout: float
) -> sync_pb2.SmartEventSpec:
    """Connects the account and waits for its initial sync; the smart event that
    announces an invoice's changes, as sync's set-up document gives it."""
    initial = await connect_and_sync(suite, ACCOUNT, timeout=timeout)
    assert initial.state == sync_pb2.SYNC_STATE_SUCCEEDED, initial.error
    setup = await sync.GetSmartEventSetup(
        sync_pb2.GetSmartEventSetupRequest(account_id=ACCOUNT, gateway_base_url=suite.gateway_base)
    )
    return next(s for s in setup.events if s.object == "ARINVOICE" and "set" in s.actions)


def _inbound(delivery_id: str, body: bytes, token: str) -> sync_pb2.InboundEvent:
    """An Intacct event as a forwarder hands it over, with the account's URL token."""
    return sync_pb2.InboundEvent(
        account_id=ACCOUNT,
        body=body,
        content_type="application/xml",
        delivery_id=delivery_id,
        url_token=token,
    )


async def _updates(db: asyncpg.Connection, schema: str) -> int:
    """Invoice updates announced so far: one per message from Intacct's events, and
    those inside sync jobs' bundles (the daily sync, which runs at 02:00 in the
    account's zone, may read a changed invoice before its event arrives)."""
    rows = await db.fetch(
        f'SELECT subject, payload FROM "{schema}".outbox_events'
        " WHERE subject IN ('ar.invoice.updated', 'ar.invoice.bundle')"
    )
    single = sum(r["subject"] == "ar.invoice.updated" for r in rows)
    bundled = sum(
        change.change == events_pb2.CHANGE_TYPE_UPDATED
        for r in rows
        if r["subject"] == "ar.invoice.bundle"
        for change in events_pb2.InvoiceChanges.FromString(r["payload"]).changes
    )
    return int(single + bundled)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_both_doors_at_once_and_a_resumed_stream(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    schema = f"{unique}_sync"
    with running_suite(
        tmp_path, database_url, nats_url, unique, customers=3000, invoices=32000
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(
            service_channel(suite.target("sync"), TOKEN, deadline=600)
        )
        spec = await _synced_invoice_event(suite, sync, timeout=300)
        token = webhooks.url_token(WEBHOOK_SECRET, ACCOUNT)
        db = await asyncpg.connect(database_url)
        async with aiohttp.ClientSession() as http:
            in_store = [
                r["record_no"]
                for r in await db.fetch(
                    f'SELECT record_no FROM "{schema}".invoices WHERE NOT deleted'
                    " ORDER BY record_no::bigint"
                )
            ]
            assert len(in_store) >= 10_000
            bodies = await _changed_bodies(
                http, suite, spec.body_template, in_store[:10_000], "BOTH"
            )
            assert len(bodies) == 10_000
            before = await _updates(db, schema)

            def inbound(key: str, body: bytes) -> sync_pb2.InboundEvent:
                return _inbound(f"fwd-{key}", body, token)

            async def requests() -> AsyncIterator[sync_pb2.StreamIngestEventsRequest]:
                for key, body in bodies.items():
                    yield sync_pb2.StreamIngestEventsRequest(event=inbound(key, body))

            async def over_grpc() -> list[int]:
                return [r.result.outcome async for r in sync.StreamIngestEvents(requests())]

            gate = asyncio.Semaphore(32)

            async def one_http(body: bytes) -> int:
                async with (
                    gate,
                    http.post(
                        spec.url, data=body, headers={"Content-Type": "application/xml"}
                    ) as reply,
                ):
                    return reply.status

            started = time.monotonic()
            grpc_outcomes, http_statuses = await asyncio.gather(
                over_grpc(), asyncio.gather(*(one_http(b) for b in bodies.values()))
            )
            elapsed = time.monotonic() - started
            assert len(grpc_outcomes) == 10_000
            assert set(http_statuses) <= {200, 202}
            accepted = grpc_outcomes.count(sync_pb2.INGEST_OUTCOME_ACCEPTED) + http_statuses.count(
                202
            )
            assert accepted == 10_000  # each event stored once, whichever door was first
            keys = list(bodies)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                stored = await _store_po(db, schema, keys)
                if all(stored.get(k) == f"BOTH-{k}" for k in keys):
                    break
                await asyncio.sleep(0.5)
            assert all(stored.get(k) == f"BOTH-{k}" for k in keys)
            await asyncio.sleep(1.0)
            assert await _updates(db, schema) - before == 10_000  # each change applied once
            print(f"20,000 deliveries of 10,000 events over both doors in {elapsed:.1f}s")

            # A forwarder that disconnects mid-stream and resends from its last acknowledged
            # event loses nothing and doubles nothing.
            resumed = await _changed_bodies(
                http, suite, spec.body_template, in_store[-2_000:], "RESUME"
            )
            keys = list(resumed)
            before = await _updates(db, schema)
            acknowledged = 0
            call = sync.StreamIngestEvents(
                sync_pb2.StreamIngestEventsRequest(event=inbound(k, b)) for k, b in resumed.items()
            )
            async for reply in call:
                assert reply.result.outcome == sync_pb2.INGEST_OUTCOME_ACCEPTED
                acknowledged += 1
                if acknowledged == 700:
                    call.cancel()
                    break
            rest = list(resumed.items())[acknowledged:]
            replies = [
                r
                async for r in sync.StreamIngestEvents(
                    sync_pb2.StreamIngestEventsRequest(event=inbound(k, b)) for k, b in rest
                )
            ]
            assert len(replies) == len(rest)
            assert {r.result.outcome for r in replies} <= {
                sync_pb2.INGEST_OUTCOME_ACCEPTED,
                sync_pb2.INGEST_OUTCOME_DUPLICATE,
            }
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                stored = await _store_po(db, schema, keys)
                if all(stored.get(k) == f"RESUME-{k}" for k in keys):
                    break
                await asyncio.sleep(0.5)
            assert all(stored.get(k) == f"RESUME-{k}" for k in keys)
            await asyncio.sleep(1.0)
            assert await _updates(db, schema) - before == 2_000

            # The unary batch: per-event answers, refusals with their reason.
            batch = await sync.IngestEvents(
                sync_pb2.IngestEventsRequest(
                    events=[
                        inbound(keys[0], resumed[keys[0]]),
                        sync_pb2.InboundEvent(
                            account_id=ACCOUNT,
                            body=b"<a/>",
                            url_token="0" * 64,
                            content_type="application/xml",
                            delivery_id="forged",
                        ),
                        sync_pb2.InboundEvent(
                            account_id=ACCOUNT,
                            body=b"<!DOCTYPE a []><a/>",
                            url_token=token,
                            content_type="application/xml",
                            delivery_id="hostile",
                        ),
                    ]
                )
            )
            outcomes = [(r.delivery_id, r.outcome) for r in batch.results]
            assert outcomes == [
                (f"fwd-{keys[0]}", sync_pb2.INGEST_OUTCOME_DUPLICATE),
                ("forged", sync_pb2.INGEST_OUTCOME_REJECTED),
                ("hostile", sync_pb2.INGEST_OUTCOME_REJECTED),
            ]
            assert "token" in batch.results[1].reason
            assert "not allowed" in batch.results[2].reason
            with pytest.raises(grpc.aio.AioRpcError) as too_big:
                await sync.IngestEvents(
                    sync_pb2.IngestEventsRequest(events=[inbound("x", b"<a/>")] * 1001)
                )
            assert too_big.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        await db.close()


@pytest.mark.timeout(300)
async def test_an_overtaken_event_of_the_same_second_does_not_roll_a_record_back(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """Intacct's WHENMODIFIED has whole seconds: when an older event arrives after a newer
    one stamped the same second, the event cannot say which is newer, so Intacct decides."""
    schema = f"{unique}_sync"
    with running_suite(
        tmp_path, database_url, nats_url, unique, customers=20, invoices=200
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        spec = await _synced_invoice_event(suite, sync, timeout=120)
        token = webhooks.url_token(WEBHOOK_SECRET, ACCOUNT)
        db = await asyncpg.connect(database_url)
        try:
            keys = [
                r["record_no"]
                for r in await db.fetch(
                    f'SELECT record_no FROM "{schema}".invoices WHERE NOT deleted LIMIT 5'
                )
            ]
            async with aiohttp.ClientSession() as http:
                newer = await _changed_bodies(http, suite, spec.body_template, keys, "NEWER")
            # The older edit of the same second: the same WHENMODIFIED, other data.
            older = {k: b.replace(b"NEWER-", b"OLDER-") for k, b in newer.items()}

            async def deliver(bodies: dict[str, bytes], tag: str) -> None:
                reply = await sync.IngestEvents(
                    sync_pb2.IngestEventsRequest(
                        events=[_inbound(f"{tag}-{k}", b, token) for k, b in bodies.items()]
                    )
                )
                assert {r.outcome for r in reply.results} == {sync_pb2.INGEST_OUTCOME_ACCEPTED}

            await deliver(newer, "newer")
            deadline = time.monotonic() + 30
            while (await _store_po(db, schema, keys)) != {k: f"NEWER-{k}" for k in keys}:
                assert time.monotonic() < deadline, "the newer edits were not applied"
                await asyncio.sleep(0.2)
            await deliver(older, "older")  # overtaken in transit: arrives last
            await asyncio.sleep(3)
            assert await _store_po(db, schema, keys) == {k: f"NEWER-{k}" for k in keys}
        finally:
            await db.close()
