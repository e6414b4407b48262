"""Smart events: per-company subscriptions that POST a rendered body when records change.

Like Intacct's, delivery is asynchronous and retried a limited number of
times; every delivery is kept in an event log. A company's faults can drop
events on purpose (the log says so), which is how tests make the daily full
sync repair drift.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from arbridge_intacct_sandbox.functions import Change
from arbridge_intacct_sandbox.store import Company, SmartEvent
from arbridge_intacct_sandbox.xmlout import esc

log = structlog.get_logger(__name__)
_MERGE = re.compile(r"\{!([A-Za-z0-9_]+)\.([A-Za-z0-9_.]+)!\}")
LOG_LIMIT = 100_000


def render(template: str, obj_name: str, values: dict[str, str], content_type: str) -> str:
    """Replaces ``{!OBJECT.FIELD!}`` merge fields with the record's values."""

    def value(match: re.Match[str]) -> str:
        if match.group(1).upper() != obj_name.upper():
            return ""
        raw = values.get(match.group(2)) or values.get(match.group(2).upper()) or ""
        if "xml" in content_type:
            return esc(raw)
        if "x-www-form-urlencoded" in content_type:
            return urllib.parse.quote_plus(raw)
        if "json" in content_type:
            return raw.replace("\\", "\\\\").replace('"', '\\"')
        return raw

    return _MERGE.sub(value, template)


@dataclass
class Delivery:
    log_id: str
    company_id: str
    event: SmartEvent
    body: str
    retry_delays: tuple[float, ...]
    attempts: int = 0
    entry: dict[str, Any] = field(default_factory=dict)


class SmartEventDispatcher:
    """Queues and delivers smart events; keeps the event log of every company."""

    def __init__(self, workers: int = 8) -> None:
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._workers = workers
        self.logs: dict[str, list[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def on_changes(self, company: Company, changes: list[Change]) -> None:
        for change in changes:
            name = change.obj.name
            for event in company.smart_events.values():
                if not event.active or event.object.upper() != name.upper():
                    continue
                if change.action not in event.actions:
                    continue
                values = dict(change.row.values)
                entry: dict[str, Any] = {
                    "id": secrets.token_hex(8),
                    "smart_event_id": event.event_id,
                    "object": name,
                    "action": change.action,
                    "recordno": change.row.recordno,
                    "status": "pending",
                    "attempts": 0,
                    "http_status": None,
                    "error": None,
                    "created_at": time.time(),
                    "delivered_at": None,
                }
                company_log = self.logs.setdefault(company.company_id, [])
                company_log.append(entry)
                if len(company_log) > LOG_LIMIT:
                    del company_log[: len(company_log) - LOG_LIMIT]
                if company.faults.drop_smart_events:
                    entry["status"] = "dropped"
                    continue
                body = render(event.body_template, name, values, event.content_type)
                self._enqueue(
                    Delivery(
                        entry["id"],
                        company.company_id,
                        event,
                        body,
                        company.faults.smart_event_retry_delays,
                        entry=entry,
                    )
                )

    def _enqueue(self, delivery: Delivery) -> None:
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait(delivery)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session:
            await self._session.close()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            finally:
                self._queue.task_done()

    async def _deliver(self, delivery: Delivery) -> None:
        assert self._session is not None
        delivery.attempts += 1
        entry = delivery.entry
        entry["attempts"] = delivery.attempts
        headers = {"Content-Type": delivery.event.content_type, **delivery.event.headers}
        try:
            async with self._session.post(
                delivery.event.url, data=delivery.body.encode(), headers=headers
            ) as reply:
                entry["http_status"] = reply.status
                ok = 200 <= reply.status < 300
                entry["error"] = None if ok else (await reply.text())[:300]
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            entry["error"] = type(exc).__name__
        if ok:
            entry["status"] = "delivered"
            entry["delivered_at"] = time.time()
            self._done()
            return
        schedule = delivery.retry_delays
        if delivery.attempts > len(schedule):
            entry["status"] = "failed"
            log.warning("smart_event_failed", url=delivery.event.url, attempts=delivery.attempts)
            self._done()
            return
        entry["status"] = "retrying"
        asyncio.get_running_loop().call_later(
            schedule[delivery.attempts - 1], self._queue.put_nowait, delivery
        )

    def _done(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()
