"""Daily full syncs: due accounts get exactly one job, whatever the replicas; time zones count."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from arbridge_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from arbridge_runtime.jetstream import Outbox
from arbridge_sync.jobs import WINDOW, DailyScheduler, JobRunner, next_daily


def test_next_daily_follows_the_account_time_zone_across_dst() -> None:
    before_dst = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)  # US DST starts 2026-03-08
    first = next_daily(before_dst, "02:30", "America/New_York")
    # 02:30 does not exist on 2026-03-08 (clocks jump to 03:00): it runs at 07:30 UTC.
    assert first == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    after = next_daily(first, "02:30", "America/New_York")
    assert after == datetime(2026, 3, 9, 6, 30, tzinfo=UTC)  # 02:30 EDT
    assert after - first == timedelta(hours=23)
    assert next_daily(datetime(2026, 6, 1, 1, 0, tzinfo=UTC), "02:00", "UTC") == datetime(
        2026, 6, 1, 2, 0, tzinfo=UTC
    )


async def test_two_replicas_create_one_daily_job(database_url: str, unique: str) -> None:
    await migrate(
        database_url, unique, [*runtime_migrations(), *load_migrations("arbridge_sync", "sync")]
    )
    pool = await create_pool(database_url, unique, max_size=6)
    try:
        async with pool.acquire() as conn:
            for account in ("a1", "a2"):
                await conn.execute(
                    "INSERT INTO accounts (account_id, initial_synced_at, next_daily_sync_at)"
                    " VALUES ($1, now(), now() - interval '1 minute')",
                    account,
                )
                await conn.execute(
                    "INSERT INTO preferences (account_id, daily_sync_time, time_zone)"
                    " VALUES ($1, '03:15', 'Europe/Berlin')",
                    account,
                )
            await conn.execute(  # an account that has not finished its initial sync yet
                "INSERT INTO accounts (account_id, next_daily_sync_at)"
                " VALUES ('a3', now() - interval '1 minute')"
            )
            await conn.execute("INSERT INTO preferences (account_id) VALUES ('a3')")
        replicas = [
            DailyScheduler(pool, JobRunner(pool=pool, outbox=Outbox(), connector=None))  # type: ignore[arg-type]
            for _ in range(4)
        ]
        created = await asyncio.gather(*(r.tick() for r in replicas))
        assert sum(created) == 2
        assert sum(await asyncio.gather(*(r.tick() for r in replicas))) == 0  # not due any more
        async with pool.acquire() as conn:
            jobs = await conn.fetch(
                "SELECT account_id, kind, state FROM sync_jobs ORDER BY account_id"
            )
            next_times = await conn.fetch(
                "SELECT account_id, next_daily_sync_at FROM accounts"
                " WHERE account_id IN ('a1', 'a2')"
            )
        assert [(j["account_id"], j["kind"], j["state"]) for j in jobs] == [
            ("a1", "daily", "pending"),
            ("a2", "daily", "pending"),
        ]
        for row in next_times:
            local = row["next_daily_sync_at"].astimezone(ZoneInfo("Europe/Berlin"))
            assert (local.hour, local.minute) == (3, 15)
            assert row["next_daily_sync_at"] > datetime.now(UTC)
        # A second job cannot be created while one is live (the unique partial index).
        async with pool.acquire() as conn:
            _, made = await replicas[0].runner.create(conn, "a1", "manual")
        assert not made
    finally:
        await pool.close()


async def test_the_estimate_counts_what_a_full_sync_reads(database_url: str, unique: str) -> None:
    # A full sync reads invoices and payments of the last six months: those stored that
    # have aged out of the window cost no call and must not be counted (else the
    # estimate grows with the store's age, not with the work).
    await migrate(
        database_url, unique, [*runtime_migrations(), *load_migrations("arbridge_sync", "sync")]
    )
    pool = await create_pool(database_url, unique)
    zone = ZoneInfo("America/Los_Angeles")
    start = (datetime.now(UTC) - WINDOW).astimezone(zone).replace(tzinfo=None)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO accounts (account_id, time_zone) VALUES ('acme', $1)", zone.key
            )
            await conn.execute(
                "INSERT INTO invoices (account_id, record_no, source, invoice_number, customer_id,"
                " entity_id, state, currency, total_minor, paid_minor, due_minor, term_name,"
                " po_number, custom_fields, intacct_modified, data_hash)"
                " SELECT 'acme', n::text, 'ar_invoice', '', 'C', '', 'open', 'USD', 1, 0, 1, '',"
                " '', '{}', $1::timestamp - make_interval(hours => n), ''"
                " FROM generate_series(1, 4500) n",
                start + timedelta(hours=2500),
            )
            await conn.execute(  # customers are read whole, whatever their age
                "INSERT INTO customers (account_id, record_no, customer_id, name, active,"
                " currency, term_name, entity_id, groups, contact, custom_fields,"
                " intacct_modified, data_hash)"
                " SELECT 'acme', n::text, n::text, '', true, 'USD', '', '', '{}', '{}', '{}',"
                " $1, '' FROM generate_series(1, 2001) n",
                start - timedelta(days=400),
            )
        runner = JobRunner(pool=pool, outbox=Outbox(), connector=None)  # type: ignore[arg-type]
        calls, token, _ = await runner.estimate("acme")
        # The session; invoices: 2,500 in the window (of 4,500), 2 pages; customers 2;
        # payments, both bank account kinds and labels 1 each.
        assert calls == 1 + 2 + 2 + 1 + 1 + 1 + 1
        assert token
    finally:
        await pool.close()
