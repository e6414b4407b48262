"""An in-process connector (real gRPC server, real PostgreSQL) wired to a live Intacct sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import grpc.aio

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge_connector.core import Connector
from arbridge_connector.crypto import CredentialCipher, new_key_spec, parse_keys
from arbridge_connector.servicer import ConnectorService
from arbridge_intacct.client import IntacctClient
from arbridge_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.grpc_server import GrpcServer
from arbridge_runtime.jetstream import Outbox
from arbridge_runtime.metrics import ServiceMetrics
from tests.conftest import TOKEN
from tests.support.intacct import (
    COMPANY,
    SENDER,
    SENDER_PW,
    USER,
    USER_PW,
    LiveSandbox,
    live_sandbox,
)


@dataclass
class ConnectorHarness:
    core: Connector
    stub: connector_pb2_grpc.ConnectorServiceAsyncStub
    pool: asyncpg.Pool
    live: LiveSandbox

    def connect_request(
        self, account_id: str = "acct-1", **overrides: str
    ) -> connector_pb2.ConnectAccountRequest:
        fields = {
            "account_id": account_id,
            "company_id": COMPANY,
            "user_id": USER,
            "user_password": USER_PW,
            "sender_id": SENDER,
            "sender_password": SENDER_PW,
            "endpoint_url": self.live.endpoint,
            **overrides,
        }
        return connector_pb2.ConnectAccountRequest(**fields)

    async def stats(self) -> dict[str, Any]:
        _, body = await self.live.admin("GET", f"/sandbox/stats?company={COMPANY}")
        companies = body["companies"]
        assert isinstance(companies, dict)
        return companies.get(COMPANY, {"functions": {}})  # type: ignore[no-any-return]


@asynccontextmanager
async def connector_harness(
    database_url: str, schema: str, live: LiveSandbox, *, concurrency: int = 2, rate: float = 1000.0
) -> AsyncIterator[ConnectorHarness]:
    await migrate(
        database_url,
        schema,
        [*runtime_migrations(), *load_migrations("arbridge_connector", "connector")],
    )
    pool = await create_pool(database_url, schema, max_size=20)
    http = aiohttp.ClientSession()
    core = Connector(
        pool=pool,
        http=http,
        cipher=CredentialCipher(parse_keys(new_key_spec())),
        outbox=Outbox(),
        default_endpoint=live.endpoint,
        concurrency=concurrency,
        rate_per_second=rate,
    )
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        tokens=[TOKEN],
        metrics=ServiceMetrics("connector-test"),
        reflection_enabled=False,
    )
    server.add_service(
        connector_pb2_grpc.add_ConnectorServiceServicer_to_server,
        ConnectorService(core),
        "arbridge.connector.v1.ConnectorService",
    )
    port = await server.start()
    await server.set_serving()
    channel: grpc.aio.Channel = service_channel(f"127.0.0.1:{port}", TOKEN, deadline=600)
    try:
        yield ConnectorHarness(core, connector_pb2_grpc.ConnectorServiceStub(channel), pool, live)
    finally:
        await channel.close(None)
        await server.stop(0)
        await http.close()
        await pool.close()


@asynccontextmanager
async def connected_client(
    database_url: str, schema: str, *, invoices: int
) -> AsyncIterator[tuple[ConnectorHarness, IntacctClient]]:
    """A sandbox with ``invoices`` invoices, its account connected: the harness and the
    account's Intacct client, with the sandbox's call counts reset."""
    async with (
        live_sandbox(customers=50, invoices=invoices) as live,
        connector_harness(database_url, schema, live) as h,
    ):
        await h.stub.ConnectAccount(h.connect_request())
        client = await h.core.client("acct-1")
        await live.admin("POST", "/sandbox/stats/reset")
        yield h, client
