"""The connector against the Intacct sandbox: accounts, permissions, reads, writes, limits."""

from __future__ import annotations

import math

import grpc
import grpc.aio
import pytest

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge.connector.v1 import connector_pb2
from arbridge_intacct import request as rq
from arbridge_runtime.paging import streamed_records
from tests.integration.connector.harness import connected_client, connector_harness
from tests.support.intacct import COMPANY, SENDER, SENDER_PW, USER, USER_PW, live_sandbox


async def test_connect_validates_with_a_real_session_and_stores_no_clear_secret(
    database_url: str, unique: str
) -> None:
    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await h.stub.ConnectAccount(h.connect_request(user_password="wrong-password"))
        assert bad.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "Sign-in information is incorrect" in (bad.value.details() or "")
        assert "wrong-password" not in (bad.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await h.stub.ConnectAccount(h.connect_request(account_id="bad id!", company_id=""))
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "account_id must be" in (invalid.value.details() or "")
        assert "company_id is required" in (invalid.value.details() or "")
        reply = await h.stub.ConnectAccount(h.connect_request())
        assert reply.account.state == connector_pb2.CONNECTION_STATE_CONNECTED
        assert reply.account.platform_services is True
        assert not reply.account.multi_entity
        dump = b""
        async with h.pool.acquire() as conn:
            for table in ("accounts", "account_credentials", "outbox", "api_usage"):
                for row in await conn.fetch(f"SELECT * FROM {table}"):
                    dump += repr(list(row.values())).encode()
        assert b"acct-1" in dump
        assert USER_PW.encode() not in dump
        assert SENDER_PW.encode() not in dump
        got = await h.stub.GetAccount(connector_pb2.GetAccountRequest(account_id="acct-1"))
        assert got.account.company_id == COMPANY
        await h.stub.DisconnectAccount(connector_pb2.DisconnectAccountRequest(account_id="acct-1"))
        async with h.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM account_credentials") == 0
            subjects = [
                r["subject"] for r in await conn.fetch("SELECT subject FROM outbox ORDER BY seq")
            ]
        assert subjects == ["connector.account.connected", "connector.account.disconnected"]
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await h.stub.ListEntities(connector_pb2.ListEntitiesRequest(account_id="acct-1"))
        assert gone.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "reconnect" in (gone.value.details() or "")


async def test_permissions_are_reported_one_by_one_with_the_fix(
    database_url: str, unique: str
) -> None:
    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        await h.stub.ConnectAccount(h.connect_request())
        await live.admin(
            "PUT",
            f"/sandbox/companies/{COMPANY}/users/xmlgw-armatic",
            json={
                "permissions": {
                    "ar.invoices": ["List", "View", "Add", "Edit"],
                    "gl.stataccounts": [],
                }
            },
        )
        reply = await h.stub.CheckPermissions(
            connector_pb2.CheckPermissionsRequest(account_id="acct-1")
        )
        by_object = {c.object: c for c in reply.checks}
        assert len(reply.checks) == 13
        assert not reply.all_granted
        assert by_object["Invoices"].status == connector_pb2.PERMISSION_STATUS_MISSING
        assert "grant Post on Invoices" in by_object["Invoices"].fix
        assert "Web Services Users > xmlgw-armatic" in by_object["Invoices"].fix
        assert by_object["Statistical Accounts"].status == connector_pb2.PERMISSION_STATUS_MISSING
        assert by_object["Customers"].status == connector_pb2.PERMISSION_STATUS_GRANTED
        assert by_object["BlueSnapARQueue"].status == connector_pb2.PERMISSION_STATUS_GRANTED
        assert reply.api_calls == 1  # one getUserPermissions answers every check
    async with (
        live_sandbox(platform_services=False) as live,
        connector_harness(database_url, unique + "b", live) as h,
    ):
        await h.stub.ConnectAccount(h.connect_request())
        reply = await h.stub.CheckPermissions(
            connector_pb2.CheckPermissionsRequest(account_id="acct-1")
        )
        queue = next(c for c in reply.checks if c.object == "BlueSnapARQueue")
        assert queue.status == connector_pb2.PERMISSION_STATUS_NOT_APPLICABLE
        assert "Platform Services" in queue.fix
        assert reply.all_granted
        assert not reply.platform_services
        assert "AR Automation only" in queue.fix
        # Finding out failed no Intacct call: nothing asked for an object that is not there.
        assert (await h.stats())["failed_functions"] == {}
        account = await h.stub.GetAccount(connector_pb2.GetAccountRequest(account_id="acct-1"))
        assert not account.account.platform_services


async def test_a_full_read_costs_one_session_and_the_minimum_pages(
    database_url: str, unique: str
) -> None:
    async with (
        live_sandbox(customers=300, invoices=4321) as live,
        connector_harness(database_url, unique, live) as h,
    ):
        await h.stub.ConnectAccount(h.connect_request())
        h.core._clients.clear()  # a fresh replica: no session yet
        await live.admin("POST", "/sandbox/stats/reset")
        total = None
        keys: list[str] = []
        async for message in h.stub.StreamRecords(
            connector_pb2.StreamRecordsRequest(
                account_id="acct-1", object_type=common_pb2.OBJECT_TYPE_AR_INVOICE
            )
        ):
            if message.HasField("total"):
                total = message.total
            for record in streamed_records(message):
                keys.append(record.record_no)
                assert record.HasField("when_modified")
        assert total == 4321 == len(keys) == len(set(keys))
        functions = (await h.stats())["functions"]
        assert functions == {"getAPISession": 1, "query": math.ceil(4321 / 2000)}
        usage = await h.stub.GetApiUsage(connector_pb2.GetApiUsageRequest(account_id="acct-1"))
        by_function = {r.function: r.calls for r in usage.rows}
        assert by_function["query"] >= 3
        assert usage.total_calls == sum(by_function.values())


async def test_a_walk_asks_for_the_next_page_while_the_reader_is_busy(
    database_url: str, unique: str
) -> None:
    import asyncio

    async with connected_client(database_url, unique, invoices=7000) as (h, client):
        live = h.live
        walk = client.stream_query("ARINVOICE", ["RECORDNO"], page_size=2000)
        seen: list[str] = []
        async for _, records in walk:
            seen.extend(str(r["RECORDNO"]) for r in records)
            if len(seen) == 2000:
                # The reader holds the first page: the walk has already asked for the
                # second (its first key is known), and for no more than that.
                for _ in range(500):
                    if (await h.stats())["functions"]["query"] >= 2:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                assert (await h.stats())["functions"]["query"] == 2
        assert len(seen) == len(set(seen)) == 7000
        assert (await h.stats())["functions"]["query"] == math.ceil(7000 / 2000)

        # A reader that stops early leaves no page being fetched behind it.
        await live.admin("PUT", f"/sandbox/companies/{COMPANY}/faults", json={"latency_ms": 300})
        await live.admin("POST", "/sandbox/stats/reset")
        early = client.stream_query("ARINVOICE", ["RECORDNO"], page_size=2000)
        async for _ in early:
            break
        await early.aclose()  # the second page's request is cancelled in flight
        await asyncio.sleep(0.5)
        assert (await h.stats())["functions"]["query"] <= 2
        assert not [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "")
            == "IntacctClient.stream_query.<locals>.page"
        ]


