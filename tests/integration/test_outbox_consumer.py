"""Outbox and consumers against real PostgreSQL and a NATS the test can stop."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from arbridge_devinfra.infra import PrivateNats
from arbridge_runtime.db import Migration, create_pool, migrate, runtime_migrations
from arbridge_runtime.jetstream import (
    ConsumerSpec,
    Delivery,
    JetStreamConsumer,
    Namespace,
    Outbox,
    OutboxRelay,
    RetryableError,
    StreamSpec,
    connect,
    ensure_streams,
)
from arbridge_runtime.metrics import ServiceMetrics

EFFECTS = Migration(
    "test",
    1,
    "effects",
    """
    CREATE TABLE orders (id uuid PRIMARY KEY, event_id uuid NOT NULL);
    CREATE TABLE effects (event_id text PRIMARY KEY, applied integer NOT NULL);
""",
)
STREAM = StreamSpec("ORDERS", ("orders.>",))


@dataclass
class Harness:
    pool: asyncpg.Pool
    namespace: Namespace
    metrics: ServiceMetrics

    def relay(self, js: Any, **options: Any) -> OutboxRelay:
        """An outbox relay of this harness's schema and namespace."""
        return OutboxRelay(
            pool=self.pool,
            js=js,
            namespace=self.namespace,
            schema=self.namespace.prefix,
            metrics=self.metrics,
            **options,
        )


@pytest.fixture
async def harness(database_url: str, unique: str) -> AsyncIterator[Harness]:
    await migrate(database_url, unique, [*runtime_migrations(), EFFECTS])
    pool = await create_pool(database_url, unique, max_size=8)
    try:
        yield Harness(pool, Namespace(unique), ServiceMetrics("test"))
    finally:
        await pool.close()


async def count_effects(pool: asyncpg.Pool) -> tuple[int, int]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(max(applied), 0) AS most FROM effects"
        )
        return int(row["n"]), int(row["most"])


