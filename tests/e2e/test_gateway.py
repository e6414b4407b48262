"""The webhook gateway as a process: forged, unsigned, stale and replayed webhooks; NATS down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from arbridge_devinfra.infra import PrivateNats
from arbridge_runtime import webhooks
from arbridge_runtime.jetstream import Namespace, connect
from tests.conftest import TOKEN
from tests.support.runtime_env import service_env, start_process
from tests.support.suite import WEBHOOK_SECRET

SIGNED_BODY = (
    b"<intacct-event><object>CUSTOMER</object><action>set</action><record>"
    b"<RECORDNO>43</RECORDNO></record></intacct-event>"
)
BODY = (
    b"<intacct-event><object>CUSTOMER</object><action>set</action><record>"
    b"<RECORDNO>42</RECORDNO><WHENMODIFIED>11/20/2026 10:00:00</WHENMODIFIED></record>"
    b"</intacct-event>"
)


def _start(tmp_path: Path, database_url: str, nats_url: str, namespace: str):  # type: ignore[no-untyped-def]
    ready = tmp_path / f"gateway-{time.monotonic_ns()}.ready"
    env = service_env(
        database_url=database_url,
        nats_url=nats_url,
        namespace=namespace,
        schema=f"{namespace}_gateway",
        token=TOKEN,
        ready_file=ready,
        ARBRIDGE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        ARBRIDGE_WEBHOOK_MAX_BYTES="4096",
        ARBRIDGE_GATEWAY_PUBLISH_TIMEOUT="1",
    )
    process = start_process(["-m", "arbridge_gateway"], env, ready, tmp_path / "gateway.log")
    return process, f"http://127.0.0.1:{process.info['public_port']}"


async def _stream_count(nats_url: str, namespace: str) -> int:
    nc = await connect(nats_url, "gateway-test")
    try:
        info = await nc.jetstream().stream_info(Namespace(namespace).stream("INTACCT_EVENTS"))
        return int(info.state.messages)
    finally:
        await nc.close()


async def test_only_authentic_fresh_events_are_published(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    process, base = _start(tmp_path, database_url, nats_url, unique)
    token = webhooks.url_token(WEBHOOK_SECRET, "acct-1")
    secret = webhooks.signing_secret(WEBHOOK_SECRET, "acct-1")
    xml = {"Content-Type": "application/xml"}
    try:
        async with aiohttp.ClientSession() as http:

            async def post(
                path: str, body: bytes = BODY, headers: dict[str, str] | None = None
            ) -> tuple[int, Any]:
                async with http.post(
                    base + path, data=body, headers={**xml, **(headers or {})}
                ) as r:
                    return r.status, await r.json()

            status, body = await post(f"/v1/intacct/acct-1/{token}")
            assert (status, body["status"]) == (202, "accepted")
            status, body = await post(f"/v1/intacct/acct-1/{token}")  # replayed as is
            assert (status, body["status"]) == (200, "duplicate")
            status, body = await post(f"/v1/intacct/acct-2/{token}")  # another account's token
            assert status == 401
            assert "token" in body["error"]
            status, _ = await post("/v1/intacct/acct-1/" + "0" * 64)
            assert status == 401
            status, body = await post(
                "/v1/intacct/acct-1/signed", headers={"X-Arbridge-Delivery": "d1"}
            )
            assert status == 401
            assert "unsigned" in body["error"]
            stale = int(time.time()) - 3600
            status, body = await post(
                "/v1/intacct/acct-1/signed",
                headers={
                    "X-Arbridge-Delivery": "d1",
                    "X-Arbridge-Timestamp": str(stale),
                    "X-Arbridge-Signature": webhooks.sign(secret, stale, BODY),
                },
            )
            assert status == 401
            assert "stale" in body["error"]
            now = int(time.time())
            status, body = await post(
                "/v1/intacct/acct-1/signed",
                headers={
                    "X-Arbridge-Delivery": "d1",
                    "X-Arbridge-Timestamp": str(now),
                    "X-Arbridge-Signature": webhooks.sign(secret, now, BODY + b" "),
                },
            )
            assert status == 401
            assert "does not match" in body["error"]
            signed = {
                "X-Arbridge-Delivery": "d1",
                "X-Arbridge-Timestamp": str(now),
                "X-Arbridge-Signature": webhooks.sign(secret, now, SIGNED_BODY),
            }
            status, body = await post("/v1/intacct/acct-1/signed", SIGNED_BODY, signed)
            assert (status, body["status"]) == (202, "accepted")
            # A replay inside the window is stored once (JetStream deduplicates it).
            status, body = await post("/v1/intacct/acct-1/signed", SIGNED_BODY, signed)
            assert (status, body["status"]) == (200, "duplicate")
            status, body = await post(f"/v1/intacct/acct-1/{token}", body=b"x" * 5000)
            assert status == 413
            hostile = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
            status, body = await post(f"/v1/intacct/acct-1/{token}", body=hostile)
            assert status == 400
            assert "not allowed" in body["error"]
            status, body = await post(f"/v1/intacct/acct-1/{token}", body=b"<unclosed>")
            assert status == 400
        assert await _stream_count(nats_url, unique) == 2  # only the two authentic events
    finally:
        assert process.terminate() == 0


@pytest.mark.timeout(120)
async def test_503_when_the_event_cannot_be_stored(
    tmp_path: Path, database_url: str, private_nats: PrivateNats, unique: str
) -> None:
    process, base = _start(tmp_path, database_url, private_nats.url, unique)
    token = webhooks.url_token(WEBHOOK_SECRET, "acct-1")
    try:
        private_nats.stop()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/v1/intacct/acct-1/{token}",
                data=BODY,
                headers={"Content-Type": "application/xml"},
            ) as reply,
        ):
            assert reply.status == 503
            assert "retry" in (await reply.json())["error"]
        private_nats.start()
        deadline = time.monotonic() + 30
        status = 0
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline and status not in (200, 202):
                async with http.post(
                    f"{base}/v1/intacct/acct-1/{token}",
                    data=BODY,
                    headers={"Content-Type": "application/xml"},
                ) as reply:
                    status = reply.status
                if status not in (200, 202):
                    await asyncio.sleep(0.2)
        # The refused delivery may still have reached JetStream once NATS came back (the
        # client buffers while reconnecting): the sender's retry is then a duplicate. Either
        # way the event is stored exactly once.
        assert status in (200, 202)
        assert await _stream_count(private_nats.url, unique) == 1
    finally:
        process.kill()
