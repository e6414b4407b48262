"""Composition root of the rules service: builds its parts and hands them to the runtime."""

from __future__ import annotations

from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge_rules.servicer import RulesService
from arbridge_rules.settings import Settings
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the service's gRPC API, consumers and workers on the runtime."""
    ctx.grpc.add_service(
        rules_pb2_grpc.add_RulesServiceServicer_to_server,
        RulesService(),  # type: ignore[abstract]  # v1 methods not built yet answer UNIMPLEMENTED
        rules_pb2.DESCRIPTOR.services_by_name["RulesService"].full_name,
    )


def definition(settings: Settings) -> ServiceDefinition:
    async def build_with_settings(ctx: ServiceContext) -> None:
        await build(settings, ctx)

    return ServiceDefinition(
        name="rules",
        migrations=load_migrations("arbridge_rules", "rules"),
        streams=(
            streams.AR,
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
