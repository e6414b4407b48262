"""The private PostgreSQL and NATS that `make test` / `make run` start when none is running."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import asyncpg
import pytest

from arbridge_devinfra.infra import PrivateNats, PrivatePostgres
from arbridge_runtime.jetstream import connect

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
async def test_private_postgres_starts_serves_and_stops() -> None:
    folder = ROOT / ".infra" / f"test-{secrets.token_hex(4)}"
    server = PrivatePostgres(folder)
    try:
        server.start()
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT 40 + 2") == 42
        finally:
            await conn.close()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    with pytest.raises(OSError, match=r"Connect call failed|Connection refused|connect"):
        await asyncpg.connect(server.url, timeout=2)


@pytest.mark.timeout(60)
async def test_private_nats_has_jetstream_and_keeps_streams_across_restart(tmp_path: Path) -> None:
    server = PrivateNats(tmp_path / "nats")
    server.start()
    try:
        nc = await connect(server.url, "infra-test")
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.one", b"1")
        await nc.close()
        server.restart()
        nc = await connect(server.url, "infra-test")
        info = await nc.jetstream().stream_info("KEEP")
        await nc.close()
        assert info.state.messages == 1
    finally:
        server.stop()
