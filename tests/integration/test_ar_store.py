"""The AR store's batch writes against real PostgreSQL: the straight copy of new rows,
its fallback when a key turns up meanwhile, and the events each write announces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from arbridge.events.v1 import events_pb2
from arbridge_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from arbridge_runtime.jetstream import Outbox
from arbridge_sync import mapping, store

ZONE = "America/Los_Angeles"  # the company's: Intacct writes WHENMODIFIED in it


def _invoice(record_no: int, modified: str = "10/01/2026 10:00:00", due: str = "100.00") -> Any:
    return mapping.invoice_row(
        "acme",
        {
            "RECORDNO": str(record_no),
            "RECORDID": f"INV-{record_no}",
            "STATE": "Posted",
            "CUSTOMERID": "C-1",
            "CURRENCY": "USD",
            "TRX_TOTALENTERED": due,
            "TRX_TOTALPAID": "0",
            "TRX_TOTALDUE": due,
            "WHENCREATED": "10/01/2026",
            "WHENDUE": "10/31/2026",
            "WHENMODIFIED": modified,
            "PAYMENT_LINK": f"https://pay.example/{record_no}",
        },
        "",
    )


@pytest.fixture
async def pool(database_url: str, unique: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a schema with the runtime's and sync's tables."""
    await migrate(
        database_url, unique, [*runtime_migrations(), *load_migrations("arbridge_sync", "sync")]
    )
    pool = await create_pool(database_url, unique)
    try:
        yield pool
    finally:
        await pool.close()


async def _events(conn: asyncpg.Connection) -> list[tuple[str, events_pb2.InvoiceChanged]]:
    rows = await conn.fetch(
        "SELECT message_id, subject, payload FROM outbox_events ORDER BY seq, position"
    )
    assert len({r["message_id"] for r in rows}) == len(rows)  # every event its own id
    return [(r["subject"], events_pb2.InvoiceChanged.FromString(r["payload"])) for r in rows]


async def test_new_rows_are_copied_in_and_each_announced(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        counts = await store.apply(
            conn, Outbox(), store.INVOICES, [_invoice(n) for n in range(1, 501)], time_zone=ZONE
        )
    assert (counts.created, counts.updated) == (500, 0)
    async with pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT record_no, version, custom_fields, due_minor, invoice_date::text"
            " FROM invoices ORDER BY record_no::int"
        )
        assert len(stored) == 500
        first = stored[0]
        assert (first["record_no"], first["version"], first["due_minor"]) == ("1", 1, 10000)
        assert first["invoice_date"] == "2026-10-01"
        assert '"PAYMENT_LINK": "https://pay.example/1"' in first["custom_fields"]
        events = await _events(conn)
    assert [s for s, _ in events] == ["ar.invoice.created"] * 500
    assert [e.invoice.record_no for _, e in events] == [str(n) for n in range(1, 501)]
    # The store keeps Intacct's company-local wall time; events give its instant in the
    # company's zone, as the API does (10:00 in Los Angeles, PDT, is 17:00 UTC).
    modified = datetime(2026, 10, 1, 17, tzinfo=UTC)
    assert events[0][1].invoice.intacct_modified_at.seconds == int(modified.timestamp())
    assert events[0][1].occurred_at.seconds > 0


async def _bundles(conn: asyncpg.Connection) -> list[tuple[str, events_pb2.InvoiceChanges]]:
    rows = await conn.fetch("SELECT subject, payload FROM outbox_events ORDER BY seq, position")
    return [(r["subject"], events_pb2.InvoiceChanges.FromString(r["payload"])) for r in rows]


