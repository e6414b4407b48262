"""Link and next-auto-charge write-back to Intacct custom fields, coalesced, only when preferred."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from google.protobuf import field_mask_pb2

from arbridge.events.v1 import events_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.jetstream import MSG_ID, Namespace, connect
from tests.conftest import TOKEN
from tests.support.suite import connect_and_sync, running_suite


async def test_links_and_next_charge_are_written_back_coalesced(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    with running_suite(
        tmp_path, database_url, nats_url, unique, customers=40, invoices=150
    ) as suite:
        company = suite.sandbox["company_id"]
        admin = suite.sandbox_admin
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        initial = await connect_and_sync(suite, "acme", timeout=120)
        assert initial.state == sync_pb2.SYNC_STATE_SUCCEEDED, initial.error
        # The set-up document for Intacct admins, from the command line.
        document = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "arbridge_cli",
                "smart-events",
                "acme",
                "--gateway-url",
                "https://hooks.example.com",
                "--target",
                suite.target("sync"),
                "--token",
                TOKEN,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert document.returncode == 0, document.stderr
        assert "https://hooks.example.com/v1/intacct/acme/" in document.stdout
        assert "{!ARINVOICE.TRX_TOTALDUE!}" in document.stdout
        invoices = (
            await sync.ListInvoices(sync_pb2.ListInvoicesRequest(account_id="acme"))
        ).invoices
        invoice = invoices[0]
        nc = await connect(nats_url, "writeback-test")
        js = nc.jetstream()
        ns = Namespace(unique)

        async def link(url: str, number: int, kind: str = "payment") -> None:
            event = events_pb2.LinkChanged(
                account_id="acme",
                link_id=f"l{number}",
                kind=kind,
                customer_id=invoice.customer_id,
                invoice_record_no=invoice.record_no,
                url=url,
            )
            await js.publish(
                ns.subject("payments.link.changed"),
                event.SerializeToString(),
                headers={MSG_ID: f"{unique}-link-{number}"},
            )

        async with aiohttp.ClientSession() as http:

            async def custom(obj: str, key: str) -> dict[str, str]:
                async with http.get(f"{admin}/companies/{company}/records/{obj}") as reply:
                    rows = (await reply.json())["records"]
                return next(r["values"] for r in rows if str(r["recordno"]) == key)

            await link("https://pay.example/ignored", 0)  # preference off: nothing is written
            await asyncio.sleep(2)
            assert "PAYMENT_LINK" not in await custom("ARINVOICE", invoice.record_no)
            await sync.UpdatePreferences(
                sync_pb2.UpdatePreferencesRequest(
                    # The daily sync scheduled in a zone a day ahead of the company's:
                    # dates written to Intacct stay on the company's calendar.
                    preferences=sync_pb2.Preferences(
                        account_id="acme", write_back_links=True, time_zone="Pacific/Kiritimati"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["write_back_links", "time_zone"]),
                )
            )
            async with http.post(f"{admin}/stats/reset"):
                pass
            for number in range(1, 31):
                await link(f"https://pay.example/i/{number}", number)
            await link("https://pay.example/balance/7", 99, kind="pay_balance")
            charge = events_pb2.NextAutoChargeChanged(
                account_id="acme",
                invoice_record_no=invoice.record_no,
                customer_id=invoice.customer_id,
            )
            charge.next_charge_at.FromJsonString("2026-12-01T18:00:00Z")
            charge.customer_next_charge_at.FromJsonString("2026-12-01T18:00:00Z")
            await js.publish(
                ns.subject("rules.schedule.changed"),
                charge.SerializeToString(),
                headers={MSG_ID: f"{unique}-charge"},
            )
            deadline = time.monotonic() + 30
            values: dict[str, str] = {}
            while time.monotonic() < deadline:
                values = await custom("ARINVOICE", invoice.record_no)
                if (
                    values.get("PAYMENT_LINK") == "https://pay.example/i/30"
                    and values.get("NEXT_AUTO_CHARGE") == "12/01/2026"
                ):
                    break
                await asyncio.sleep(0.2)
            assert values.get("PAYMENT_LINK") == "https://pay.example/i/30"
            # 10:00 in Los Angeles (08:00 on 12/02 in Kiritimati)
            assert values.get("NEXT_AUTO_CHARGE") == "12/01/2026"
            customer = await custom(
                "CUSTOMER",
                next(
                    str(r)
                    for r in [await _customer_record(http, admin, company, invoice.customer_id)]
                ),
            )
            assert customer.get("PAY_BALANCE_LINK") == "https://pay.example/balance/7"
            async with http.get(f"{admin}/stats?company={company}") as reply:
                functions = (await reply.json())["companies"][company]["functions"]
            # 30 link changes, a balance link and a schedule: coalesced into a few calls.
            assert functions.get("update_invoice", 0) + functions.get("update", 0) <= 8

            # A value Intacct refuses is in the unsynced registry, not retried; re-synced
            # once the cause is fixed, it is written and the entry is resolved.
            async def faults(body: dict[str, object]) -> None:
                async with http.put(f"{admin}/companies/{company}/faults", json=body) as reply:
                    assert reply.status == 200, await reply.text()

            await faults({"failing_records": [f"ARINVOICE:{invoice.record_no}"]})
            await link("https://pay.example/i/refused", 100)

            async def entry() -> sync_pb2.UnsyncedRecord | None:
                listed = await sync.ListUnsynced(
                    sync_pb2.ListUnsyncedRequest(account_id="acme", include_resolved=True)
                )
                return next(
                    (
                        r
                        for r in listed.records
                        if r.record_no == invoice.record_no
                        and r.direction == sync_pb2.SYNC_DIRECTION_TO_INTACCT
                    ),
                    None,
                )

            deadline = time.monotonic() + 30
            refused = None
            while refused is None and time.monotonic() < deadline:
                refused = await entry()
                await asyncio.sleep(0.2)
            assert refused is not None, "the refused write-back is not in the registry"
            assert "Validation failed" in refused.reason
            await asyncio.sleep(1.5)  # not retried automatically
            values = await custom("ARINVOICE", invoice.record_no)
            assert values.get("PAYMENT_LINK") == "https://pay.example/i/30"
            await faults({"failing_records": []})
            resynced = await sync.ResyncRecord(
                sync_pb2.ResyncRecordRequest(account_id="acme", unsynced_id=refused.unsynced_id)
            )
            assert not resynced.synced  # the write-back sends it
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = await entry()
                values = await custom("ARINVOICE", invoice.record_no)
                if now is not None and now.state == sync_pb2.UNSYNCED_STATE_RESYNCED:
                    break
                await asyncio.sleep(0.2)
            assert values.get("PAYMENT_LINK") == "https://pay.example/i/refused"
            assert now is not None
            assert now.state == sync_pb2.UNSYNCED_STATE_RESYNCED
        await nc.close()


async def _customer_record(
    http: aiohttp.ClientSession, admin: str, company: str, customer_id: str
) -> int:
    async with http.get(f"{admin}/companies/{company}/records/CUSTOMER") as reply:
        rows = (await reply.json())["records"]
    return int(next(r["recordno"] for r in rows if r["values"]["CUSTOMERID"] == customer_id))
