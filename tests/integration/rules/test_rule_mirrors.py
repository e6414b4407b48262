"""The rules service's invoice mirror against real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge_rules.scheduler import Scheduler


def _invoice(version: int) -> ar_pb2.Invoice:
    return ar_pb2.Invoice(
        account_id="acme",
        record_no="7",
        invoice_number="INV-7",
        customer_id="C1",
        currency="USD",
        total=common_pb2.Money(amount_minor=10_000, currency="USD"),
        due=common_pb2.Money(amount_minor=10_000, currency="USD"),
        state=ar_pb2.INVOICE_STATE_OPEN,
        invoice_date="2026-11-01",
        due_date="2026-12-01",
        version=version,
    )


async def test_reading_the_same_version_again_keeps_its_change_time(
    database_url: str, unique: str
) -> None:
    """The re-check before a charge reads the invoice again; an "on creation at 09:00" rule
    must still see the time the invoice changed, not the time of the re-check."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{unique}"; SET search_path TO "{unique}"')
        await conn.execute(
            (resources.files("arbridge_rules") / "migrations/0001_rules.sql").read_text()
        )
        scheduler: Any = Scheduler.__new__(Scheduler)  # only its mirror writes are used
        changed = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        assert await Scheduler.store_invoice(scheduler, conn, _invoice(3), changed)
        later = changed + timedelta(hours=1)
        assert await Scheduler.store_invoice(scheduler, conn, _invoice(3), later)
        assert await conn.fetchval("SELECT changed_at FROM invoices") == changed
        assert not await Scheduler.store_invoice(scheduler, conn, _invoice(2), later)
        assert await Scheduler.store_invoice(scheduler, conn, _invoice(4), later)
        assert await conn.fetchval("SELECT changed_at FROM invoices") == later
        assert await conn.fetchval("SELECT version FROM invoices") == 4
    finally:
        await conn.close()
