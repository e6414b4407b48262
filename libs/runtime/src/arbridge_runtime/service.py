"""The service runner: one composition root and lifecycle for every service.

A service supplies a :class:`ServiceDefinition` (its name, migrations,
streams and a ``build`` function that registers servicers and workers);
:func:`serve` does the rest in one ``AsyncExitStack``:

1. migrate the service's schema (safe from several replicas at once);
2. open the PostgreSQL pool and the NATS connection, ensure the streams;
3. build the service, start gRPC (health NOT_SERVING), the side port, the
   outbox relay and the consumers;
4. run the start-up checks and only then report SERVING;
5. on SIGTERM or SIGINT: health NOT_SERVING first, a short drain delay so
   load balancers notice, then refuse new calls, stop fetching messages, let
   in-flight calls and messages finish within the grace, and close NATS and
   the pool last.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from arbridge_runtime.db import (
    Migration,
    MigrationError,
    create_pool,
    load_migrations,
    migrate,
    pending,
    quote_ident,
    runtime_migrations,
)
from arbridge_runtime.faults import FaultInjector
from arbridge_runtime.grpc_server import GrpcServer
from arbridge_runtime.http import SidePort, observed
from arbridge_runtime.jetstream import (
    ConsumerSpec,
    Handler,
    JetStreamConsumer,
    Namespace,
    Outbox,
    OutboxRelay,
    StreamSpec,
    connect,
    ensure_streams,
)
from arbridge_runtime.logs import configure_logging
from arbridge_runtime.metrics import ServiceMetrics
from arbridge_runtime.settings import EnvReader, RuntimeSettings, SettingsError
from arbridge_runtime.standalone import write_ready_file
from arbridge_runtime.tracing import configure_tracing, shutdown_tracing

log = structlog.get_logger(__name__)

Worker = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class ServiceContext:
    """What a service's ``build`` receives: every shared resource, built once."""

    settings: RuntimeSettings
    pool: asyncpg.Pool
    nats: NatsClient
    js: JetStreamContext
    namespace: Namespace
    outbox: Outbox
    metrics: ServiceMetrics
    grpc: GrpcServer
    faults: FaultInjector
    exit_stack: AsyncExitStack
    workers: list[tuple[str, Worker]] = field(default_factory=list)
    consumers: list[JetStreamConsumer] = field(default_factory=list)
    startup_checks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    listen_lines: list[str] = field(default_factory=list)
    # Extra facts for the ready file (e.g. a public HTTP port).
    ready_info: dict[str, Any] = field(default_factory=dict)

    def add_consumer(self, spec: ConsumerSpec, handler: Handler) -> JetStreamConsumer:
        consumer = JetStreamConsumer(
            spec=spec,
            handler=handler,
            js=self.js,
            pool=self.pool,
            namespace=self.namespace,
            metrics=self.metrics,
            faults=self.faults,
        )
        self.consumers.append(consumer)
        self.workers.append((f"consumer:{spec.durable}", consumer.run))
        return consumer

    def add_worker(self, name: str, worker: Worker) -> None:
        self.workers.append((name, worker))

    async def serve_http(self, app: web.Application, host: str, port: int) -> int:
        """Serves a public HTTP application until the service stops; returns the bound port
        (``port`` 0 picks a free one). Every request gets a span and the duration metric."""
        app.middlewares.insert(0, observed(self.metrics))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self.exit_stack.push_async_callback(runner.cleanup)
        sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port


@dataclass(frozen=True)
class ServiceDefinition:
    """A service: its name, its schema's migrations, its streams and its build step."""

    name: str
    migrations: Sequence[Migration]
    streams: Sequence[StreamSpec]
    build: Callable[[ServiceContext], Awaitable[None]]


async def _startup_checks(ctx: ServiceContext) -> None:
    async with ctx.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    if not ctx.nats.is_connected:
        raise RuntimeError("NATS is not connected")
    await ctx.js.account_info()
    for check in ctx.startup_checks:
        await check()


