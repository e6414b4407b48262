"""The per-company Intacct slot limiter: who gets a slot next, against real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from arbridge_connector.limits import PgLimiter
from arbridge_intacct.client import INTERACTIVE, SLOT_PRIORITY, WALK_START
from arbridge_runtime.db import create_pool, load_migrations, migrate, runtime_migrations


@pytest.fixture
async def limiter(database_url: str, unique: str) -> AsyncIterator[PgLimiter]:
    """One slot for company C, in a fresh schema."""
    await migrate(
        database_url,
        unique,
        [*runtime_migrations(), *load_migrations("arbridge_connector", "connector")],
    )
    pool = await create_pool(database_url, unique, max_size=10)
    try:
        yield PgLimiter(pool=pool, concurrency=1, rate_per_second=1000)
    finally:
        await pool.close()


async def _take(
    limiter: PgLimiter,
    got: list[str],
    name: str,
    priority: int,
    hold: asyncio.Event | None = None,
) -> None:
    """Takes company C's slot as a caller of ``priority`` would, notes it, and holds it
    until ``hold`` is set (a moment when none is given)."""
    SLOT_PRIORITY.set(priority)  # this task's own context
    async with limiter.slot("C"):
        got.append(name)
        if hold is not None:
            await hold.wait()
        await asyncio.sleep(0.01)


async def _waiting(limiter: PgLimiter, count: int, priority: int | None = None) -> None:
    """Until ``count`` callers (of ``priority``, when given) wait for company C's slot."""
    for _ in range(3000):
        waiting = limiter._releases["C"].waiting
        if (waiting[priority] if priority is not None else sum(waiting.values())) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} waiters did not queue")


async def _held(limiter: PgLimiter, got: list[str], release: asyncio.Event) -> asyncio.Task[None]:
    holder = asyncio.create_task(_take(limiter, got, "holder", 0, release))
    while not got:
        await asyncio.sleep(0.01)
    return holder


async def test_waiters_get_a_freed_slot_highest_priority_first(limiter: PgLimiter) -> None:
    got: list[str] = []
    release = asyncio.Event()
    holder = await _held(limiter, got, release)
    # A walk with 3 pages left, one with 12, a single call and a walk's first
    # page: queued in that order behind the holder.
    waiters = [
        asyncio.create_task(_take(limiter, got, name, priority))
        for name, priority in (
            ("3 left", 3),
            ("12 left", 12),
            ("single call", INTERACTIVE),
            ("first page", WALK_START),
        )
    ]
    await _waiting(limiter, 4)
    assert got == ["holder"]
    release.set()
    await asyncio.gather(holder, *waiters)
    assert got == ["holder", "single call", "first page", "12 left", "3 left"]
    # Nothing is left waiting: a later caller of any priority gets the free slot.
    await asyncio.wait_for(_take(limiter, got, "later", 0), 5)
    assert limiter._releases["C"].waiting == {}


async def test_a_cancelled_waiter_stops_outranking_the_others(limiter: PgLimiter) -> None:
    got: list[str] = []
    release = asyncio.Event()
    holder = await _held(limiter, got, release)
    high = asyncio.create_task(_take(limiter, got, "high", 50))
    low = asyncio.create_task(_take(limiter, got, "low", 1))
    await _waiting(limiter, 2)
    high.cancel()
    release.set()
    await asyncio.gather(holder, low)
    assert got == ["holder", "low"]
    assert high.cancelled()
    assert limiter._releases["C"].waiting == {}


async def test_a_low_priority_waiter_is_not_starved_by_a_stream_of_higher_ones(
    limiter: PgLimiter,
) -> None:
    limiter.patience_seconds = 0.3
    got: list[str] = []
    release = asyncio.Event()
    holder = await _held(limiter, got, release)
    low = asyncio.create_task(_take(limiter, got, "low", 1))
    flood: list[asyncio.Task[None]] = []

    async def keep_one_higher_waiting() -> None:
        while "low" not in got:
            if sum(not t.done() for t in flood) < 3:
                flood.append(asyncio.create_task(_take(limiter, got, "high", 50)))
            await asyncio.sleep(0.002)

    flooding = asyncio.create_task(keep_one_higher_waiting())
    await _waiting(limiter, 1, priority=50)
    release.set()
    # Higher priorities go first while its patience lasts; then it takes its turn
    # although higher ones are still queued.
    await asyncio.wait_for(low, 30)
    assert "high" in got[: got.index("low")]
    assert any(not t.done() for t in flood)  # overtaken ones were still waiting
    await flooding
    await asyncio.gather(holder, *flood)
