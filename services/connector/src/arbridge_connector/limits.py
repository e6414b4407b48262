"""Per-company Intacct limits and metering that hold across every connector replica.

* Concurrency: a request holds one of N PostgreSQL advisory locks for its
  company while it is in flight. Locks belong to a connection, so a replica
  that dies releases its slots with its connections. A slot given back in a
  replica goes at once to that replica's waiters, highest ``SLOT_PRIORITY``
  first (single calls, then query walks by the pages they have left) until a
  waiter's patience runs out; slots given back elsewhere are found by polling.
* Rate: a token bucket per company in ``intacct_rate``; a request that takes
  the bucket below zero waits out the debt, so replicas share one rate.
* Metering: every function sent is counted per account, UTC day and function.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import Counter as MetricCounter

from arbridge_intacct.client import SLOT_INHERITED, SLOT_PRIORITY, SLOT_SUCCESSOR

_SLOT_NAMESPACE = 0x1A7A  # keeps these locks apart from any other two-key advisory lock


def _company_key(company_id: str) -> int:
    digest = hashlib.sha256(f"intacct-slot:{company_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True) ^ _SLOT_NAMESPACE


# What a walk's page passes its next page instead of a slot when its passes ran out
# and others wait here: give way to them first.
GIVE_WAY = object()


@dataclass
class _Releases:
    """One company's slots as this process sees them: how many it gave back (a count
    and a wake-up for its waiters), the priorities of those waiting, and how many of
    them have waited past their patience."""

    count: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: Counter[int] = field(default_factory=Counter)
    impatient: int = 0

    def outranked(self, priority: int) -> bool:
        return any(p > priority for p in self.waiting)

    def leave(self, priority: int) -> None:
        """A waiter stopped waiting: those it outranked look again at once."""
        self.waiting[priority] -= 1
        if not self.waiting[priority]:
            del self.waiting[priority]
        self.pulse()

    def pulse(self) -> None:
        self.count += 1
        self.wake.set()  # wakes every current waiter; later ones wait for the next pulse
        self.wake.clear()


@dataclass(eq=False)
class _Lease:
    """A held slot on its way from a walk's page to the next: the advisory lock and
    the connection that holds it (locks belong to connections)."""

    conn: asyncpg.Connection
    slot: int
    passes: int  # how many times running it has been passed on
    claimed: bool = False


@dataclass
class PgLimiter:
    pool: asyncpg.Pool
    concurrency: int
    rate_per_second: float
    max_wait_seconds: float = 600.0
    # How long a waiter gives way to higher priorities at most: after that it tries
    # for every freed slot, so a long walk cannot starve a short one.
    patience_seconds: float = 10.0
    # A walk's slot passes to the walk's next page when no waiter here outranks it or
    # has run out of patience, this many times running at most: then it is freed, so
    # waiters in other replicas (which this one cannot see) get their turn too; and
    # the next page gives way to the waiters here until one of them has taken it (for
    # ``give_way_seconds`` at most), rather than taking it straight back.
    max_passes: int = 16
    give_way_seconds: float = 0.2
    # A slot given back here is taken at once by a waiter here; slots given back
    # by other replicas are found by polling.
    _releases: dict[str, _Releases] = field(default_factory=dict, init=False, repr=False)
    _forsaken: set[asyncio.Future[None]] = field(default_factory=set, init=False, repr=False)

    @asynccontextmanager
    async def slot(self, company_id: str) -> AsyncIterator[None]:
        key = _company_key(company_id)
        releases = self._releases.setdefault(company_id, _Releases())
        priority = SLOT_PRIORITY.get()
        inherited = await self._inherit()
        if inherited is GIVE_WAY:
            await self._give_way(releases)
        lease = inherited if isinstance(inherited, _Lease) else None
        conn: asyncpg.Connection = lease.conn if lease else await self.pool.acquire()
        held: int | None = lease.slot if lease else None
        passes = lease.passes if lease else 0
        waiting = held is None
        impatient = False
        if waiting:
            releases.waiting[priority] += 1
        clean = False
        try:
            delay = 0.005
            waited = 0.0
            while held is None:
                seen = releases.count
                if waited >= self.patience_seconds and not impatient:
                    impatient = True
                    releases.impatient += 1
                # A waiter here with a higher priority goes first, for a while.
                yields = not impatient and releases.outranked(priority)
                for slot in range(0 if yields else self.concurrency):
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", key, slot):
                        held = slot
                        break
                else:
                    if waited > self.max_wait_seconds:
                        raise TimeoutError(f"no Intacct slot for {company_id} in {waited:.0f}s")
                    if releases.count != seen:
                        continue  # a slot came back while this one was trying
                    pause = random.uniform(delay / 2, delay)  # noqa: S311 (jitter)
                    began = time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(releases.wake.wait(), pause)
                    waited += time.monotonic() - began
                    delay = min(delay * 2, 0.1)
            if waiting:
                waiting = False
                self._leave(releases, priority, impatient)
            tokens = await conn.fetchval(
                """INSERT INTO intacct_rate (company_id, tokens, updated_at)
                   VALUES ($1, $2 - 1, now())
                   ON CONFLICT (company_id) DO UPDATE SET
                     tokens = LEAST($2, intacct_rate.tokens
                              + extract(epoch FROM now() - intacct_rate.updated_at) * $3) - 1,
                     updated_at = now()
                   RETURNING tokens""",
                company_id,
                max(1.0, self.rate_per_second),
                self.rate_per_second,
            )
            if tokens < 0:
                await asyncio.sleep(-tokens / self.rate_per_second)
            yield
            clean = True
        finally:
            if waiting:  # gave up (an error, a cancellation)
                self._leave(releases, priority, impatient)
            successor = SLOT_SUCCESSOR.get()
            SLOT_SUCCESSOR.set(None)
            if (
                clean
                and held is not None
                and successor is not None
                and successor.task is not None
                and not successor.lease.done()
                and passes < self.max_passes
                and not releases.impatient
                and not releases.outranked(successor.priority)
            ):
                passed = _Lease(conn, held, passes + 1)
                successor.lease.set_result(passed)
                # Given back should its task end without taking it (a walk stopped).
                successor.task.add_done_callback(
                    lambda _: None if passed.claimed else self._forsake(passed, key, releases)
                )
            else:
                # The walk's passes ran out while others wait here: its next page gives
                # way to them once the slot is back (told after the give-back, so the
                # give-back's own pulse is not taken for a waiter having the slot).
                give_way = (
                    clean
                    and held is not None
                    and passes >= self.max_passes
                    and bool(releases.waiting)
                )
                if successor is not None and not successor.lease.done() and not give_way:
                    successor.lease.set_result(None)  # it waits for a slot as usual
                try:
                    await self._give_back(conn, key, held, releases)
                finally:
                    if successor is not None and not successor.lease.done():
                        successor.lease.set_result(GIVE_WAY)

    async def _inherit(self) -> _Lease | object | None:
        """The slot this task's predecessor in a walk passed on, if any (once), or
        GIVE_WAY when it freed the slot for the waiters here instead."""
        handoff = SLOT_INHERITED.get()
        if handoff is None:
            return None
        SLOT_INHERITED.set(None)
        lease = await handoff.lease
        if isinstance(lease, _Lease):
            lease.claimed = True
            return lease
        return GIVE_WAY if lease is GIVE_WAY else None

    async def _give_way(self, releases: _Releases) -> None:
        """Waits (``give_way_seconds`` at most) until a waiter here has taken the slot
        (a waiter leaving pulses), before this page starts waiting for one itself."""
        seen = releases.count
        deadline = time.monotonic() + self.give_way_seconds
        while releases.count == seen and releases.waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(releases.wake.wait(), left)

    def _leave(self, releases: _Releases, priority: int, impatient: bool) -> None:
        if impatient:
            releases.impatient -= 1
        releases.leave(priority)

    async def _give_back(
        self, conn: asyncpg.Connection, key: int, held: int | None, releases: _Releases
    ) -> None:
        try:
            if held is not None:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", key, held)
        finally:
            await self.pool.release(conn)
            if held is not None:
                releases.pulse()

    def _forsake(self, lease: _Lease, key: int, releases: _Releases) -> None:
        lease.claimed = True
        task = asyncio.ensure_future(self._give_back(lease.conn, key, lease.slot, releases))
        self._forsaken.add(task)
        task.add_done_callback(self._forsaken.discard)


@dataclass
class PgMeter:
    pool: asyncpg.Pool
    account_id: str
    calls: MetricCounter | None = None

    async def record(self, functions: Sequence[str]) -> None:
        counts: dict[str, int] = {}
        for name in functions:
            counts[name] = counts.get(name, 0) + 1
        if self.calls is not None:
            for name, count in counts.items():
                self.calls.labels(account_id=self.account_id, function=name).inc(count)
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO api_usage (account_id, day, function, calls)
                   SELECT $1, (now() AT TIME ZONE 'UTC')::date, f, c
                   FROM unnest($2::text[], $3::bigint[]) AS t(f, c)
                   ON CONFLICT (account_id, day, function)
                   DO UPDATE SET calls = api_usage.calls + EXCLUDED.calls""",
                self.account_id,
                list(counts),
                list(counts.values()),
            )
