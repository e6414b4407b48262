"""Event ingest: events per second through the streaming gRPC call and the HTTP gateway.

Both doors authenticate, parse safely and store each event durably in
JetStream before answering. The same machine, the same events (distinct
bodies), measured one door at a time; the HTTP load keeps 64 requests in
flight, the gRPC stream 128 events.

Then an open-loop generator offers the gateway fixed rates (each event sent at
its scheduled time whether or not earlier ones were answered, latency counted
from that time, so a stall is charged to every request it delays) and reports,
per rate, what was achieved, p50 and p99.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_devinfra.infra import ensure_infra, scratch_database
from arbridge_runtime import webhooks
from arbridge_runtime.grpc_client import service_channel
from tests.conftest import TOKEN
from tests.support.suite import WEBHOOK_SECRET, running_suite


def _body(n: int) -> bytes:
    return (
        f"<intacct-event><object>CUSTOMER</object><action>set</action><record>"
        f"<RECORDNO>{n}</RECORDNO><WHENMODIFIED>11/20/2026 10:00:00</WHENMODIFIED>"
        f"</record></intacct-event>"
    ).encode()


async def run(events: int = 20_000) -> dict[str, Any]:
    infra = await asyncio.to_thread(ensure_infra)
    namespace = f"b{secrets.token_hex(3)}"
    token = webhooks.url_token(WEBHOOK_SECRET, "bench")
    try:
        async with scratch_database(infra.database_url, "arbridge_bench") as dsn:
            with running_suite(
                Path(tempfile.mkdtemp()),
                dsn,
                infra.nats_url,
                namespace,
                customers=1,
                invoices=1,
                services=("sync", "gateway"),
            ) as suite:
                sync = sync_pb2_grpc.SyncServiceStub(
                    service_channel(suite.target("sync"), TOKEN, deadline=600)
                )

                async def requests() -> AsyncIterator[sync_pb2.StreamIngestEventsRequest]:
                    for n in range(events):
                        yield sync_pb2.StreamIngestEventsRequest(
                            event=sync_pb2.InboundEvent(
                                account_id="bench",
                                body=_body(n),
                                content_type="application/xml",
                                url_token=token,
                                delivery_id=str(n),
                            )
                        )

                started = time.perf_counter()
                accepted = 0
                async for reply in sync.StreamIngestEvents(requests()):
                    accepted += reply.result.outcome == sync_pb2.INGEST_OUTCOME_ACCEPTED
                grpc_seconds = time.perf_counter() - started
                url = f"{suite.gateway_base}/v1/intacct/bench/{token}"
                gate = asyncio.Semaphore(64)
                latencies: list[float] = []

                async with aiohttp.ClientSession() as http:

                    async def post(n: int) -> int:
                        async with gate:
                            sent = time.perf_counter()
                            async with http.post(
                                url,
                                data=_body(events + n),
                                headers={"Content-Type": "application/xml"},
                            ) as reply:
                                latencies.append(time.perf_counter() - sent)
                                return reply.status

                    started = time.perf_counter()
                    statuses = await asyncio.gather(*(post(n) for n in range(events)))
                    http_seconds = time.perf_counter() - started
                open_loop = []
                first = 2 * events
                for rate in RATES:
                    result = await _open_loop(url, rate, SECONDS_PER_RATE, first)
                    first += rate * SECONDS_PER_RATE
                    open_loop.append(result)
                memory = suite.peak_memory()
    finally:
        infra.close()
    latencies.sort()
    return {
        "name": "event_ingest",
        "params": {"events_per_door": events, "http_concurrency": 64, "grpc_in_flight": 128},
        "grpc_stream_events_per_second": round(accepted / grpc_seconds),
        "http_gateway_events_per_second": round(statuses.count(202) / http_seconds),
        "http_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "http_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "open_loop": [{k: v for k, v in r.items() if k != "samples"} for r in open_loop],
        "peak_rss_mib": memory,
        "samples": {f"open_loop_{r['offered_per_second']}_ms": r["samples"] for r in open_loop},
    }


RATES = (250, 500, 1000, 1500)
SECONDS_PER_RATE = 10


async def _open_loop(url: str, rate: int, seconds: int, first: int) -> dict[str, Any]:
    """Offers ``rate`` events per second for ``seconds``; never waits for an answer to send."""
    count = rate * seconds
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.perf_counter() + 0.5
        done_at = start

        async def send(i: int) -> None:
            nonlocal done_at
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                async with http.post(
                    url,
                    data=_body(first + i),
                    headers={"Content-Type": "application/xml"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as reply:
                    await reply.read()
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            now = time.perf_counter()
            latencies.append(now - due)
            statuses[status] = statuses.get(status, 0) + 1
            done_at = max(done_at, now)

        await asyncio.gather(*(send(i) for i in range(count)))
    accepted = statuses.get(202, 0)
    elapsed = done_at - start
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return {
        "offered_per_second": rate,
        "seconds": seconds,
        "accepted": accepted,
        "errors": count - accepted,
        "achieved_per_second": round(accepted / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(p99, 1),
        # Kept up: every event stored, all within a second of the schedule's end.
        "ok": accepted == count and elapsed <= seconds + 1,
        "samples": [round(v * 1000, 1) for v in latencies],
    }


if __name__ == "__main__":
    print(asyncio.run(run()))
