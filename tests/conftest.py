"""Shared fixtures: real PostgreSQL and NATS, isolated per run and per test.

The session gets its own database on whatever PostgreSQL ``ensure_infra``
found or started; each test gets its own schema names and JetStream
namespace (streams, subjects and consumers prefixed), so runs never see
each other's data even on shared servers.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from arbridge_devinfra.infra import Infra, PrivateNats, ensure_infra, scratch_database

TOKEN = "test-service-token-0123456789abcdef"


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    found = ensure_infra(Path(__file__).resolve().parent.parent / ".infra")
    try:
        yield found
    finally:
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
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    """A NATS server of the test's own, which the test may stop and restart."""
    server = PrivateNats(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()
