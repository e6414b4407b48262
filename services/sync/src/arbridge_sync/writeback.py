"""Writing Payment Link, Pay Balance Link and Next Auto Charge back to Intacct custom fields.

With the account's "Sync Payment Link / Pay Balance Link / Next Auto Charge
date to Accounting System" preference on, link and schedule events from
payments and rules are queued per record and field (a newer value replaces
an older one), and a worker sends what is queued in as few
``UpdateCustomFields`` calls as the API allows. A value Intacct refuses goes
to the unsynced registry (direction to Intacct) and is not retried; it is kept,
and a re-sync of the entry sends it again (the entry resolves once Intacct has
the record's values).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import grpc.aio
import structlog

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.events.v1 import events_pb2
from arbridge_runtime.jetstream import Delivery
from arbridge_sync.unsynced import record_failure, resolve

log = structlog.get_logger(__name__)
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
_OBJECT_TYPES = {
    "CUSTOMER": common_pb2.OBJECT_TYPE_CUSTOMER,
    "ARINVOICE": common_pb2.OBJECT_TYPE_AR_INVOICE,
}


async def _prefs(conn: asyncpg.Connection, account_id: str) -> asyncpg.Record | None:
    # time_zone: the company's, whose calendar Intacct's date fields are in (the
    # preferences' own zone schedules the daily sync).
    return await conn.fetchrow(
        "SELECT p.write_back_links, p.payment_link_field, p.pay_balance_link_field,"
        " p.next_auto_charge_field, a.time_zone FROM preferences p"
        " JOIN accounts a USING (account_id) WHERE p.account_id = $1",
        account_id,
    )


async def _queue(
    conn: asyncpg.Connection, account_id: str, obj: str, record_no: str, field: str, value: str
) -> None:
    await conn.execute(
        """INSERT INTO writeback_pending (account_id, object, record_no, field, value)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (account_id, object, record_no, field)
           DO UPDATE SET value = EXCLUDED.value, updated_at = clock_timestamp()""",
        account_id,
        obj,
        record_no,
        field,
        value,
    )


async def _customer_record(conn: asyncpg.Connection, account_id: str, customer_id: str) -> str:
    found = await conn.fetchval(
        "SELECT record_no FROM customers WHERE account_id = $1 AND customer_id = $2"
        " AND NOT deleted",
        account_id,
        customer_id,
    )
    return str(found or "")


async def on_link_changed(conn: asyncpg.Connection, delivery: Delivery) -> None:
    event = events_pb2.LinkChanged.FromString(delivery.data)
    prefs = await _prefs(conn, event.account_id)
    if prefs is None or not prefs["write_back_links"]:
        return
    if event.kind == "payment" and event.invoice_record_no:
        await _queue(
            conn,
            event.account_id,
            "ARINVOICE",
            event.invoice_record_no,
            prefs["payment_link_field"],
            event.url,
        )
    elif event.kind == "pay_balance" and event.customer_id:
        record_no = await _customer_record(conn, event.account_id, event.customer_id)
        if record_no:
            await _queue(
                conn,
                event.account_id,
                "CUSTOMER",
                record_no,
                prefs["pay_balance_link_field"],
                event.url,
            )
        else:
            await record_failure(
                conn,
                event.account_id,
                "CUSTOMER",
                event.customer_id,
                "to_intacct",
                f"customer {event.customer_id} is not in the AR store, so its Pay Balance Link "
                "cannot be written back",
            )


async def on_next_auto_charge(conn: asyncpg.Connection, delivery: Delivery) -> None:
    event = events_pb2.NextAutoChargeChanged.FromString(delivery.data)
    prefs = await _prefs(conn, event.account_id)
    if prefs is None or not prefs["write_back_links"]:
        return
    zone = ZoneInfo(prefs["time_zone"] or "UTC")

    def local_date(has: bool, ts: object) -> str:
        if not has:
            return ""
        moment = ts.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]
        return str(moment.astimezone(zone).strftime("%m/%d/%Y"))

    field = prefs["next_auto_charge_field"]
    if event.invoice_record_no:
        await _queue(
            conn,
            event.account_id,
            "ARINVOICE",
            event.invoice_record_no,
            field,
            local_date(event.HasField("next_charge_at"), event.next_charge_at),
        )
    if event.customer_id:
        record_no = await _customer_record(conn, event.account_id, event.customer_id)
        if record_no:
            await _queue(
                conn,
                event.account_id,
                "CUSTOMER",
                record_no,
                field,
                local_date(
                    event.HasField("customer_next_charge_at"), event.customer_next_charge_at
                ),
            )


async def _settled(
    conn: asyncpg.Connection,
    account_id: str,
    obj: str,
    record_no: str,
    values: dict[str, str],
    refusal: str | None,
) -> None:
    """Records what became of a record's values. Refused: kept (a re-sync of the record's
    unsynced entry sends them again) and the entry opened. Written: any refused value of
    those fields is obsolete, and the entry is resolved once none is left."""
    if refusal is not None:
        await conn.executemany(
            "INSERT INTO writeback_refused (account_id, object, record_no, field, value)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, object, record_no, field)"
            " DO UPDATE SET value = EXCLUDED.value, refused_at = now()",
            [(account_id, obj, record_no, f, v) for f, v in values.items()],
        )
        await record_failure(conn, account_id, obj, record_no, "to_intacct", refusal)
        return
    left = await conn.fetchval(
        "WITH gone AS (DELETE FROM writeback_refused WHERE account_id = $1 AND object = $2"
        " AND record_no = $3 AND field = ANY($4::text[]) RETURNING field)"
        " SELECT count(*) FROM writeback_refused WHERE account_id = $1 AND object = $2"
        " AND record_no = $3 AND field <> ALL(ARRAY(SELECT field FROM gone))",
        account_id,
        obj,
        record_no,
        list(values),
    )
    if not left:
        await resolve(conn, account_id, obj, record_no, "to_intacct", "resynced")


async def resend_refused(
    conn: asyncpg.Connection, account_id: str, obj: str, record_no: str
) -> int:
    """Queues a record's refused values again (a value queued since stays: it is newer);
    returns how many there were."""
    moved: int = await conn.fetchval(
        "WITH taken AS (DELETE FROM writeback_refused WHERE account_id = $1 AND object = $2"
        " AND record_no = $3 RETURNING account_id, object, record_no, field, value),"
        " queued AS (INSERT INTO writeback_pending (account_id, object, record_no, field, value)"
        " SELECT * FROM taken ON CONFLICT (account_id, object, record_no, field) DO NOTHING)"
        " SELECT count(*) FROM taken",
        account_id,
        obj,
        record_no,
    )
    return moved


@dataclass
class WriteBack:
    pool: asyncpg.Pool
    connector: connector_pb2_grpc.ConnectorServiceAsyncStub
    interval: float = 1.0
    batch: int = 500

    async def flush(self) -> int:
        """Sends one batch of queued values; returns how many values were settled."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM writeback_pending ORDER BY account_id, updated_at"
                " LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch,
            )
            if not rows:
                return 0
            by_account: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for row in rows:
                by_account[row["account_id"]].append(row)
            settled = 0
            for account_id, pending in by_account.items():
                settled += await self._send(conn, account_id, pending)
            return settled

    async def _send(
        self, conn: asyncpg.Connection, account_id: str, pending: list[asyncpg.Record]
    ) -> int:
        records: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        for row in pending:
            records[(row["object"], row["record_no"])][row["field"]] = row["value"]
        # The key names these queued values, each by when it was queued: a retry of this
        # batch is the same write (Intacct runs it once), while a value queued again later
        # (a field set back to what it was) is a new write, which Intacct must not take
        # for a repeat of the first.
        material = "|".join(
            f"{r['object']}:{r['record_no']}:{r['field']}:{r['value']}:{r['updated_at'].isoformat()}"
            for r in sorted(pending, key=lambda r: (r["object"], r["record_no"], r["field"]))
        )
        key = hashlib.sha256(f"{account_id}|{material}".encode()).hexdigest()[:40]
        request = connector_pb2.UpdateCustomFieldsRequest(
            account_id=account_id,
            idempotency_key=f"writeback-{key}",
            updates=[
                connector_pb2.CustomFieldUpdate(object_type=_OBJECT_TYPES[o], record_no=r, values=v)
                for (o, r), v in records.items()
            ],
        )
        refused: dict[tuple[str, str], str] = {}  # (object, record_no): why
        try:
            reply = await self.connector.UpdateCustomFields(request, timeout=120)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                log.info("writeback_deferred", account_id=account_id, code=exc.code().name)
                return 0  # stays queued; the next flush tries again
            refused = dict.fromkeys(records, exc.details() or exc.code().name)
            reply = None
        if reply is not None:
            for result in reply.results:
                if not result.ok:
                    # The connector's result key ends with "<object>:<record_no[,record_no…]>".
                    *_, obj, record_nos = result.idempotency_key.split(":")
                    reason = "; ".join(e.description2 or e.errorno for e in result.errors)
                    for record_no in record_nos.split(","):
                        refused[(obj, record_no)] = f"Intacct refused the write-back: {reason}"
        # (While the account has no refused value and no open entry, there is nothing
        # more to settle for values written.)
        kept = refused or await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM writeback_refused WHERE account_id = $1)"
            " OR EXISTS (SELECT 1 FROM unsynced WHERE account_id = $1 AND state = 'open'"
            " AND direction = 'to_intacct' AND object_type IN ('CUSTOMER', 'ARINVOICE'))",
            account_id,
        )
        for (obj, record_no), values in records.items() if kept else ():
            await _settled(conn, account_id, obj, record_no, values, refused.get((obj, record_no)))
        for row in pending:
            await conn.execute(
                "DELETE FROM writeback_pending WHERE account_id = $1 AND object = $2"
                " AND record_no = $3 AND field = $4 AND updated_at = $5",
                account_id,
                row["object"],
                row["record_no"],
                row["field"],
                row["updated_at"],
            )
        return len(pending)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self.flush():
                    continue
            except Exception:
                log.exception("writeback_failed")
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                continue
