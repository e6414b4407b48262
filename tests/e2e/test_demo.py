"""`make demo` end to end: the command a newcomer runs first must tell the whole story."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import pytest

from arbridge_devinfra.infra import Infra
from arbridge_devinfra.suite import drop_streams
from tests.support.runtime_env import ROOT


@pytest.mark.timeout(600)
async def test_the_demo_tells_the_whole_story_and_cleans_up_after_itself(
    tmp_path: Path, infra: Infra, unique: str
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ARBRIDGE_ROOT": str(tmp_path),
        "DATABASE_URL": infra.database_url,
        "NATS_URL": infra.nats_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "arbridge_cli",
        "dev",
        "demo",
        "--name",
        unique,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 540)
    out, err = stdout.decode(), stderr.decode()
    try:
        assert process.returncode == 0, out[-4000:] + err[-2000:]
        # Each step of the story, in order.
        steps = [
            "1. Connect the sandbox company",
            "permissions granted 13 of 13",
            "2. The initial sync",
            "3. Smart events and deposit accounts",
            "4. A card on file and an 'on creation' rule",
            "5. An invoice created in Intacct, charged by the rule, applied in Intacct",
            "applied in Intacct: amount due 0.00",
            "6. The payment link of another invoice",
            "Summary",
        ]
        positions = [out.index(step) for step in steps]
        assert positions == sorted(positions)
        assert "[##############################]" in out  # the sync's progress, to the end
        # The summary's trace runs from the webhook to the posting of the payment.
        trace = out[out.index("trace of the charge") :]
        for span in (
            "gateway: POST /v1/intacct/{account_id}/{token}",
            "sync: intacct.events.demo process",
            "rules: rules.charge",
            "payments: arbridge.payments.v1.PaymentsService/ChargeInvoices",
            "payments: payments.post",
        ):
            assert span in trace, span
        # Every process it started stopped cleanly.
        stopped = next(line for line in out.splitlines() if line.startswith("services stopped"))
        assert stopped.count(": 0") == 7, stopped
        # No secret in what it printed but the sandboxes' own demo credentials.
        assert "4242424242424242" not in out
    finally:
        conn = await asyncpg.connect(infra.database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "arbridge_{unique}" WITH (FORCE)')
        finally:
            await conn.close()
        await drop_streams(infra.nats_url, unique)
