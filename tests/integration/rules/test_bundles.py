"""The rules service's mirrors fed a sync job's bundles against real PostgreSQL: a bundle
ends in the same mirrors and schedule as the same changes delivered one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge.events.v1 import events_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge_rules.rules import RuleStore
from arbridge_rules.scheduler import Scheduler
from arbridge_runtime.db import create_pool, load_migrations, migrate, runtime_migrations
from arbridge_runtime.jetstream import Outbox

CREATED, UPDATED, DELETED = (
    events_pb2.CHANGE_TYPE_CREATED,
    events_pb2.CHANGE_TYPE_UPDATED,
    events_pb2.CHANGE_TYPE_DELETED,
)


@dataclass
class _Delivery:
    """A message as the consumer hands it to a handler."""

    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@pytest.fixture
async def pool(database_url: str, unique: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(
        database_url, unique, [*runtime_migrations(), *load_migrations("arbridge_rules", "rules")]
    )
    pool = await create_pool(database_url, unique)
    try:
        yield pool
    finally:
        await pool.close()


def _stamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _customer(account: str, customer_id: str, groups: list[str], version: int) -> Any:
    return events_pb2.CustomerChanged(
        change=CREATED if version == 1 else UPDATED,
        customer=ar_pb2.Customer(
            account_id=account, customer_id=customer_id, groups=groups, version=version
        ),
        occurred_at=_stamp(datetime(2026, 11, 20, tzinfo=UTC)),
    )


def _invoice(
    account: str, record_no: int, customer_id: str, due: int, version: int, change: Any = 0
) -> Any:
    due_date = date.today() + timedelta(days=20)
    return events_pb2.InvoiceChanged(
        change=change or (CREATED if version == 1 else UPDATED),
        invoice=ar_pb2.Invoice(
            account_id=account,
            record_no=str(record_no),
            invoice_number=f"INV-{record_no}",
            customer_id=customer_id,
            currency="USD",
            total=common_pb2.Money(amount_minor=due, currency="USD"),
            due=common_pb2.Money(amount_minor=due, currency="USD"),
            state=ar_pb2.INVOICE_STATE_OPEN,
            invoice_date=str(date.today()),
            due_date=str(due_date),
            version=version,
        ),
        occurred_at=_stamp(datetime(2026, 11, 20, 8, record_no, tzinfo=UTC)),
    )


def _history(account: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Three deliveries' worth of an account's changes, in the order sync wrote them."""
    customers = [
        _customer(account, "C1", ["VIP"], 1),
        _customer(account, "C2", [], 1),
        _customer(account, "C3", ["VIP", "EU"], 1),
    ]
    invoices = [
        _invoice(account, 1, "C1", 10_000, 1),
        _invoice(account, 2, "C2", 20_000, 1),
        _invoice(account, 3, "C3", 30_000, 2),
        _invoice(account, 3, "C3", 31_000, 1),  # older than the one before: changes nothing
        _invoice(account, 4, "C1", 40_000, 1),
        _invoice(account, 4, "C1", 40_000, 2, change=DELETED),  # deleted after being stored
        _invoice(account, 5, "C2", 50_000, 1),
        _invoice(account, 6, "C1", 60_000, 1),
        _invoice(account, 6, "C1", 65_000, 2),  # newer: its amount stands
    ]
    later = [_customer(account, "C2", ["VIP"], 2)]  # C2 joins the group: its invoices charge
    return customers, invoices, later


