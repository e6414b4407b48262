"""Process lifecycle: SIGTERM drains in-flight work; a crash before the ack repeats nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbridge_runtime.db import create_pool
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.jetstream import Namespace, connect, ensure_streams
from tests.conftest import TOKEN
from tests.support.drain_app import SERVICE, STREAM
from tests.support.runtime_env import ServiceProcess, service_env, start_process

APP = ["-m", "tests.support.drain_app"]


def _start(
    tmp_path: Path, database_url: str, nats_url: str, unique: str, **extra: str
) -> ServiceProcess:
    ready = tmp_path / f"ready-{time.monotonic_ns()}.json"
    env = service_env(
        database_url=database_url,
        nats_url=nats_url,
        namespace=unique,
        schema=unique,
        token=TOKEN,
        ready_file=ready,
        ARBRIDGE_SHUTDOWN_GRACE_SECONDS="10",
        ARBRIDGE_DRAIN_DELAY_SECONDS="0.3",
        **extra,
    )
    return start_process(APP, env, ready, tmp_path / "app.log")


async def _effect(database_url: str, schema: str, message_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(
            f'SELECT * FROM "{schema}".effects WHERE message_id = $1', message_id
        )
    finally:
        await conn.close()


@pytest.mark.timeout(90)
async def test_sigterm_drains_a_stream_and_a_message_then_exits_zero(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    app = _start(tmp_path, database_url, nats_url, unique)
    statuses: list[tuple[float, int]] = []
    chunks: list[tuple[float, bytes]] = []
    nc = await connect(nats_url, "lifecycle-test")
    try:
        channel = service_channel(app.grpc_target, TOKEN)
        health = health_pb2_grpc.HealthStub(channel)

        async def watch_health() -> None:
            try:
                async for reply in health.Watch(health_pb2.HealthCheckRequest(service="")):
                    statuses.append((time.monotonic(), reply.status))
            except grpc.aio.AioRpcError:
                return

        watcher = asyncio.create_task(watch_health())
        stream_call = channel.unary_stream(
            f"/{SERVICE}/Stream", request_serializer=bytes, response_deserializer=bytes
        )(b"6:0.4")

        async def read_stream() -> grpc.StatusCode:
            async for chunk in stream_call:
                chunks.append((time.monotonic(), chunk))
            return await stream_call.code()

        reader = asyncio.create_task(read_stream())
        js = nc.jetstream()
        namespace = Namespace(unique)
        await ensure_streams(js, namespace, [STREAM])
        await js.publish(
            namespace.subject("test.slow"), b"slow:2.0", headers={"Nats-Msg-Id": "slow-1"}
        )
        while not chunks:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the slow message is being handled now
        sigterm_at = time.monotonic()
        app.process.send_signal(15)
        code = await asyncio.wait_for(reader, 20)
        exit_code = await asyncio.to_thread(app.process.wait, 20)
        watcher.cancel()
        await channel.close(None)
    finally:
        await nc.close()
        app.kill()
    assert exit_code == 0, app.logs()[-3000:]
    assert code is grpc.StatusCode.OK
    assert [c for _, c in chunks] == [f"chunk-{i}".encode() for i in range(6)]
    not_serving = [t for t, s in statuses if s == health_pb2.HealthCheckResponse.NOT_SERVING]
    assert statuses[0][1] == health_pb2.HealthCheckResponse.SERVING
    assert not_serving, "health never reported NOT_SERVING"
    # Health said NOT_SERVING after SIGTERM and before the stream finished.
    assert sigterm_at <= not_serving[0] < chunks[-1][0]
    effect = await _effect(database_url, unique, "slow-1")
    assert effect is not None, "the in-flight message was not finished"
    assert effect["applied"] == 1
    assert '"msg": "shutdown_finished"' in app.logs()


@pytest.mark.timeout(90)
async def test_consumer_killed_after_effect_before_ack_does_not_repeat_it(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    app = _start(
        tmp_path, database_url, nats_url, unique, ARBRIDGE_FAULTS="consumer.after_commit:kill"
    )
    nc = await connect(nats_url, "crash-test")
    namespace = Namespace(unique)
    try:
        js = nc.jetstream()
        await js.publish(
            namespace.subject("test.once"), b"effect", headers={"Nats-Msg-Id": "once-1"}
        )
        killed = await asyncio.to_thread(app.process.wait, 30)
        assert killed == -9, "the fault point did not kill the consumer"
        effect = await _effect(database_url, unique, "once-1")
        assert effect is not None
        assert effect["applied"] == 1
        restarted = _start(tmp_path, database_url, nats_url, unique)
        try:
            deadline = time.monotonic() + 30
            info = None
            while time.monotonic() < deadline:
                info = await js.consumer_info(namespace.stream("TEST"), namespace.consumer("drain"))
                if info.num_ack_pending == 0 and info.delivered.consumer_seq >= 2:
                    break
                await asyncio.sleep(0.2)
            assert info is not None
            assert info.delivered.consumer_seq >= 2, "the message was never redelivered"
            assert info.num_ack_pending == 0
            assert restarted.terminate() == 0
        finally:
            restarted.kill()
    finally:
        await nc.close()
        app.kill()
    effect = await _effect(database_url, unique, "once-1")
    assert effect is not None
    assert effect["applied"] == 1, "the effect was repeated on redelivery"
    pool = await create_pool(database_url, unique, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE consumer = 'drain' AND message_id = 'once-1'"
                )
                == 1
            )
    finally:
        await pool.close()
