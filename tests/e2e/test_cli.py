"""The ``arbridge`` operator commands against the running services, as a platform engineer
types them: tables for people, ``--json`` for scripts, exit codes that say what happened."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TOKEN
from tests.support.payments import (
    Payer,
    deposit_everywhere,
    open_invoices_by_customer,
    synced_payments_suite,
)
from tests.support.suite import Suite


def _cli(suite: Suite, *argv: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ARBRIDGE_SERVICE_TOKEN": token,
        "ARBRIDGE_CONNECTOR_TARGET": suite.target("connector"),
        "ARBRIDGE_SYNC_TARGET": suite.target("sync"),
        "ARBRIDGE_PAYMENTS_TARGET": suite.target("payments"),
        "ARBRIDGE_RULES_TARGET": suite.target("rules"),
    }
    return subprocess.run(
        [sys.executable, "-m", "arbridge_cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _cli_async(
    suite: Suite, *argv: str, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, suite, *argv, token=token)


@pytest.mark.timeout(300)
async def test_operators_drive_accounts_rules_links_charges_and_syncs_from_the_terminal(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=8,
            invoices=60,
            services=("connector", "sync", "payments", "rules"),
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        run = _cli_async
        permissions = await run(suite, "accounts", "permissions", "acme", "--json")
        assert permissions.returncode == 0, permissions.stderr
        assert json.loads(permissions.stdout)["all_granted"] is True
        usage = await run(suite, "accounts", "usage", "acme")
        assert usage.returncode == 0
        assert "readByQuery" in usage.stdout or "query" in usage.stdout
        assert "total API calls:" in usage.stdout

        by_customer = await open_invoices_by_customer(suite, "acme")
        customer = max(by_customer, key=lambda c: len(by_customer[c]))
        invoice, other = by_customer[customer][0], by_customer[customer][1]
        payer = Payer(suite, http, suite.target("payments"))
        await deposit_everywhere(payer, suite)
        await payer.add_card(customer, "4242424242424242")

        # A rule from a JSON file, listed, previewed; an invoice explained.
        rule_file = tmp_path / "rule.json"
        rule_file.write_text(
            json.dumps(
                {
                    "name": "due date",
                    "enabled": True,
                    "priority": 5,
                    "timing": {"trigger": "TIMING_TRIGGER_ON_DUE_DATE", "timeOfDay": "09:00"},
                    "conditions": {"customerIds": [customer]},
                }
            )
        )
        created = await run(suite, "rules", "create", "acme", str(rule_file), "--json")
        assert created.returncode == 0, created.stderr
        rule_id = json.loads(created.stdout)["rule"]["rule_id"]
        listed = await run(suite, "rules", "list", "acme")
        assert rule_id in listed.stdout
        assert "due date" in listed.stdout
        preview = await run(suite, "rules", "preview", "acme", "--rule", rule_id)
        assert preview.returncode == 0, preview.stderr
        assert "open invoice(s) would be charged" in preview.stdout
        explained = await run(suite, "rules", "explain", "acme", invoice.record_no)
        assert explained.returncode == 0, explained.stderr
        assert f"invoice {invoice.record_no}:" in explained.stdout
        bad_rule = tmp_path / "bad.json"
        bad_rule.write_text("{not json")
        refused = await run(suite, "rules", "create", "acme", str(bad_rule))
        assert refused.returncode == 2
        assert "not a rule in JSON" in refused.stderr

        # A link, a charge (once per key), a refund.
        link = await run(suite, "links", "create", "acme", customer, "--invoice", invoice.record_no)
        assert link.returncode == 0, link.stderr
        assert "/l/lk_" in link.stdout
        amount = "1.00"
        charge = await run(
            suite,
            "charges",
            "create",
            "acme",
            customer,
            "--invoice",
            f"{other.record_no}:{amount}",
            "--currency",
            other.currency,
            "--key",
            "cli-1",
            "--json",
        )
        assert charge.returncode == 0, charge.stderr
        answer = json.loads(charge.stdout)
        assert answer["charge"]["state"] == "CHARGE_STATE_SUCCEEDED"
        charge_id = answer["charge"]["charge_id"]
        again = await run(
            suite,
            "charges",
            "create",
            "acme",
            customer,
            "--invoice",
            f"{other.record_no}:{amount}",
            "--currency",
            other.currency,
            "--key",
            "cli-1",
        )
        assert again.returncode == 0
        assert charge_id in again.stdout
        assert "the answer of an earlier request with this key" in again.stdout
        # Once Intacct has the payment, a refund is listed for someone to reverse there.
        for _ in range(150):
            shown = await run(suite, "charges", "get", "acme", charge_id, "--json")
            if "POSTING_STATE_POSTED" in shown.stdout:
                break
            await asyncio.sleep(0.2)
        assert "POSTING_STATE_POSTED" in shown.stdout, shown.stdout
        refund = await run(
            suite, "charges", "refund", "acme", charge_id, "--amount", "0.40", "--key", "cli-r1"
        )
        assert refund.returncode == 0, refund.stderr
        assert "partially_refunded" in refund.stdout
        # A held refund's resolution: sent or not sent must be said; a settled refund
        # has nothing to resolve.
        unsaid = await run(suite, "charges", "resolve-refund", "acme", "rf_nope")
        assert unsaid.returncode == 2
        assert "--sent" in unsaid.stderr
        unknown = await run(suite, "charges", "resolve-refund", "acme", "rf_nope", "--not-sent")
        assert unknown.returncode == 1
        assert "NOT_FOUND" in unknown.stderr
        assert "rf_nope" in unknown.stderr

        # Clear errors and exit codes.
        missing = await run(suite, "charges", "get", "acme", "ch_nope")
        assert missing.returncode == 1
        assert "NOT_FOUND" in missing.stderr
        assert "ch_nope" in missing.stderr
        no_token = await run(suite, "rules", "list", "acme", token="")
        assert no_token.returncode == 2
        assert "ARBRIDGE_SERVICE_TOKEN" in no_token.stderr
        for _ in range(150):
            unsynced = await run(suite, "unsynced", "list", "acme")
            if "reversal_needed" in unsynced.stdout:
                break
            await asyncio.sleep(0.2)
        assert unsynced.returncode == 0
        assert "to_intacct  reversal_needed  Refund rf_" in unsynced.stdout, unsynced.stdout

        # Sync Account: the estimate first, then (confirmed) watched to its end.
        unconfirmed = await run(suite, "sync", "start", "acme")
        assert unconfirmed.returncode == 2
        assert "API calls" in unconfirmed.stderr
        assert "--yes" in unconfirmed.stderr
        synced = await run(suite, "sync", "start", "acme", "--yes", "--watch")
        assert synced.returncode == 0, synced.stderr
        assert "succeeded:" in synced.stdout
        assert "records" in synced.stderr  # the progress bar