async def _handle(
    pool: asyncpg.Pool, handler: Callable[[Any, Any], Any], subject: str, message: Message
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await handler(conn, _Delivery(subject, message.SerializeToString()))


async def _state(pool: asyncpg.Pool, account: str) -> dict[str, Any]:
    invoices = await pool.fetch(
        "SELECT record_no, customer_id, due_minor, version, changed_at FROM invoices"
        " WHERE account_id = $1 ORDER BY record_no",
        account,
    )
    customers = await pool.fetch(
        "SELECT customer_id, groups, version FROM customers WHERE account_id = $1"
        " ORDER BY customer_id",
        account,
    )
    schedule = await pool.fetch(
        "SELECT invoice_record_no, customer_id, state, charge_at, amount_minor, attempt"
        " FROM schedule WHERE account_id = $1 ORDER BY invoice_record_no",
        account,
    )
    return {
        "invoices": [dict(r) for r in invoices],
        "customers": [dict(r) for r in customers],
        "schedule": [dict(r) for r in schedule],
    }


async def test_a_bundle_ends_where_the_same_changes_one_by_one_do(pool: asyncpg.Pool) -> None:
    scheduler = Scheduler(pool, Outbox(), sync=None, payments=None)  # type: ignore[arg-type]
    rules = RuleStore(pool)
    for account in ("single", "bundled"):
        await _handle(
            pool,
            scheduler.on_account,
            "connector.account.connected",
            events_pb2.AccountConnectionChanged(
                account_id=account, connected=True, time_zone="America/Los_Angeles"
            ),
        )
        await rules.create(
            rules_pb2.Rule(
                account_id=account,
                name="VIP customers",
                enabled=True,
                priority=10,
                conditions=rules_pb2.Conditions(currencies=["USD"], customer_groups=["VIP"]),
                timing=rules_pb2.Timing(
                    trigger=rules_pb2.TIMING_TRIGGER_ON_DUE_DATE, time_of_day="09:00"
                ),
                amount=rules_pb2.AmountPolicy(mode=rules_pb2.AMOUNT_MODE_OPEN_BALANCE),
            )
        )
        for customer in ("C1", "C2", "C3"):
            await _handle(
                pool,
                scheduler.on_methods,
                "payments.method.changed",
                events_pb2.PaymentMethodsChanged(
                    account_id=account, customer_id=customer, types=["card"], version=1
                ),
            )

    # One account's changes one message each, as Intacct's events bring them ...
    customers, invoices, later = _history("single")
    verbs = {CREATED: "created", UPDATED: "updated", DELETED: "deleted"}
    for change in customers:
        await _handle(pool, scheduler.on_customer, f"ar.customer.{verbs[change.change]}", change)
    for change in invoices:
        await _handle(pool, scheduler.on_invoice, f"ar.invoice.{verbs[change.change]}", change)
    for change in later:
        await _handle(pool, scheduler.on_customer, "ar.customer.updated", change)
    # ... and the other's the same changes in bundles, as a sync job announces them.
    customers, invoices, later = _history("bundled")
    await _handle(
        pool,
        scheduler.on_customer,
        "ar.customer.bundle",
        events_pb2.CustomerChanges(changes=customers),
    )
    await _handle(
        pool, scheduler.on_invoice, "ar.invoice.bundle", events_pb2.InvoiceChanges(changes=invoices)
    )
    await _handle(
        pool, scheduler.on_customer, "ar.customer.bundle", events_pb2.CustomerChanges(changes=later)
    )

    single, bundled = await _state(pool, "single"), await _state(pool, "bundled")
    assert bundled == single
    held = {r["record_no"]: r for r in bundled["invoices"]}
    assert sorted(held) == ["1", "2", "3", "5", "6"]  # 4 was deleted after it was stored
    assert (held["3"]["version"], held["3"]["due_minor"]) == (2, 30_000)  # the older came later
    assert (held["6"]["version"], held["6"]["due_minor"]) == (2, 65_000)
    groups = {r["customer_id"]: r["groups"] for r in bundled["customers"]}
    assert groups == {"C1": ["VIP"], "C2": ["VIP"], "C3": ["VIP", "EU"]}
    scheduled = {r["invoice_record_no"]: r for r in bundled["schedule"]}
    # Every remaining invoice is a VIP's now (C2 joined last) and is charged its balance;
    # 4's charge, scheduled when it was stored, was cleared when it was deleted.
    assert {k: (r["state"], r["amount_minor"]) for k, r in scheduled.items()} == {
        "1": ("scheduled", 10_000),
        "2": ("scheduled", 20_000),
        "3": ("scheduled", 30_000),
        "4": ("cleared", 40_000),
        "5": ("scheduled", 50_000),
        "6": ("scheduled", 65_000),
    }


async def test_a_bundle_older_than_what_is_held_changes_nothing(pool: asyncpg.Pool) -> None:
    scheduler = Scheduler(pool, Outbox(), sync=None, payments=None)  # type: ignore[arg-type]
    newer = [_invoice("acme", n, "C1", 5_000, 3) for n in range(1, 4)]
    await _handle(
        pool, scheduler.on_invoice, "ar.invoice.bundle", events_pb2.InvoiceChanges(changes=newer)
    )
    before = await _state(pool, "acme")
    older = [_invoice("acme", n, "C1", 9_000, 2) for n in range(1, 4)]
    await _handle(
        pool, scheduler.on_invoice, "ar.invoice.bundle", events_pb2.InvoiceChanges(changes=older)
    )
    after = await _state(pool, "acme")
    assert after == before
    assert [r["due_minor"] for r in after["invoices"]] == [5_000] * 3
