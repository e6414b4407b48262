"""Composition root of the connector service: builds its parts and hands them to the runtime."""

from __future__ import annotations

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge_connector.servicer import ConnectorService
from arbridge_connector.settings import Settings
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the service's gRPC API, consumers and workers on the runtime."""
    ctx.grpc.add_service(
        connector_pb2_grpc.add_ConnectorServiceServicer_to_server,
        ConnectorService(),  # type: ignore[abstract]  # v1 methods not built yet answer UNIMPLEMENTED
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
    run(load)
