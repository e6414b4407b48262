"""Shared fixtures: real PostgreSQL and NATS, isolated per run and per test.

The session gets its own database on whatever PostgreSQL ``ensure_infra``
found or started; each test gets its own schema names and JetStream
namespace (streams, subjects and consumers prefixed), so runs never see
each other's data even on shared servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from arbridge_devinfra.infra import Infra, PrivateNats, ensure_infra, scratch_database
from arbridge_devinfra.suite import drop_streams

TOKEN = "test-service-token-0123456789abcdef"


# Every name ``unique`` gave this run: its streams are deleted when the run ends.
_NAMESPACES: set[str] = set()


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    found = ensure_infra(Path(__file__).resolve().parent.parent / ".infra")
    try:
        yield found
    finally:
        # A shared NATS keeps streams until they are deleted: the run's own go, so runs
        # do not pile up events on it (other runs' streams are left alone).
        with contextlib.suppress(Exception):  # a cleanup: NATS may be gone already
            asyncio.run(drop_streams(found.nats_url, *_NAMESPACES, timeout=60))
        found.close()


@pytest.fixture(scope="session")
async def database_url(infra: Infra) -> AsyncIterator[str]:
    async with scratch_database(infra.database_url, "arbridge_t") as url:
        yield url


@pytest.fixture(scope="session")
def nats_url(infra: Infra) -> str:
    return infra.nats_url


@pytest.fixture
def unique() -> str:
    """A short unique lower-case name for schemas, namespaces and streams."""
    name = f"t{secrets.token_hex(5)}"
    _NAMESPACES.add(name)
    return name


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    """A NATS server of the test's own, which the test may stop and restart."""
    server = PrivateNats(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()
