"""Per-company Intacct limits and metering that hold across every connector replica.

* Concurrency: a request holds one of N PostgreSQL advisory locks for its
  company while it is in flight. Locks belong to a connection, so a replica
  that dies releases its slots with its connections.
* Rate: a token bucket per company in ``intacct_rate``; a request that takes
  the bucket below zero waits out the debt, so replicas share one rate.
* Metering: every function sent is counted per account, UTC day and function.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter

_SLOT_NAMESPACE = 0x1A7A  # keeps these locks apart from any other two-key advisory lock


def _company_key(company_id: str) -> int:
    digest = hashlib.sha256(f"intacct-slot:{company_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True) ^ _SLOT_NAMESPACE


@dataclass
class PgLimiter:
    pool: asyncpg.Pool
    concurrency: int
    rate_per_second: float
    max_wait_seconds: float = 600.0

    @asynccontextmanager
    async def slot(self, company_id: str) -> AsyncIterator[None]:
        key = _company_key(company_id)
        conn: asyncpg.Connection = await self.pool.acquire()
        held: int | None = None
        try:
            delay = 0.005
            waited = 0.0
            while held is None:
                for slot in range(self.concurrency):
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", key, slot):
                        held = slot
                        break
                else:
                    if waited > self.max_wait_seconds:
                        raise TimeoutError(f"no Intacct slot for {company_id} in {waited:.0f}s")
                    pause = random.uniform(delay / 2, delay)  # noqa: S311 (jitter)
                    await asyncio.sleep(pause)
                    waited += pause
                    delay = min(delay * 2, 0.1)
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
        finally:
            if held is not None:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", key, held)
            await self.pool.release(conn)


@dataclass
class PgMeter:
    pool: asyncpg.Pool
    account_id: str
    calls: Counter | None = None

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
