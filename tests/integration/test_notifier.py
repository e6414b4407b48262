"""The LISTEN that wakes the outbox relay and sync's job runner survives the database
dropping its connection, and gives its connection back when it stops."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import grpc

from arbridge_runtime.db import Notifier, create_pool, stop_listening
from arbridge_runtime.errors import status_for


async def _woken(notifier: Notifier, conn: asyncpg.Connection, channel: str) -> bool:
    notifier.wake.clear()
    await conn.execute(f"NOTIFY {channel}")
    try:
        await asyncio.wait_for(notifier.wake.wait(), 5)
    except TimeoutError:
        return False
    return True


async def test_a_notifier_listens_again_after_its_connection_is_killed(
    database_url: str, unique: str
) -> None:
    channel = f"chan_{secrets.token_hex(4)}"
    pool = await create_pool(database_url, unique, max_size=3)
    other = await asyncpg.connect(database_url)
    stop = asyncio.Event()
    notifier = Notifier(pool, channel)
    task = asyncio.create_task(notifier.run(stop))
    try:
        for _ in range(50):  # until it listens
            if await _woken(notifier, other, channel):
                break
        assert await _woken(notifier, other, channel)

        # The server drops the listening connection (a restart, a failover, an admin).
        killed = await other.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
            f'LISTEN "{channel}"',
        )
        assert killed == 1
        listening_again = False
        for _ in range(50):
            if await _woken(notifier, other, channel):
                listening_again = True
                break
        assert listening_again, "the notifier did not listen again"
    finally:
        stop.set()
        await stop_listening(task)
        await other.close()
    assert task.done()
    assert task.exception() is None
    # Its connection went back to the pool: closing does not wait for ever.
    await asyncio.wait_for(pool.close(), 10)


def test_database_outages_are_unavailable_not_internal() -> None:
    for exc in (
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
    ):
        code, message = status_for(exc)
        assert code == grpc.StatusCode.UNAVAILABLE, exc
        assert "retry" in message
    # An error of the SQL itself stays internal: retrying would not help.
    assert status_for(asyncpg.exceptions.UndefinedTableError("x"))[0] == grpc.StatusCode.INTERNAL
