"""The per-company Intacct slot limiter: who gets a slot next, against real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from arbridge_connector.limits import PgLimiter
from arbridge_intacct.client import (
    INTERACTIVE,
    SLOT_INHERITED,
    SLOT_PRIORITY,
    SLOT_SUCCESSOR,
    WALK_START,
    SlotHandoff,
)
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


async def _walk(
    limiter: PgLimiter,
    got: list[str],
    pages: list[tuple[str, int]],
    *,
    inherited: SlotHandoff | None = None,
    hold: asyncio.Event | None = None,
    forsake_next: bool = False,
) -> None:
    """A walk's pages as the client asks for them: each names the next while it holds
    the slot (``pages``: names and priorities). ``forsake_next``: the next page's task
    is cancelled before it runs (a walk whose reader stopped)."""
    (name, priority), rest = pages[0], pages[1:]
    SLOT_PRIORITY.set(priority)  # this task's own context
    SLOT_INHERITED.set(inherited)
    async with limiter.slot("C"):
        got.append(name)
        if hold is not None:
            await hold.wait()
        await asyncio.sleep(0.01)
        if rest:
            handoff = SlotHandoff(rest[0][1])
            handoff.task = asyncio.create_task(_walk(limiter, got, rest, inherited=handoff))
            SLOT_SUCCESSOR.set(handoff)
            if forsake_next:
                handoff.task.cancel()
    if rest and not forsake_next:
        assert handoff.task is not None
        await handoff.task


async def _walk_then(
    limiter: PgLimiter,
    pages: list[tuple[str, int]],
    waiter: tuple[str, int],
    *,
    forsake_next: bool = False,
) -> list[str]:
    """Who had the slot, in turn, when ``waiter`` (a name and a priority) queues while
    the walk's first page holds it."""
    got: list[str] = []
    release = asyncio.Event()
    walk = asyncio.create_task(_walk(limiter, got, pages, hold=release, forsake_next=forsake_next))
    while not got:
        await asyncio.sleep(0.01)
    waiting = asyncio.create_task(_take(limiter, got, *waiter))
    await _waiting(limiter, 1)
    release.set()
    await asyncio.wait_for(asyncio.gather(walk, waiting), 10)
    return got


async def test_a_walk_keeps_its_slot_for_its_next_page_unless_outranked(
    limiter: PgLimiter,
) -> None:
    # The shorter walk was waiting all along; the slot went from page to page.
    walk = [("page 1", 5), ("page 2", 4), ("page 3", 3)]
    assert await _walk_then(limiter, walk, ("shorter walk", 2)) == [
        *(name for name, _ in walk),
        "shorter walk",
    ]
    walk = [("page 1", 5), ("page 2", 4)]
    assert await _walk_then(limiter, walk, ("single call", INTERACTIVE)) == [
        "page 1",
        "single call",
        "page 2",
    ]
    assert limiter._releases["C"].waiting == {}


async def test_a_walk_passes_its_slot_on_a_few_times_running_at_most(limiter: PgLimiter) -> None:
    limiter.max_passes = 2
    walk = [(f"page {n}", 10 - n) for n in range(1, 6)]
    # Passed twice, then freed: the waiter (in this replica or another) gets its turn.
    assert await _walk_then(limiter, walk, ("shorter walk", 1)) == [
        "page 1",
        "page 2",
        "page 3",
        "shorter walk",
        "page 4",
        "page 5",
    ]


async def test_a_slot_passed_to_a_page_that_never_runs_is_given_back(
    limiter: PgLimiter,
) -> None:
    walk = [("page 1", 5), ("page 2", 4)]
    got = await _walk_then(limiter, walk, ("other walk", 2), forsake_next=True)
    assert got == ["page 1", "other walk"]
    # The advisory lock and its connection came back: the slot is free again.
    await asyncio.wait_for(_take(limiter, got, "later", 0), 5)
    assert limiter.pool.get_size() - limiter.pool.get_idle_size() == 0
