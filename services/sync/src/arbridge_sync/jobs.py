"""Sync jobs: the initial six-month sync, the daily full sync and the manual Sync Account.

Jobs live in ``sync_jobs``; a partial unique index allows one pending or
running job per account, so replicas never run two at once. A worker claims
a job with a lease it renews while it works; if its replica dies, another
claims the job when the lease runs out and runs it again (every write is a
versioned upsert, so running twice changes nothing twice). Every object type
streams in parallel through the connector, which holds the company's
concurrency and rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import grpc.aio
import structlog

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.events.v1 import events_pb2
from arbridge_runtime.db import TRANSIENT_DB_ERRORS, Notifier, stop_listening
from arbridge_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from arbridge_runtime.jetstream import Outbox
from arbridge_runtime.paging import streamed_fields
from arbridge_runtime.workers import run_passes
from arbridge_sync import store
from arbridge_sync.mapping import Unmappable
from arbridge_sync.objects import SYNCED, Synced, read_fields
from arbridge_sync.unsynced import record_failure, resolve_deleted

log = structlog.get_logger(__name__)

WINDOW = timedelta(days=183)
PAGE = 2000
BATCH = 500
WRITERS = 2  # batches of one object written at once
LEASE = timedelta(seconds=60)
# Invoices and payments are read for the six-month window. Customers are read
# whole: an invoice in the window needs its customer even when the customer
# itself was last modified long ago, and reading every customer costs
# ceil(customers / 2000) calls, fewer than looking up the missing ones. The
# rest are small reference lists.
WINDOWED = {"ARINVOICE", "ARPYMT"}
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class ReadContext:
    """How an account's Intacct records are read and mapped."""

    tax_field: str  # the Level 2 tax field read on invoices ("" for none)
    # The company's zone, in which Intacct writes its times (not the preferences'
    # time_zone, which schedules the daily sync and which a user may set apart).
    time_zone: str


# An account sync holds no row for (yet): no tax field, UTC.
NO_CONTEXT = ReadContext("", "UTC")


async def read_context(conn: asyncpg.Connection, account_id: str) -> ReadContext | None:
    """The account's ReadContext; None when sync holds no such account."""
    row = await conn.fetchrow(
        "SELECT p.level2_tax_field, a.time_zone FROM accounts a"
        " LEFT JOIN preferences p USING (account_id) WHERE a.account_id = $1",
        account_id,
    )
    if row is None:
        return None
    return ReadContext(row["level2_tax_field"] or "", row["time_zone"] or "UTC")


