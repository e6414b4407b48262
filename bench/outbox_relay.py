"""Runtime: events per second through the outbox, JetStream and an idempotent consumer.

Writes N events (100 per transaction) into a service's outbox, and measures
how long the relay takes to publish them with Nats-Msg-Id and a durable
consumer to apply each exactly once through its inbox. Uses the PostgreSQL
and NATS that ``ensure_infra`` finds or starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from typing import Any

import asyncpg

from arbridge_devinfra.infra import ensure_infra, scratch_database
from arbridge_devinfra.suite import drop_streams
from arbridge_runtime.db import Migration, create_pool, migrate, runtime_migrations
from arbridge_runtime.jetstream import (
    ConsumerSpec,
    Delivery,
    JetStreamConsumer,
    Namespace,
    Outbox,
    OutboxRelay,
    StreamSpec,
    connect,
    ensure_streams,
)
from arbridge_runtime.metrics import ServiceMetrics

EFFECTS = Migration("bench", 1, "effects", "CREATE TABLE effects (id text PRIMARY KEY);")


async def _apply(conn: asyncpg.Connection, delivery: Delivery) -> None:
    await conn.execute("INSERT INTO effects (id) VALUES ($1)", delivery.message_id)


async def run(events: int = 20_000) -> dict[str, Any]:
    infra = await asyncio.to_thread(ensure_infra)
    try:
        async with scratch_database(infra.database_url, "arbridge_bench") as dsn:
            return await _measure(dsn, infra.nats_url, events)
    finally:
        infra.close()


async def _measure(dsn: str, nats_url: str, events: int) -> dict[str, Any]:
    schema = "bench"
    namespace = Namespace(f"b{secrets.token_hex(3)}")
    await migrate(dsn, schema, [*runtime_migrations(), EFFECTS])
    pool = await create_pool(dsn, schema, max_size=8)
    nc = await connect(nats_url, "bench")
    try:
        js = nc.jetstream(timeout=10)
        await ensure_streams(js, namespace, [StreamSpec("BENCH", ("bench.>",))])
        metrics = ServiceMetrics("bench")
        outbox = Outbox()
        write_started = time.perf_counter()
        for start in range(0, events, 100):
            async with pool.acquire() as conn, conn.transaction():
                for _ in range(min(100, events - start)):
                    await outbox.add(conn, "bench.created", b"x" * 200, event_id=uuid.uuid4())
        write_seconds = time.perf_counter() - write_started
        stop = asyncio.Event()
        relay = OutboxRelay(pool=pool, js=js, namespace=namespace, schema=schema, metrics=metrics)
        consumer = JetStreamConsumer(
            spec=ConsumerSpec("bench", "BENCH", ("bench.>",), batch=256),
            handler=_apply,
            js=js,
            pool=pool,
            namespace=namespace,
            metrics=metrics,
        )
        started = time.perf_counter()
        relay_task = asyncio.create_task(relay.run(stop))
        consumer_task = asyncio.create_task(consumer.run(stop))
        published_at = None
        while True:
            async with pool.acquire() as conn:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                done = await conn.fetchval("SELECT count(*) FROM effects")
            if pending == 0 and published_at is None:
                published_at = time.perf_counter()
            if done >= events:
                break
            await asyncio.sleep(0.05)
        finished = time.perf_counter()
        stop.set()
        await asyncio.gather(relay_task, consumer_task)
    finally:
        await nc.close()
        with contextlib.suppress(Exception):  # the run's stream goes with it
            await drop_streams(nats_url, namespace.prefix)
        await pool.close()
    assert published_at is not None
    return {
        "name": "outbox_relay_consumer",
        "params": {"events": events, "events_per_transaction": 100, "payload_bytes": 200},
        "outbox_writes_per_second": round(events / write_seconds),
        "relay_publish_per_second": round(events / (published_at - started)),
        "end_to_end_per_second": round(events / (finished - started)),
    }


if __name__ == "__main__":
    print(asyncio.run(run()))
