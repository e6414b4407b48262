"""Evaluation on every event, the durable schedule, and charging when a scheduled time comes.

Mirrors: invoices and customers from `ar.*`, the payment-method types on file
from `payments.method.changed`, time zones from `connector.account.*`. Each
event evaluates the invoices it touches (in the consumer's transaction, so a
redelivered event changes nothing twice) and writes the result to
`schedule`, one row per invoice; a change of an invoice's next auto charge is
published as `rules.schedule.changed` (sync writes it back to Intacct).

Charging (`charge_due`): due rows are claimed with `FOR UPDATE SKIP LOCKED`
and a lease, so replicas never take the same row at once. Before the first
call for an attempt the invoice is read again from sync and the rules are
decided again; then the attempt is recorded with its idempotency key
(`rule:{account}:{invoice}:{rule}:{scheduled local date}:{attempt}`) and
amount, and payments is asked to charge. A crash anywhere leaves either a
`scheduled` row or a `charging` row whose lease lapses: the next claim finds
the recorded attempt and asks payments again with the same key and amount, so
payments answers with the charge it made (or makes it once). A payer paying
the same invoice through a link holds the invoice's live slot at payments;
the rule's charge is then refused as in progress and tried again shortly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import grpc
import structlog

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge.events.v1 import events_pb2
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_rules import engine
from arbridge_rules.rules import RuleStore, spec
from arbridge_runtime import tracing
from arbridge_runtime.faults import NO_FAULTS, FaultInjector
from arbridge_runtime.jetstream import Outbox

log = structlog.get_logger(__name__)

STATES = {
    ar_pb2.INVOICE_STATE_OPEN: "open",
    ar_pb2.INVOICE_STATE_PARTIALLY_PAID: "partially_paid",
    ar_pb2.INVOICE_STATE_PAID: "paid",
    ar_pb2.INVOICE_STATE_VOID: "void",
    ar_pb2.INVOICE_STATE_DRAFT: "draft",
}
SOURCES = {
    common_pb2.INVOICE_SOURCE_SALES_INVOICE: "sales_invoice",
    common_pb2.INVOICE_SOURCE_AR_INVOICE: "ar_invoice",
}
IN_PROGRESS_RETRY = timedelta(minutes=2)
# Due rows come from the partial indexes on charge_at (scheduled) and lease_until
# (charging), so the claim does not grow with the schedule's size.
CLAIM_DUE = (
    "WITH due AS (SELECT account_id, invoice_record_no FROM schedule"
    " WHERE state = 'scheduled' AND charge_at <= now() ORDER BY charge_at LIMIT $1"
    " FOR UPDATE SKIP LOCKED),"
    " lapsed AS (SELECT account_id, invoice_record_no FROM schedule"
    " WHERE state = 'charging' AND lease_until < now() ORDER BY lease_until LIMIT $1"
    " FOR UPDATE SKIP LOCKED)"
    " UPDATE schedule s SET state = 'charging',"
    " lease_until = now() + make_interval(secs => $2), updated_at = now()"
    " FROM (SELECT * FROM due UNION ALL SELECT * FROM lapsed) c"
    " WHERE s.account_id = c.account_id AND s.invoice_record_no = c.invoice_record_no"
    " RETURNING s.*"
)
BATCH = 500


@dataclass(frozen=True)
class Facts:
    account_id: str
    invoice: engine.InvoiceFacts
    customer: engine.CustomerFacts | None
    zone: ZoneInfo
    changed_at: datetime


_UNREAD: Any = object()  # a schedule row not read yet
_T = TypeVar("_T")


_Changed = TypeVar("_Changed", events_pb2.CustomerChanged, events_pb2.InvoiceChanged)


def _runs(
    changes: Sequence[_Changed], account_of: Callable[[_Changed], str]
) -> list[tuple[str, list[_Changed], _Changed | None]]:
    """Each account's changes, in the order received, as runs of creations and updates,
    each with the deletion that ended it (None for the last): (account, run, deletion).
    What came before a deletion is stored before it, and what came after, after."""
    grouped: dict[str, list[_Changed]] = {}
    for change in changes:
        grouped.setdefault(account_of(change), []).append(change)
    runs: list[tuple[str, list[_Changed], _Changed | None]] = []
    for account_id, events in grouped.items():
        run: list[_Changed] = []
        for event in events:
            if event.change == events_pb2.CHANGE_TYPE_DELETED:
                runs.append((account_id, run, event))
                run = []
            else:
                run.append(event)
        if run:
            runs.append((account_id, run, None))
    return runs


def _latest(
    items: Sequence[_T], key: Callable[[_T], str], version: Callable[[_T], int]
) -> list[_T]:
    """One item per key: its highest version (the later of equals), in first-seen order
    (one statement cannot write a key twice)."""
    chosen: dict[str, _T] = {}
    for item in items:
        k = key(item)
        if k not in chosen or version(item) >= version(chosen[k]):
            chosen[k] = item
    return list(chosen.values())


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def invoice_facts(row: asyncpg.Record) -> engine.InvoiceFacts:
    return engine.InvoiceFacts(
        record_no=row["record_no"],
        customer_id=row["customer_id"],
        currency=row["currency"],
        total_minor=row["total_minor"],
        due_minor=row["due_minor"],
        state=row["state"],
        term_name=row["term_name"],
        entity_id=row["entity_id"],
        source=row["source"],
        invoice_date=row["invoice_date"],
        due_date=row["due_date"],
        number=row["invoice_number"],
        excluded=row["excluded"],
    )


def attempt_key(row: Any) -> str:
    return (
        f"rule:{row['account_id']}:{row['invoice_record_no']}:{row['rule_id']}:"
        f"{row['scheduled_for']}:{row['attempt']}"
    )


class Scheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        outbox: Outbox,
        sync: sync_pb2_grpc.SyncServiceAsyncStub,
        payments: payments_pb2_grpc.PaymentsServiceAsyncStub,
        *,
        lease_seconds: float = 60.0,
        in_progress_retry: timedelta = IN_PROGRESS_RETRY,
        faults: FaultInjector = NO_FAULTS,
    ) -> None:
        self._pool = pool
        self._outbox = outbox
        self._sync = sync
        self._payments = payments
        self._lease = lease_seconds
        self._in_progress_retry = in_progress_retry
        self._faults = faults

    # Mirrors (consumers) ------------------------------------------------------------

    async def on_account(self, conn: Any, delivery: Any) -> None:
        event = events_pb2.AccountConnectionChanged.FromString(delivery.data)
        await conn.execute(
            "INSERT INTO accounts (account_id, time_zone, connected, platform_services)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE"
            " SET time_zone = EXCLUDED.time_zone, connected = EXCLUDED.connected,"
            " platform_services = EXCLUDED.platform_services, intacct_rules_next_at = now(),"
            " updated_at = now()",
            event.account_id,
            event.time_zone or "UTC",
            event.connected,
            event.platform_services,
        )

    async def on_customer(self, conn: Any, delivery: Any) -> None:
        """``ar.customer.*``: one change, or a sync job's bundle of them. A bundle is
        handled whole in the delivery's transaction, in a few statements rather than
        a few per customer (an initial sync's are tens of thousands)."""
        if delivery.subject.endswith(".bundle"):
            changes = list(events_pb2.CustomerChanges.FromString(delivery.data).changes)
        else:
            changes = [events_pb2.CustomerChanged.FromString(delivery.data)]
        for account_id, run, deleted in _runs(changes, lambda e: e.customer.account_id):
            await self._customers_changed(conn, account_id, [e.customer for e in run])
            if deleted is not None:
                await conn.execute(
                    "DELETE FROM customers WHERE account_id = $1 AND customer_id = $2",
                    account_id,
                    deleted.customer.customer_id,
                )
                await self.evaluate_customers(conn, account_id, [deleted.customer.customer_id])

    async def _customers_changed(
        self, conn: Any, account_id: str, customers: list[ar_pb2.Customer]
    ) -> None:
        stored = await self._store_customers(conn, account_id, customers)
        await self.evaluate_customers(conn, account_id, stored)

    async def _store_customers(
        self, conn: Any, account_id: str, customers: list[ar_pb2.Customer]
    ) -> list[str]:
        """Stores customers newer than the versions held; the ids of those stored."""
        latest = _latest(customers, lambda c: c.customer_id, lambda c: c.version)
        if not latest:
            return []
        rows = await conn.fetch(
            "INSERT INTO customers (account_id, customer_id, groups, version)"
            " SELECT $1, u.customer_id, ARRAY(SELECT jsonb_array_elements_text(u.groups::jsonb)),"
            " u.version FROM unnest($2::text[], $3::text[], $4::bigint[])"
            " AS u(customer_id, groups, version)"
            " ON CONFLICT (account_id, customer_id) DO UPDATE"
            " SET groups = EXCLUDED.groups, version = EXCLUDED.version"
            " WHERE customers.version <= EXCLUDED.version RETURNING customer_id",
            account_id,
            [c.customer_id for c in latest],
            [json.dumps(list(c.groups)) for c in latest],
            [c.version for c in latest],
        )
        return [r["customer_id"] for r in rows]

    async def on_methods(self, conn: Any, delivery: Any) -> None:
        event = events_pb2.PaymentMethodsChanged.FromString(delivery.data)
        applied = await conn.fetchval(
            "INSERT INTO customer_methods (account_id, customer_id, types, version)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, customer_id) DO UPDATE"
            " SET types = EXCLUDED.types, version = EXCLUDED.version"
            " WHERE customer_methods.version <= EXCLUDED.version RETURNING true",
            event.account_id,
            event.customer_id,
            list(event.types),
            event.version,
        )
        if applied:
            await self.evaluate_customer(conn, event.account_id, event.customer_id)

    async def on_invoice(self, conn: Any, delivery: Any) -> None:
        """``ar.invoice.*``: one change, or a sync job's bundle of them (as for customers)."""
        if delivery.subject.endswith(".bundle"):
            changes = list(events_pb2.InvoiceChanges.FromString(delivery.data).changes)
        else:
            changes = [events_pb2.InvoiceChanged.FromString(delivery.data)]
        for account_id, run, deleted in _runs(changes, lambda e: e.invoice.account_id):
            changed = [
                (
                    e.invoice,
                    e.occurred_at.ToDatetime(tzinfo=UTC)
                    if e.HasField("occurred_at")
                    else datetime.now(UTC),
                )
                for e in run
            ]
            await self._invoices_changed(conn, account_id, changed)
            if deleted is not None:
                record_no = deleted.invoice.record_no
                await conn.execute(
                    "DELETE FROM invoices WHERE account_id = $1 AND record_no = $2",
                    account_id,
                    record_no,
                )
                await self._clear(conn, account_id, record_no, "the invoice was deleted")

    async def _invoices_changed(
        self, conn: Any, account_id: str, invoices: list[tuple[ar_pb2.Invoice, datetime]]
    ) -> None:
        # Versions older than the ones held change nothing and are not evaluated.
        stored = await self.store_invoices(conn, account_id, invoices)
        await self.evaluate_invoices(conn, account_id, stored)

    async def store_invoice(self, conn: Any, invoice: ar_pb2.Invoice, changed_at: datetime) -> bool:
        """Stores the invoice unless the version held is newer; whether it was stored."""
        return bool(await self.store_invoices(conn, invoice.account_id, [(invoice, changed_at)]))

    async def store_invoices(
        self, conn: Any, account_id: str, invoices: list[tuple[ar_pb2.Invoice, datetime]]
    ) -> list[str]:
        """Stores an account's invoices (each with its change time) in one statement,
        each unless the version held is newer; the RECORDNOs of those stored, in order."""
        latest = _latest(invoices, lambda item: item[0].record_no, lambda item: item[0].version)
        if not latest:
            return []
        columns: list[list[Any]] = [[] for _ in range(14)]
        for invoice, changed_at in latest:
            for column, value in zip(
                columns,
                (
                    invoice.record_no,
                    invoice.invoice_number,
                    invoice.customer_id,
                    invoice.currency,
                    invoice.total.amount_minor,
                    invoice.due.amount_minor,
                    STATES.get(invoice.state, "open"),
                    invoice.term_name,
                    invoice.entity_id,
                    SOURCES.get(invoice.source, "ar_invoice"),
                    _date(invoice.invoice_date),
                    _date(invoice.due_date),
                    invoice.version,
                    changed_at,
                ),
                strict=True,
            ):
                column.append(value)
        rows = await conn.fetch(
            "INSERT INTO invoices (account_id, record_no, invoice_number, customer_id, currency,"
            " total_minor, due_minor, state, term_name, entity_id, source, invoice_date,"
            " due_date, version, changed_at) SELECT $1, * FROM unnest($2::text[], $3::text[],"
            " $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::text[], $9::text[],"
            " $10::text[], $11::text[], $12::date[], $13::date[], $14::bigint[],"
            " $15::timestamptz[]) ON CONFLICT (account_id, record_no) DO UPDATE SET"
            " invoice_number = EXCLUDED.invoice_number, customer_id = EXCLUDED.customer_id,"
            " currency = EXCLUDED.currency, total_minor = EXCLUDED.total_minor,"
            " due_minor = EXCLUDED.due_minor, state = EXCLUDED.state,"
            " term_name = EXCLUDED.term_name, entity_id = EXCLUDED.entity_id,"
            " source = EXCLUDED.source, invoice_date = EXCLUDED.invoice_date,"
            " due_date = EXCLUDED.due_date, version = EXCLUDED.version,"
            # The change time ("on creation or update" timing) moves only with a new
            # version: reading the same version again (the re-check before a charge)
            # must not push an "at 09:00" charge to the next day.
            " changed_at = CASE WHEN invoices.version < EXCLUDED.version"
            " THEN EXCLUDED.changed_at ELSE invoices.changed_at END"
            " WHERE invoices.version <= EXCLUDED.version"
            " RETURNING record_no",
            account_id,
            *columns,
        )
        written = {r["record_no"] for r in rows}
        return [invoice.record_no for invoice, _ in latest if invoice.record_no in written]

    # Evaluation ---------------------------------------------------------------------

    async def facts(self, conn: Any, account_id: str, record_no: str) -> Facts | None:
        return (await self.facts_of(conn, account_id, [record_no])).get(record_no)

    async def facts_of(
        self, conn: Any, account_id: str, record_nos: Sequence[str]
    ) -> dict[str, Facts]:
        """What evaluating the account's invoices needs, by RECORDNO (those held)."""
        rows = await conn.fetch(
            "SELECT i.*, a.time_zone, c.groups, m.types, o.customer_id IS NOT NULL AS opted_out,"
            " c.customer_id IS NOT NULL AS known"
            " FROM invoices i LEFT JOIN accounts a USING (account_id)"
            " LEFT JOIN customers c ON c.account_id = i.account_id"
            " AND c.customer_id = i.customer_id"
            " LEFT JOIN customer_methods m ON m.account_id = i.account_id"
            " AND m.customer_id = i.customer_id"
            " LEFT JOIN autopay_opt_outs o ON o.account_id = i.account_id"
            " AND o.customer_id = i.customer_id"
            " WHERE i.account_id = $1 AND i.record_no = ANY($2::text[])",
            account_id,
            list(record_nos),
        )
        found: dict[str, Facts] = {}
        for row in rows:
            customer = engine.CustomerFacts(
                customer_id=row["customer_id"],
                groups=frozenset(row["groups"] or ()),
                auto_pay=not row["opted_out"],
                method_types=frozenset(row["types"] or ()),
            )
            found[row["record_no"]] = Facts(
                account_id,
                invoice_facts(row),
                customer,
                zone_of(row["time_zone"]),
                row["changed_at"],
            )
        return found

    async def evaluate_customer(self, conn: Any, account_id: str, customer_id: str) -> None:
        await self.evaluate_customers(conn, account_id, [customer_id])

    async def evaluate_customers(
        self, conn: Any, account_id: str, customer_ids: Sequence[str]
    ) -> None:
        """Evaluates every invoice of these customers."""
        if not customer_ids:
            return
        rows = await conn.fetch(
            "SELECT record_no FROM invoices WHERE account_id = $1"
            " AND customer_id = ANY($2::text[]) ORDER BY record_no",
            account_id,
            list(customer_ids),
        )
        await self.evaluate_invoices(conn, account_id, [r["record_no"] for r in rows])

    async def evaluate_invoice(
        self,
        conn: Any,
        account_id: str,
        record_no: str,
        rules: list[engine.RuleSpec] | None = None,
    ) -> engine.Decision | None:
        return (await self.evaluate_invoices(conn, account_id, [record_no], rules)).get(record_no)

    async def evaluate_invoices(
        self,
        conn: Any,
        account_id: str,
        record_nos: Sequence[str],
        rules: list[engine.RuleSpec] | None = None,
    ) -> dict[str, engine.Decision]:
        """Evaluates an account's invoices and schedules (or clears) their charges;
        each invoice's decision. Facts and schedule rows are read ``BATCH`` invoices at
        a time, not one query per invoice; the rows are locked in RECORDNO order."""
        decided: dict[str, engine.Decision] = {}
        wanted = list(dict.fromkeys(record_nos))
        if not wanted:
            return decided
        if rules is None:
            rules = await RuleStore.specs(conn, account_id)
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start : start + BATCH]
            facts = await self.facts_of(conn, account_id, chunk)
            held = {
                row["invoice_record_no"]: row
                for row in await conn.fetch(
                    "SELECT * FROM schedule WHERE account_id = $1"
                    " AND invoice_record_no = ANY($2::text[])"
                    " ORDER BY invoice_record_no FOR UPDATE",
                    account_id,
                    chunk,
                )
            }
            for record_no in chunk:
                found = facts.get(record_no)
                if found is None:
                    continue
                decision = engine.decide(
                    rules, found.invoice, found.customer, found.zone, found.changed_at
                )
                await self._apply(conn, found, decision, held.get(record_no))
                decided[record_no] = decision
        return decided

    async def _apply(
        self, conn: Any, facts: Facts, decision: engine.Decision, held: Any = _UNREAD
    ) -> None:
        """Writes the decision to the invoice's schedule row; ``held``: that row as
        already read and locked in this transaction (None: there is none)."""
        invoice = facts.invoice
        account_id = facts.account_id
        row = held
        if row is _UNREAD:
            row = await conn.fetchrow(
                "SELECT * FROM schedule WHERE account_id = $1 AND invoice_record_no = $2"
                " FOR UPDATE",
                account_id,
                invoice.record_no,
            )
        if row is not None and row["state"] in ("charging", "done", "stopped"):
            return  # being charged, charged, or given up on: evaluation does not move it
        if not decision.charges:
            if row is not None and row["state"] == "scheduled":
                await self._clear(conn, account_id, invoice.record_no, decision.summary)
            return
        assert decision.rule is not None
        assert decision.charge_at is not None
        same_rule = row is not None and row["rule_id"] == decision.rule.rule_id
        attempt = row["attempt"] if same_rule and row is not None else 1
        charge_at = decision.charge_at
        if same_rule and row is not None and attempt > 1 and row["charge_at"] is not None:
            charge_at = row["charge_at"]  # waiting for a retry: its time stands
        scheduled_for = charge_at.astimezone(facts.zone).date()
        if same_rule and row is not None and attempt > 1 and row["scheduled_for"] is not None:
            scheduled_for = row["scheduled_for"]
        changed = (
            row is None
            or row["state"] != "scheduled"
            or row["charge_at"] != charge_at
            or row["rule_id"] != decision.rule.rule_id
        )
        await conn.execute(
            "INSERT INTO schedule (account_id, invoice_record_no, customer_id, rule_id, state,"
            " charge_at, scheduled_for, amount_minor, currency, attempt, note, trace_parent)"
            " VALUES ($1, $2, $3, $4, 'scheduled', $5, $6, $7, $8, $9, '', $10)"
            " ON CONFLICT (account_id, invoice_record_no) DO UPDATE SET"
            " customer_id = EXCLUDED.customer_id, rule_id = EXCLUDED.rule_id,"
            " state = 'scheduled', charge_at = EXCLUDED.charge_at,"
            " scheduled_for = EXCLUDED.scheduled_for, amount_minor = EXCLUDED.amount_minor,"
            " currency = EXCLUDED.currency, attempt = EXCLUDED.attempt, note = '',"
            # An evaluation outside any trace (a re-evaluation after a rule changed)
            # keeps the trace of the last one that had a cause.
            " trace_parent = COALESCE(NULLIF(EXCLUDED.trace_parent, ''), schedule.trace_parent),"
            " updated_at = now()",
            account_id,
            invoice.record_no,
            invoice.customer_id,
            decision.rule.rule_id,
            charge_at,
            scheduled_for,
            decision.amount_minor,
            invoice.currency,
            attempt,
            tracing.traceparent(),
        )
        if changed:
            await self._announce(conn, account_id, invoice.record_no, invoice.customer_id)

    async def _clear(self, conn: Any, account_id: str, record_no: str, note: str) -> None:
        row = await conn.fetchrow(
            "UPDATE schedule SET state = 'cleared', charge_at = NULL, note = $3,"
            " lease_until = NULL, updated_at = now() WHERE account_id = $1"
            " AND invoice_record_no = $2 AND state IN ('scheduled', 'charging')"
            " RETURNING customer_id",
            account_id,
            record_no,
            note[:500],
        )
        if row is not None:
            await self._announce(conn, account_id, record_no, row["customer_id"])

    async def _announce(self, conn: Any, account_id: str, record_no: str, customer_id: str) -> None:
        """``rules.schedule.changed``: the invoice's next auto charge and the customer's."""
        row = await conn.fetchrow(
            "SELECT charge_at, rule_id FROM schedule WHERE account_id = $1"
            " AND invoice_record_no = $2 AND state = 'scheduled'",
            account_id,
            record_no,
        )
        earliest = await conn.fetchval(
            "SELECT min(charge_at) FROM schedule WHERE account_id = $1 AND customer_id = $2"
            " AND state = 'scheduled'",
            account_id,
            customer_id,
        )
        event = events_pb2.NextAutoChargeChanged(
            account_id=account_id,
            invoice_record_no=record_no,
            customer_id=customer_id,
            rule_id=row["rule_id"] if row else "",
        )
        if row is not None and row["charge_at"] is not None:
            event.next_charge_at.FromDatetime(row["charge_at"])
        if earliest is not None:
            event.customer_next_charge_at.FromDatetime(earliest)
        await self._outbox.add(conn, "rules.schedule.changed", event)

    async def reevaluate_due(self) -> int:
        """Evaluates again every invoice of accounts whose rules changed; returns how many."""
        accounts = await self._pool.fetch(
            "SELECT account_id, reevaluate_requested_at FROM accounts"
            " WHERE reevaluate_requested_at IS NOT NULL LIMIT 10"
        )
        done = 0
        for account in accounts:
            account_id = account["account_id"]
            after = ""
            while True:
                async with self._pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(
                        "SELECT record_no FROM invoices WHERE account_id = $1 AND record_no > $2"
                        " ORDER BY record_no LIMIT $3",
                        account_id,
                        after,
                        BATCH,
                    )
                    await self.evaluate_invoices(conn, account_id, [r["record_no"] for r in rows])
                done += len(rows)
                if len(rows) < BATCH:
                    break
                after = rows[-1]["record_no"]
            await self._pool.execute(
                "UPDATE accounts SET reevaluate_requested_at = NULL WHERE account_id = $1"
                " AND reevaluate_requested_at = $2",
                account_id,
                account["reevaluate_requested_at"],
            )
        return done

    # Charging -----------------------------------------------------------------------

    async def charge_due(self, limit: int = 20) -> int:
        """Claims due charges (and charges whose claimer died) and drives each; returns how
        many it took."""
        rows = await self._pool.fetch(CLAIM_DUE, limit, self._lease)
        for row in rows:
            self._faults.hit("rules.after_claim")
            try:
                with tracing.span(
                    "rules.charge",
                    parent=row["trace_parent"],
                    attributes={
                        "arbridge.account_id": row["account_id"],
                        "arbridge.invoice": row["invoice_record_no"],
                        "arbridge.rule_id": row["rule_id"],
                        "arbridge.attempt": row["attempt"],
                    },
                ):
                    await self._drive(row)
            except Exception:
                log.exception(
                    "rules.charge_failed",
                    account_id=row["account_id"],
                    invoice=row["invoice_record_no"],
                )
        return len(rows)

    async def _drive(self, row: asyncpg.Record) -> None:
        account_id, record_no = row["account_id"], row["invoice_record_no"]
        attempt = await self._pool.fetchrow(
            "SELECT * FROM attempts WHERE account_id = $1 AND invoice_record_no = $2"
            " AND attempt = $3 AND rule_id = $4",
            account_id,
            record_no,
            row["attempt"],
            row["rule_id"],
        )
        if attempt is None:
            amount = await self._recheck(row)
            if amount is None:
                return
            key = attempt_key(row)
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO attempts (account_id, invoice_record_no, attempt, rule_id,"
                    " idempotency_key, amount_minor, currency) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT DO NOTHING",
                    account_id,
                    record_no,
                    row["attempt"],
                    row["rule_id"],
                    key,
                    amount,
                    row["currency"],
                )
            attempt = await self._pool.fetchrow(
                "SELECT * FROM attempts WHERE account_id = $1 AND invoice_record_no = $2"
                " AND attempt = $3 AND rule_id = $4",
                account_id,
                record_no,
                row["attempt"],
                row["rule_id"],
            )
            self._faults.hit("rules.after_attempt")
        if attempt["outcome"] != "pending":
            await self._record(row, attempt, None, None)
            return
        try:
            reply = await self._payments.ChargeInvoices(
                payments_pb2.ChargeInvoicesRequest(
                    account_id=account_id,
                    idempotency_key=attempt["idempotency_key"],
                    customer_id=row["customer_id"],
                    # The amount decided from the AR store, as a maximum: payments charges
                    # the open balance up to it, which is less when a payer paid part of
                    # the invoice that Intacct does not show yet.
                    invoices=[
                        payments_pb2.InvoiceAmount(
                            invoice_record_no=record_no,
                            maximum=common_pb2.Money(
                                amount_minor=attempt["amount_minor"], currency=attempt["currency"]
                            ),
                        )
                    ],
                    source=payments_pb2.CHARGE_SOURCE_RULE,
                    rule_id=row["rule_id"],
                ),
                timeout=120,
            )
        except grpc.aio.AioRpcError as err:
            await self._refused(row, attempt, err)
            return
        self._faults.hit("rules.after_charge")
        await self._record(row, attempt, reply.charge, None)

    async def _recheck(self, row: asyncpg.Record) -> int | None:
        """Reads the invoice again from sync and decides again; the amount to charge, or None
        when the row was rescheduled or cleared instead."""
        account_id, record_no = row["account_id"], row["invoice_record_no"]
        try:
            fresh = await self._current_invoice(row)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                async with self._pool.acquire() as conn, conn.transaction():
                    await self._clear(conn, account_id, record_no, "the invoice no longer exists")
                return None
            await self._release(row, f"the AR store could not be read ({err.code().name})")
            return None
        async with self._pool.acquire() as conn, conn.transaction():
            await self.store_invoice(conn, fresh, datetime.now(UTC))
            facts = await self.facts(conn, account_id, record_no)
            if facts is None:
                return None
            rules = await RuleStore.specs(conn, account_id)
            # The invoice's own change time decides "on creation" timing, as at scheduling.
            decision = engine.decide(
                rules, facts.invoice, facts.customer, facts.zone, facts.changed_at
            )
            if not decision.charges or decision.rule is None:
                await self._clear(conn, account_id, record_no, decision.summary)
                return None
            if decision.rule.rule_id != row["rule_id"]:
                # Another rule decides now: schedule afresh under it.
                await conn.execute(
                    "UPDATE schedule SET state = 'scheduled', lease_until = NULL"
                    " WHERE account_id = $1 AND invoice_record_no = $2",
                    account_id,
                    record_no,
                )
                await self._apply(conn, facts, decision)
                return None
            amount = decision.amount_minor
            if row["attempt"] > 1:
                return amount
            assert decision.charge_at is not None
            if decision.charge_at > datetime.now(UTC) + timedelta(minutes=1):
                await conn.execute(
                    "UPDATE schedule SET state = 'scheduled', lease_until = NULL, charge_at = $3"
                    " WHERE account_id = $1 AND invoice_record_no = $2",
                    account_id,
                    record_no,
                    decision.charge_at,
                )
                await self._announce(conn, account_id, record_no, row["customer_id"])
                return None
        return amount

    async def _current_invoice(self, row: asyncpg.Record) -> ar_pb2.Invoice:
        """The row's invoice as the AR store has it now (``AioRpcError`` when it cannot)."""
        reply = await self._sync.GetInvoice(
            sync_pb2.GetInvoiceRequest(
                account_id=row["account_id"], record_no=row["invoice_record_no"]
            ),
            timeout=30,
        )
        return reply.invoice

    async def _settled_otherwise(self, row: asyncpg.Record) -> str | None:
        """Why the row's invoice needs no charge now, as the AR store shows it (gone, or
        not open, or nothing due); None when it still does, or cannot be read."""
        try:
            fresh = await self._current_invoice(row)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return "the invoice no longer exists; nothing was charged"
            return None
        async with self._pool.acquire() as conn, conn.transaction():
            await self.store_invoice(conn, fresh, datetime.now(UTC))
        state = STATES.get(fresh.state, "open")
        if state not in ("paid", "void", "draft") and fresh.due.amount_minor > 0:
            return None
        done = {"void": "voided", "draft": "made a draft again"}.get(state, "paid")
        return f"the invoice was {done} before this attempt could charge it; nothing was charged"

    @staticmethod
    async def _after_failure(conn: Any, attempt: asyncpg.Record, reason: str) -> None:
        """Moves the schedule after a failed attempt: to the rule's next retry, or stopped."""
        account_id, record_no = attempt["account_id"], attempt["invoice_record_no"]
        rule_row = await conn.fetchrow("SELECT * FROM rules WHERE rule_id = $1", attempt["rule_id"])
        rule = spec(rule_row) if rule_row is not None else None
        retry_at = engine.retry_time(rule, datetime.now(UTC), attempt["attempt"]) if rule else None
        if retry_at is None:
            await conn.execute(
                "UPDATE schedule SET state = 'stopped', lease_until = NULL,"
                " charge_at = NULL, note = $3, updated_at = now()"
                " WHERE account_id = $1 AND invoice_record_no = $2",
                account_id,
                record_no,
                f"stopped after attempt {attempt['attempt']}: {reason}"[:500],
            )
            return
        zone = zone_of(
            await conn.fetchval("SELECT time_zone FROM accounts WHERE account_id = $1", account_id)
        )
        await conn.execute(
            "UPDATE schedule SET state = 'scheduled', lease_until = NULL,"
            " charge_at = $3, scheduled_for = $4, attempt = $5, note = $6,"
            " updated_at = now() WHERE account_id = $1 AND invoice_record_no = $2",
            account_id,
            record_no,
            retry_at,
            retry_at.astimezone(zone).date(),
            attempt["attempt"] + 1,
            f"retry after attempt {attempt['attempt']} failed: {reason}"[:500],
        )

    async def on_charge_failed(self, conn: Any, delivery: Any) -> None:
        """``payments.charge.failed`` for a rule's charge the schedule took as paid. An ACH
        debit counts as collected while it settles (the invoice is not charged twice
        meanwhile), and the bank may return it days later: the attempt then failed, and
        the rule's retries apply as to a charge declined at once. A charge the schedule
        has not recorded yet is left to the charging pass, which asks payments again and
        reads the failure itself; a repeated event finds the attempt failed already."""
        event = events_pb2.ChargeChanged.FromString(delivery.data)
        if not event.rule_id or not event.invoice_record_nos:
            return
        reason = event.failure_reason or "the charge failed"
        attempt = await conn.fetchrow(
            "UPDATE attempts SET outcome = 'failed', failure_reason = $4"
            " WHERE account_id = $1 AND invoice_record_no = ANY($2::text[]) AND charge_id = $3"
            " AND outcome = 'succeeded' RETURNING *",
            event.account_id,
            list(event.invoice_record_nos),
            event.charge_id,
            reason[:1000],
        )
        if attempt is None:
            return
        row = await conn.fetchrow(
            "SELECT * FROM schedule WHERE account_id = $1 AND invoice_record_no = $2 FOR UPDATE",
            attempt["account_id"],
            attempt["invoice_record_no"],
        )
        # Only the attempt that finished the schedule reopens it (not one a later rule or
        # attempt has taken over from).
        if (
            row is None
            or row["state"] != "done"
            or row["rule_id"] != attempt["rule_id"]
            or row["attempt"] != attempt["attempt"]
        ):
            return
        await self._after_failure(conn, attempt, reason)
        await self._announce(conn, row["account_id"], row["invoice_record_no"], row["customer_id"])
        log.info(
            "rules.charge_returned",
            account_id=row["account_id"],
            invoice=row["invoice_record_no"],
            attempt=attempt["attempt"],
            charge_id=event.charge_id,
        )

    async def _release(
        self, row: asyncpg.Record, note: str, after: timedelta | None = None
    ) -> None:
        """Puts a claimed row back on the schedule (now, or ``after`` from now)."""
        await self._pool.execute(
            "UPDATE schedule SET state = 'scheduled', lease_until = NULL, note = $3,"
            " charge_at = CASE WHEN $4::interval IS NULL THEN charge_at ELSE now() + $4 END,"
            " updated_at = now() WHERE account_id = $1 AND invoice_record_no = $2"
            " AND state = 'charging'",
            row["account_id"],
            row["invoice_record_no"],
            note[:500],
            after,
        )

    async def _refused(self, row: asyncpg.Record, attempt: asyncpg.Record, err: Any) -> None:
        code = err.code()
        if code == grpc.StatusCode.ABORTED:
            # The invoice is being paid (a payer through a link, or this attempt still in
            # flight): look again shortly, under the same key.
            await self._release(
                row,
                f"a payment of the invoice is in progress: {err.details()}",
                self._in_progress_retry,
            )
            return
        if code in (
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        ):
            # Refused as paid, void or gone: if the AR store says so too, the invoice was
            # settled otherwise (a payer, a payment in Intacct) between the check before
            # the charge and the charge: nothing to collect, not a failure to retry.
            settled = None
            if code != grpc.StatusCode.INVALID_ARGUMENT:
                settled = await self._settled_otherwise(row)
            await self._record(row, attempt, None, str(err.details()), cleared=settled)
            return
        # Unavailable, deadline, internal: the outcome is unknown; the lease lapses and the
        # next claim asks again with the same key.
        log.warning(
            "rules.charge_unknown",
            account_id=row["account_id"],
            invoice=row["invoice_record_no"],
            code=code.name,
        )

    async def _record(
        self,
        row: asyncpg.Record,
        attempt: asyncpg.Record,
        charge: payments_pb2.Charge | None,
        refusal: str | None,
        *,
        cleared: str | None = None,
    ) -> None:
        """Writes the attempt's outcome and moves the schedule: done, a retry, or stopped;
        cleared (with that note) when the refused invoice needs no charge any more."""
        account_id, record_no = row["account_id"], row["invoice_record_no"]
        if charge is not None and charge.state in (
            payments_pb2.CHARGE_STATE_PENDING,
            payments_pb2.CHARGE_STATE_PROCESSING,
        ):
            return  # payments is still finding out; the lease lapses and we ask again
        if charge is not None:
            succeeded = charge.state in (
                payments_pb2.CHARGE_STATE_SUCCEEDED,
                payments_pb2.CHARGE_STATE_SETTLING,
                payments_pb2.CHARGE_STATE_REFUNDED,
                payments_pb2.CHARGE_STATE_PARTIALLY_REFUNDED,
            )
            outcome = "succeeded" if succeeded else "failed"
            reason = "" if succeeded else charge.failure_reason or "the charge failed"
            charge_id = charge.charge_id
        elif refusal is not None:
            outcome, reason, charge_id = "failed", refusal, ""
        else:
            outcome, reason, charge_id = (
                attempt["outcome"],
                attempt["failure_reason"],
                attempt["charge_id"],
            )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE attempts SET outcome = $5, failure_reason = $6, charge_id = $7"
                " WHERE account_id = $1 AND invoice_record_no = $2 AND attempt = $3"
                " AND rule_id = $4",
                account_id,
                record_no,
                attempt["attempt"],
                attempt["rule_id"],
                outcome,
                reason[:1000],
                charge_id,
            )
            if outcome == "succeeded":
                await conn.execute(
                    "UPDATE schedule SET state = 'done', lease_until = NULL, note = $3,"
                    " updated_at = now() WHERE account_id = $1 AND invoice_record_no = $2",
                    account_id,
                    record_no,
                    f"charged by charge {charge_id}",
                )
            elif cleared is not None:
                await conn.execute(
                    "UPDATE schedule SET state = 'cleared', charge_at = NULL,"
                    " lease_until = NULL, note = $3, updated_at = now()"
                    " WHERE account_id = $1 AND invoice_record_no = $2",
                    account_id,
                    record_no,
                    cleared[:500],
                )
            else:
                await self._after_failure(conn, attempt, reason)
            await self._announce(conn, account_id, record_no, row["customer_id"])
        log.info(
            "rules.attempt_finished",
            account_id=account_id,
            invoice=record_no,
            attempt=attempt["attempt"],
            outcome=outcome,
            charge_id=charge_id,
        )
