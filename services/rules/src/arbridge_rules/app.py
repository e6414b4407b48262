"""Composition root of the rules service: builds its parts and hands them to the runtime."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from arbridge.connector.v1 import connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2_grpc
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge.sync.v1 import sync_pb2_grpc
from arbridge_rules.explain import Insight
from arbridge_rules.intacct_rules import IntacctRules
from arbridge_rules.rules import RuleStore
from arbridge_rules.scheduler import Scheduler
from arbridge_rules.servicer import RulesService
from arbridge_rules.settings import Settings
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.jetstream import ConsumerSpec
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings
from arbridge_runtime.workers import run_passes


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the service's gRPC API, consumers and workers on the runtime."""
    sync_channel = service_channel(settings.sync_target, settings.runtime.service_token)
    ctx.exit_stack.push_async_callback(sync_channel.close, None)
    payments_channel = service_channel(
        settings.payments_target, settings.runtime.service_token, deadline=150
    )
    ctx.exit_stack.push_async_callback(payments_channel.close, None)
    connector_channel = service_channel(
        settings.connector_target, settings.runtime.service_token, deadline=300
    )
    ctx.exit_stack.push_async_callback(connector_channel.close, None)
    intacct_rules = IntacctRules(
        ctx.pool,
        connector_pb2_grpc.ConnectorServiceStub(connector_channel),
        poll_seconds=settings.intacct_poll_seconds,
    )
    store = RuleStore(ctx.pool)
    scheduler = Scheduler(
        ctx.pool,
        ctx.outbox,
        sync_pb2_grpc.SyncServiceStub(sync_channel),
        payments_pb2_grpc.PaymentsServiceStub(payments_channel),
        lease_seconds=settings.lease_seconds,
        in_progress_retry=timedelta(seconds=settings.in_progress_retry_seconds),
        faults=ctx.faults,
    )
    ctx.grpc.add_service(
        rules_pb2_grpc.add_RulesServiceServicer_to_server,
        RulesService(store, Insight(ctx.pool, scheduler, store)),
        rules_pb2.DESCRIPTOR.services_by_name["RulesService"].full_name,
    )
    for durable, stream, subjects, handler in (
        ("rules-accounts", "CONNECTOR", ("connector.account.>",), scheduler.on_account),
        ("rules-customers", "AR", ("ar.customer.>",), scheduler.on_customer),
        ("rules-invoices", "AR", ("ar.invoice.>",), scheduler.on_invoice),
        ("rules-methods", "PAYMENTS", ("payments.method.>",), scheduler.on_methods),
        ("rules-charges", "PAYMENTS", ("payments.charge.failed",), scheduler.on_charge_failed),
        ("rules-intacct", "SYNC", ("sync.intacct_rule.>",), intacct_rules.on_rule_event),
    ):
        # Evaluations are quick: a replica that dies holding a batch hands it back soon.
        ctx.add_consumer(
            ConsumerSpec(durable, stream, subjects, batch=64, ack_wait_seconds=20), handler
        )

    async def charging(stop: asyncio.Event) -> None:
        await run_passes(stop, settings.tick_seconds, scheduler.charge_due)

    async def reevaluating(stop: asyncio.Event) -> None:
        await run_passes(stop, settings.tick_seconds, scheduler.reevaluate_due)

    async def intacct_sync(stop: asyncio.Event) -> None:
        await run_passes(stop, settings.tick_seconds, intacct_rules.sync_due)

    ctx.add_worker("auto-charges", charging)
    ctx.add_worker("intacct-rules", intacct_sync)
    ctx.add_worker("reevaluation", reevaluating)


def definition(settings: Settings) -> ServiceDefinition:
    async def build_with_settings(ctx: ServiceContext) -> None:
        await build(settings, ctx)

    return ServiceDefinition(
        name="rules",
        migrations=load_migrations("arbridge_rules", "rules"),
        streams=(streams.CONNECTOR, streams.AR, streams.SYNC, streams.PAYMENTS, streams.RULES),
        build=build_with_settings,
    )


def load() -> tuple[ServiceDefinition, RuntimeSettings]:
    settings = Settings.from_env()
    return definition(settings), settings.runtime


def main() -> None:
    run(load, service="rules")
