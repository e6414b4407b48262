"""Composition root of the sync service: builds its parts and hands them to the runtime."""

from __future__ import annotations

from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings
from arbridge_sync.servicer import SyncService
from arbridge_sync.settings import Settings


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the service's gRPC API, consumers and workers on the runtime."""
    ctx.grpc.add_service(
        sync_pb2_grpc.add_SyncServiceServicer_to_server,
        SyncService(),  # type: ignore[abstract]  # v1 methods not built yet answer UNIMPLEMENTED
        sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
    )


def definition(settings: Settings) -> ServiceDefinition:
    async def build_with_settings(ctx: ServiceContext) -> None:
        await build(settings, ctx)

    return ServiceDefinition(
        name="sync",
        migrations=load_migrations("arbridge_sync", "sync"),
        streams=(
            streams.INTACCT_EVENTS,
            streams.CONNECTOR,
            streams.AR,
            streams.SYNC,
            streams.PAYMENTS,
            streams.RULES,
        ),
        build=build_with_settings,
    )


def load() -> tuple[ServiceDefinition, RuntimeSettings]:
    settings = Settings.from_env()
    return definition(settings), settings.runtime


def main() -> None:
    run(load)
