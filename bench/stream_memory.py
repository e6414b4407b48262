"""Connector client: peak memory while streaming 200,000 invoices stays flat.

The sandbox runs as its own process (so its data does not count); this
process streams every invoice through ``IntacctClient.stream_query`` and
samples its resident memory after each page. Flat means the last samples
are no higher than the early ones plus a page's worth.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from arbridge_intacct.client import Credentials, IntacctClient


async def run(invoices: int = 200_000) -> dict[str, Any]:
    ready = Path(tempfile.mkdtemp()) / "ready.json"
    sandbox = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "arbridge_intacct_sandbox",
        "--port",
        "0",
        "--customers",
        "5000",
        "--invoices",
        str(invoices),
        "--ready-file",
        str(ready),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            if time.monotonic() > deadline or sandbox.returncode is not None:
                raise RuntimeError("the sandbox did not start")
            await asyncio.sleep(0.2)
        info = json.loads(ready.read_text())
        me = psutil.Process(os.getpid())
        samples: list[float] = []
        count = 0
        started = time.perf_counter()
        async with aiohttp.ClientSession() as http:
            client = IntacctClient(
                http,
                Credentials(
                    info["company_id"],
                    info["user_id"],
                    info["user_password"],
                    info["sender_id"],
                    info["sender_password"],
                ),
                endpoint=info["endpoint"],
            )
            async for _data, records in client.stream_query(
                "ARINVOICE",
                [
                    "RECORDNO",
                    "RECORDID",
                    "CUSTOMERID",
                    "STATE",
                    "TRX_TOTALDUE",
                    "CURRENCY",
                    "WHENDUE",
                    "WHENMODIFIED",
                ],
            ):
                count += len(records)
                samples.append(me.memory_info().rss / 2**20)
        seconds = time.perf_counter() - started
    finally:
        sandbox.terminate()
        await sandbox.wait()
    tenth = max(1, len(samples) // 10)
    return {
        "name": "stream_memory",
        "params": {"invoices": invoices, "page_size": 2000},
        "records": count,
        "records_per_second": round(count / seconds),
        "rss_mib_after_first_tenth": round(max(samples[:tenth]), 1),
        "rss_mib_peak": round(max(samples), 1),
        "rss_mib_last": round(samples[-1], 1),
        "growth_mib_after_first_tenth": round(max(samples) - max(samples[:tenth]), 1),
    }


if __name__ == "__main__":
    print(asyncio.run(run()))