async def serve(
    definition: ServiceDefinition, settings: RuntimeSettings, *, stop: asyncio.Event | None = None
) -> int:
    """Runs the service until SIGTERM/SIGINT (or ``stop``); returns the exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    started = time.monotonic()
    metrics = ServiceMetrics(settings.service)
    faults = FaultInjector()
    namespace = Namespace(settings.namespace)

    async with AsyncExitStack() as stack:
        applied = await _schema_ready(definition, settings)
        pool = await create_pool(
            settings.database_url, settings.database_schema, max_size=settings.database_pool_size
        )
        stack.push_async_callback(pool.close)
        nc = await connect(settings.nats_url, f"arbridge-{settings.service}")
        stack.push_async_callback(nc.close)
        js = nc.jetstream(timeout=10.0)
        await ensure_streams(js, namespace, definition.streams)

        grpc_server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            tokens=settings.service_tokens,
            metrics=metrics,
            reflection_enabled=settings.reflection,
        )
        ctx = ServiceContext(
            settings=settings,
            pool=pool,
            nats=nc,
            js=js,
            namespace=namespace,
            outbox=Outbox(),
            metrics=metrics,
            grpc=grpc_server,
            faults=faults,
            exit_stack=stack,
        )
        relay = OutboxRelay(
            pool=pool,
            js=js,
            namespace=namespace,
            schema=settings.database_schema,
            metrics=metrics,
            faults=faults,
        )
        ctx.add_worker("outbox-relay", relay.run)
        await definition.build(ctx)

        grpc_port = await grpc_server.start()
        ready = {"value": False}
        side = SidePort(
            host=settings.grpc_host,
            port=settings.http_port,
            metrics=metrics,
            ready=lambda: ready["value"],
        )
        http_port = await side.start()

        worker_stop = asyncio.Event()
        tasks: dict[asyncio.Task[None], str] = {
            asyncio.create_task(worker(worker_stop), name=name): name
            for name, worker in ctx.workers
        }
        for task in tasks:
            task.add_done_callback(_report_worker_exit(tasks[task], worker_stop, stop))

        await _startup_checks(ctx)
        await grpc_server.set_serving()
        ready["value"] = True
        log.info(
            "service_started",
            grpc_port=grpc_port,
            http_port=http_port,
            migrations_applied=len(applied),
            startup_ms=round((time.monotonic() - started) * 1000),
        )
        ready_file = os.environ.get("ARBRIDGE_READY_FILE")
        if ready_file:
            write_ready_file(
                ready_file,
                {
                    "service": settings.service,
                    "grpc_port": grpc_port,
                    "http_port": http_port,
                    "pid": os.getpid(),
                    "listen": ctx.listen_lines,
                    **ctx.ready_info,
                },
            )

        await stop.wait()

        shutdown_began = time.monotonic()
        log.info("shutdown_started", in_flight_calls=grpc_server.tracker.active)
        ready["value"] = False
        await grpc_server.begin_shutdown()
        await asyncio.sleep(settings.drain_delay_seconds)
        grpc_server.stop_intake()
        worker_stop.set()
        deadline = time.monotonic() + settings.shutdown_grace_seconds
        calls_done = await grpc_server.drain(settings.shutdown_grace_seconds)
        pending = [t for t in tasks if not t.done()]
        if pending:
            _done, still = await asyncio.wait(
                pending, timeout=max(0.0, deadline - time.monotonic())
            )
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        await grpc_server.stop(0.2)
        await side.stop()
        log.info(
            "shutdown_finished",
            calls_drained=calls_done,
            elapsed_ms=round((time.monotonic() - shutdown_began) * 1000),
        )
    return 0


async def _schema_ready(definition: ServiceDefinition, settings: RuntimeSettings) -> list[str]:
    """Migrates (the default), or checks that the migration job already did."""
    migrations = [*runtime_migrations(), *definition.migrations]
    if settings.migrate_on_start:
        return await migrate(settings.database_url, settings.database_schema, migrations)
    missing = await pending(settings.database_url, settings.database_schema, migrations)
    if missing:
        raise MigrationError(
            f"schema {settings.database_schema} is behind this release: {len(missing)} "
            f"migration(s) not applied ({', '.join(missing[:5])}); run the migration job "
            f"(python -m arbridge_{definition.name} migrate) first, or set "
            "ARBRIDGE_MIGRATE_ON_START=true"
        )
    return []


def _report_worker_exit(
    name: str, worker_stop: asyncio.Event, stop: asyncio.Event
) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled() or worker_stop.is_set():
            return
        exc = task.exception()
        # A worker that dies on its own leaves the service half-working: stop
        # the process so the orchestrator restarts it.
        log.error(
            "worker_stopped_unexpectedly",
            worker=name,
            error=type(exc).__name__ if exc else "returned",
            exc_info=exc,
        )
        stop.set()

    return done


def run(
    load: Callable[[], tuple[ServiceDefinition, RuntimeSettings]],
    *,
    service: str,
    package: str = "",
) -> None:
    """Entry point of ``python -m arbridge_<service>`` and of the image: serve, or migrate.

    With no argument: ``load`` reads the service's settings from the environment
    (a :class:`SettingsError`, every problem at once, exits 2) and the service
    serves until SIGTERM. With ``migrate``: only ``DATABASE_URL`` and
    ``ARBRIDGE_DB_SCHEMA`` are read, the schema's migrations (the runtime's and
    the ``migrations`` folder of ``package``, by default ``arbridge_<service>``) are
    applied, and the process exits 0; the migration job needs no other secret of
    the service.
    """
    command = sys.argv[1:]
    if command == ["migrate"]:
        sys.exit(_migrate_command(service, package or f"arbridge_{service}"))
    if command:
        print(  # noqa: T201 (a usage error, before any work)
            f"arbridge: unknown command {' '.join(command)!r}; run with no argument to "
            "serve, or 'migrate' to apply the schema's migrations and exit",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        definition, settings = load()
    except SettingsError as exc:
        print(f"arbridge: {exc}", file=sys.stderr)  # noqa: T201 (logging is not configured yet)
        sys.exit(2)
    configure_logging(settings.service, settings.log_level)
    configure_tracing(settings.service, trace_file=settings.trace_file)
    # What start-up made (modules, protobuf descriptors, settings) lives as long as
    # the process: frozen, the garbage collector's full passes no longer walk it.
    # Young collections every 50,000 allocations, not 700: a sync makes a dict or
    # two per record, nearly all freed by reference counting, and the collector's
    # passes over them were CPU the sync's one thread did not have to spare.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    try:
        code = asyncio.run(serve(definition, settings))
    except Exception:
        log.exception("service_failed")
        code = 1
    finally:
        shutdown_tracing()
    sys.exit(code)


def _migrate_command(service: str, package: str) -> int:
    env = EnvReader()
    dsn = env.url(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/arbridge", ("postgres", "postgresql")
    )
    schema = env.string("ARBRIDGE_DB_SCHEMA", service)
    level = env.choice("ARBRIDGE_LOG_LEVEL", "info", ("debug", "info", "warning", "error"))
    try:
        quote_ident(schema)
    except ValueError:
        env.problems.append(f"ARBRIDGE_DB_SCHEMA={schema!r} is not a valid schema name")
    try:
        env.check()
    except SettingsError as exc:
        print(f"arbridge: {exc}", file=sys.stderr)  # noqa: T201 (logging is not configured yet)
        return 2
    configure_logging(service, level)
    migrations = [*runtime_migrations(), *load_migrations(package, service)]
    try:
        applied = asyncio.run(migrate(dsn, schema, migrations))
    except Exception:
        log.exception("migration_failed", schema=schema)
        return 1
    log.info("migrations_done", schema=schema, applied=len(applied))
    return 0
