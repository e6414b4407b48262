"""Hostile input at every door: forged and replayed webhooks, hostile XML, and malformed,
empty and oversized requests to every gRPC method of every service.

Each hostile request must be refused with a clear client error (HTTP 4xx with a
JSON body; a gRPC status that is not INTERNAL or UNKNOWN), nothing it carried
may be stored, and every service must still be SERVING afterwards, with no
restart and a bounded memory.

* webhooks: a wrong URL token, a forged signature, a valid signature replayed
  after the window, another account's token;
* XML (gateway, both doors, and sync's gRPC ingest): an entity-expansion bomb,
  an external entity, a DTD, a document over the size limit, a deeply nested
  document, invalid bytes; and an "Intacct" that answers the connector with
  such documents;
* gRPC: for every method of connector, sync, payments and rules, bytes that
  are not a message, an empty message, and a message over the size limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbridge.connector.v1 import connector_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.infra import Infra
from arbridge_devinfra.onboarding import Stubs, connect, wait_for_sync
from arbridge_devinfra.suite import StartedSuite
from arbridge_runtime import webhooks
from arbridge_runtime.grpc_client import service_channel
from tests.chaos.harness import Ledger, Outcome, chaos_suite
from tests.support.runtime_env import peak_rss_mib

pytestmark = pytest.mark.chaos
ACCOUNT = "acme"
SECRET_FILE = "webhook.secret"
BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'.encode()
        for i in range(1, 10)
    )
    + b"]><intacct-event><object>&lol9;</object></intacct-event>"
)
HOSTILE_XML = {
    "entity expansion": BOMB,
    "external entity": (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<intacct-event><object>&x;</object></intacct-event>"
    ),
    "DTD": b'<!DOCTYPE intacct-event SYSTEM "http://example.com/x.dtd"><intacct-event/>',
    "deep nesting": b"<a>" * 50_000 + b"</a>" * 50_000,
    "invalid bytes": b"<intacct-event>\xff\xfe\x00</intacct-event",
    "huge": b"<intacct-event><object>" + b"A" * (12 * 1024 * 1024) + b"</object></intacct-event>",
}
SERVICES = {
    "connector": connector_pb2.DESCRIPTOR.services_by_name["ConnectorService"],
    "sync": sync_pb2.DESCRIPTOR.services_by_name["SyncService"],
    "payments": payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    "rules": rules_pb2.DESCRIPTOR.services_by_name["RulesService"],
}
SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


async def _webhooks(suite: StartedSuite, outcome: Outcome) -> list[str]:
    """Every forged, replayed or hostile webhook; returns those not refused properly."""
    secret = (suite.root / ".infra" / SECRET_FILE).read_text().strip()
    token = webhooks.url_token(secret, ACCOUNT)
    other = webhooks.url_token(secret, "someone-else")
    base = suite.webhooks_base
    good = b"<intacct-event><object>CUSTOMER</object><action>set</action></intacct-event>"
    stale = int(time.time()) - webhooks.REPLAY_WINDOW_SECONDS - 60
    key = webhooks.signing_secret(secret, ACCOUNT)
    requests: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("wrong token", f"/v1/intacct/{ACCOUNT}/{'x' * 43}", good, {}),
        ("another account's token", f"/v1/intacct/{ACCOUNT}/{other}", good, {}),
        (
            "forged signature",
            f"/v1/intacct/{ACCOUNT}/signed",
            good,
            {
                "X-Arbridge-Timestamp": str(int(time.time())),
                "X-Arbridge-Signature": "v1=" + "0" * 64,
            },
        ),
        (
            "replayed after the window",
            f"/v1/intacct/{ACCOUNT}/signed",
            good,
            {
                "X-Arbridge-Timestamp": str(stale),
                "X-Arbridge-Signature": webhooks.sign(key, stale, good),
            },
        ),
    ]
    for name, body in HOSTILE_XML.items():
        requests.append((f"XML: {name} (token door)", f"/v1/intacct/{ACCOUNT}/{token}", body, {}))
        now = int(time.time())
        requests.append(
            (
                f"XML: {name} (signed door)",
                f"/v1/intacct/{ACCOUNT}/signed",
                body,
                {
                    "X-Arbridge-Timestamp": str(now),
                    "X-Arbridge-Signature": webhooks.sign(key, now, body),
                },
            )
        )
    failures = []
    async with aiohttp.ClientSession() as http:
        for name, path, body, headers in requests:
            outcome.attempted += 1
            started = time.monotonic()
            async with http.post(
                base + path, data=body, headers={"Content-Type": "application/xml", **headers}
            ) as reply:
                text = await reply.text()
            took = time.monotonic() - started
            problem = ""
            if not 400 <= reply.status < 500:
                problem = f"answered {reply.status}"
            elif "error" not in json.loads(text or "{}"):
                problem = "no JSON error body"
            elif took > 5:
                problem = f"took {took:.1f}s"
            if problem:
                failures.append(f"webhook {name}: {problem}")
            else:
                outcome.acknowledged += 0  # refused, as it should be
    return failures


async def _ingest(stubs: Stubs, suite: StartedSuite, outcome: Outcome) -> list[str]:
    """Hostile XML through sync's gRPC ingest."""
    secret = (suite.root / ".infra" / SECRET_FILE).read_text().strip()
    token = webhooks.url_token(secret, ACCOUNT)
    failures = []
    for name, body in HOSTILE_XML.items():
        if len(body) > 7 * 1024 * 1024:
            continue  # over the gRPC message limit: the oversized sweep covers it
        outcome.attempted += 1
        reply = await stubs.sync.IngestEvents(
            sync_pb2.IngestEventsRequest(
                events=[
                    sync_pb2.InboundEvent(
                        account_id=ACCOUNT,
                        body=body,
                        content_type="application/xml",
                        url_token=token,
                    )
                ]
            )
        )
        result = reply.results[0]
        if result.outcome != sync_pb2.INGEST_OUTCOME_REJECTED or not result.reason:
            failures.append(f"ingest {name}: {sync_pb2.IngestOutcome.Name(result.outcome)}")
    return failures


