"""Smart events, a public Intacct client unmodified, and the sandbox as a process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.intacct import COMPANY, SENDER, SENDER_PW, USER, USER_PW, live_sandbox

TEMPLATE = (
    "<event><object>ARINVOICE</object><recordno>{!ARINVOICE.RECORDNO!}</recordno>"
    "<customer>{!ARINVOICE.CUSTOMERID!}</customer><due>{!ARINVOICE.TRX_TOTALDUE!}</due>"
    "<description>{!ARINVOICE.DESCRIPTION!}</description></event>"
)


async def _receiver(statuses: list[int]) -> tuple[TestServer, list[bytes]]:
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        status = statuses.pop(0) if statuses else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server, received


async def _wait_log(live: object, want: int, timeout: float = 15) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    entries: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        _, body = await live.admin("GET", f"/sandbox/companies/{COMPANY}/smart-event-log")  # type: ignore[attr-defined]
        entries = body["entries"]
        if len([e for e in entries if e["status"] in ("delivered", "failed", "dropped")]) >= want:
            return entries
        await asyncio.sleep(0.05)
    return entries


async def test_smart_events_render_merge_fields_and_deliver() -> None:
    server, received = await _receiver([])
    try:
        async with live_sandbox() as live:
            status, _ = await live.admin(
                "POST",
                f"/sandbox/companies/{COMPANY}/smart-events",
                json={
                    "object": "ARINVOICE",
                    "actions": ["add", "set"],
                    "url": f"http://127.0.0.1:{server.port}/hook",
                    "body_template": TEMPLATE,
                    "content_type": "application/xml",
                },
            )
            assert status == 201
            status, made = await live.admin(
                "PUT",
                f"/sandbox/companies/{COMPANY}/records/ARINVOICE/{_first_invoice(live)}",
                json={"values": {"DESCRIPTION": "Fish & Chips <deluxe>"}},
            )
            assert status == 200
            entries = await _wait_log(live, 1)
            assert [e["status"] for e in entries] == ["delivered"]
            assert b"<description>Fish &amp; Chips &lt;deluxe&gt;</description>" in received[0]
            recordno = made["values"]["RECORDNO"]  # type: ignore[index]
            assert f"<recordno>{recordno}</recordno>".encode() in received[0]
    finally:
        await server.close()


def _first_invoice(live: object) -> int:
    return min(live.sandbox.companies[COMPANY].tables["ARINVOICE"].rows)  # type: ignore[attr-defined, no-any-return]


async def test_smart_events_retry_a_limited_number_of_times_and_can_be_dropped() -> None:
    server, received = await _receiver([500, 503, 500, 500, 500])
    try:
        async with live_sandbox() as live:
            await live.admin(
                "PUT",
                f"/sandbox/companies/{COMPANY}/faults",
                json={"smart_event_retry_delays": [0.05, 0.05, 0.05]},
            )
            await live.admin(
                "POST",
                f"/sandbox/companies/{COMPANY}/smart-events",
                json={
                    "object": "CUSTOMER",
                    "actions": ["add"],
                    "url": f"http://127.0.0.1:{server.port}/hook",
                    "body_template": "id={!CUSTOMER.CUSTOMERID!}",
                    "content_type": "application/x-www-form-urlencoded",
                },
            )
            await live.admin(
                "POST",
                f"/sandbox/companies/{COMPANY}/records/CUSTOMER",
                json={"values": {"CUSTOMERID": "EV 1", "NAME": "Evented"}},
            )
            entries = await _wait_log(live, 1)
            assert entries[0]["status"] == "failed"
            assert entries[0]["attempts"] == 4  # the first try and three retries
            assert received == [b"id=EV+1"] * 4
            await live.admin(
                "PUT", f"/sandbox/companies/{COMPANY}/faults", json={"drop_smart_events": True}
            )
            await live.admin(
                "POST",
                f"/sandbox/companies/{COMPANY}/records/CUSTOMER",
                json={"values": {"CUSTOMERID": "EV-2", "NAME": "Dropped"}},
            )
            entries = await _wait_log(live, 2)
            assert entries[-1]["status"] == "dropped"
            assert len(received) == 4
    finally:
        await server.close()


async def test_api_writes_fire_smart_events_too() -> None:
    server, received = await _receiver([])
    try:
        async with live_sandbox() as live:
            await live.admin(
                "POST",
                f"/sandbox/companies/{COMPANY}/smart-events",
                json={
                    "object": "ARINVOICE",
                    "actions": ["add", "set", "delete"],
                    "url": f"http://127.0.0.1:{server.port}/hook",
                    "body_template": TEMPLATE,
                },
            )
            root = await live.call(
                "<function controlid='i'><create_invoice><customerid>C-00002</customerid>"
                "<termname>N30</termname><invoiceitems><lineitem><glaccountno>4000</glaccountno>"
                "<amount>12.00</amount></lineitem></invoiceitems></create_invoice></function>"
            )
            key = root.findtext("operation/result/key")
            entries = await _wait_log(live, 1)
            assert entries[0]["action"] == "add"
            assert f"<recordno>{key}</recordno>".encode() in received[0]
    finally:
        await server.close()


def _sdk_session(endpoint: str) -> object:
    import sageintacctsdk.apis.api_base as api_base
    from sageintacctsdk import SageIntacctSDK

    original = api_base.ApiBase.__init__

    def with_endpoint(self: object, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        self._ApiBase__api_url = endpoint  # type: ignore[attr-defined]  # the one change: the endpoint

    api_base.ApiBase.__init__ = with_endpoint
    try:
        return SageIntacctSDK(
            sender_id=SENDER,
            sender_password=SENDER_PW,
            user_id=USER,
            company_id=COMPANY,
            user_password=USER_PW,
        )
    finally:
        api_base.ApiBase.__init__ = original


async def test_the_public_sageintacctsdk_works_unmodified() -> None:
    async with live_sandbox(customers=2100, invoices=4300) as live:
        company = live.sandbox.companies[COMPANY]
        sdk = await asyncio.to_thread(_sdk_session, live.endpoint)
        customers = await asyncio.to_thread(sdk.customers.get_all)  # type: ignore[attr-defined]

        def all_invoices() -> list[dict[str, object]]:
            out: list[dict[str, object]] = []
            for page in sdk.ar_invoices.get_all_generator():  # type: ignore[attr-defined]
                out.extend(page)
            return out

        invoices = await asyncio.to_thread(all_invoices)
    assert len(customers) == len(company.tables["CUSTOMER"].rows) == 2100
    assert len(invoices) == len(company.tables["ARINVOICE"].rows) == 4300
    assert len({i["RECORDNO"] for i in invoices}) == 4300
    by_key = {int(str(i["RECORDNO"])): i for i in invoices}
    sample = company.tables["ARINVOICE"].rows[min(by_key)]
    assert by_key[min(by_key)]["TOTALDUE"] == sample.values["TOTALDUE"]


@pytest.mark.timeout(60)
def test_the_command_serves_prints_the_endpoint_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arbridge_cli",
            "sandbox",
            "intacct",
            "--port",
            "0",
            "--customers",
            "5",
            "--invoices",
            "10",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["endpoint"].endswith("/ia/xml/xmlgw.phtml")
        assert info["sender_id"] == "Pscore"
        assert info["user_id"] == "xmlgw-armatic"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
        assert process.returncode == 0
        assert info["endpoint"] in out
    finally:
        process.kill()
