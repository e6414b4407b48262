"""gRPC handlers of ``arbridge.sync.v1.SyncService``: protobuf to domain and back."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc.aio

from arbridge.common.v1 import common_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.errors import InvalidArgument, NotFound
from arbridge_runtime.ingest import ACCEPTED, DUPLICATE, REJECTED, Inbound, Ingestor
from arbridge_runtime.paging import next_page, page_size
from arbridge_sync import convert
from arbridge_sync.core import SyncCore
from arbridge_sync.jobs import TERMINAL, validate_daily_time
from arbridge_sync.objects import BY_NAME, BY_TYPE, NAMES

Context = grpc.aio.ServicerContext[Any, Any]
MAX_BATCH = 1000
IN_FLIGHT = 128
_OUTCOMES = {
    ACCEPTED: sync_pb2.INGEST_OUTCOME_ACCEPTED,
    DUPLICATE: sync_pb2.INGEST_OUTCOME_DUPLICATE,
    REJECTED: sync_pb2.INGEST_OUTCOME_REJECTED,
}

_KINDS = {
    "initial": sync_pb2.SYNC_KIND_INITIAL,
    "daily": sync_pb2.SYNC_KIND_DAILY,
    "manual": sync_pb2.SYNC_KIND_MANUAL,
}
_STATES = {
    "pending": sync_pb2.SYNC_STATE_PENDING,
    "running": sync_pb2.SYNC_STATE_RUNNING,
    "succeeded": sync_pb2.SYNC_STATE_SUCCEEDED,
    "failed": sync_pb2.SYNC_STATE_FAILED,
    "cancelled": sync_pb2.SYNC_STATE_CANCELLED,
}
_UNSYNCED_STATES = {
    "open": sync_pb2.UNSYNCED_STATE_OPEN,
    "resynced": sync_pb2.UNSYNCED_STATE_RESYNCED,
    "marked_synced": sync_pb2.UNSYNCED_STATE_MARKED_SYNCED,
}
_SOURCES = {
    common_pb2.INVOICE_SOURCE_AR_INVOICE: "ar_invoice",
    common_pb2.INVOICE_SOURCE_SALES_INVOICE: "sales_invoice",
}
_PREFERENCE_FIELDS = (
    "invoice_source",
    "level2_tax_field",
    "daily_sync_time",
    "time_zone",
    "write_back_links",
    "payment_link_field",
    "pay_balance_link_field",
    "next_auto_charge_field",
    "level3_field",
)


def _sync(row: asyncpg.Record) -> sync_pb2.Sync:
    progress = json.loads(row["progress"]) if isinstance(row["progress"], str) else row["progress"]
    message = sync_pb2.Sync(
        sync_id=str(row["sync_id"]),
        account_id=row["account_id"],
        kind=_KINDS[row["kind"]],
        state=_STATES[row["state"]],
        api_calls=row["api_calls"],
        estimated_api_calls=row["estimated_api_calls"],
        error=row["error"],
    )
    for name, p in (progress or {}).items():
        synced = BY_NAME.get(name)
        message.objects.append(
            sync_pb2.ObjectProgress(
                object_type=synced.object_type if synced else common_pb2.OBJECT_TYPE_UNSPECIFIED,
                done=p["done"],
                total=p["total"],
                created=p["created"],
                updated=p["updated"],
                deleted=p["deleted"],
                unchanged=p["unchanged"],
                repaired=p["repaired"],
                failed=p["failed"],
            )
        )
    if row["started_at"]:
        message.started_at.FromDatetime(row["started_at"])
        end = row["finished_at"] or datetime.now(UTC)
        elapsed = (end - row["started_at"]).total_seconds()
        message.elapsed_seconds = elapsed
        done = sum(p.done for p in message.objects)
        total = sum(p.total for p in message.objects)
        if row["state"] == "running" and done and total > done:
            message.estimated_remaining_seconds = elapsed * (total - done) / done
    if row["finished_at"]:
        message.finished_at.FromDatetime(row["finished_at"])
    return message


def _unsynced(row: asyncpg.Record) -> sync_pb2.UnsyncedRecord:
    errors = json.loads(row["errors"]) if isinstance(row["errors"], str) else row["errors"]
    synced = BY_NAME.get(row["object_type"])
    message = sync_pb2.UnsyncedRecord(
        unsynced_id=str(row["unsynced_id"]),
        account_id=row["account_id"],
        object_type=synced.object_type if synced else common_pb2.OBJECT_TYPE_UNSPECIFIED,
        record_no=row["record_no"],
        direction=(
            sync_pb2.SYNC_DIRECTION_FROM_INTACCT
            if row["direction"] == "from_intacct"
            else sync_pb2.SYNC_DIRECTION_TO_INTACCT
        ),
        reason=row["reason"],
        attempts=row["attempts"],
        state=_UNSYNCED_STATES[row["state"]],
        resolved_by=row["resolved_by"],
        resolution_note=row["resolution_note"],
        errors=[common_pb2.IntacctError(**e) for e in errors or []],
        kind=(
            sync_pb2.UNSYNCED_KIND_REVERSAL_NEEDED
            if row["kind"] == "reversal_needed"
            else sync_pb2.UNSYNCED_KIND_FAILURE
        ),
    )
    message.failed_at.FromDatetime(row["failed_at"])
    if row["resolved_at"]:
        message.resolved_at.FromDatetime(row["resolved_at"])
    return message


def _preferences(row: asyncpg.Record) -> sync_pb2.Preferences:
    return sync_pb2.Preferences(
        account_id=row["account_id"],
        invoice_source=(
            common_pb2.INVOICE_SOURCE_SALES_INVOICE
            if row["invoice_source"] == "sales_invoice"
            else common_pb2.INVOICE_SOURCE_AR_INVOICE
        ),
        level2_tax_field=row["level2_tax_field"],
        daily_sync_time=row["daily_sync_time"],
        time_zone=row["time_zone"],
        write_back_links=row["write_back_links"],
        payment_link_field=row["payment_link_field"],
        pay_balance_link_field=row["pay_balance_link_field"],
        next_auto_charge_field=row["next_auto_charge_field"],
    )


class SyncService(sync_pb2_grpc.SyncServiceServicer):
    """The sync service's gRPC API."""

    def __init__(self, core: SyncCore, ingestor: Ingestor) -> None:
        self._core = core
        self._pool = core.pool
        self._ingestor = ingestor

    async def _job(self, account_id: str, sync_id: str) -> asyncpg.Record:
        try:
            key = uuid.UUID(sync_id)
        except ValueError:
            raise InvalidArgument(f"sync_id {sync_id!r} is not a sync id") from None
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM sync_jobs WHERE sync_id = $1 AND account_id = $2", key, account_id
            )
        if row is None:
            raise NotFound(f"no sync {sync_id} for account {account_id!r}")
        return row

    async def EstimateSync(
        self, request: sync_pb2.EstimateSyncRequest, context: Context
    ) -> sync_pb2.EstimateSyncResponse:
        calls, token, expires = await self._core.jobs.estimate(request.account_id)
        reply = sync_pb2.EstimateSyncResponse(estimated_api_calls=calls, confirmation_token=token)
        reply.expires_at.FromDatetime(expires)
        return reply

    async def StartSync(
        self, request: sync_pb2.StartSyncRequest, context: Context
    ) -> sync_pb2.StartSyncResponse:
        if request.kind == sync_pb2.SYNC_KIND_MANUAL:
            job_id = await self._core.jobs.start_manual(
                request.account_id, request.confirmation_token
            )
        elif request.kind == sync_pb2.SYNC_KIND_INITIAL:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._core.require_account(conn, request.account_id)
                job_id, _ = await self._core.jobs.create(conn, request.account_id, "initial")
        else:
            raise InvalidArgument(
                "kind must be SYNC_KIND_MANUAL (with the confirmation token of "
                "EstimateSync) or SYNC_KIND_INITIAL; daily syncs are scheduled"
            )
        return sync_pb2.StartSyncResponse(
            sync=_sync(await self._job(request.account_id, str(job_id)))
        )

    async def GetSync(
        self, request: sync_pb2.GetSyncRequest, context: Context
    ) -> sync_pb2.GetSyncResponse:
        return sync_pb2.GetSyncResponse(
            sync=_sync(await self._job(request.account_id, request.sync_id))
        )

    async def ListSyncs(
        self, request: sync_pb2.ListSyncsRequest, context: Context
    ) -> sync_pb2.ListSyncsResponse:
        size = page_size(request.page)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM sync_jobs WHERE account_id = $1"
                " AND ($2 = '' OR created_at <"
                " (SELECT created_at FROM sync_jobs WHERE sync_id::text = $2))"
                " ORDER BY created_at DESC LIMIT $3",
                request.account_id,
                request.page.page_token,
                size + 1,
            )
        return sync_pb2.ListSyncsResponse(
            syncs=[_sync(r) for r in rows[:size]],
            page=next_page(rows, size, "sync_id"),
        )

    async def WatchSync(
        self, request: sync_pb2.WatchSyncRequest, context: Context
    ) -> AsyncIterator[sync_pb2.WatchSyncResponse]:
        last = None
        while True:
            message = _sync(await self._job(request.account_id, request.sync_id))
            snapshot = message.SerializeToString()
            if snapshot != last:
                last = snapshot
                yield sync_pb2.WatchSyncResponse(sync=message)
            if message.state in (_STATES[s] for s in TERMINAL):
                return
            await asyncio.sleep(0.5)

    async def GetCustomer(
        self, request: sync_pb2.GetCustomerRequest, context: Context
    ) -> sync_pb2.GetCustomerResponse:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT c.*, a.time_zone FROM customers c JOIN accounts a USING (account_id)"
                " WHERE c.account_id = $1 AND c.customer_id = $2 AND NOT c.deleted",
                request.account_id,
                request.customer_id,
            )
        if row is None:
            raise NotFound(f"no customer {request.customer_id!r} in account {request.account_id!r}")
        return sync_pb2.GetCustomerResponse(customer=convert.customer(row, row["time_zone"]))

    async def ListCustomers(
        self, request: sync_pb2.ListCustomersRequest, context: Context
    ) -> sync_pb2.ListCustomersResponse:
        size = page_size(request.page)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT c.*, a.time_zone FROM customers c JOIN accounts a USING (account_id)"
                " WHERE c.account_id = $1 AND NOT c.deleted AND c.customer_id > $2"
                " ORDER BY c.customer_id LIMIT $3",
                request.account_id,
                request.page.page_token,
                size + 1,
            )
        return sync_pb2.ListCustomersResponse(
            customers=[convert.customer(r, r["time_zone"]) for r in rows[:size]],
            page=next_page(rows, size, "customer_id"),
        )

    async def GetInvoice(
        self, request: sync_pb2.GetInvoiceRequest, context: Context
    ) -> sync_pb2.GetInvoiceResponse:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT i.*, a.time_zone FROM invoices i JOIN accounts a USING (account_id)"
                " WHERE i.account_id = $1 AND i.record_no = $2 AND NOT i.deleted",
                request.account_id,
                request.record_no,
            )
        if row is None:
            raise NotFound(f"no invoice {request.record_no!r} in account {request.account_id!r}")
        return sync_pb2.GetInvoiceResponse(invoice=convert.invoice(row, row["time_zone"]))

    async def ListInvoices(
        self, request: sync_pb2.ListInvoicesRequest, context: Context
    ) -> sync_pb2.ListInvoicesResponse:
        size = page_size(request.page)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT i.*, a.time_zone FROM invoices i JOIN accounts a USING (account_id)"
                " WHERE i.account_id = $1 AND NOT i.deleted AND ($2 = '' OR i.customer_id = $2)"
                " AND (NOT $3 OR i.due_minor > 0) AND i.record_no > $4"
                " ORDER BY i.record_no LIMIT $5",
                request.account_id,
                request.customer_id,
                request.open_only,
                request.page.page_token,
                size + 1,
            )
        return sync_pb2.ListInvoicesResponse(
            invoices=[convert.invoice(r, r["time_zone"]) for r in rows[:size]],
            page=next_page(rows, size, "record_no"),
        )

    async def ListPayments(
        self, request: sync_pb2.ListPaymentsRequest, context: Context
    ) -> sync_pb2.ListPaymentsResponse:
        size = page_size(request.page)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT p.*, a.time_zone FROM payments p JOIN accounts a USING (account_id)"
                " WHERE p.account_id = $1 AND NOT p.deleted AND ($2 = '' OR p.customer_id = $2)"
                " AND p.record_no > $3 ORDER BY p.record_no LIMIT $4",
                request.account_id,
                request.customer_id,
                request.page.page_token,
                size + 1,
            )
        return sync_pb2.ListPaymentsResponse(
            payments=[convert.payment(r, r["time_zone"]) for r in rows[:size]],
            page=next_page(rows, size, "record_no"),
        )

    async def ListBankAccounts(
        self, request: sync_pb2.ListBankAccountsRequest, context: Context
    ) -> sync_pb2.ListBankAccountsResponse:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM bank_accounts WHERE account_id = $1"
                " AND NOT deleted ORDER BY bank_account_id",
                request.account_id,
            )
        return sync_pb2.ListBankAccountsResponse(
            bank_accounts=[convert.bank_account(r) for r in rows]
        )

    async def ListUnsynced(
        self, request: sync_pb2.ListUnsyncedRequest, context: Context
    ) -> sync_pb2.ListUnsyncedResponse:
        size = page_size(request.page)
        name = ""
        if request.object_type:
            synced = BY_TYPE.get(request.object_type)
            if synced is None:
                raise InvalidArgument(f"object_type {NAMES.get(request.object_type)} is not synced")
            name = synced.name
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM unsynced WHERE account_id = $1 AND ($2 = '' OR object_type = $2)"
                " AND ($3 OR state = 'open') AND ($4 = '' OR unsynced_id::text > $4)"
                " ORDER BY unsynced_id LIMIT $5",
                request.account_id,
                name,
                request.include_resolved,
                request.page.page_token,
                size + 1,
            )
        return sync_pb2.ListUnsyncedResponse(
            records=[_unsynced(r) for r in rows[:size]],
            page=next_page(rows, size, "unsynced_id"),
        )

    async def ResyncRecord(
        self, request: sync_pb2.ResyncRecordRequest, context: Context
    ) -> sync_pb2.ResyncRecordResponse:
        row, ok = await self._core.resync(request.account_id, request.unsynced_id)
        return sync_pb2.ResyncRecordResponse(record=_unsynced(row), synced=ok)

    async def MarkSynced(
        self, request: sync_pb2.MarkSyncedRequest, context: Context
    ) -> sync_pb2.MarkSyncedResponse:
        row = await self._core.mark_synced(
            request.account_id, request.unsynced_id, request.actor, request.reason
        )
        return sync_pb2.MarkSyncedResponse(record=_unsynced(row))

    async def GetPreferences(
        self, request: sync_pb2.GetPreferencesRequest, context: Context
    ) -> sync_pb2.GetPreferencesResponse:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM preferences WHERE account_id = $1", request.account_id
            )
        if row is None:
            raise NotFound(f"no account {request.account_id!r} in sync")
        return sync_pb2.GetPreferencesResponse(preferences=_preferences(row))

    async def UpdatePreferences(
        self, request: sync_pb2.UpdatePreferencesRequest, context: Context
    ) -> sync_pb2.UpdatePreferencesResponse:
        prefs = request.preferences
        paths = list(request.update_mask.paths) or list(_PREFERENCE_FIELDS)
        unknown = [p for p in paths if p not in _PREFERENCE_FIELDS]
        if unknown:
            raise InvalidArgument(f"unknown preference fields in update_mask: {', '.join(unknown)}")
        if "level3_field" in paths and prefs.level3_field:
            raise InvalidArgument(
                "Level 3 data is not supported: only Level 2 data (the tax amount) can come from "
                "Intacct; set level2_tax_field to the invoice custom field holding the tax amount"
            )
        values: dict[str, Any] = {}
        for path in paths:
            if path == "level3_field":
                continue
            if path == "invoice_source":
                if prefs.invoice_source not in _SOURCES:
                    raise InvalidArgument("invoice_source must be AR_INVOICE or SALES_INVOICE")
                values[path] = _SOURCES[prefs.invoice_source]
            elif path == "daily_sync_time":
                values[path] = validate_daily_time(prefs.daily_sync_time)
            elif path == "time_zone":
                from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

                try:
                    ZoneInfo(prefs.time_zone)
                except (ZoneInfoNotFoundError, ValueError):
                    raise InvalidArgument(
                        f"time_zone {prefs.time_zone!r} is not an IANA zone"
                    ) from None
                values[path] = prefs.time_zone
            else:
                values[path] = getattr(prefs, path)
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT 1 FROM preferences WHERE account_id = $1", prefs.account_id
            ):
                raise NotFound(f"no account {prefs.account_id!r} in sync")
            if values:
                assignments = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(values))
                await conn.execute(
                    f"UPDATE preferences SET {assignments}, updated_at = now()"
                    " WHERE account_id = $1",
                    prefs.account_id,
                    *values.values(),
                )
            row = await conn.fetchrow(
                "SELECT * FROM preferences WHERE account_id = $1", prefs.account_id
            )
        return sync_pb2.UpdatePreferencesResponse(preferences=_preferences(row))

    async def GetSmartEventSetup(
        self, request: sync_pb2.GetSmartEventSetupRequest, context: Context
    ) -> sync_pb2.GetSmartEventSetupResponse:
        return await self._core.smart_event_setup(request.account_id, request.gateway_base_url)

    async def _take(self, event: sync_pb2.InboundEvent) -> sync_pb2.IngestResult:
        outcome = await self._ingestor.take(
            Inbound(
                account_id=event.account_id,
                body=event.body,
                content_type=event.content_type,
                url_token=event.url_token,
                headers=dict(event.headers),
                delivery_id=event.delivery_id,
            ),
            door="grpc",
        )
        return sync_pb2.IngestResult(
            delivery_id=event.delivery_id, outcome=_OUTCOMES[outcome.status], reason=outcome.reason
        )

    async def IngestEvents(
        self, request: sync_pb2.IngestEventsRequest, context: Context
    ) -> sync_pb2.IngestEventsResponse:
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument(
                f"{len(request.events)} events in one batch; send at most "
                f"{MAX_BATCH}, or use StreamIngestEvents"
            )
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(event: sync_pb2.InboundEvent) -> sync_pb2.IngestResult:
            async with gate:
                return await self._take(event)

        # An event that cannot be stored fails the whole call (UNAVAILABLE): the
        # forwarder resends the batch, and what was stored already is a duplicate.
        results = await asyncio.gather(*(one(e) for e in request.events))
        return sync_pb2.IngestEventsResponse(results=results)

    async def StreamIngestEvents(
        self,
        request_iterator: AsyncIterator[sync_pb2.StreamIngestEventsRequest],
        context: Context,
    ) -> AsyncIterator[sync_pb2.StreamIngestEventsResponse]:
        """One result per event, in order, each once the event is stored.

        At most IN_FLIGHT events are being stored at once; beyond that the call
        stops reading, and gRPC flow control slows the forwarder down.
        """
        pending: deque[asyncio.Task[sync_pb2.IngestResult]] = deque()
        try:
            async for request in request_iterator:
                pending.append(asyncio.create_task(self._take(request.event)))
                while pending and (len(pending) >= IN_FLIGHT or pending[0].done()):
                    yield sync_pb2.StreamIngestEventsResponse(result=await pending.popleft())
            while pending:
                yield sync_pb2.StreamIngestEventsResponse(result=await pending.popleft())
        finally:
            for task in pending:
                task.cancel()