async def _hostile_intacct(stubs: Stubs, suite: StartedSuite, outcome: Outcome) -> list[str]:
    """An "Intacct" endpoint that answers with hostile documents: the connector refuses them."""
    failures = []
    for name, body in HOSTILE_XML.items():
        app = web.Application()

        async def answer(_request: web.Request, body: bytes = body) -> web.Response:
            return web.Response(body=body, content_type="application/xml")

        app.router.add_post("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        outcome.attempted += 1
        try:
            await stubs.connector.ConnectAccount(
                connector_pb2.ConnectAccountRequest(
                    account_id=f"hostile-{abs(hash(name)) % 10_000}",
                    company_id="c",
                    user_id="u",
                    user_password="p" * 12,
                    sender_id="s",
                    sender_password="p" * 12,
                    endpoint_url=f"http://127.0.0.1:{port}/ia/xml/xmlgw.phtml",
                ),
                timeout=60,
            )
            failures.append(f"connector accepted a hostile Intacct answer ({name})")
        except grpc.aio.AioRpcError as err:
            if err.code() in SERVER_FAULTS:
                failures.append(f"connector, hostile Intacct ({name}): {err.code().name}")
        finally:
            await runner.cleanup()
    return failures


async def _sweep(suite: StartedSuite, outcome: Outcome) -> list[str]:
    """Garbage, empty and oversized requests to every method of every service."""
    failures = []
    for service, descriptor in SERVICES.items():
        channel = service_channel(suite.target(service), suite.token, deadline=30)
        try:
            for method in descriptor.methods:
                path = f"/{descriptor.full_name}/{method.name}"
                for label, payload in (
                    ("garbage", b"\xff\xff\xff\xff\x0f garbage"),
                    ("empty", b""),
                    ("oversized", b"\x0a" + b"\xff\xff\xff\x07" + b"A" * (9 * 1024 * 1024)),
                ):
                    outcome.attempted += 1
                    code = await _call(channel, path, method, payload)
                    if code in SERVER_FAULTS:
                        failures.append(f"{path} ({label}): {code.name}")
        finally:
            await channel.close(None)
    return failures


async def _call(
    channel: grpc.aio.Channel, path: str, method: Any, payload: bytes
) -> grpc.StatusCode:
    identity = lambda data: data  # noqa: E731 (raw bytes on the wire)
    try:
        if method.client_streaming and method.server_streaming:
            both = channel.stream_stream(
                path, request_serializer=identity, response_deserializer=identity
            )
            async for _ in both(iter([payload]), timeout=30):
                pass
        elif method.client_streaming:
            await channel.stream_unary(
                path, request_serializer=identity, response_deserializer=identity
            )(iter([payload]), timeout=30)
        elif method.server_streaming:
            out = channel.unary_stream(
                path, request_serializer=identity, response_deserializer=identity
            )
            async for _ in out(payload, timeout=30):
                pass
        else:
            await channel.unary_unary(
                path, request_serializer=identity, response_deserializer=identity
            )(payload, timeout=30)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _healthy(suite: StartedSuite) -> list[str]:
    failures = []
    for name in ("connector", "sync", "payments", "rules", "gateway"):
        channel = grpc.aio.insecure_channel(suite.target(name))
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                failures.append(f"{name} is not SERVING after the storm")
        except grpc.aio.AioRpcError as err:
            failures.append(f"{name} health: {err.code().name}")
        finally:
            await channel.close(None)
    return failures


async def _scenario(suite: StartedSuite, outcome: Outcome) -> None:
    stubs = Stubs.of(suite, deadline=60)
    try:
        await connect(stubs, suite, ACCOUNT)
        await wait_for_sync(stubs, ACCOUNT)
        before = await _counts(stubs)
        failures = []
        failures += await _webhooks(suite, outcome)
        failures += await _ingest(stubs, suite, outcome)
        failures += await _hostile_intacct(stubs, suite, outcome)
        failures += await _sweep(suite, outcome)
        failures += await _healthy(suite)
        if suite.restarts:
            failures.append(f"services exited: {suite.restarts}")
        after = await _counts(stubs)
        if after != before:
            failures.append(f"stored data changed: {before} -> {after}")
        memory = {r.name: peak_rss_mib(r.process.pid) for r in suite.running[2:]}
        outcome.notes.append("peak RSS MiB: " + ", ".join(f"{k} {v}" for k, v in memory.items()))
        failures += [f"{k} grew to {v} MiB" for k, v in memory.items() if v > 600]
        outcome.wrong = len(failures)
        outcome.faults = outcome.attempted
        outcome.notes += failures[:15]
    finally:
        await stubs.close()


async def _counts(stubs: Stubs) -> tuple[int, int]:
    customers = await stubs.sync.ListCustomers(sync_pb2.ListCustomersRequest(account_id=ACCOUNT))
    invoices = await stubs.sync.ListInvoices(sync_pb2.ListInvoicesRequest(account_id=ACCOUNT))
    return len(customers.customers), len(invoices.invoices)


def test_hostile_input_at_every_door(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("hostile input at every door")
    with chaos_suite(tmp_path, infra, unique, outcome=outcome) as suite:
        asyncio.run(_scenario(suite, outcome))
    assert outcome.passed, outcome.json()
