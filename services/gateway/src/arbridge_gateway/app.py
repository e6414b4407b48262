"""Composition root of the gateway: the public webhook edge on the runtime."""

from __future__ import annotations

from arbridge_gateway.edge import Edge
from arbridge_gateway.settings import Settings
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.ingest import Ingestor
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Starts the public webhook port; it stops with the service."""
    ingestor = Ingestor(
        js=ctx.js,
        namespace=ctx.namespace,
        secrets=settings.webhook_secrets,
        max_body_bytes=settings.max_body_bytes,
        publish_timeout=settings.publish_timeout,
    )
    edge = Edge(ingestor=ingestor, metrics=ctx.metrics, ready=lambda: ctx.nats.is_connected)
    port = await ctx.serve_http(edge.app(), settings.public_host, settings.public_port)
    ctx.ready_info["public_port"] = port
    ctx.listen_lines.append(f"webhooks http://{settings.public_host}:{port}/v1/intacct/...")


def definition(settings: Settings) -> ServiceDefinition:
    async def build_with_settings(ctx: ServiceContext) -> None:
        await build(settings, ctx)

    return ServiceDefinition(
        name="gateway",
        migrations=load_migrations("arbridge_gateway", "gateway"),
        streams=(streams.INTACCT_EVENTS, streams.CARD_EVENTS),
        build=build_with_settings,
    )


def load() -> tuple[ServiceDefinition, RuntimeSettings]:
    settings = Settings.from_env()
    return definition(settings), settings.runtime


def main() -> None:
    run(load, service="gateway")
