"""Connector: decode throughput of a 2,000-record ARINVOICE ``query`` page.

Beside ``xmltodict`` (what other Python Intacct clients parse with) and a bare
hardened lxml parse of the same bytes (the floor: no record objects built).
Targets: at least 3x xmltodict, within 2x of the bare parse.

This machine is a shared VM whose speed drifts from second to second, so the
four decoders take turns in short rounds (0.4 s each, seven rounds) and each
figure is the median of its rounds: the ratios compare decoders measured
side by side, not minutes apart. Every round's figure is in ``samples``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import xmltodict
from lxml import etree

from arbridge_intacct.response import StreamingResponseReader, parse_response
from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company
from arbridge_intacct_sandbox.sandbox import Sandbox
from arbridge_runtime.xml import safe_parser
from bench.sandbox_query import _request


def _page() -> bytes:
    sandbox = Sandbox()
    sandbox.add_sender("S", "P")
    sandbox.add_company(
        make_company(
            company_id="bench",
            user_id="u",
            user_password="pw",
            sender_id="S",
            spec=GeneratorSpec(customers=200, invoices=2000),
        )
    )
    reply = asyncio.run(sandbox.handle(_request(0), "http://x/ia/xml/xmlgw.phtml"))
    assert b'count="2000"' in reply.body
    return reply.body


def _rate(fn: Callable[[], Any], records: int, seconds: float = 2.0) -> float:
    fn()
    runs = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        runs += 1
    return records * runs / (time.perf_counter() - started)


def _streaming(body: bytes) -> int:
    reader = StreamingResponseReader(record_tag="ARINVOICE")
    count = 0
    for start in range(0, len(body), 65536):
        count += len(reader.feed(body[start : start + 65536]))
    count += len(reader.end())
    reader.close()
    return count


async def run(rounds: int = 7, seconds: float = 0.4) -> dict[str, Any]:
    body = await asyncio.to_thread(_page)
    records = 2000
    assert _streaming(body) == records
    decoders: dict[str, Callable[[], Any]] = {
        "streaming": lambda: _streaming(body),
        "whole": lambda: parse_response(body),
        "xmltodict": lambda: xmltodict.parse(body),
        "bare": lambda: etree.fromstring(body, safe_parser()),
    }
    samples: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, decode in decoders.items():
            samples[name].append(_rate(decode, records, seconds))
    streaming, whole, xmltodict_rate, bare = (
        statistics.median(samples[name]) for name in ("streaming", "whole", "xmltodict", "bare")
    )
    return {
        "name": "decode_arinvoice_page",
        "params": {"records": records, "bytes": len(body)},
        "arbridge_streaming_records_per_second": round(streaming),
        "arbridge_whole_document_records_per_second": round(whole),
        "xmltodict_records_per_second": round(xmltodict_rate),
        "bare_lxml_parse_records_per_second": round(bare),
        "vs_xmltodict": round(streaming / xmltodict_rate, 2),
        "bare_parse_over_arbridge": round(bare / streaming, 2),
        "bare_parse_over_arbridge_whole_document": round(bare / whole, 2),
        "samples": {name: [round(v) for v in values] for name, values in samples.items()},
    }


if __name__ == "__main__":
    print(asyncio.run(run()))
