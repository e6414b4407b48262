"""Composition root of the gateway service: builds its parts and hands them to the runtime."""

from __future__ import annotations

from arbridge_gateway.settings import Settings
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the service's gRPC API, consumers and workers on the runtime."""
    del (
        ctx
    )  # the gateway's HTTP edge is built by its own issue; health and metrics come from the runtime


def definition(settings: Settings) -> ServiceDefinition:
    async def build_with_settings(ctx: ServiceContext) -> None:
        await build(settings, ctx)

    return ServiceDefinition(
        name="gateway",
        migrations=load_migrations("arbridge_gateway", "gateway"),
        streams=(
            streams.INTACCT_EVENTS,
            streams.CARD_EVENTS,
        ),
        build=build_with_settings,
    )


def load() -> tuple[ServiceDefinition, RuntimeSettings]:
    settings = Settings.from_env()
    return definition(settings), settings.runtime


def main() -> None:
    run(load)