@dataclass
class ObjectProgress:
    total: int = 0
    done: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    repaired: int = 0
    failed: int = 0
    pages: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class JobRunner:
    pool: asyncpg.Pool
    outbox: Outbox
    connector: connector_pb2_grpc.ConnectorServiceAsyncStub
    worker_id: str = field(default_factory=lambda: f"sync-{secrets.token_hex(4)}")
    poll_seconds: float = 0.5
    transient_retries: int = 5

    # Creating jobs ------------------------------------------------------------------

    async def create(
        self, conn: asyncpg.Connection, account_id: str, kind: str, estimated: int = 0
    ) -> tuple[uuid.UUID, bool]:
        """A new pending job, or the live one the account already has (and False)."""
        job_id = uuid.uuid4()
        created = await conn.fetchval(
            "INSERT INTO sync_jobs (sync_id, account_id, kind, state, estimated_api_calls)"
            " VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT DO NOTHING RETURNING sync_id",
            job_id,
            account_id,
            kind,
            estimated,
        )
        if created:
            await conn.execute("SELECT pg_notify('arbridge_sync_jobs', $1)", str(job_id))
            return job_id, True
        live = await conn.fetchval(
            "SELECT sync_id FROM sync_jobs WHERE account_id = $1"
            " AND state IN ('pending', 'running')",
            account_id,
        )
        return live, False

    async def estimate(self, account_id: str) -> tuple[int, str, datetime]:
        """API calls of a full sync, from what the store already holds (costs no API call):
        for invoices and payments, what it holds of the window a full sync reads (records
        that aged out of it stay stored, but are not read again)."""
        async with self.pool.acquire() as conn:
            context = await read_context(conn, account_id)
            if context is None:
                raise NotFound(f"no account {account_id!r} in sync; connect it first")
            window_start = company_local(datetime.now(UTC) - WINDOW, context.time_zone)
            calls = 1  # the session
            for synced in SYNCED:
                where = "account_id = $1 AND NOT deleted"
                args: list[Any] = [account_id]
                if synced.table is store.BANK_ACCOUNTS:
                    args.append(_bank_kind(synced))
                    where += f" AND kind = ${len(args)}"
                if synced.name in WINDOWED:
                    args.append(window_start)
                    where += f" AND intacct_modified >= ${len(args)}"
                count = await conn.fetchval(
                    f"SELECT count(*) FROM {synced.table.name} WHERE {where}", *args
                )
                calls += max(1, math.ceil(count / PAGE))
            token = secrets.token_urlsafe(18)
            expires = datetime.now(UTC) + timedelta(minutes=10)
            await conn.execute(
                "INSERT INTO sync_confirmations"
                " (token, account_id, estimated_api_calls, expires_at)"
                " VALUES ($1, $2, $3, $4)",
                token,
                account_id,
                calls,
                expires,
            )
        return calls, token, expires

    async def start_manual(self, account_id: str, token: str) -> uuid.UUID:
        async with self.pool.acquire() as conn, conn.transaction():
            confirmation = await conn.fetchrow(
                "DELETE FROM sync_confirmations WHERE token = $1 AND account_id = $2"
                " RETURNING estimated_api_calls, expires_at",
                token,
                account_id,
            )
            if confirmation is None:
                raise FailedPrecondition(
                    "a manual sync needs the confirmation_token of EstimateSync for this account: "
                    "it costs API calls, so confirm the estimate first"
                )
            if confirmation["expires_at"] < datetime.now(UTC):
                raise FailedPrecondition("the confirmation expired; call EstimateSync again")
            job_id, created = await self.create(
                conn, account_id, "manual", confirmation["estimated_api_calls"]
            )
            if not created:
                raise FailedPrecondition(f"a sync of {account_id} is already running ({job_id})")
            return job_id

    # Running jobs -------------------------------------------------------------------

    async def claim(self) -> asyncpg.Record | None:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(
                """UPDATE sync_jobs SET state = 'running', lease_owner = $1,
                       lease_until = now() + $2::interval, started_at = coalesce(started_at, now())
                   WHERE sync_id = (
                       SELECT sync_id FROM sync_jobs
                       WHERE state = 'pending' OR (state = 'running' AND lease_until < now())
                       ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)
                   RETURNING *""",
                self.worker_id,
                LEASE,
            )

    async def run(self, stop: asyncio.Event) -> None:
        notifier = Notifier(self.pool, "arbridge_sync_jobs")
        wake = notifier.wake
        listening = asyncio.create_task(notifier.run(stop))
        try:
            while not stop.is_set():
                try:
                    job = await self.claim()
                except TRANSIENT_DB_ERRORS as exc:
                    # The database is restarting: the job waits (its lease too), nothing lost.
                    log.warning("sync_claim_failed", error=type(exc).__name__)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_seconds)
                    continue
                if job is None:
                    wake.clear()
                    waiters = [
                        asyncio.ensure_future(stop.wait()),
                        asyncio.ensure_future(wake.wait()),
                    ]
                    await asyncio.wait(
                        waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                    for waiter in waiters:
                        waiter.cancel()
                    continue
                try:
                    await self.execute(job, stop)
                except TRANSIENT_DB_ERRORS as exc:
                    # Its lease lapses and a worker runs it again (every write is idempotent).
                    log.warning(
                        "sync_job_interrupted",
                        sync_id=str(job["sync_id"]),
                        error=type(exc).__name__,
                    )
        finally:
            await stop_listening(listening)

    async def execute(self, job: Mapping[str, Any], stop: asyncio.Event) -> None:
        account_id, kind, job_id = job["account_id"], job["kind"], job["sync_id"]
        started = datetime.now(UTC)
        window_start = started - WINDOW
        async with self.pool.acquire() as conn:
            context = await read_context(conn, account_id) or NO_CONTEXT
            await conn.execute(
                "UPDATE sync_jobs SET window_start = $2, window_end = $3,"
                " progress = '{}'::jsonb WHERE sync_id = $1",
                job_id,
                window_start,
                started,
            )
        progress = {s.name: ObjectProgress() for s in SYNCED}
        log.info("sync_started", account_id=account_id, sync_id=str(job_id), kind=kind)
        heartbeat = asyncio.create_task(self._heartbeat(job_id, progress))
        try:
            await asyncio.gather(
                *(
                    self._sync_object(
                        account_id, kind, synced, window_start, context, progress[synced.name]
                    )
                    for synced in SYNCED
                )
            )
            state, error = "succeeded", ""
        except grpc.aio.AioRpcError as exc:
            state, error = "failed", f"{exc.code().name}: {exc.details()}"
        except Exception as exc:
            log.exception("sync_failed", account_id=account_id, sync_id=str(job_id))
            state, error = "failed", f"internal error: {type(exc).__name__}"
        finally:
            heartbeat.cancel()
        await self._finish(job, state, error, progress)

    async def _heartbeat(self, job_id: uuid.UUID, progress: Mapping[str, ObjectProgress]) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._save_progress(job_id, progress)

    async def _save_progress(
        self, job_id: uuid.UUID, progress: Mapping[str, ObjectProgress]
    ) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE sync_jobs SET progress = $2::jsonb, api_calls = $3,"
                " lease_until = now() + $4::interval WHERE sync_id = $1",
                job_id,
                json.dumps({k: v.to_json() for k, v in progress.items()}),
                1 + sum(p.pages for p in progress.values()),
                LEASE,
            )

    async def _sync_object(
        self,
        account_id: str,
        kind: str,
        synced: Synced,
        window_start: datetime,
        context: ReadContext,
        progress: ObjectProgress,
    ) -> None:
        tax_field, tz = context.tax_field, context.time_zone
        request = connector_pb2.StreamRecordsRequest(
            account_id=account_id,
            object_type=synced.object_type,
            fields=read_fields(synced, tax_field),
        )
        windowed = synced.name in WINDOWED
        if windowed:
            request.modified_since.FromDatetime(window_start)
        seen: set[str] = set()
        for attempt in range(self.transient_retries + 1):
            try:
                await self._stream(account_id, synced, request, tax_field, tz, progress, seen)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in TRANSIENT or attempt == self.transient_retries:
                    raise
                log.info(
                    "sync_object_retry",
                    account_id=account_id,
                    object=synced.name,
                    code=exc.code().name,
                )
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
        if kind in ("daily", "manual") and windowed:
            progress.deleted += await self._deletions(account_id, synced, window_start, tz, seen)
        if kind in ("daily", "manual"):
            progress.repaired = progress.created + progress.updated + progress.deleted

    async def _stream(
        self,
        account_id: str,
        synced: Synced,
        request: connector_pb2.StreamRecordsRequest,
        tax_field: str,
        tz: str,
        progress: ObjectProgress,
        seen: set[str],
    ) -> None:
        # Reading goes on while a batch is written: a queue of a few batches between them.
        queue: asyncio.Queue[list[dict[str, str]] | None] = asyncio.Queue(maxsize=16)

        async def read() -> None:
            pending: list[dict[str, str]] = []
            try:
                async for message in self.connector.StreamRecords(request, timeout=3600):
                    if message.HasField("total"):
                        progress.total = message.total
                        progress.pages = max(1, math.ceil(message.total / PAGE))
                    pending.extend(streamed_fields(message))
                    while len(pending) >= BATCH:
                        await queue.put(pending[:BATCH])
                        pending = pending[BATCH:]
                await queue.put(pending)
            except Exception:
                await queue.put(None)  # the writers stop; the error is raised below
                raise
            # (Cancelled: a writer failed and none is reading; nothing more to put.)
            await queue.put(None)

        async def write() -> None:
            while (batch := await queue.get()) is not None:
                await self._apply(account_id, synced, batch, tax_field, tz, progress, seen)
            queue.put_nowait(None)  # the end, for the other writer

        reader = asyncio.create_task(read())
        # Two writers, each on its own connection: one maps its batch while the
        # other's waits on PostgreSQL. A walk's batches hold distinct records.
        writers = [asyncio.create_task(write()) for _ in range(WRITERS)]
        try:
            await asyncio.gather(*writers)
        finally:
            for task in (reader, *writers):
                if not task.done():
                    task.cancel()
            await asyncio.gather(reader, *writers, return_exceptions=True)
        await reader  # the stream's own error (a refusal, Intacct unavailable), if any

    async def _apply(
        self,
        account_id: str,
        synced: Synced,
        records: list[dict[str, str]],
        tax_field: str,
        tz: str,
        progress: ObjectProgress,
        seen: set[str],
    ) -> None:
        if not records:
            return
        rows = []
        # A connection per batch, not per writer: a sync of many objects must leave
        # the pool to the API and the consumers between its batches.
        async with self.pool.acquire() as conn, conn.transaction():
            for fields in records:
                try:
                    rows.append(synced.map(account_id, fields, tax_field))
                except Unmappable as exc:
                    progress.failed += 1
                    await record_failure(
                        conn,
                        account_id,
                        synced.name,
                        fields.get("RECORDNO", ""),
                        "from_intacct",
                        str(exc),
                    )
            counts = await store.apply(
                conn, self.outbox, synced.table, rows, time_zone=tz, bundled=True
            )
        seen.update(r["record_no"] for r in rows)
        progress.done += len(records)
        progress.created += counts.created
        progress.updated += counts.updated
        progress.unchanged += counts.unchanged + counts.stale

    async def _deletions(
        self, account_id: str, synced: Synced, window_start: datetime, tz: str, seen: set[str]
    ) -> int:
        local_start = company_local(window_start, tz)
        async with self.pool.acquire() as conn, conn.transaction():
            stored = [
                r["record_no"]
                for r in await conn.fetch(
                    f"SELECT record_no FROM {synced.table.name}"
                    " WHERE account_id = $1 AND NOT deleted"
                    " AND intacct_modified >= $2",
                    account_id,
                    local_start,
                )
            ]
            missing = [r for r in stored if r not in seen]
            deleted = await store.delete(
                conn, self.outbox, synced.table, account_id, missing, time_zone=tz
            )
            await resolve_deleted(conn, account_id, synced.name, missing)
            return deleted

    async def _finish(
        self, job: Mapping[str, Any], state: str, error: str, progress: Mapping[str, ObjectProgress]
    ) -> None:
        account_id = job["account_id"]
        totals = ObjectProgress()
        for p in progress.values():
            for name in ("created", "updated", "deleted", "unchanged", "repaired", "failed"):
                setattr(totals, name, getattr(totals, name) + getattr(p, name))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE sync_jobs SET state = $2, error = $3, progress = $4::jsonb, api_calls = $5,"
                " finished_at = now(), lease_owner = NULL WHERE sync_id = $1",
                job["sync_id"],
                state,
                error,
                json.dumps({k: v.to_json() for k, v in progress.items()}),
                1 + sum(p.pages for p in progress.values()),
            )
            if state == "succeeded":
                column = "initial_synced_at" if job["kind"] == "initial" else "last_full_sync_at"
                await conn.execute(
                    f"UPDATE accounts SET {column} = now() WHERE account_id = $1", account_id
                )
            event = events_pb2.SyncFinished(
                account_id=account_id,
                sync_id=str(job["sync_id"]),
                succeeded=state == "succeeded",
                created=totals.created,
                updated=totals.updated,
                deleted=totals.deleted,
                unchanged=totals.unchanged,
                repaired=totals.repaired,
                failed=totals.failed,
                api_calls=1 + sum(p.pages for p in progress.values()),
            )
            subject = "sync.job.completed" if state == "succeeded" else "sync.job.failed"
            await self.outbox.add(conn, subject, event)
        log.info(
            "sync_finished",
            account_id=account_id,
            sync_id=str(job["sync_id"]),
            state=state,
            error=error,
            created=totals.created,
            updated=totals.updated,
            deleted=totals.deleted,
            repaired=totals.repaired,
        )


