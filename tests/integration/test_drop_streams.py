"""Dropping a namespace's JetStream streams (what test runs, suites and benches do when
they end) takes every stream of that namespace and nothing of any other."""

from __future__ import annotations

import nats

from arbridge_devinfra.suite import drop_streams
from arbridge_runtime import streams
from arbridge_runtime.jetstream import Namespace, ensure_streams


async def test_a_namespace_s_streams_go_and_no_other_s(nats_url: str, unique: str) -> None:
    mine, other = Namespace(unique), Namespace(f"{unique}x")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, mine, streams.ALL)
        await js.add_stream(name=mine.stream("OWN"), subjects=[mine.subject("own.>")])
        await ensure_streams(js, other, streams.ALL[:1])
        assert await drop_streams(nats_url) == 0  # no namespace: nothing is anybody's
        assert await drop_streams(nats_url, unique) == len(streams.ALL) + 1
        left = {info.config.name or "" for info in await js.streams_info()}
        assert not {n for n in left if n.startswith(mine.stream(""))}
        assert other.stream(streams.ALL[0].name) in left
        assert await drop_streams(nats_url, unique, f"{unique}x") == 1
    finally:
        await nc.close()
