"""Under Intacct's bad days: throttling, 5xx, a 524, expiring sessions, latency, a cap of 2."""

from __future__ import annotations

import time

import pytest

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2
from arbridge_runtime.paging import streamed_records
from tests.integration.connector.harness import connector_harness
from tests.support.intacct import COMPANY, live_sandbox

FAULTS = {
    "throttle_rate": 0.10,
    "error_5xx_rate": 0.05,
    "error_524_next": 1,
    "session_expiry_calls": 100,
    "latency_ms": 150,
    "concurrency_limit": 2,
}


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_stream_and_writes_are_exactly_once_under_faults(
    database_url: str, unique: str
) -> None:
    async with (
        live_sandbox(customers=2000, invoices=100_000, seed=11) as live,
        connector_harness(database_url, unique, live, concurrency=2) as h,
    ):
        await h.stub.ConnectAccount(h.connect_request())
        await live.admin("PUT", f"/sandbox/companies/{COMPANY}/faults", json=FAULTS)
        await live.admin("POST", "/sandbox/stats/reset")
        started = time.monotonic()
        seen: list[str] = []
        total = None
        async for message in h.stub.StreamRecords(
            connector_pb2.StreamRecordsRequest(
                account_id="acct-1", object_type=common_pb2.OBJECT_TYPE_AR_INVOICE
            )
        ):
            if message.HasField("total"):
                total = message.total
            seen.extend(r.record_no for r in streamed_records(message))
        stream_seconds = time.monotonic() - started
        company = live.sandbox.companies[COMPANY]
        expected = {str(k) for k in company.tables["ARINVOICE"].rows}
        assert total == 100_000
        assert len(seen) == 100_000, "records were repeated or lost"
        assert set(seen) == expected
        stats = await h.stats()
        # The faults really happened, and the stream rode through them.
        assert stats["throttled"] > 0
        assert stats["server_errors"] > 0
        assert stats["gateway_timeouts"] == 1
        assert stats["max_concurrency"] <= 2

        await live.admin("PUT", f"/sandbox/companies/{COMPANY}/faults", json={"error_524_next": 1})
        writes = [
            connector_pb2.RecordWrite(
                operation=connector_pb2.WRITE_OPERATION_CREATE,
                idempotency_key=f"batch-{i}",
                fields={"CUSTOMERID": f"B-{i:05d}", "NAME": f"Batch {i}"},
            )
            for i in range(500)
        ]
        reply = await h.stub.WriteRecords(
            connector_pb2.WriteRecordsRequest(
                account_id="acct-1", object_type=common_pb2.OBJECT_TYPE_CUSTOMER, writes=writes
            )
        )
        assert all(r.ok for r in reply.results)
        # Retried after the 524 under the same controlids: Intacct refused the repeats.
        assert any(r.already_applied for r in reply.results)
        again = await h.stub.WriteRecords(
            connector_pb2.WriteRecordsRequest(
                account_id="acct-1", object_type=common_pb2.OBJECT_TYPE_CUSTOMER, writes=writes
            )
        )
        assert all(r.ok and r.already_applied for r in again.results)
        created = [
            r
            for r in company.tables["CUSTOMER"].rows.values()
            if r.values.get("CUSTOMERID", "").startswith("B-")
        ]
        assert len(created) == 500
        assert len({r.values["CUSTOMERID"] for r in created}) == 500
        print(f"streamed 100,000 invoices under faults in {stream_seconds:.1f}s; stats {stats}")
