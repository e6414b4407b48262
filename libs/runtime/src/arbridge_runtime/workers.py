"""Worker loops of the services: passes run again at once while they find work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from arbridge_runtime.db import TRANSIENT_DB_ERRORS

log = structlog.get_logger(__name__)


async def run_passes(
    stop: asyncio.Event, interval: float, *passes: Callable[[], Awaitable[int]]
) -> None:
    """A worker loop: runs the passes again at once while they find work, else every ``interval``.

    A pass returns how much it took (payments' recovery, posting, settlement and
    charge-queue passes; rules' auto charges and re-evaluation). A pass that
    fails on the database or the network is logged and tried again next time.
    """
    while not stop.is_set():
        taken = 0
        for one_pass in passes:
            try:
                taken += await one_pass()
            except (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError) as err:
                log.warning("worker.pass_failed", error=str(err) or type(err).__name__)
        if taken:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
