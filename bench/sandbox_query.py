"""Intacct sandbox: records per second serving full 2,000-record ``query`` pages of ARINVOICE.

Measured two ways on one core: through the engine alone (XML in, XML out),
and over HTTP with a client on the same machine, plus the bytes per record
the sandbox sends. The sandbox must never be the bottleneck of an arbridge
benchmark, so this figure is the ceiling the connector benchmarks compare to.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company
from arbridge_intacct_sandbox.sandbox import Sandbox
from arbridge_intacct_sandbox.server import GATEWAY_PATH, build_app

FIELDS = [
    "RECORDNO",
    "RECORDID",
    "STATE",
    "CUSTOMERID",
    "CUSTOMERNAME",
    "DOCNUMBER",
    "DESCRIPTION",
    "TERMNAME",
    "WHENCREATED",
    "WHENPOSTED",
    "WHENDUE",
    "WHENPAID",
    "CURRENCY",
    "BASECURR",
    "TOTALENTERED",
    "TOTALPAID",
    "TOTALDUE",
    "TRX_TOTALENTERED",
    "TRX_TOTALPAID",
    "TRX_TOTALDUE",
    "MEGAENTITYID",
    "WHENMODIFIED",
    "TAX_AMOUNT",
    "MODULEKEY",
]


def _request(offset: int) -> bytes:
    select = "".join(f"<field>{f}</field>" for f in FIELDS)
    return (
        "<?xml version='1.0' encoding='UTF-8'?><request><control><senderid>S</senderid>"
        "<password>P</password><controlid>b</controlid><uniqueid>false</uniqueid>"
        "<dtdversion>3.0</dtdversion></control><operation><authentication><login>"
        "<userid>u</userid><companyid>bench</companyid><password>pw</password></login>"
        f"</authentication><content><function controlid='q'><query><object>ARINVOICE</object>"
        f"<select>{select}</select><orderby><order><field>RECORDNO</field><ascending/></order>"
        f"</orderby><pagesize>2000</pagesize><offset>{offset}</offset></query></function>"
        "</content></operation></request>"
    ).encode()


async def run(invoices: int = 20_000, pages: int = 20) -> dict[str, Any]:
    sandbox = Sandbox()
    sandbox.add_sender("S", "P")
    sandbox.add_company(
        make_company(
            company_id="bench",
            user_id="u",
            user_password="pw",
            sender_id="S",
            spec=GeneratorSpec(customers=500, invoices=invoices),
        )
    )
    offsets = [(i * 2000) % invoices for i in range(pages)]
    started = time.perf_counter()
    sizes = []
    for offset in offsets:
        reply = await sandbox.handle(_request(offset), "http://x" + GATEWAY_PATH)
        assert reply.status == 200
        assert b'count="2000"' in reply.body
        sizes.append(len(reply.body))
    engine_seconds = time.perf_counter() - started
    server = TestServer(build_app(sandbox), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            started = time.perf_counter()
            for offset in offsets:
                async with http.post(
                    f"http://127.0.0.1:{server.port}{GATEWAY_PATH}", data=_request(offset)
                ) as response:
                    body = await response.read()
                    assert b'count="2000"' in body
            http_seconds = time.perf_counter() - started
    finally:
        await server.close()
    records = pages * 2000
    return {
        "name": "sandbox_query_page",
        "params": {"invoices": invoices, "pages": pages, "page_size": 2000, "fields": len(FIELDS)},
        "engine_records_per_second": round(records / engine_seconds),
        "http_records_per_second": round(records / http_seconds),
        "bytes_per_record": round(sum(sizes) / records),
        "page_ms_p50_engine": round(engine_seconds / pages * 1000, 1),
    }


if __name__ == "__main__":
    pass
