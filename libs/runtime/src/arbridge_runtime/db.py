"""PostgreSQL: the service's pool and its schema migrations.

Each service owns one schema. Migrations are plain, ordered SQL files
(``NNNN_name.sql``) in a ``migrations`` folder of a package; the runtime's
own tables (outbox, inbox, dead letters) are a migration set of their own,
applied into every service's schema before the service's.

The runner takes a PostgreSQL advisory lock per schema, so several replicas
starting at once apply each migration exactly once; each migration runs in
its own transaction and is recorded with a checksum, and a changed migration
that was already applied stops start-up instead of drifting silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


# The database went away or is coming back (a restart, a failover, a dropped connection):
# retry later. Errors of the SQL itself (constraints, syntax) are not in here.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class MigrationError(Exception):
    """The migrations cannot be applied safely."""


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def quote_ident(name: str) -> str:
    """Quotes a schema or table name after checking it is a plain identifier."""
    if not _IDENT_RE.match(name):
        raise ValueError(f"not a valid identifier: {name!r}")
    return f'"{name}"'


def load_migrations(package: str, component: str, folder: str = "migrations") -> list[Migration]:
    """Reads ``NNNN_name.sql`` files of ``package/folder`` in version order."""
    root = resources.files(package) / folder
    found: list[Migration] = []
    if not root.is_dir():
        return found
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_RE.match(entry.name)
        if not match:
            raise MigrationError(
                f"{package}/{folder}/{entry.name}: migration files are named NNNN_lower_name.sql"
            )
        found.append(Migration(component, int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{package}/{folder}: two migrations share a version number")
    return found


def runtime_migrations() -> list[Migration]:
    """The runtime's own tables: outbox, inbox and dead letters."""
    return load_migrations("arbridge_runtime", "runtime")


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"arbridge.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def migrate(dsn: str, schema: str, migrations: list[Migration]) -> list[str]:
    """Applies pending migrations into ``schema``; returns the names applied."""
    quoted = quote_ident(schema)
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                    component text NOT NULL,
                    version integer NOT NULL,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (component, version))"""
            )
            rows = await conn.fetch(
                f"SELECT component, version, checksum FROM {quoted}.schema_migrations"
            )
            done = {(r["component"], r["version"]): r["checksum"] for r in rows}
            for migration in migrations:
                key = (migration.component, migration.version)
                label = f"{migration.component}/{migration.version:04d}_{migration.name}"
                if key in done:
                    if done[key] != migration.checksum:
                        raise MigrationError(
                            f"migration {label} changed after it was applied to schema {schema}; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {quoted}.schema_migrations"
                        " (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                        migration.component,
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(label)
                log.info("migration_applied", schema=schema, migration=label)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    finally:
        await conn.close()
    return applied_now


async def pending(dsn: str, schema: str, migrations: list[Migration]) -> list[str]:
    """The migrations not yet applied to ``schema`` (what a service that does not migrate
    at start-up refuses to run without); raises when an applied one has changed."""
    quoted = quote_ident(schema)
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{quoted}.schema_migrations"
        )
        rows = (
            await conn.fetch(f"SELECT component, version, checksum FROM {quoted}.schema_migrations")
            if exists
            else []
        )
    finally:
        await conn.close()
    done = {(r["component"], r["version"]): r["checksum"] for r in rows}
    missing = []
    for migration in migrations:
        label = f"{migration.component}/{migration.version:04d}_{migration.name}"
        checksum = done.get((migration.component, migration.version))
        if checksum is None:
            missing.append(label)
        elif checksum != migration.checksum:
            raise MigrationError(
                f"migration {label} changed after it was applied to schema {schema}; "
                "add a new migration instead of editing an applied one"
            )
    return missing


class Notifier:
    """A LISTEN on one channel that survives the database going away.

    ``run`` holds a connection listening on ``channel`` and sets ``wake`` on each
    notification; when the connection breaks (a restart, a failover) it takes a
    new one after a short backoff. Notifications sent while it reconnects are
    lost, so callers also poll: a notification only makes them faster. It ends by
    itself once ``stop`` is set (within a second), releasing its connection.
    """

    def __init__(self, pool: asyncpg.Pool, channel: str) -> None:
        self.pool = pool
        self.channel = channel
        self.wake = asyncio.Event()

    def _notified(self, *_args: Any) -> None:
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            conn: Any = None
            try:
                conn = await self.pool.acquire()
                await conn.add_listener(self.channel, self._notified)
                backoff = 0.2
                self.wake.set()  # anything sent while not listening: look now
                while not stop.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("listen_failed", channel=self.channel, error=type(exc).__name__)
            finally:
                if conn is not None:
                    try:
                        with contextlib.suppress(*TRANSIENT_DB_ERRORS):
                            await conn.remove_listener(self.channel, self._notified)
                    finally:  # even when cancelled: a connection never released hangs close()
                        with contextlib.suppress(*TRANSIENT_DB_ERRORS):
                            await self.pool.release(conn)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)


async def stop_listening(task: asyncio.Task[None]) -> None:
    """Waits for a Notifier whose stop is set to end (it releases its connection), and
    cancels it only if it does not within a few seconds."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 5.0)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def create_pool(
    dsn: str, schema: str, *, max_size: int = 10, min_size: int = 1
) -> asyncpg.Pool:
    """A pool whose connections see the service's schema first."""
    quote_ident(schema)
    pool: Any = await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, max_size),
        max_size=max_size,
        server_settings={
            "search_path": f"{schema},public",
            "application_name": f"arbridge-{schema}",
        },
        command_timeout=60,
    )
    return pool
