"""Composition root of the payments service: builds its parts and hands them to the runtime."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import Counter

from arbridge.connector.v1 import connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.sync.v1 import sync_pb2_grpc
from arbridge_payments.charges import Charges
from arbridge_payments.gateway import CardGateway
from arbridge_payments.links import Links, LinkSigner
from arbridge_payments.methods import PaymentMethods
from arbridge_payments.pages import PageConfig, PayPages
from arbridge_payments.posting import Posting
from arbridge_payments.queue import ChargeQueue
from arbridge_payments.refunds import Refunds
from arbridge_payments.servicer import PaymentsService
from arbridge_payments.settings import Settings
from arbridge_runtime import streams
from arbridge_runtime.db import load_migrations
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.jetstream import ConsumerSpec
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import RuntimeSettings
from arbridge_runtime.workers import run_passes


async def build(settings: Settings, ctx: ServiceContext) -> None:
    """Registers the service's gRPC API, consumers and workers on the runtime."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200, ttl_dns_cache=300))
    ctx.exit_stack.push_async_callback(http.close)
    channel = service_channel(settings.sync_target, settings.runtime.service_token)
    ctx.exit_stack.push_async_callback(channel.close, None)
    connector_channel = service_channel(
        settings.connector_target, settings.runtime.service_token, deadline=120
    )
    ctx.exit_stack.push_async_callback(connector_channel.close, None)
    posting = Posting(
        ctx.pool,
        ctx.outbox,
        connector_pb2_grpc.ConnectorServiceStub(connector_channel),
        base_backoff_seconds=settings.posting_backoff_seconds,
        lease_seconds=settings.posting_lease_seconds,
    )
    gateway = CardGateway(settings.gateway, http)
    sync = sync_pb2_grpc.SyncServiceStub(channel)
    methods = PaymentMethods(ctx.pool, gateway, sync, ctx.outbox, ctx.faults)
    charges = Charges(
        ctx.pool,
        ctx.outbox,
        gateway,
        sync,
        lease_seconds=settings.charge_lease_seconds,
        settle_poll_seconds=settings.settle_poll_seconds,
        faults=ctx.faults,
        outcomes=Counter(
            "arbridge_charges_total",
            "Charges that reached an outcome (succeeded, declined, failed, settling, returned),"
            " by source and method kind",
            ["source", "kind", "outcome"],
            registry=ctx.metrics.registry,
        ),
    )
    refunds = Refunds(
        ctx.pool,
        ctx.outbox,
        gateway,
        charges,
        settle_after_seconds=settings.charge_lease_seconds,
        faults=ctx.faults,
    )
    links = Links(
        ctx.pool,
        ctx.outbox,
        sync,
        LinkSigner(settings.link_secrets, settings.pay_base_url),
        settings.link_ttl_seconds,
    )
    pages = PayPages(
        PageConfig(settings.pay_base_url, settings.gateway_public_url or settings.gateway.base_url),
        links,
        charges,
        methods,
        gateway,
        sync,
        connector_pb2_grpc.ConnectorServiceStub(connector_channel),
    )
    pay_port = await ctx.serve_http(pages.app(), settings.pay_host, settings.pay_port)
    ctx.ready_info["pay_port"] = pay_port
    ctx.listen_lines.append(f"pay pages http://{settings.pay_host}:{pay_port}/l/...")
    ctx.grpc.add_service(
        payments_pb2_grpc.add_PaymentsServiceServicer_to_server,
        PaymentsService(methods, charges, refunds, links, posting),
        payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name,
    )

    async def recovery(stop: asyncio.Event) -> None:
        await run_passes(
            stop,
            settings.recovery_interval_seconds,
            charges.recover_once,
            refunds.recover_once,
            refunds.reconcile_due,
            charges.settle_due,
            links.announce_expired,
            methods.delete_pending_sources,
        )

    ctx.add_worker("charge-recovery", recovery)
    # Card-gateway notifications (ACH settled or returned) through the webhook gateway.
    ctx.add_consumer(
        ConsumerSpec("payments-gateway-notifications", "CARD_EVENTS", ("cards.notifications.>",)),
        charges.on_gateway_notification,
    )

    ctx.add_consumer(
        ConsumerSpec("payments-posting-resync", "SYNC", ("sync.payment.resync_requested",)),
        posting.on_resync_requested,
    )

    async def post_payments(stop: asyncio.Event) -> None:
        await run_passes(stop, 1.0, posting.post_due)

    ctx.add_worker("payment-posting", post_payments)

    queue = ChargeQueue(
        ctx.pool,
        charges,
        connector_pb2_grpc.ConnectorServiceStub(connector_channel),
        poll_seconds=settings.queue_poll_seconds,
    )
    ctx.add_consumer(
        ConsumerSpec("payments-accounts", "CONNECTOR", ("connector.account.>",)),
        queue.on_account_connection,
    )
    ctx.add_consumer(
        ConsumerSpec("payments-charge-queue", "SYNC", ("sync.charge_queue.>",)),
        queue.on_queue_event,
    )

    async def charge_queue(stop: asyncio.Event) -> None:
        await run_passes(stop, 1.0, queue.poll_due)

    ctx.add_worker("charge-queue", charge_queue)


def definition(settings: Settings) -> ServiceDefinition:
    async def build_with_settings(ctx: ServiceContext) -> None:
        await build(settings, ctx)

    return ServiceDefinition(
        name="payments",
        migrations=load_migrations("arbridge_payments", "payments"),
        streams=(
            streams.CARD_EVENTS,
            streams.CONNECTOR,
            streams.AR,
            streams.SYNC,
            streams.PAYMENTS,
        ),
        build=build_with_settings,
    )


def load() -> tuple[ServiceDefinition, RuntimeSettings]:
    settings = Settings.from_env()
    return definition(settings), settings.runtime


def main() -> None:
    run(load, service="payments")
