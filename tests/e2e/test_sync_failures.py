"""A sync whose batch cannot be written ends failed, promptly, with the reason; nothing hangs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from arbridge.common.v1 import common_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_devinfra.onboarding import manual_sync
from arbridge_runtime.grpc_client import service_channel
from tests.conftest import TOKEN
from tests.support.suite import connect_and_sync, running_suite


@dataclass
class _Sync:
    sync: sync_pb2_grpc.SyncServiceAsyncStub


async def test_a_batch_postgresql_refuses_fails_the_sync_and_stops_its_readers(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    with running_suite(
        tmp_path, database_url, nats_url, unique, customers=300, invoices=6000
    ) as suite:
        db = await asyncpg.connect(database_url)
        try:
            # Sync's schema exists once the service has started; about one invoice in
            # a hundred is refused by the database.
            await db.execute(
                f'ALTER TABLE "{unique}_sync".invoices ADD CONSTRAINT refuse_some'
                " CHECK (right(record_no, 2) <> '77')"
            )
            finished = await asyncio.wait_for(connect_and_sync(suite, "acme"), 120)
            assert finished.state == sync_pb2.SYNC_STATE_FAILED
            assert "CheckViolationError" in finished.error
            stored = await db.fetchval(f'SELECT count(*) FROM "{unique}_sync".invoices')
            # The service goes on: it answers, and a sync after the fix completes.
            await db.execute(f'ALTER TABLE "{unique}_sync".invoices DROP CONSTRAINT refuse_some')
            channel = service_channel(suite.target("sync"), TOKEN)
            try:
                last = await manual_sync(_Sync(sync_pb2_grpc.SyncServiceStub(channel)), "acme", 120)
            finally:
                await channel.close(None)
            assert last.state == sync_pb2.SYNC_STATE_SUCCEEDED
            invoices = await db.fetchval(
                f'SELECT count(*) FROM "{unique}_sync".invoices WHERE NOT deleted'
            )
            assert stored < invoices  # the refused batch was not written
            assert invoices == sum(
                p.total for p in last.objects if p.object_type == common_pb2.OBJECT_TYPE_AR_INVOICE
            )
        finally:
            await db.close()
