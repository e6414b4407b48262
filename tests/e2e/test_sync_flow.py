"""Sync end to end: services as processes, the sandbox as Intacct, events via the gateway."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.protobuf import field_mask_pb2

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_sync.objects import BY_NAME, read_fields
from tests.conftest import TOKEN
from tests.support.suite import Suite, install_smart_events, running_suite

ACCOUNT = "acme"
WINDOW = timedelta(days=183)


async def _admin(
    http: aiohttp.ClientSession, suite: Suite, method: str, path: str, **kw: Any
) -> Any:
    async with http.request(method, f"{suite.sandbox_admin}{path}", **kw) as reply:
        assert reply.status < 300, await reply.text()
        return await reply.json()


async def _sandbox_rows(
    http: aiohttp.ClientSession, suite: Suite, obj: str
) -> list[dict[str, Any]]:
    company = suite.sandbox["company_id"]
    body = await _admin(http, suite, "GET", f"/companies/{company}/records/{obj}")
    return list(body["records"])


def _minor(text: str) -> int:
    return int((Decimal(text or "0") * 100).to_integral_value())


def _in_window(values: dict[str, str]) -> bool:
    local = datetime.strptime(values["WHENMODIFIED"], "%m/%d/%Y %H:%M:%S")
    start = (datetime.now(UTC) - WINDOW).astimezone(ZoneInfo("America/Los_Angeles"))
    return local >= start.replace(tzinfo=None) + timedelta(minutes=5)


async def _store_invoices(db: asyncpg.Connection, schema: str) -> dict[str, asyncpg.Record]:
    rows = await db.fetch(
        f'SELECT * FROM "{schema}".invoices WHERE account_id = $1 AND NOT deleted', ACCOUNT
    )
    return {r["record_no"]: r for r in rows}


def _matches(row: asyncpg.Record, values: dict[str, str]) -> bool:
    return bool(
        row["customer_id"] == values["CUSTOMERID"]
        and row["due_minor"] == _minor(values["TRX_TOTALDUE"])
        and row["paid_minor"] == _minor(values["TRX_TOTALPAID"])
        and row["total_minor"] == _minor(values["TRX_TOTALENTERED"])
        and row["po_number"] == values.get("DOCNUMBER", "")
        and row["invoice_number"] == values.get("RECORDID", "")
        and row["currency"] == values["CURRENCY"]
    )


async def _watch(sync: sync_pb2_grpc.SyncServiceAsyncStub, sync_id: str) -> sync_pb2.Sync:
    last = None
    async for update in sync.WatchSync(
        sync_pb2.WatchSyncRequest(account_id=ACCOUNT, sync_id=sync_id), timeout=600
    ):
        last = update.sync
    assert last is not None
    return last


async def _until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_initial_sync_events_duplicates_drift_and_unsynced(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    schema = f"{unique}_sync"
    with running_suite(
        tmp_path, database_url, nats_url, unique, customers=600, invoices=3000
    ) as suite:
        company = suite.sandbox["company_id"]
        connector_channel = service_channel(suite.target("connector"), TOKEN, deadline=600)
        sync_channel = service_channel(suite.target("sync"), TOKEN, deadline=600)
        connector = connector_pb2_grpc.ConnectorServiceStub(connector_channel)
        sync = sync_pb2_grpc.SyncServiceStub(sync_channel)
        db = await asyncpg.connect(database_url)
        async with aiohttp.ClientSession() as http:
            # 1. Connect: the initial six-month sync starts by itself.
            await _admin(http, suite, "POST", "/stats/reset")
            await connector.ConnectAccount(
                connector_pb2.ConnectAccountRequest(
                    account_id=ACCOUNT,
                    company_id=company,
                    user_id=suite.sandbox["user_id"],
                    user_password=suite.sandbox["user_password"],
                    sender_id=suite.sandbox["sender_id"],
                    sender_password=suite.sandbox["sender_password"],
                    time_zone="America/Los_Angeles",
                )
            )

            async def has_job() -> bool:
                listed = await sync.ListSyncs(sync_pb2.ListSyncsRequest(account_id=ACCOUNT))
                return bool(listed.syncs)

            await _until(has_job, what="the initial sync to be created")
            listed = await sync.ListSyncs(sync_pb2.ListSyncsRequest(account_id=ACCOUNT))
            initial = await _watch(sync, listed.syncs[0].sync_id)
            assert initial.kind == sync_pb2.SYNC_KIND_INITIAL
            assert initial.state == sync_pb2.SYNC_STATE_SUCCEEDED, initial.error

            # 2. The store holds exactly the sandbox's six-month window, field for field.
            invoices = await _sandbox_rows(http, suite, "ARINVOICE")
            window = {str(r["recordno"]): r["values"] for r in invoices if _in_window(r["values"])}
            store = await _store_invoices(db, schema)
            assert set(window) <= set(store)
            outside = set(store) - set(window)
            # Only records within minutes of the window edge may differ (clock between reads).
            assert (
                all(
                    not _in_window(
                        {"WHENMODIFIED": store[k]["intacct_modified"].strftime("%m/%d/%Y %H:%M:%S")}
                    )
                    for k in outside
                )
                or not outside
            )
            wrong = [k for k, v in window.items() if not _matches(store[k], v)]
            assert not wrong, (
                wrong[:5],
                dict(store[wrong[0]]) if wrong else None,
                window[wrong[0]] if wrong else None,
            )
            customers = await _sandbox_rows(http, suite, "CUSTOMER")
            stored_customers = {
                r["record_no"]
                for r in await db.fetch(
                    f'SELECT record_no FROM "{schema}".customers WHERE NOT deleted'
                )
            }
            # Customers are read whole (an invoice in the window needs its customer).
            assert {str(r["recordno"]) for r in customers} == stored_customers
            stats = await _admin(http, suite, "GET", f"/stats?company={company}")
            functions = stats["companies"][company]["functions"]
            pages = sum(max(1, -(-p.total // 2000)) for p in initial.objects)
            # connect: one session plus its probe request (2 functions); then the sync's pages.
            assert functions.get("getAPISession") == 1
            assert functions.get("query") == pages + 1
            print(
                f"initial sync: {len(window)} invoices in window, API calls {functions}, "
                f"minimum pages {pages}"
            )

            # 3. Smart events from the set-up document, through the gateway.
            setup = await sync.GetSmartEventSetup(
                sync_pb2.GetSmartEventSetupRequest(
                    account_id=ACCOUNT, gateway_base_url=suite.gateway_base
                )
            )
            assert (
                len(setup.events) == 23
            )  # 3 per AR object; queue add, set; rules add, set, delete
            assert "Platform Services > Smart Events" in setup.document
            assert await install_smart_events(http, suite, ACCOUNT) == len(setup.events)
            rng = random.Random(5)
            targets = rng.sample(sorted(window), 200)
            started: dict[str, float] = {}
            for index, key in enumerate(targets):
                started[key] = time.monotonic()
                await _admin(
                    http,
                    suite,
                    "PUT",
                    f"/companies/{company}/records/ARINVOICE/{key}",
                    json={"values": {"DOCNUMBER": f"PO-EVENT-{index}"}},
                )
            lags: dict[str, float] = {}

            async def all_applied() -> bool:
                rows = await db.fetch(
                    f'SELECT record_no, po_number FROM "{schema}".invoices'
                    " WHERE record_no = ANY($1::text[])",
                    targets,
                )
                now = time.monotonic()
                for row in rows:
                    if row["po_number"].startswith("PO-EVENT-") and row["record_no"] not in lags:
                        lags[row["record_no"]] = now - started[row["record_no"]]
                return len(lags) == len(targets)

            await _until(all_applied, 120, "event-driven updates")
            ordered = sorted(lags.values())
            print(
                f"change-to-store lag over {len(ordered)} changes: p50 "
                f"{statistics.median(ordered) * 1000:.0f} ms, p99 "
                f"{ordered[int(len(ordered) * 0.99) - 1] * 1000:.0f} ms"
            )

            # 4. Every event three times, out of order: the store still equals the sandbox.
            captured: list[tuple[str, bytes]] = []

            async def capture(request: web.Request) -> web.Response:
                captured.append((request.path, await request.read()))
                return web.Response(status=200)

            capture_app = web.Application()
            capture_app.router.add_post("/{tail:.*}", capture)
            capture_server = TestServer(capture_app, host="127.0.0.1", port=0)
            await capture_server.start_server()
            listed_events = await _admin(http, suite, "GET", f"/companies/{company}/smart-events")
            for event in listed_events["smart_events"]:
                await _admin(
                    http, suite, "DELETE", f"/companies/{company}/smart-events/{event['event_id']}"
                )
                path = event["url"].split("/v1/", 1)[1]
                await _admin(
                    http,
                    suite,
                    "POST",
                    f"/companies/{company}/smart-events",
                    json={
                        **{
                            k: event[k]
                            for k in ("object", "actions", "body_template", "content_type")
                        },
                        "url": f"http://127.0.0.1:{capture_server.port}/v1/{path}",
                    },
                )
            changed = rng.sample(sorted(window), 60)
            for round_ in range(3):  # three versions of each record, delivered in any order
                for key in changed:
                    await _admin(
                        http,
                        suite,
                        "PUT",
                        f"/companies/{company}/records/ARINVOICE/{key}",
                        json={"values": {"DOCNUMBER": f"PO-R{round_}-{key}"}},
                    )
                    await asyncio.sleep(0.002)
                await asyncio.sleep(1.1)  # WHENMODIFIED has one-second resolution
            await _until(lambda: _async_len(captured, 180), 30, "captured events")
            deliveries = captured * 3
            rng.shuffle(deliveries)
            statuses = []
            for path, body in deliveries:
                async with http.post(
                    f"{suite.gateway_base}{path}",
                    data=body,
                    headers={"Content-Type": "application/xml"},
                ) as reply:
                    statuses.append(reply.status)
            assert set(statuses) <= {200, 202}
            assert statuses.count(202) == len(captured)  # each stored once; the rest deduped

            async def converged() -> bool:
                sandbox_now = {
                    str(r["recordno"]): r["values"]
                    for r in await _sandbox_rows(http, suite, "ARINVOICE")
                }
                stored = await _store_invoices(db, schema)
                return all(_matches(stored[k], sandbox_now[k]) for k in changed)

            await _until(converged, 60, "the store to equal the sandbox after duplicates")
            await capture_server.close()

            # 5. Smart events dropped for a while: the next full sync repairs the drift.
            await _admin(
                http, suite, "PUT", f"/companies/{company}/faults", json={"drop_smart_events": True}
            )
            drifted = rng.sample(sorted(set(window) - set(changed) - set(targets)), 25)
            for key in drifted:
                await _admin(
                    http,
                    suite,
                    "PUT",
                    f"/companies/{company}/records/ARINVOICE/{key}",
                    json={"values": {"DOCNUMBER": f"PO-DRIFT-{key}"}},
                )
            gone = drifted[:5]
            for key in gone:
                await _admin(http, suite, "DELETE", f"/companies/{company}/records/ARINVOICE/{key}")
            # A payment reversed in Intacct stays in the store, as reversed: it is not
            # money received.
            reversed_payment = await db.fetchval(
                f'SELECT record_no FROM "{schema}".payments WHERE account_id = $1'
                " ORDER BY record_no LIMIT 1",
                ACCOUNT,
            )
            await _admin(
                http,
                suite,
                "PUT",
                f"/companies/{company}/records/ARPYMT/{reversed_payment}",
                json={"values": {"STATE": "Reversed"}},
            )
            await _admin(
                http,
                suite,
                "PUT",
                f"/companies/{company}/faults",
                json={"drop_smart_events": False},
            )
            # A record stored while it was young that has since aged out of the window
            # (modified an hour before the window's start, company time): still in Intacct,
            # it must not be taken for deleted, even with the daily sync scheduled in a
            # zone west of the company's (its window would start three hours earlier).
            await sync.UpdatePreferences(
                sync_pb2.UpdatePreferencesRequest(
                    preferences=sync_pb2.Preferences(
                        account_id=ACCOUNT, time_zone="Pacific/Pago_Pago"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["time_zone"]),
                )
            )
            held = await _store_invoices(db, schema)
            aged = next(
                str(r["recordno"])
                for r in invoices
                if not _in_window(r["values"]) and str(r["recordno"]) not in held
            )
            company_start = (datetime.now(UTC) - WINDOW).astimezone(ZoneInfo("America/Los_Angeles"))
            await db.execute(
                f'CREATE TEMP TABLE aged AS SELECT * FROM "{schema}".invoices'
                " WHERE account_id = $1 AND NOT deleted LIMIT 1",
                ACCOUNT,
            )
            await db.execute(
                "UPDATE aged SET record_no = $1, intacct_modified = $2",
                aged,
                company_start.replace(tzinfo=None) - timedelta(hours=1),
            )
            await db.execute(f'INSERT INTO "{schema}".invoices SELECT * FROM aged')
            estimate = await sync.EstimateSync(sync_pb2.EstimateSyncRequest(account_id=ACCOUNT))
            assert estimate.estimated_api_calls >= 7
            with pytest.raises(Exception, match="confirmation"):
                await sync.StartSync(
                    sync_pb2.StartSyncRequest(
                        account_id=ACCOUNT,
                        kind=sync_pb2.SYNC_KIND_MANUAL,
                        confirmation_token="nope",
                    )
                )
            manual = await sync.StartSync(
                sync_pb2.StartSyncRequest(
                    account_id=ACCOUNT,
                    kind=sync_pb2.SYNC_KIND_MANUAL,
                    confirmation_token=estimate.confirmation_token,
                )
            )
            report = await _watch(sync, manual.sync.sync_id)
            assert report.state == sync_pb2.SYNC_STATE_SUCCEEDED, report.error
            invoice_report = next(p for p in report.objects if p.object_type == 2)
            assert invoice_report.updated == 20
            assert invoice_report.deleted == 5
            assert invoice_report.repaired == 25
            stored = await _store_invoices(db, schema)
            assert aged in stored  # aged out of the window, not deleted
            sandbox_now = {
                str(r["recordno"]): r["values"]
                for r in await _sandbox_rows(http, suite, "ARINVOICE")
            }
            assert not set(gone) & set(stored)
            assert all(_matches(stored[k], sandbox_now[k]) for k in drifted[5:])
            payment_report = next(
                p for p in report.objects if p.object_type == common_pb2.OBJECT_TYPE_AR_PAYMENT
            )
            assert payment_report.updated == 1
            states = {
                p.record_no: p.state
                for p in (
                    await sync.ListPayments(
                        sync_pb2.ListPaymentsRequest(
                            account_id=ACCOUNT, page=common_pb2.PageRequest(page_size=1000)
                        )
                    )
                ).payments
            }
            assert states.pop(reversed_payment) == ar_pb2.PAYMENT_STATE_REVERSED
            assert set(states.values()) == {ar_pb2.PAYMENT_STATE_POSTED}

            # 6. Level 2: once the tax field is named, the next full sync brings the tax amounts;
            #    Level 3 is refused with a clear error.
            with pytest.raises(Exception, match="Level 3 data is not supported"):
                await sync.UpdatePreferences(
                    sync_pb2.UpdatePreferencesRequest(
                        preferences=sync_pb2.Preferences(account_id=ACCOUNT, level3_field="LINES"),
                        update_mask=field_mask_pb2.FieldMask(paths=["level3_field"]),
                    )
                )
            await sync.UpdatePreferences(
                sync_pb2.UpdatePreferencesRequest(
                    preferences=sync_pb2.Preferences(
                        account_id=ACCOUNT, level2_tax_field="TAX_AMOUNT"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["level2_tax_field"]),
                )
            )
            estimate = await sync.EstimateSync(sync_pb2.EstimateSyncRequest(account_id=ACCOUNT))
            manual = await sync.StartSync(
                sync_pb2.StartSyncRequest(
                    account_id=ACCOUNT,
                    kind=sync_pb2.SYNC_KIND_MANUAL,
                    confirmation_token=estimate.confirmation_token,
                )
            )
            assert (await _watch(sync, manual.sync.sync_id)).state == sync_pb2.SYNC_STATE_SUCCEEDED
            stored = await _store_invoices(db, schema)
            # (The aged-out record is outside the window: a full sync does not read it.)
            taxed = [
                k
                for k, v in sandbox_now.items()
                if k in stored and k != aged and v.get("TAX_AMOUNT")
            ]
            assert taxed
            assert all(
                stored[k]["tax_minor"] == _minor(sandbox_now[k]["TAX_AMOUNT"]) for k in taxed
            )
            # An event from a template set up before the tax field was named lacks it: its
            # record is read from Intacct, not stored without its tax.
            retaxed = taxed[0]
            await _admin(
                http,
                suite,
                "PUT",
                f"/companies/{company}/records/ARINVOICE/{retaxed}",
                json={"values": {"DOCNUMBER": f"PO-TAXED-{retaxed}"}},
            )
            current = {
                str(r["recordno"]): r["values"]
                for r in await _sandbox_rows(http, suite, "ARINVOICE")
            }[retaxed]
            untaxed_fields = read_fields(BY_NAME["ARINVOICE"], "")
            assert "TAX_AMOUNT" not in untaxed_fields
            async with http.post(
                next(s.url for s in setup.events),
                data={
                    "object": "ARINVOICE",
                    "action": "set",
                    **{f: str(current.get(f, "")) for f in untaxed_fields},
                    "RECORDNO": retaxed,
                },
            ) as reply:
                assert reply.status == 202, await reply.text()

            async def changed_taxed() -> bool:
                row = (await _store_invoices(db, schema)).get(retaxed)
                return row is not None and row["po_number"] == f"PO-TAXED-{retaxed}"

            await _until(changed_taxed, 30, "the taxed invoice's change")
            row = (await _store_invoices(db, schema))[retaxed]
            assert row["tax_minor"] == _minor(sandbox_now[retaxed]["TAX_AMOUNT"])

            # 7. A record Intacct refuses lands in the unsynced registry; re-sync fixes it.
            victim = drifted[10]
            token_url = next(s.url for s in setup.events)

            async def key_event(action: str, key: str) -> None:
                """A smart event carrying only the invoice's key (it is read from Intacct)."""
                async with http.post(
                    token_url,
                    data=f"object=ARINVOICE&action={action}&RECORDNO={key}",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                ) as reply:
                    assert reply.status == 202

            async def failing(*keys: str) -> None:
                """Intacct refuses to read these invoices (none when none are given)."""
                await _admin(
                    http,
                    suite,
                    "PUT",
                    f"/companies/{company}/faults",
                    json={"failing_records": [f"ARINVOICE:{k}" for k in keys]},
                )

            await failing(victim)
            await key_event("set", victim)

            async def registered() -> bool:
                listed = await sync.ListUnsynced(sync_pb2.ListUnsyncedRequest(account_id=ACCOUNT))
                return any(r.record_no == victim for r in listed.records)

            await _until(registered, 30, "the unsynced entry")
            unsynced = await sync.ListUnsynced(sync_pb2.ListUnsyncedRequest(account_id=ACCOUNT))
            entry = next(r for r in unsynced.records if r.record_no == victim)
            assert f"Validation failed for {victim}" in entry.reason
            assert entry.direction == sync_pb2.SYNC_DIRECTION_FROM_INTACCT
            assert entry.kind == sync_pb2.UNSYNCED_KIND_FAILURE
            await asyncio.sleep(1.5)  # not retried automatically
            still = await sync.ListUnsynced(sync_pb2.ListUnsyncedRequest(account_id=ACCOUNT))
            assert next(r for r in still.records if r.record_no == victim).attempts == 1
            await failing()
            resynced = await sync.ResyncRecord(
                sync_pb2.ResyncRecordRequest(account_id=ACCOUNT, unsynced_id=entry.unsynced_id)
            )
            assert resynced.synced
            assert resynced.record.state == sync_pb2.UNSYNCED_STATE_RESYNCED

            # 8. Records that failed and were then deleted in Intacct are unsynced no
            # more: one by its delete event, one found gone when it is re-synced.
            by_event, by_resync = drifted[11], drifted[12]
            await failing(by_event, by_resync)
            for key in (by_event, by_resync):
                await key_event("set", key)

            async def both_registered() -> bool:
                listed = await sync.ListUnsynced(sync_pb2.ListUnsyncedRequest(account_id=ACCOUNT))
                return {by_event, by_resync} <= {r.record_no for r in listed.records}

            await _until(both_registered, 30, "the two unsynced entries")
            await failing()
            for key in (by_event, by_resync):
                await _admin(http, suite, "DELETE", f"/companies/{company}/records/ARINVOICE/{key}")
            await key_event("delete", by_event)

            async def entries() -> dict[str, sync_pb2.UnsyncedRecord]:
                listed = await sync.ListUnsynced(
                    sync_pb2.ListUnsyncedRequest(account_id=ACCOUNT, include_resolved=True)
                )
                return {r.record_no: r for r in listed.records}

            async def resolved_by_event() -> bool:
                found = (await entries())[by_event]
                return found.state == sync_pb2.UNSYNCED_STATE_RESYNCED

            await _until(resolved_by_event, 30, "the deleted record's entry resolved")
            assert "deleted in Intacct" in (await entries())[by_event].resolution_note
            found_gone = await sync.ResyncRecord(
                sync_pb2.ResyncRecordRequest(
                    account_id=ACCOUNT, unsynced_id=(await entries())[by_resync].unsynced_id
                )
            )
            assert found_gone.synced
            assert found_gone.record.state == sync_pb2.UNSYNCED_STATE_RESYNCED
            assert "deleted in Intacct" in found_gone.record.resolution_note
            for key in (by_event, by_resync):
                assert await db.fetchval(
                    f'SELECT deleted FROM "{schema}".invoices WHERE record_no = $1', key
                )

            # 9. A re-sync while the connector is down says so and changes nothing.
            stuck = drifted[13]
            await failing(stuck)
            await key_event("set", stuck)

            async def stuck_registered() -> bool:
                return stuck in await entries()

            await _until(stuck_registered, 30, "the third unsynced entry")
            connector_process = suite.processes["connector"].process
            connector_process.terminate()
            await asyncio.to_thread(connector_process.wait, 30)
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await sync.ResyncRecord(
                    sync_pb2.ResyncRecordRequest(
                        account_id=ACCOUNT, unsynced_id=(await entries())[stuck].unsynced_id
                    )
                )
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry the re-sync in a minute" in str(down.value.details())
            assert (await entries())[stuck].state == sync_pb2.UNSYNCED_STATE_OPEN
        await db.close()
        await connector_channel.close(None)
        await sync_channel.close(None)


async def _async_len(items: list[Any], want: int) -> bool:
    return len(items) >= want
