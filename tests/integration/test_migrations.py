"""The migrations runner against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from arbridge_runtime.db import Migration, MigrationError, migrate, runtime_migrations

SERVICE_MIGRATIONS = [
    Migration("svc", 1, "create_things", "CREATE TABLE things (id int PRIMARY KEY, name text);"),
    # Not idempotent on purpose: applying it twice would fail.
    Migration(
        "svc", 2, "add_column", "ALTER TABLE things ADD COLUMN price bigint NOT NULL DEFAULT 0;"
    ),
    Migration("svc", 3, "seed", "INSERT INTO things (id, name) VALUES (1, 'one');"),
]


async def test_concurrent_runners_leave_one_correct_schema(database_url: str, unique: str) -> None:
    migrations = [*runtime_migrations(), *SERVICE_MIGRATIONS]
    results = await asyncio.gather(*(migrate(database_url, unique, migrations) for _ in range(4)))
    applied = sorted(len(r) for r in results)
    # Exactly one runner applied everything; the others found it done.
    assert applied == [0, 0, 0, len(migrations)]
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            f'SELECT component, version FROM "{unique}".schema_migrations'
            " ORDER BY component, version"
        )
        assert [(r["component"], r["version"]) for r in rows] == sorted(
            (m.component, m.version) for m in migrations
        )
        assert await conn.fetchval(f'SELECT count(*) FROM "{unique}".things') == 1
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema=$1"
            " AND table_name='things' ORDER BY column_name",
            unique,
        )
        assert [c["column_name"] for c in columns] == ["id", "name", "price"]
    finally:
        await conn.close()
    # Running again changes nothing.
    assert await migrate(database_url, unique, migrations) == []


async def test_an_edited_applied_migration_stops_startup(database_url: str, unique: str) -> None:
    await migrate(database_url, unique, SERVICE_MIGRATIONS[:1])
    edited = Migration("svc", 1, "create_things", "CREATE TABLE things (id bigint PRIMARY KEY);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(database_url, unique, [edited])


async def test_a_failing_migration_is_rolled_back_whole(database_url: str, unique: str) -> None:
    broken = [Migration("svc", 1, "half", "CREATE TABLE half (id int); SELECT no_such_function();")]
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(database_url, unique, broken)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass($1)", f"{unique}.half") is None
        assert await conn.fetchval(f'SELECT count(*) FROM "{unique}".schema_migrations') == 0
    finally:
        await conn.close()
