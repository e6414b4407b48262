"""A small service built on the runtime, run as a process by lifecycle tests.

It has a server-streaming method (``arbridge.testing.v1.DrainService/Stream``,
raw bytes) that sends a chunk every ``delay`` seconds, and a consumer on
``test.>`` whose handler can be slowed down by the message (``slow:<s>``).
Both let a test send SIGTERM while work is in flight and watch it finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import grpc.aio

from arbridge_runtime.db import load_migrations
from arbridge_runtime.jetstream import ConsumerSpec, Delivery, StreamSpec
from arbridge_runtime.service import ServiceContext, ServiceDefinition, run
from arbridge_runtime.settings import EnvReader, RuntimeSettings

SERVICE = "arbridge.testing.v1.DrainService"
STREAM = StreamSpec("TEST", ("test.>",))


async def stream_chunks(
    request: bytes, _context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    count, delay = (int(x) if i == 0 else float(x) for i, x in enumerate(request.split(b":")))
    for index in range(int(count)):
        await asyncio.sleep(delay)
        yield f"chunk-{index}".encode()


async def handle(conn: asyncpg.Connection, delivery: Delivery) -> None:
    if delivery.data.startswith(b"slow:"):
        await asyncio.sleep(float(delivery.data.split(b":")[1]))
    await conn.execute(
        "INSERT INTO effects (message_id, applied, num_delivered) VALUES ($1, 1, $2)"
        " ON CONFLICT (message_id) DO UPDATE SET applied = effects.applied + 1",
        delivery.message_id,
        delivery.num_delivered,
    )


def _register(_servicer: object, server: grpc.aio.Server) -> None:
    identity = bytes  # raw bytes in and out
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream_chunks, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))


async def build(ctx: ServiceContext) -> None:
    ctx.grpc.add_service(_register, None, SERVICE)
    ctx.add_consumer(
        ConsumerSpec(
            "drain", "TEST", ("test.>",), max_deliver=5, backoff_seconds=(0.2,), ack_wait_seconds=30
        ),
        handle,
    )


def load() -> tuple[ServiceDefinition, RuntimeSettings]:
    env = EnvReader()
    settings = RuntimeSettings.read(env, "drain")
    env.check()
    definition = ServiceDefinition(
        name="drain",
        migrations=load_migrations("tests.support", "testapp"),
        streams=(STREAM,),
        build=build,
    )
    return definition, settings


if __name__ == "__main__":
    run(load, service="testapp", package="tests.support")
