"""Composition root of the sync service: connector channel, job runner, consumers, gRPC API."""

from __future__ import annotations

from prometheus_client import Histogram

from arbridge.connector.v1 import connector_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.ingest import Ingestor
from arbridge_runtime.jetstream import ConsumerSpec
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings
from arbridge_sync import unsynced, writeback
from arbridge_sync.core import SyncCore
from arbridge_sync.jobs import DailyScheduler, JobRunner
from arbridge_sync.servicer import SyncService
from arbridge_sync.settings import Settings


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the sync API, the Intacct-event and account consumers, and the job workers."""
    channel = service_channel(
        settings.connector_target, settings.runtime.service_token, deadline=120
    )
    ctx.exit_stack.push_async_callback(channel.close, None)
    connector = connector_pb2_grpc.ConnectorServiceStub(channel)
    runner = JobRunner(pool=ctx.pool, outbox=ctx.outbox, connector=connector)
    core = SyncCore(
        pool=ctx.pool,
        outbox=ctx.outbox,
        connector=connector,
        jobs=runner,
        webhook_secrets=settings.webhook_secrets,
        lag=Histogram(
            "arbridge_sync_lag_seconds",
            "Time from an Intacct event's arrival to its record in the AR store, by Intacct object",
            ["object"],
            registry=ctx.metrics.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        ),
    )
    ingestor = Ingestor(
        js=ctx.js,
        namespace=ctx.namespace,
        secrets=settings.webhook_secrets,
        max_body_bytes=settings.max_event_bytes,
        publish_timeout=settings.publish_timeout,
    )
    ctx.grpc.add_service(
        sync_pb2_grpc.add_SyncServiceServicer_to_server,
        SyncService(core, ingestor),
        sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
    )
    ctx.add_consumer(
        ConsumerSpec("sync-accounts", "CONNECTOR", ("connector.account.>",), batch=16),
        core.on_account_connection,
    )
    ctx.add_consumer(
        ConsumerSpec(
            "sync-intacct-events", "INTACCT_EVENTS", ("intacct.events.>",), max_deliver=8, batch=64
        ),
        core.on_intacct_event,
    )
    ctx.add_consumer(
        ConsumerSpec("sync-link-writeback", "PAYMENTS", ("payments.link.>",)),
        writeback.on_link_changed,
    )
    ctx.add_consumer(
        ConsumerSpec("sync-schedule-writeback", "RULES", ("rules.schedule.>",)),
        writeback.on_next_auto_charge,
    )
    ctx.add_consumer(
        ConsumerSpec("sync-payment-refusals", "PAYMENTS", ("payments.payment.refused",)),
        unsynced.on_payment_refused,
    )
    ctx.add_consumer(
        ConsumerSpec("sync-payment-postings", "PAYMENTS", ("payments.payment.posted",)),
        unsynced.on_payment_posted,
    )
    ctx.add_consumer(
        ConsumerSpec("sync-payment-reversals", "PAYMENTS", ("payments.payment.reversal_needed",)),
        unsynced.on_reversal_needed,
    )
    ctx.add_worker("writeback", writeback.WriteBack(ctx.pool, connector).run)
    ctx.add_worker("sync-jobs", runner.run)
    ctx.add_worker(
        "daily-scheduler", DailyScheduler(ctx.pool, runner, settings.daily_check_seconds).run
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
    run(load, service="sync")