async def apply_effect(conn: asyncpg.Connection, delivery: Delivery) -> None:
    # Counts applications: a duplicate effect would show as applied > 1.
    await conn.execute(
        "INSERT INTO effects (event_id, applied) VALUES ($1, 1)"
        " ON CONFLICT (event_id) DO UPDATE SET applied = effects.applied + 1",
        delivery.message_id,
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("per_tx", [5, 700], ids=["rows", "bundles"])
async def test_ten_thousand_events_survive_a_nats_restart_exactly_once(
    harness: Harness, private_nats: PrivateNats, per_tx: int
) -> None:
    """Five events a transaction, a row each; or 700 a transaction in one bundle row,
    larger than the relay's batch of 500 (so such a bundle is published alone)."""
    total = 10_000 if per_tx == 5 else 9_800
    nc = await connect(private_nats.url, "outbox-test")
    js = nc.jetstream(timeout=5)
    await ensure_streams(js, harness.namespace, [STREAM])
    relay = harness.relay(js, batch_size=500, publish_timeout=2.0)
    consumer = JetStreamConsumer(
        spec=ConsumerSpec(
            "effects", "ORDERS", ("orders.>",), max_deliver=50, backoff_seconds=(0.2,)
        ),
        handler=apply_effect,
        js=js,
        pool=harness.pool,
        namespace=harness.namespace,
        metrics=harness.metrics,
    )
    stop = asyncio.Event()
    workers = [asyncio.create_task(relay.run(stop)), asyncio.create_task(consumer.run(stop))]
    outbox = Outbox()
    written: list[uuid.UUID] = []
    nats_restarted = asyncio.Event()

    async def writer() -> None:
        for batch in range(total // per_tx):
            async with harness.pool.acquire() as conn, conn.transaction():
                bundle: list[tuple[str, bytes]] = []
                for _ in range(per_tx):
                    event_id = uuid.uuid4()
                    await conn.execute(
                        "INSERT INTO orders (id, event_id) VALUES ($1, $2)", uuid.uuid4(), event_id
                    )
                    payload = f"order {event_id}".encode()
                    if per_tx == 5:
                        await outbox.add(conn, "orders.created", payload, event_id=event_id)
                    else:
                        bundle.append(("orders.created", payload))
                    written.append(event_id)
                await outbox.add_many(conn, bundle)
            if batch == (total // per_tx) // 3:
                # NATS goes away a third of the way in; writes go on meanwhile.
                await asyncio.to_thread(private_nats.stop)
                await asyncio.sleep(2.0)
            if batch == (total // per_tx) // 2:
                await asyncio.to_thread(private_nats.start)
                nats_restarted.set()

    try:
        await writer()
        assert nats_restarted.is_set()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done, _ = await count_effects(harness.pool)
            if done >= total:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # let any late duplicate arrive before judging
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await nc.close()

    async with harness.pool.acquire() as conn:
        effect_ids = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM effects")}
        unpublished = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        orders = await conn.fetchval("SELECT count(*) FROM orders")
        # Every event the outbox holds, by the message id it was published under.
        message_ids = {r["message_id"] for r in await conn.fetch("SELECT * FROM outbox_events")}
        rows = await conn.fetchval("SELECT count(*) FROM outbox")
    done, most = await count_effects(harness.pool)
    expected = {str(e) for e in written} if per_tx == 5 else message_ids
    lost = expected - effect_ids
    assert orders == total
    assert len(written) == total
    assert len(message_ids) == total
    assert rows == (total if per_tx == 5 else total // per_tx)
    assert not lost, f"{len(lost)} events lost"
    assert effect_ids == expected
    assert most == 1, "an effect was applied more than once"
    assert unpublished == 0


async def _consumer_info(js: object, harness: Harness, durable: str) -> object:
    return await js.consumer_info(  # type: ignore[attr-defined]
        harness.namespace.stream("ORDERS"), harness.namespace.consumer(durable)
    )


@pytest.mark.timeout(60)
async def test_poison_message_ends_in_dead_letters_and_is_not_redelivered(
    harness: Harness, nats_url: str
) -> None:
    nc = await connect(nats_url, "poison-test")
    js = nc.jetstream(timeout=5)
    await ensure_streams(js, harness.namespace, [STREAM])
    attempts: list[int] = []

    async def always_fails(_conn: asyncpg.Connection, delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        raise RetryableError("downstream keeps refusing")

    consumer = JetStreamConsumer(
        spec=ConsumerSpec("poison", "ORDERS", ("orders.>",), max_deliver=3, backoff_seconds=(0.1,)),
        handler=always_fails,
        js=js,
        pool=harness.pool,
        namespace=harness.namespace,
        metrics=harness.metrics,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await js.publish(
            harness.namespace.subject("orders.created"),
            b"poison",
            headers={"Nats-Msg-Id": "poison-1"},
        )
        deadline = time.monotonic() + 20
        row = None
        while time.monotonic() < deadline and row is None:
            async with harness.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT * FROM dead_letters WHERE message_id='poison-1'")
            await asyncio.sleep(0.1)
        assert row is not None, "message never reached the dead letters"
        await asyncio.sleep(1.5)  # longer than the backoff: a redelivery would show
    finally:
        stop.set()
        await task
    info = await _consumer_info(js, harness, "poison")
    await nc.close()
    assert attempts == [1, 2, 3]
    assert row["deliveries"] == 3
    assert row["consumer"] == "poison"
    assert "downstream keeps refusing" in row["error"]
    assert bytes(row["payload"]) == b"poison"
    assert info.num_ack_pending == 0  # type: ignore[attr-defined]
    assert info.num_pending == 0  # type: ignore[attr-defined]
    async with harness.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM effects") == 0


@pytest.mark.timeout(60)
async def test_one_failing_message_does_not_hold_back_its_batch(
    harness: Harness, nats_url: str
) -> None:
    nc = await connect(nats_url, "batch-test")
    js = nc.jetstream(timeout=5)
    await ensure_streams(js, harness.namespace, [STREAM])
    calls: dict[str, int] = {}

    async def picky(conn: asyncpg.Connection, delivery: Delivery) -> None:
        calls[delivery.message_id] = calls.get(delivery.message_id, 0) + 1
        if delivery.data == b"bad":
            raise RetryableError("this one is refused")
        await apply_effect(conn, delivery)

    consumer = JetStreamConsumer(
        spec=ConsumerSpec(
            "batch", "ORDERS", ("orders.>",), max_deliver=2, backoff_seconds=(0.1,), batch=16
        ),
        handler=picky,
        js=js,
        pool=harness.pool,
        namespace=harness.namespace,
        metrics=harness.metrics,
    )
    for index in range(6):
        body = b"bad" if index == 2 else b"good"
        await js.publish(
            harness.namespace.subject("orders.created"), body, headers={"Nats-Msg-Id": f"m{index}"}
        )
    # A redelivered duplicate of a good message, inside the same batch.
    await js.publish(
        harness.namespace.subject("orders.created"), b"good", headers={"Nats-Msg-Id": "m0-again"}
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            async with harness.pool.acquire() as conn:
                dead = await conn.fetchval(
                    "SELECT count(*) FROM dead_letters WHERE consumer='batch'"
                )
            if dead:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
        await nc.close()
    done, most = await count_effects(harness.pool)
    assert done == 6  # five good ones and m0-again (its own id)
    assert most == 1
    assert calls["m2"] == 2  # once per delivery, never re-run within a batch
    # Messages after the failing one ran once; those before it ran again after
    # the fast path rolled back, yet every effect above was applied once.
    assert all(calls[f"m{i}"] == 1 for i in (3, 4, 5))


@pytest.mark.timeout(60)
async def test_a_batch_handled_longer_than_the_ack_wait_is_not_delivered_again(
    harness: Harness, nats_url: str
) -> None:
    """A sync job's bundle can take a while: the consumer tells JetStream it is still at
    work, so neither it nor another replica gets the batch again meanwhile."""
    nc = await connect(nats_url, "slow-test")
    js = nc.jetstream(timeout=5)
    await ensure_streams(js, harness.namespace, [STREAM])
    seen: list[tuple[str, int]] = []

    async def slow(conn: asyncpg.Connection, delivery: Delivery) -> None:
        seen.append((delivery.message_id, delivery.num_delivered))
        await asyncio.sleep(1.5)  # three times the ack wait, twice over
        await apply_effect(conn, delivery)

    spec = ConsumerSpec("slow", "ORDERS", ("orders.>",), ack_wait_seconds=0.5, batch=2)
    replicas = [
        JetStreamConsumer(
            spec=spec,
            handler=slow,
            js=js,
            pool=harness.pool,
            namespace=harness.namespace,
            metrics=harness.metrics,
        )
        for _ in range(2)
    ]
    await replicas[0].ensure()
    for index in range(2):
        await js.publish(
            harness.namespace.subject("orders.created"),
            b"big",
            headers={"Nats-Msg-Id": f"s{index}"},
        )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in replicas]
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (await count_effects(harness.pool))[0] < 2:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # a redelivery would reach the idle replica meanwhile
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    info = await _consumer_info(js, harness, "slow")
    await nc.close()
    assert sorted(seen) == [("s0", 1), ("s1", 1)]
    # A redelivery would have come back as a duplicate (its effect already committed).
    duplicates = harness.metrics.registry.get_sample_value(
        "arbridge_messages_handled_total", {"consumer": "slow", "outcome": "duplicate"}
    )
    assert not duplicates
    assert info.num_redelivered == 0  # type: ignore[attr-defined]
    assert info.num_ack_pending == 0  # type: ignore[attr-defined]
    assert await count_effects(harness.pool) == (2, 1)


@pytest.mark.timeout(60)
async def test_a_relay_batch_holds_a_bounded_size_of_payloads(
    harness: Harness, nats_url: str
) -> None:
    """Large events (a sync job's bundles) go out in batches of bounded bytes, and the
    relay goes on at once while more wait."""
    nc = await connect(nats_url, "bytes-test")
    js = nc.jetstream(timeout=5)
    await ensure_streams(js, harness.namespace, [STREAM])
    relay = harness.relay(js, batch_bytes=50_000)
    outbox = Outbox()
    big = os.urandom(20_000)  # incompressible: stored at its size
    async with harness.pool.acquire() as conn, conn.transaction():
        for index in range(5):
            await outbox.add(conn, "orders.bulk", big + bytes([index]))
        await outbox.add_many(conn, [("orders.bulk", big), ("orders.bulk", big)])
        await outbox.add(conn, "orders.small", b"small")

    async def unpublished() -> int:
        return int(
            await harness.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        )

    batches = []
    while await unpublished():
        before = await unpublished()
        full = await relay.publish_batch()
        batches.append((before - await unpublished(), full))
    await nc.close()
    # A row joins while the batch before it is under 50,000 bytes: three singles of
    # 20,000; then two singles and the bundle row (40,000); then the small one alone.
    assert batches == [(3, True), (3, True), (1, False)]