def company_local(moment: datetime, zone: str) -> datetime:
    """A moment as the company's wall time, the form the store keeps WHENMODIFIED in."""
    return moment.astimezone(ZoneInfo(zone or "UTC")).replace(tzinfo=None)


def _bank_kind(synced: Synced) -> str:
    return "checking" if synced.name == "CHECKINGACCOUNT" else "savings"


def next_daily(now: datetime, daily_time: str, time_zone: str) -> datetime:
    """The next occurrence of HH:MM in the account's time zone, as UTC."""
    zone = ZoneInfo(time_zone or "UTC")
    hour, minute = (int(x) for x in daily_time.split(":"))
    local = now.astimezone(zone)
    candidate = datetime.combine(local.date(), time(hour, minute), tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(
            local.date() + timedelta(days=1), time(hour, minute), tzinfo=zone
        )
    return candidate.astimezone(UTC)


@dataclass
class DailyScheduler:
    """Creates each connected account's daily full sync when its time comes."""

    pool: asyncpg.Pool
    runner: JobRunner
    interval: float = 15.0

    async def tick(self) -> int:
        created = 0
        async with self.pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                "SELECT a.account_id, p.daily_sync_time, p.time_zone FROM accounts a"
                " JOIN preferences p USING (account_id)"
                " WHERE a.connected AND a.initial_synced_at IS NOT NULL"
                " AND a.next_daily_sync_at <= now() FOR UPDATE OF a SKIP LOCKED LIMIT 50"
            )
            for row in due:
                _job, made = await self.runner.create(conn, row["account_id"], "daily")
                created += made
                await conn.execute(
                    "UPDATE accounts SET next_daily_sync_at = $2 WHERE account_id = $1",
                    row["account_id"],
                    next_daily(datetime.now(UTC), row["daily_sync_time"], row["time_zone"]),
                )
        return created

    async def run(self, stop: asyncio.Event) -> None:
        # A tick that fails on the database is logged and tried again at the next one.
        await run_passes(stop, self.interval, self.tick)


def validate_daily_time(value: str) -> str:
    try:
        hour, minute = (int(x) for x in value.split(":"))
    except ValueError:
        raise InvalidArgument(f"daily_sync_time {value!r} must be HH:MM (24-hour)") from None
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise InvalidArgument(f"daily_sync_time {value!r} must be HH:MM (24-hour)")
    return f"{hour:02d}:{minute:02d}"
