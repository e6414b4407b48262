"""The per-company Intacct slot limiter: who gets a slot next, against real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg

from arbridge_connector.limits import PgLimiter
from arbridge_intacct.client import SLOT_PRIORITY
from arbridge_runtime.db import create_pool, load_migrations, migrate, runtime_migrations


async def _pool(database_url: str, schema: str) -> asyncpg.Pool:
    await migrate(
        database_url,
        schema,
        [*runtime_migrations(), *load_migrations("arbridge_connector", "connector")],
    )
    return await create_pool(database_url, schema, max_size=10)


async def test_waiters_get_a_freed_slot_highest_priority_first(
    database_url: str, unique: str
) -> None:
    pool = await _pool(database_url, unique)
    limiter = PgLimiter(pool=pool, concurrency=1, rate_per_second=1000)
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot("C1"):
            order.append("holder")
            await release.wait()

    async def waiter(name: str, priority: int) -> None:
        SLOT_PRIORITY.set(priority)  # this task's own context
        async with limiter.slot("C1"):
            order.append(name)
            await asyncio.sleep(0.01)

    try:
        held = asyncio.create_task(holder())
        while not order:
            await asyncio.sleep(0.01)
        # A walk with 3 pages left, one with 12, a single call (the default, highest)
        # and a walk's first page: queued in that order behind the holder.
        waiters = [
            asyncio.create_task(waiter("3 left", 3)),
            asyncio.create_task(waiter("12 left", 12)),
            asyncio.create_task(waiter("single call", SLOT_PRIORITY.get())),
            asyncio.create_task(waiter("first page", 1 << 20)),
        ]
        await asyncio.sleep(0.3)  # every waiter has tried and is waiting
        assert order == ["holder"]
        release.set()
        await asyncio.gather(held, *waiters)
        assert order == ["holder", "single call", "first page", "12 left", "3 left"]
        # Nothing is left waiting: a later caller of any priority gets the free slot.
        await asyncio.wait_for(waiter("later", 0), 5)
        assert limiter._releases["C1"].waiting == {}
    finally:
        await pool.close()


async def test_a_cancelled_waiter_stops_outranking_the_others(
    database_url: str, unique: str
) -> None:
    pool = await _pool(database_url, unique)
    limiter = PgLimiter(pool=pool, concurrency=1, rate_per_second=1000)
    got: list[str] = []
    release = asyncio.Event()

    async def take(name: str, priority: int, hold: asyncio.Event | None = None) -> None:
        SLOT_PRIORITY.set(priority)
        async with limiter.slot("C2"):
            got.append(name)
            if hold is not None:
                await hold.wait()

    try:
        held = asyncio.create_task(take("holder", 0, release))
        while not got:
            await asyncio.sleep(0.01)
        high = asyncio.create_task(take("high", 50))
        low = asyncio.create_task(take("low", 1))
        await asyncio.sleep(0.2)
        high.cancel()
        release.set()
        await asyncio.gather(held, low)
        assert got == ["holder", "low"]
        assert high.cancelled()
        assert limiter._releases["C2"].waiting == {}
    finally:
        await pool.close()