async def test_a_jobs_batch_is_announced_in_bundles_in_order(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.apply(conn, Outbox(), store.INVOICES, [_invoice(2)], time_zone=ZONE)
    # 2 stored before (its due changes): updated; the rest created.
    batch = [_invoice(n, due="80.00" if n == 2 else "100.00") for n in range(1, 1201)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM outbox")
        counts = await store.apply(
            conn, Outbox(), store.INVOICES, batch, time_zone=ZONE, bundled=True
        )
    assert (counts.created, counts.updated) == (1199, 1)
    async with pool.acquire() as conn:
        bundles = await _bundles(conn)
    assert [s for s, _ in bundles] == ["ar.invoice.bundle"] * 3
    assert [len(b.changes) for _, b in bundles] == [500, 500, 200]
    changes = [c for _, b in bundles for c in b.changes]
    assert [c.invoice.record_no for c in changes] == [str(n) for n in range(1, 1201)]
    second = changes[1]
    assert second.change == events_pb2.CHANGE_TYPE_UPDATED
    assert (second.invoice.version, second.invoice.due.amount_minor) == (2, 8000)
    first = changes[0]
    assert first.change == events_pb2.CHANGE_TYPE_CREATED
    assert first.invoice.version == 1
    # Each change is what the same change announced alone would be.
    announcer = store.INVOICES.announcer
    assert announcer is not None
    alone: Any = announcer.event(
        batch[0], events_pb2.CHANGE_TYPE_CREATED, first.occurred_at, 1, ZONE
    )
    assert first == alone
    assert first.invoice.intacct_modified_at.seconds == int(
        datetime(2026, 10, 1, 17, tzinfo=UTC).timestamp()
    )


async def test_bundles_of_large_records_split_to_stay_small(pool: asyncpg.Pool) -> None:
    batch = []
    for n in range(1, 401):
        row = _invoice(n)
        row["custom_fields"] = {"PAYMENT_LINK": f"https://pay.example/{n}?" + "x" * 2000}
        batch.append(row)
    async with pool.acquire() as conn, conn.transaction():
        await store.apply(conn, Outbox(), store.INVOICES, batch, time_zone=ZONE, bundled=True)
    async with pool.acquire() as conn:
        bundles = await _bundles(conn)
        sizes = await conn.fetch("SELECT length(payload) AS n FROM outbox_events")
    assert len(bundles) > 1
    assert all(r["n"] <= store.BUNDLE_BYTES for r in sizes)
    assert [c.invoice.record_no for _, b in bundles for c in b.changes] == [
        str(n) for n in range(1, 401)
    ]


async def test_a_key_stored_meanwhile_sends_the_batch_the_general_way(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.apply(conn, Outbox(), store.INVOICES, [_invoice(7)], time_zone=ZONE)
    newer = [_invoice(n, modified="10/02/2026 09:00:00", due="55.00") for n in (6, 7, 8)]
    async with pool.acquire() as conn, conn.transaction():
        # As if another writer stored 7 after this batch was checked: the straight
        # copy fails on it, and the upsert writes all three in the same transaction.
        versions = await store._upsert(conn, store.INVOICES, ["record_no"], newer, all_new=True)
        assert versions == {("6",): 1, ("7",): 2, ("8",): 1}
        # The same table again in the same transaction: the staging table was emptied.
        again = [_invoice(n, modified="10/03/2026 09:00:00", due="44.00") for n in (6, 8)]
        assert await store._upsert(conn, store.INVOICES, ["record_no"], again) == {
            ("6",): 2,
            ("8",): 2,
        }
    async with pool.acquire() as conn:
        due = dict(await conn.fetch("SELECT record_no, due_minor FROM invoices ORDER BY record_no"))
        assert due == {"6": 4400, "7": 5500, "8": 4400}
        # An older version of a stored record changes nothing.
        async with conn.transaction():
            counts = await store.apply(
                conn, Outbox(), store.INVOICES, [_invoice(7, due="1.00")], time_zone=ZONE
            )
        assert (counts.created, counts.updated, counts.stale) == (0, 0, 1)
        assert await conn.fetchval("SELECT due_minor FROM invoices WHERE record_no = '7'") == 5500
        staged = await conn.fetchval("SELECT to_regclass('pg_temp.stage_invoices') IS NULL")
        if not staged:
            assert await conn.fetchval("SELECT count(*) FROM pg_temp.stage_invoices") == 0


async def test_a_deleted_record_stays_deleted_and_its_tombstone_is_checked_by_key(
    pool: asyncpg.Pool,
) -> None:
    bank = {"BANKACCOUNTID": "BOA", "CURRENCY": "USD", "WHENMODIFIED": "10/01/2026 10:00:00"}
    async with pool.acquire() as conn, conn.transaction():
        await store.apply(
            conn, Outbox(), store.INVOICES, [_invoice(n) for n in (1, 2, 3)], time_zone=ZONE
        )
        checking = mapping.bank_row("acme", "checking", {**bank, "RECORDNO": "9"})
        await store.apply(conn, Outbox(), store.BANK_ACCOUNTS, [checking], time_zone=ZONE)
        assert (
            await store.delete(conn, Outbox(), store.INVOICES, "acme", ["2"], time_zone=ZONE) == 1
        )
        assert (
            await store.delete(conn, Outbox(), store.BANK_ACCOUNTS, "acme", ["9"], time_zone=ZONE)
            == 1
        )
    later = [_invoice(n, modified="10/05/2026 10:00:00", due="9.00") for n in (1, 2, 3, 4)]
    savings = mapping.bank_row(
        "acme", "savings", {**bank, "RECORDNO": "9", "WHENMODIFIED": "10/05/2026 10:00:00"}
    )
    async with pool.acquire() as conn:
        async with conn.transaction():
            counts = await store.apply(conn, Outbox(), store.INVOICES, later, time_zone=ZONE)
            # A late add of the deleted RECORDNO 9 under the other kind of bank account:
            # tombstones hold per RECORDNO, which Intacct never reuses.
            banks = await store.apply(
                conn, Outbox(), store.BANK_ACCOUNTS, [savings], time_zone=ZONE
            )
        assert (counts.created, counts.updated, counts.stale) == (1, 2, 1)
        assert (banks.created, banks.stale) == (0, 1)
        live = dict(
            await conn.fetch(
                "SELECT record_no, deleted FROM invoices WHERE account_id = 'acme'"
                " ORDER BY record_no"
            )
        )
        assert live == {"1": False, "2": True, "3": False, "4": False}
        events = await _events(conn)
    subjects = [s for s, _ in events]
    assert subjects.count("ar.invoice.deleted") == 1
    deleted = next(e for s, e in events if s == "ar.invoice.deleted")
    assert deleted.invoice.record_no == "2"
    assert deleted.invoice.intacct_modified_at.ToDatetime(tzinfo=UTC) == datetime(
        2026, 10, 1, 17, tzinfo=UTC
    )
    assert subjects.count("ar.invoice.created") == 4
    assert subjects.count("ar.invoice.updated") == 2


async def test_rows_hashed_by_the_first_definition_are_not_rewritten(pool: asyncpg.Pool) -> None:
    # As stored by a release before the hash's version prefix: the same data read again
    # is unchanged (no new version, no event) and takes the current hash; other data
    # is an update as ever.
    rows = [_invoice(n) for n in (1, 2)]
    bank = mapping.bank_row(
        "acme",
        "savings",
        {"RECORDNO": "9", "BANKACCOUNTID": "BOA", "WHENMODIFIED": "10/01/2026 10:00:00"},
    )
    async with pool.acquire() as conn:
        async with conn.transaction():
            await store.apply(conn, Outbox(), store.INVOICES, rows, time_zone=ZONE)
            await store.apply(conn, Outbox(), store.BANK_ACCOUNTS, [bank], time_zone=ZONE)
        for row in rows:
            await conn.execute(
                "UPDATE invoices SET data_hash = $2 WHERE record_no = $1",
                row["record_no"],
                mapping.legacy_hash(row),
            )
        await conn.execute("UPDATE bank_accounts SET data_hash = $1", mapping.legacy_hash(bank))
        await conn.execute("DELETE FROM outbox")
        again = [_invoice(1, modified="10/02/2026 10:00:00"), _invoice(2, due="7.00")]
        async with conn.transaction():
            counts = await store.apply(conn, Outbox(), store.INVOICES, again, time_zone=ZONE)
            banks = await store.apply(conn, Outbox(), store.BANK_ACCOUNTS, [bank], time_zone=ZONE)
        assert (counts.unchanged, counts.updated) == (1, 1)
        assert (banks.unchanged, banks.updated) == (1, 0)
        stored = {
            r["record_no"]: r
            for r in await conn.fetch("SELECT record_no, version, data_hash FROM invoices")
        }
        assert (stored["1"]["version"], stored["1"]["data_hash"]) == (1, again[0]["data_hash"])
        assert (stored["2"]["version"], stored["2"]["data_hash"]) == (2, again[1]["data_hash"])
        assert await conn.fetchval("SELECT data_hash FROM bank_accounts") == bank["data_hash"]
        assert [s for s, _ in await _events(conn)] == ["ar.invoice.updated"]