async def test_a_wrong_guess_of_the_next_key_costs_a_call_not_a_record(
    database_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The walk asks for its next page from the last key its answer's bytes show; should
    # the decoded page end elsewhere, that request is dropped and the right one made.
    import arbridge_intacct.client as client_module

    real = client_module.peek_page

    def off_by_one(chunks: list[bytes], key_field: str) -> tuple[int, int] | None:
        found = real(chunks, key_field)
        return None if found is None else (found[0] - 1, found[1])

    monkeypatch.setattr(client_module, "peek_page", off_by_one)
    async with connected_client(database_url, unique, invoices=5000) as (h, client):
        seen = [
            str(r["RECORDNO"])
            async for _, records in client.stream_query("ARINVOICE", ["RECORDNO"])
            for r in records
        ]
        assert len(seen) == len(set(seen)) == 5000
        assert seen == sorted(seen, key=int)
        # Three pages, each but the last guessed wrong once: at most two calls more.
        assert 3 <= (await h.stats())["functions"]["query"] <= 5


async def test_a_walk_keeps_no_page_its_reader_is_done_with() -> None:
    # A page names its successor for the limiter; with a limiter that passes no slots
    # (the client's default) that must not chain every page read so far to the next.
    import gc
    import weakref

    import aiohttp

    from arbridge_intacct.client import Credentials, IntacctClient

    async with live_sandbox(customers=50, invoices=12_000) as live, aiohttp.ClientSession() as http:
        client = IntacctClient(
            http, Credentials(COMPANY, USER, USER_PW, SENDER, SENDER_PW), endpoint=live.endpoint
        )
        pages: list[weakref.ref[object]] = []
        alive: list[int] = []
        async for data, _records in client.stream_query("ARINVOICE", ["RECORDNO"]):
            pages.append(weakref.ref(data))
            del data, _records
            gc.collect()
            alive.append(sum(page() is not None for page in pages))
        assert len(pages) == 6
        assert max(alive) <= 2, alive  # the page being read, and at most the one before


async def test_incremental_reads_use_the_company_time_zone(database_url: str, unique: str) -> None:
    from datetime import UTC, datetime, timedelta

    async with (
        live_sandbox(customers=50, invoices=2000) as live,
        connector_harness(database_url, unique, live) as h,
    ):
        await h.stub.ConnectAccount(h.connect_request(time_zone="America/Los_Angeles"))
        company = live.sandbox.companies[COMPANY]
        since = datetime.now(UTC) - timedelta(days=183)
        expected = {
            str(r.recordno)
            for r in company.tables["ARINVOICE"].rows.values()
            if r.modified_utc.replace(microsecond=0) >= since.replace(microsecond=0)
        }
        request = connector_pb2.StreamRecordsRequest(
            account_id="acct-1", object_type=common_pb2.OBJECT_TYPE_AR_INVOICE
        )
        request.modified_since.FromDatetime(since.replace(tzinfo=None))
        got = [
            r.record_no async for m in h.stub.StreamRecords(request) for r in streamed_records(m)
        ]
        assert 0 < len(expected) < 2000
        assert set(got) == expected


async def test_writes_batch_and_report_each_record(database_url: str, unique: str) -> None:
    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        await h.stub.ConnectAccount(h.connect_request())
        await live.admin(
            "PUT",
            f"/sandbox/companies/{COMPANY}/faults",
            json={"failing_records": ["CUSTOMER:W-0003"]},
        )
        writes = [
            connector_pb2.RecordWrite(
                operation=connector_pb2.WRITE_OPERATION_CREATE,
                idempotency_key=f"k-{i}",
                fields={
                    "CUSTOMERID": f"W-{i:04d}",
                    "NAME": f"Written {i}",
                    "DISPLAYCONTACT.EMAIL1": f"w{i}@example.com",
                },
            )
            for i in range(5)
        ]
        reply = await h.stub.WriteRecords(
            connector_pb2.WriteRecordsRequest(
                account_id="acct-1", object_type=common_pb2.OBJECT_TYPE_CUSTOMER, writes=writes
            )
        )
        oks = [r.ok for r in reply.results]
        assert oks == [True, True, True, False, True]
        failed = reply.results[3]
        assert "W-0003" in failed.errors[0].description2
        assert all(r.record_no for r in reply.results if r.ok)
        company = live.sandbox.companies[COMPANY]
        created = company.find(company.tables["CUSTOMER"].obj, "W-0004")
        assert created is not None
        assert created.values["DISPLAYCONTACT.EMAIL1"] == "w4@example.com"
        again = await h.stub.WriteRecords(
            connector_pb2.WriteRecordsRequest(
                account_id="acct-1", object_type=common_pb2.OBJECT_TYPE_CUSTOMER, writes=writes[:1]
            )
        )
        assert again.results[0].ok
        assert again.results[0].already_applied
        with pytest.raises(grpc.aio.AioRpcError) as no_key:
            await h.stub.WriteRecords(
                connector_pb2.WriteRecordsRequest(
                    account_id="acct-1",
                    object_type=common_pb2.OBJECT_TYPE_CUSTOMER,
                    writes=[
                        connector_pb2.RecordWrite(
                            operation=connector_pb2.WRITE_OPERATION_CREATE, fields={"NAME": "x"}
                        )
                    ],
                )
            )
        assert no_key.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_payment_posting_is_idempotent(database_url: str, unique: str) -> None:
    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        await h.stub.ConnectAccount(h.connect_request())
        company = live.sandbox.companies[COMPANY]
        invoice = next(
            r
            for r in company.tables["ARINVOICE"].rows.values()
            if r.values["CURRENCY"] == "USD"
            and float(r.values["TRX_TOTALDUE"]) > 10
            and not r.entity
        )
        due_minor = 1000
        request = connector_pb2.PostArPaymentRequest(
            account_id="acct-1",
            idempotency_key="charge-42",
            customer_id=invoice.values["CUSTOMERID"],
            amount=common_pb2.Money(amount_minor=due_minor, currency="USD"),
            bank_account_id="BOA-USD",
            received_date="2026-11-20",
            payment_method="Credit Card",
            applications=[
                ar_pb2.PaymentApplication(
                    invoice_record_no=str(invoice.recordno),
                    amount=common_pb2.Money(amount_minor=due_minor, currency="USD"),
                )
            ],
        )
        first = await h.stub.PostArPayment(request)
        second = await h.stub.PostArPayment(request)
        assert first.payment_record_no
        assert not first.already_posted
        assert second.already_posted
        assert second.payment_record_no == first.payment_record_no
        payments = [
            r
            for r in company.tables["ARPYMT"].rows.values()
            if r.values.get("DOCNUMBER", "").startswith("ARB-")
        ]
        assert len(payments) == 1
        after = company.tables["ARINVOICE"].rows[invoice.recordno]
        assert float(after.values["TRX_TOTALPAID"]) == float(invoice.values["TRX_TOTALPAID"]) + 10
        # A moment is dated on the company's calendar (Los Angeles): 02:30 UTC on the
        # 21st is the evening of the 20th there.
        late = connector_pb2.PostArPaymentRequest()
        late.CopyFrom(request)
        late.idempotency_key = "charge-43"
        late.ClearField("received_date")
        late.received_at.FromJsonString("2026-11-21T02:30:00Z")
        posted = await h.stub.PostArPayment(late)
        dated = company.tables["ARPYMT"].rows[int(posted.payment_record_no)]
        assert dated.values["RECEIPTDATE"] == "11/20/2026"
        both = connector_pb2.PostArPaymentRequest()
        both.CopyFrom(late)
        both.received_date = "2026-11-21"
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await h.stub.PostArPayment(both)
        assert twice.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not both" in (twice.value.details() or "")
        bad = connector_pb2.PostArPaymentRequest()
        bad.CopyFrom(request)
        bad.amount.amount_minor = 999
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            await h.stub.PostArPayment(bad)
        assert mismatch.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "add up to" in (mismatch.value.details() or "")


async def test_custom_fields_are_written_back(database_url: str, unique: str) -> None:
    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        await h.stub.ConnectAccount(h.connect_request())
        company = live.sandbox.companies[COMPANY]
        invoice = min(company.tables["ARINVOICE"].rows)
        customer = min(company.tables["CUSTOMER"].rows)
        reply = await h.stub.UpdateCustomFields(
            connector_pb2.UpdateCustomFieldsRequest(
                account_id="acct-1",
                idempotency_key="links-1",
                updates=[
                    connector_pb2.CustomFieldUpdate(
                        object_type=common_pb2.OBJECT_TYPE_AR_INVOICE,
                        record_no=str(invoice),
                        values={"PAYMENT_LINK": "https://pay.example/i/1"},
                    ),
                    connector_pb2.CustomFieldUpdate(
                        object_type=common_pb2.OBJECT_TYPE_CUSTOMER,
                        record_no=str(customer),
                        values={"PAY_BALANCE_LINK": "https://pay.example/b/1"},
                    ),
                ],
            )
        )
        assert all(r.ok for r in reply.results)
        assert (
            company.tables["ARINVOICE"].rows[invoice].values["PAYMENT_LINK"]
            == "https://pay.example/i/1"
        )
        assert (
            company.tables["CUSTOMER"].rows[customer].values["PAY_BALANCE_LINK"]
            == "https://pay.example/b/1"
        )


async def test_key_rotation_reencrypts_every_account(database_url: str, unique: str) -> None:
    from arbridge_connector.crypto import CredentialCipher, new_key_spec, parse_keys

    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        await h.stub.ConnectAccount(h.connect_request("a1"))
        await h.stub.ConnectAccount(h.connect_request("a2"))
        old_primary = h.core.cipher.primary
        old_keys = list(h.core.cipher._keys.items())
        h.core.cipher = CredentialCipher(parse_keys(new_key_spec("k9")) + old_keys)
        reply = await h.stub.RotateEncryptionKey(connector_pb2.RotateEncryptionKeyRequest())
        assert reply.rotated == 2
        assert reply.key_id == "k9"
        async with h.pool.acquire() as conn:
            kids = {r["key_id"] for r in await conn.fetch("SELECT key_id FROM account_credentials")}
        assert kids == {"k9"} != {old_primary}
        h.core.cipher = CredentialCipher([("k9", h.core.cipher._keys["k9"])])  # old key retired
        h.core._clients.clear()
        entities = await h.stub.ListEntities(connector_pb2.ListEntitiesRequest(account_id="a1"))
        assert entities.entities == []


async def test_the_concurrency_limit_holds_across_replicas(database_url: str, unique: str) -> None:
    import asyncio

    from arbridge_connector.core import Connector
    from arbridge_connector.objects import object_for

    async with (
        live_sandbox() as live,
        connector_harness(database_url, unique, live, concurrency=2) as h,
    ):
        await h.stub.ConnectAccount(h.connect_request())
        await live.admin("PUT", f"/sandbox/companies/{COMPANY}/faults", json={"latency_ms": 100})
        await live.admin("POST", "/sandbox/stats/reset")
        # A second replica: its own HTTP client and sessions, the same database.
        other = Connector(
            pool=h.pool,
            http=h.core.http,
            cipher=h.core.cipher,
            outbox=h.core.outbox,
            default_endpoint=live.endpoint,
            concurrency=2,
            rate_per_second=1000,
        )
        obj = object_for(common_pb2.OBJECT_TYPE_CUSTOMER)
        await asyncio.gather(
            *(replica.get_records("acct-1", obj, ["1"], []) for replica in [h.core, other] * 10)
        )
        stats = await h.stats()
        assert stats["functions"]["read"] == 20
        assert stats["max_concurrency"] == 2  # never 3 or more, across both replicas


async def test_sessions_are_renewed_before_they_time_out(database_url: str, unique: str) -> None:
    from datetime import timedelta

    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        await h.stub.ConnectAccount(h.connect_request())
        client = await h.core.client("acct-1")
        await live.admin("POST", "/sandbox/stats/reset")
        await client.execute([rq_function()])
        await client.execute([rq_function()])
        assert (await h.stats())["functions"].get("getAPISession", 0) == 0  # reused
        client.refresh_margin = timedelta(hours=1)  # as if the session were about to end
        await client.execute([rq_function()])
        await client.execute([rq_function()])
        assert (await h.stats())["functions"]["getAPISession"] == 2


def rq_function() -> rq.Function:
    return rq.Function("i", rq.inspect("CUSTOMER"))


async def test_invoice_pdfs_are_printed_by_intacct_and_cached_per_invoice_version(
    database_url: str, unique: str
) -> None:
    import io
    from datetime import UTC, datetime

    from google.protobuf.timestamp_pb2 import Timestamp
    from pypdf import PdfReader

    async with live_sandbox() as live, connector_harness(database_url, unique, live) as h:
        await h.stub.ConnectAccount(h.connect_request())
        company = live.sandbox.companies[COMPANY]
        record_no = min(company.tables["ARINVOICE"].rows)
        values = company.tables["ARINVOICE"].rows[record_no].values

        async def pdf(version: datetime | None) -> bytes:
            request = connector_pb2.GetInvoicePdfRequest(
                account_id="acct-1", invoice_record_no=str(record_no)
            )
            if version is not None:
                stamp = Timestamp()
                stamp.FromDatetime(version)
                request.invoice_modified_at.CopyFrom(stamp)
            return bytes((await h.stub.GetInvoicePdf(request)).pdf)

        async def printed() -> int:
            return int((await h.stats())["functions"].get("retrievepdf", 0))

        first_version = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        first = await pdf(first_version)
        text = PdfReader(io.BytesIO(first)).pages[0].extract_text()
        assert "AR INVOICE" in text
        assert f"Invoice number: {values['RECORDID']}" in text
        assert f"Amount due: {values['TRX_TOTALDUE']}" in text
        assert await pdf(first_version) == first  # the same version: from the cache
        assert await printed() == 1
        await pdf(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))  # the invoice changed
        await pdf(None)  # no version known: always asked
        assert await printed() == 3

        # A Sales Invoice prints with the Order Entry template, found by its AR record.
        sales = next(
            r.values
            for r in company.tables["SODOCUMENT"].rows.values()
            if r.values.get("PRRECORDKEY")
        )
        reply = await h.stub.GetInvoicePdf(
            connector_pb2.GetInvoicePdfRequest(
                account_id="acct-1",
                invoice_record_no=sales["PRRECORDKEY"],
                source=common_pb2.INVOICE_SOURCE_SALES_INVOICE,
            )
        )
        text = PdfReader(io.BytesIO(reply.pdf)).pages[0].extract_text()
        assert "SALES INVOICE" in text
        assert f"Invoice number: {sales['DOCNO']}" in text
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.GetInvoicePdf(
                connector_pb2.GetInvoicePdfRequest(
                    account_id="acct-1", invoice_record_no="99999999"
                )
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "No AR Invoice with key 99999999" in str(err.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.GetInvoicePdf(
                connector_pb2.GetInvoicePdfRequest(account_id="acct-1", invoice_record_no="INV-1")
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
