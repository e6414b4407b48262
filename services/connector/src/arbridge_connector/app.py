"""Composition root of the connector: pool, HTTP client, cipher, core and gRPC API."""

from __future__ import annotations

import aiohttp
from prometheus_client import Counter

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge_connector.core import Connector
from arbridge_connector.crypto import CredentialCipher
from arbridge_connector.servicer import ConnectorService
from arbridge_connector.settings import Settings
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the connector's gRPC API on the runtime."""
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=330),
    )
    ctx.exit_stack.push_async_callback(http.close)
    core = Connector(
        pool=ctx.pool,
        http=http,
        cipher=CredentialCipher(list(settings.keys)),
        outbox=ctx.outbox,
        default_endpoint=settings.intacct_endpoint,
        concurrency=settings.concurrency,
        rate_per_second=settings.rate_per_second,
        api_calls=Counter(
            "arbridge_intacct_api_calls_total",
            "Intacct API functions sent, by account and function (what Intacct bills)",
            ["account_id", "function"],
            registry=ctx.metrics.registry,
        ),
    )
    ctx.grpc.add_service(
        connector_pb2_grpc.add_ConnectorServiceServicer_to_server,
        ConnectorService(core),
        connector_pb2.DESCRIPTOR.services_by_name["ConnectorService"].full_name,
    )


def definition(settings: Settings) -> ServiceDefinition:
    async def build_with_settings(ctx: ServiceContext) -> None:
        await build(settings, ctx)

    return ServiceDefinition(
        name="connector",
        migrations=load_migrations("arbridge_connector", "connector"),
        streams=(streams.CONNECTOR,),
        build=build_with_settings,
    )


def load() -> tuple[ServiceDefinition, RuntimeSettings]:
    settings = Settings.from_env()
    return definition(settings), settings.runtime


def main() -> None:
    run(load, service="connector")
