"""Auto-payment rules managed inside Intacct (the BlueSnapARRule custom object), synced both
ways with the rules service: in force when created there, edits in arbridge shown there,
refusals and conflicts reported on both sides."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf import field_mask_pb2

from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import to_minor
from tests.conftest import TOKEN
from tests.e2e.test_rules import SERVICES, _create_invoice, _customers_with_currency, _rule
from tests.support.payments import (
    Payer,
    deposit_everywhere,
    eventually,
    intacct_values,
    synced_payments_suite,
)
from tests.support.suite import Suite, install_smart_events, sandbox_record

RULES = "bluesnaparrule"


async def _records(http: aiohttp.ClientSession, suite: Suite) -> Any:
    return await intacct_values(http, suite.sandbox_admin, suite.sandbox["company_id"], RULES)


@pytest.mark.timeout(300)
async def test_rules_kept_in_intacct_are_in_force_and_arbridge_edits_reach_intacct(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=12,
            invoices=100,
            services=SERVICES,
            service_extra={
                "ARBRIDGE_RULES_TICK_SECONDS": "0.2",
                # Reads come from smart events (and rule changes in arbridge), not the poll.
                "ARBRIDGE_RULES_INTACCT_POLL_SECONDS": "3600",
            },
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        payer = Payer(suite, http, suite.target("payments"))
        await install_smart_events(http, suite)
        await deposit_everywhere(payer, suite)
        (customer, currency), *_ = await _customers_with_currency(suite)
        await payer.add_card(customer, "4242424242424242")

        # 1. A rule created in Intacct is in force in arbridge, and says so in Intacct.
        record = await sandbox_record(
            http,
            suite,
            RULES,
            {
                "name": "Charge new invoices (kept in Intacct)",
                "enabled": "true",
                "priority": "5",
                "customerids": customer,
                "currencies": currency,
                "trigger": "On creation or update",
                "amountmode": "Open balance",
            },
        )

        async def pulled() -> rules_pb2.Rule | None:
            listed = await rules.ListRules(rules_pb2.ListRulesRequest(account_id="acme"))
            return next((r for r in listed.rules if r.intacct_record_no == record), None)

        rule = await eventually(pulled, timeout=30)
        assert rule is not None, "the Intacct rule did not reach arbridge"
        assert rule.origin == rules_pb2.RULE_ORIGIN_INTACCT
        assert list(rule.conditions.customer_ids) == [customer]
        assert rule.timing.trigger == rules_pb2.TIMING_TRIGGER_ON_CREATE_OR_UPDATE

        async def status_written() -> Any:
            values = (await _records(http, suite))[record]
            return values if values.get("arbridgeid") == rule.rule_id else None

        values = await eventually(status_written, timeout=30)
        assert values is not None
        assert values["syncstatus"].startswith("In force in arbridge")

        # ... and it charges a matching invoice, applied in Intacct.
        created = await _create_invoice(http, suite, customer, "77.70", f"IR-{unique}")

        async def applied() -> bool:
            found = await intacct_values(
                http, suite.sandbox_admin, suite.sandbox["company_id"], "ARINVOICE"
            )
            return to_minor(found[created]["TRX_TOTALDUE"], currency) == 0

        assert await eventually(applied, timeout=60), "the Intacct rule did not charge"
        charges = await payer.stub.ListCharges(
            payments_pb2.ListChargesRequest(account_id="acme", invoice_record_no=created)
        )
        assert [c.rule_id for c in charges.charges] == [rule.rule_id]

        # 2. Edited in arbridge: the record in Intacct follows.
        await rules.UpdateRule(
            rules_pb2.UpdateRuleRequest(
                rule=rules_pb2.Rule(
                    account_id="acme", rule_id=rule.rule_id, name="Renamed in arbridge", priority=7
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["name", "priority"]),
            )
        )

        async def edited() -> Any:
            values = (await _records(http, suite))[record]
            return values if values["name"] == "Renamed in arbridge" else None

        values = await eventually(edited, timeout=30)
        assert values is not None, "the arbridge edit did not reach Intacct"
        assert values["priority"] == "7"

        # 3. A rule made in arbridge shows up in Intacct; one Intacct cannot hold does not.
        made = (
            await rules.CreateRule(
                rules_pb2.CreateRuleRequest(
                    rule=_rule(
                        "made in arbridge",
                        currency,
                        retry=rules_pb2.RetryPolicy(retry_after_days=[3, 5]),
                    )
                )
            )
        ).rule
        grouped = (
            await rules.CreateRule(
                rules_pb2.CreateRuleRequest(
                    rule=_rule("VIP only", currency, conditions={"customer_groups": ["VIP"]})
                )
            )
        ).rule

        async def mirrored() -> Any:
            found = {v.get("arbridgeid"): v for v in (await _records(http, suite)).values()}
            return found.get(made.rule_id)

        values = await eventually(mirrored, timeout=30)
        assert values is not None, "the arbridge rule did not show up in Intacct"
        assert values["retrydays"] == "3,5"
        assert values["trigger"] == "On creation or update"

        async def noted() -> rules_pb2.Rule | None:
            got = (
                await rules.GetRule(
                    rules_pb2.GetRuleRequest(account_id="acme", rule_id=grouped.rule_id)
                )
            ).rule
            return got if got.sync_note else None

        got = await eventually(noted, timeout=30)
        assert got is not None
        assert "customer groups" in got.sync_note
        assert not got.intacct_record_no

        # 4. A record arbridge cannot read as a rule is refused there, with the reason.
        bad = await sandbox_record(
            http,
            suite,
            RULES,
            {"name": "Whenever", "enabled": "true", "trigger": "Whenever it feels right"},
        )

        async def refused() -> Any:
            values = (await _records(http, suite))[bad]
            return values if values.get("syncstatus", "").startswith("Refused") else None

        values = await eventually(refused, timeout=30)
        assert values is not None, "the unreadable record was not refused"
        assert "trigger must be one of" in values["syncstatus"]
        listed = await rules.ListRules(rules_pb2.ListRulesRequest(account_id="acme"))
        assert all(r.intacct_record_no != bad for r in listed.rules)

        # A rule's record edited into something arbridge cannot read is refused there and
        # the rule stays as arbridge last accepted it; edited back, the record says the
        # rule is in force again (a write Intacct must not skip as a repeat).
        trigger = (await _records(http, suite))[record]["trigger"]
        await sandbox_record(http, suite, RULES, {"trigger": "Now and then"}, record_no=record)

        async def kept_refused() -> Any:
            values = (await _records(http, suite))[record]
            return values if values.get("syncstatus", "").startswith("Refused") else None

        values = await eventually(kept_refused, timeout=30)
        assert values is not None, "the unreadable edit was not refused"
        assert (
            f"arbridge keeps the rule as it last accepted it ({rule.rule_id})"
            in (values["syncstatus"])
        )
        kept = (
            await rules.GetRule(rules_pb2.GetRuleRequest(account_id="acme", rule_id=rule.rule_id))
        ).rule
        assert kept.timing.trigger == rules_pb2.TIMING_TRIGGER_ON_CREATE_OR_UPDATE
        await asyncio.sleep(1.2)  # Intacct's times are whole seconds
        await sandbox_record(http, suite, RULES, {"trigger": trigger}, record_no=record)

        async def back_in_force() -> bool:
            values = (await _records(http, suite))[record]
            return bool(values.get("syncstatus") == f"In force in arbridge as {rule.rule_id}")

        assert await eventually(back_in_force, timeout=30), "the record still says refused"

        # 5. Changed on both sides before they met: the later change wins, and both say so.
        company = suite.sandbox["company_id"]
        async with http.put(
            f"{suite.sandbox_admin}/companies/{company}/faults", json={"drop_smart_events": True}
        ) as reply:
            assert reply.status == 200
        await asyncio.sleep(2)  # events already on their way are taken first
        await sandbox_record(http, suite, RULES, {"priority": "11"}, record_no=record)
        await asyncio.sleep(1.2)  # Intacct's times are whole seconds
        unseen = (
            await rules.GetRule(rules_pb2.GetRuleRequest(account_id="acme", rule_id=rule.rule_id))
        ).rule
        assert unseen.priority == 7  # arbridge has not read the Intacct edit
        await rules.UpdateRule(
            rules_pb2.UpdateRuleRequest(
                rule=rules_pb2.Rule(account_id="acme", rule_id=rule.rule_id, priority=3),
                update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
            )
        )

        async def settled() -> Any:
            values = (await _records(http, suite))[record]
            return values if "conflict" in values.get("syncstatus", "") else None

        values = await eventually(settled, timeout=30)
        assert values is not None, "the conflict was not settled"
        assert values["priority"] == "3"  # arbridge's change was the later one
        assert "arbridge's change" in values["syncstatus"]
        final = (
            await rules.GetRule(rules_pb2.GetRuleRequest(account_id="acme", rule_id=rule.rule_id))
        ).rule
        assert final.priority == 3
        assert final.sync_note.startswith("conflict")

        # 6. Deleted in arbridge: the record is disabled in Intacct, and its echo does not
        # bring the rule back.
        await rules.DeleteRule(rules_pb2.DeleteRuleRequest(account_id="acme", rule_id=made.rule_id))

        async def disabled() -> Any:
            found = {v.get("arbridgeid"): v for v in (await _records(http, suite)).values()}
            values = found.get(made.rule_id) or {}
            return values if values.get("syncstatus") == "Deleted in arbridge" else None

        values = await eventually(disabled, timeout=30)
        assert values is not None, "the arbridge deletion did not reach Intacct"
        assert values["enabled"] == "false"

        # 7. Deleted in Intacct: the rule goes too (smart events flow again).
        async with http.put(
            f"{suite.sandbox_admin}/companies/{company}/faults", json={"drop_smart_events": False}
        ) as reply:
            assert reply.status == 200
        async with http.delete(
            f"{suite.sandbox_admin}/companies/{company}/records/{RULES}/{record}"
        ) as reply:
            assert reply.status == 200, await reply.text()

        async def gone() -> bool:
            listed = await rules.ListRules(rules_pb2.ListRulesRequest(account_id="acme"))
            return all(r.rule_id != rule.rule_id for r in listed.rules)

        assert await eventually(gone, timeout=30), "the rule deleted in Intacct is still in force"
        # ... and nothing re-creates the record from arbridge's side, nor brings back
        # the rule deleted in arbridge (the passes since have read its disabled record).
        await asyncio.sleep(1.5)
        assert record not in await _records(http, suite)
        listed = await rules.ListRules(rules_pb2.ListRulesRequest(account_id="acme"))
        assert made.rule_id not in {r.rule_id for r in listed.rules}
