"""Auto-payment rules end to end: an invoice created in Intacct is charged once by its rule.

The chain is the real one: the sandbox Intacct's smart event -> webhook
gateway -> sync (AR store, `ar.invoice.created`) -> rules (evaluation,
schedule, charge) -> payments -> card gateway sandbox -> posted back to
Intacct as an applied AR payment.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import grpc
import pytest

from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import to_minor
from tests.conftest import TOKEN
from tests.support.payments import (
    Payer,
    deposit_everywhere,
    eventually,
    gateway_transactions,
    intacct_values,
    open_invoices_by_customer,
    synced_payments_suite,
)
from tests.support.runtime_env import ServiceProcess, service_env, start_process
from tests.support.suite import Suite, install_smart_events

SERVICES = ("connector", "sync", "payments", "gateway", "rules")


async def _create_invoice(
    http: aiohttp.ClientSession, suite: Suite, customer: str, amount: str, number: str
) -> str:
    """An AR invoice created in the Intacct UI; returns its RECORDNO."""
    due = date.today() + timedelta(days=30)
    body = (
        f"<create_invoice><customerid>{customer}</customerid>"
        f"<datedue><year>{due.year}</year><month>{due.month}</month><day>{due.day}</day>"
        f"</datedue><invoiceno>{number}</invoiceno><invoiceitems><lineitem>"
        f"<glaccountno>4000</glaccountno><amount>{amount}</amount></lineitem>"
        "</invoiceitems></create_invoice>"
    )
    async with http.post(
        f"{suite.sandbox_admin}/companies/{suite.sandbox['company_id']}/ui",
        data=body,
        headers={"Content-Type": "application/xml"},
    ) as reply:
        text = await reply.text()
        assert reply.status == 200, text
        data = await reply.json()
    match = re.search(r"<key>(\d+)</key>", str(data.get("body", "")))
    assert match, text
    return match.group(1)


def _rule(name: str, currency: str, **extra: Any) -> rules_pb2.Rule:
    return rules_pb2.Rule(
        account_id="acme",
        name=name,
        enabled=True,
        priority=extra.pop("priority", 10),
        conditions=rules_pb2.Conditions(currencies=[currency], **extra.pop("conditions", {})),
        timing=rules_pb2.Timing(trigger=rules_pb2.TIMING_TRIGGER_ON_CREATE_OR_UPDATE),
        amount=rules_pb2.AmountPolicy(mode=rules_pb2.AMOUNT_MODE_OPEN_BALANCE),
        **extra,
    )


async def _customers_with_currency(suite: Suite) -> list[tuple[str, str]]:
    """(customer id, currency) of customers whose invoices are in one currency with a bank."""
    sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
    banks = {
        b.currency
        for b in (
            await sync.ListBankAccounts(sync_pb2.ListBankAccountsRequest(account_id="acme"))
        ).bank_accounts
    }
    found = []
    for customer, invoices in sorted((await open_invoices_by_customer(suite, "acme")).items()):
        currencies = {i.currency for i in invoices}
        if len(currencies) == 1 and currencies <= banks:
            found.append((customer, currencies.pop()))
    return found


@pytest.mark.timeout(420)
async def test_an_invoice_created_in_intacct_is_charged_by_its_rule_and_explained(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=12,
            invoices=120,
            services=SERVICES,
            service_extra={"ARBRIDGE_RULES_TICK_SECONDS": "0.2"},
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        payer = Payer(suite, http, suite.target("payments"))
        await install_smart_events(http, suite)
        await deposit_everywhere(payer, suite)
        candidates = await _customers_with_currency(suite)
        (good, currency), (bad, bad_currency), (opted, _) = candidates[:3]
        await payer.add_card(good, "4242424242424242")
        await payer.add_card(bad, "4000000000000002")  # declines
        await payer.add_card(opted, "4242424242424242")

        # Bad rules are refused with every problem named.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rules.CreateRule(
                rules_pb2.CreateRuleRequest(
                    rule=rules_pb2.Rule(
                        account_id="acme",
                        timing=rules_pb2.Timing(time_of_day="25:00"),
                        retry=rules_pb2.RetryPolicy(retry_after_days=[0]),
                    )
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for words in ("name must be", "timing.trigger", "HH:MM", "retry_after_days"):
            assert words in str(err.value.details())

        rule = (
            await rules.CreateRule(
                rules_pb2.CreateRuleRequest(
                    rule=_rule(
                        "charge new invoices",
                        currency,
                        conditions={"customer_ids": [good, opted]},
                    )
                )
            )
        ).rule
        retrying = (
            await rules.CreateRule(
                rules_pb2.CreateRuleRequest(
                    rule=_rule(
                        "retry twice",
                        bad_currency,
                        priority=20,
                        conditions={"customer_ids": [bad]},
                        retry=rules_pb2.RetryPolicy(retry_after_days=[3, 5]),
                    )
                )
            )
        ).rule
        await rules.SetCustomerAutoPay(
            rules_pb2.SetCustomerAutoPayRequest(account_id="acme", customer_id=opted, enabled=False)
        )
        # A dry run of a draft rule: the open invoices it would charge, when and how much.
        by_record = {
            i.record_no: i
            for found in (await open_invoices_by_customer(suite, "acme")).values()
            for i in found
        }
        # Only customers with a method on file and auto-pay on; only times still ahead.
        expected = [
            i
            for i in by_record.values()
            if i.customer_id in (good, bad)  # opted is opted out
            and i.currency == currency
            and datetime.combine(
                date.fromisoformat(i.due_date), datetime.min.time().replace(hour=9)
            ).replace(tzinfo=ZoneInfo("America/Los_Angeles"))
            > datetime.now(UTC)
        ]

        # The rules service learns of the cards just added from payments' events, so
        # its preview catches up with them shortly after.
        async def previewed() -> rules_pb2.PreviewRuleResponse:
            return await rules.PreviewRule(
                rules_pb2.PreviewRuleRequest(
                    account_id="acme",
                    draft=rules_pb2.Rule(
                        name="on the due date at 09:00",
                        timing=rules_pb2.Timing(
                            trigger=rules_pb2.TIMING_TRIGGER_ON_DUE_DATE, time_of_day="09:00"
                        ),
                        conditions=rules_pb2.Conditions(currencies=[currency]),
                    ),
                    limit=500,
                )
            )

        preview = await previewed()
        deadline = time.monotonic() + 15
        while preview.matching_invoices != len(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            preview = await previewed()
        assert preview.matching_invoices == len(expected) > 0
        zone = ZoneInfo("America/Los_Angeles")
        for item in preview.items:
            invoice = by_record[item.invoice_record_no]
            local = item.charge_at.ToDatetime(tzinfo=UTC).astimezone(zone)
            assert (str(local.date()), local.hour, local.minute) == (invoice.due_date, 9, 0)
            assert item.amount.amount_minor == invoice.due.amount_minor

        # Existing invoices are not swept up by a new "on creation" rule.
        old = (await open_invoices_by_customer(suite, "acme"))[good][0]
        explained = await rules.ExplainInvoice(
            rules_pb2.ExplainInvoiceRequest(account_id="acme", invoice_record_no=old.record_no)
        )
        assert explained.outcome == rules_pb2.EXPLANATION_OUTCOME_WILL_NOT_CHARGE
        assert "passed before the rule was created" in explained.verdicts[0].detail

        # Three invoices created in Intacct now.
        started = time.monotonic()
        created = await _create_invoice(http, suite, good, "123.45", f"RULE-{unique}-1")
        declined = await _create_invoice(http, suite, bad, "67.89", f"RULE-{unique}-2")
        skipped = await _create_invoice(http, suite, opted, "10.00", f"RULE-{unique}-3")

        async def applied() -> bool:
            found = await intacct_values(
                http, suite.sandbox_admin, suite.sandbox["company_id"], "ARINVOICE"
            )
            return to_minor(found[created]["TRX_TOTALDUE"], currency) == 0

        assert await eventually(applied, timeout=60), "the auto charge was not applied in Intacct"
        lag = time.monotonic() - started
        print(f"Intacct change to applied payment: {lag * 1000:.0f} ms")
        charges = (
            await payer.stub.ListCharges(
                payments_pb2.ListChargesRequest(account_id="acme", invoice_record_no=created)
            )
        ).charges
        assert len(charges) == 1
        assert charges[0].source == payments_pb2.CHARGE_SOURCE_RULE
        assert charges[0].rule_id == rule.rule_id
        assert charges[0].amount.amount_minor == to_minor("123.45", currency)
        explained = await rules.ExplainInvoice(
            rules_pb2.ExplainInvoiceRequest(account_id="acme", invoice_record_no=created)
        )
        assert explained.outcome == rules_pb2.EXPLANATION_OUTCOME_CHARGED
        assert charges[0].charge_id in explained.summary
        assert [a.succeeded for a in explained.attempts] == [True]

        # The opted-out customer's invoice is not charged, and the reason says so.
        async def explained_skip() -> Any:
            try:
                return await rules.ExplainInvoice(
                    rules_pb2.ExplainInvoiceRequest(account_id="acme", invoice_record_no=skipped)
                )
            except grpc.aio.AioRpcError:
                return None

        why = await eventually(explained_skip, timeout=30)
        assert why.outcome == rules_pb2.EXPLANATION_OUTCOME_WILL_NOT_CHARGE
        assert why.blockers == [f"customer {opted} opted out of auto-pay"]

        # The declining card: attempt 1 fails and a retry is scheduled 3 days later.
        db = await asyncpg.connect(database_url)
        schema = f'"{unique}_rules"'
        try:

            async def schedule_row() -> asyncpg.Record | None:
                row = await db.fetchrow(
                    f"SELECT * FROM {schema}.schedule WHERE invoice_record_no = $1", declined
                )
                return row if row is not None and row["attempt"] == 2 else None

            row = await eventually(schedule_row, timeout=60)
            assert row is not None, "the failed attempt was not followed by a retry"
            assert row["state"] == "scheduled"
            waited = row["charge_at"] - datetime.now(UTC)
            assert timedelta(days=2, hours=23) < waited <= timedelta(days=3)
            why = await rules.ExplainInvoice(
                rules_pb2.ExplainInvoiceRequest(account_id="acme", invoice_record_no=declined)
            )
            assert why.outcome == rules_pb2.EXPLANATION_OUTCOME_WILL_CHARGE
            assert "failed attempt" in why.summary
            assert [a.succeeded for a in why.attempts] == [False]
            assert "declined" in why.attempts[0].failure_reason.lower()

            # Three days pass (the schedule is moved, not the clock): attempt 2 fails too,
            # then five days: attempt 3, the last the rule allows; then it stops.
            for expected_attempt in (3, 4):
                await db.execute(
                    f"UPDATE {schema}.schedule SET charge_at = now() WHERE invoice_record_no = $1",
                    declined,
                )

                async def moved_on(expected: int = expected_attempt) -> asyncpg.Record | None:
                    row = await db.fetchrow(
                        f"SELECT * FROM {schema}.schedule WHERE invoice_record_no = $1", declined
                    )
                    done = row["attempt"] == expected or row["state"] == "stopped"
                    return row if done else None

                row = await eventually(moved_on, timeout=60)
                assert row is not None
            assert row["state"] == "stopped"
            why = await rules.ExplainInvoice(
                rules_pb2.ExplainInvoiceRequest(account_id="acme", invoice_record_no=declined)
            )
            assert why.outcome == rules_pb2.EXPLANATION_OUTCOME_FAILED
            assert len(why.attempts) == 3
            assert "stopped after 3 failed attempt" in why.summary
        finally:
            await db.close()
        declines = [
            t
            for t in await gateway_transactions(http, suite)
            if t["processingInfo"]["processingStatus"] == "declined"
        ]
        assert len(declines) == 3  # once per attempt, never more
        assert retrying.rule_id


async def _rules_replica(
    tmp_path: Path,
    suite: Suite,
    database_url: str,
    nats_url: str,
    unique: str,
    name: str,
    faults: str = "",
) -> ServiceProcess:
    """Another rules process on the same schema and consumers (a second replica)."""
    ready = tmp_path / f"rules-{name}.ready"
    env = service_env(
        database_url=database_url,
        nats_url=nats_url,
        namespace=unique,
        schema=f"{unique}_rules",
        token=TOKEN,
        ready_file=ready,
        ARBRIDGE_SYNC_TARGET=suite.target("sync"),
        ARBRIDGE_PAYMENTS_TARGET=suite.target("payments"),
        ARBRIDGE_RULES_TICK_SECONDS="0.1",
        ARBRIDGE_RULES_LEASE_SECONDS="3",
        ARBRIDGE_FAULTS=faults,
    )
    return await asyncio.to_thread(
        start_process, ["-m", "arbridge_rules"], env, ready, tmp_path / f"rules-{name}.log"
    )


@pytest.mark.timeout(420)
async def test_replicas_killed_while_charging_still_charge_every_due_invoice_once(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=12,
            invoices=60,
            services=SERVICES,
            service_extra={
                "ARBRIDGE_RULES_TICK_SECONDS": "0.1",
                "ARBRIDGE_RULES_LEASE_SECONDS": "3",
            },
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        payer = Payer(suite, http, suite.target("payments"))
        await install_smart_events(http, suite)
        await deposit_everywhere(payer, suite)
        candidates = await _customers_with_currency(suite)
        currency = candidates[0][1]
        customers = [c for c, cur in candidates if cur == currency][:4]
        for customer in customers:
            await payer.add_card(customer, "4242424242424242")
        await rules.CreateRule(
            rules_pb2.CreateRuleRequest(rule=_rule("charge everything new", currency))
        )
        # Replicas that die at each point of a charge: after claiming it, after recording
        # the attempt, and after payments charged (before the outcome is recorded).
        doomed = [
            await _rules_replica(tmp_path, suite, database_url, nats_url, unique, f"d{n}", point)
            for n, point in enumerate(
                ("rules.after_claim:kill", "rules.after_attempt:kill", "rules.after_charge:kill")
            )
        ]
        survivor = await _rules_replica(tmp_path, suite, database_url, nats_url, unique, "ok")
        try:
            created = []
            for n in range(24):
                customer = customers[n % len(customers)]
                amount = f"{10 + n}.{n:02d}"
                created.append(
                    (
                        await _create_invoice(http, suite, customer, amount, f"RR-{unique}-{n}"),
                        amount,
                    )
                )

            async def all_charged() -> bool:
                found = await intacct_values(
                    http, suite.sandbox_admin, suite.sandbox["company_id"], "ARINVOICE"
                )
                return all(to_minor(found[r]["TRX_TOTALDUE"], currency) == 0 for r, _ in created)

            assert await eventually(all_charged, timeout=120), "not every due invoice was charged"
            died = [p for p in doomed if p.process.poll() is not None]
            assert died, "no replica was killed while charging"
            assert survivor.process.poll() is None
            made = await gateway_transactions(http, suite)
            ours = {
                t["merchantTransactionId"]
                for t in made
                if t["processingInfo"]["processingStatus"] == "success"
            }
            per_invoice: dict[str, int] = {}
            for record_no, amount in created:
                charges = (
                    await payer.stub.ListCharges(
                        payments_pb2.ListChargesRequest(
                            account_id="acme", invoice_record_no=record_no
                        )
                    )
                ).charges
                per_invoice[record_no] = len(charges)
                assert charges[0].amount.amount_minor == to_minor(amount, currency)
                assert charges[0].charge_id in ours
            assert set(per_invoice.values()) == {1}, per_invoice
            assert len(ours) == len(created)
            # Every schedule row ends done. A replica killed after payments charged leaves
            # its row charging until the lease lapses (3 s here) and another claims it and
            # reads the charge back; payments may post the invoice paid before that.
            db = await asyncpg.connect(database_url)
            try:

                async def schedule_states() -> dict[str, int]:
                    rows = await db.fetch(
                        f'SELECT state, count(*) FROM "{unique}_rules".schedule GROUP BY state'
                    )
                    return {r["state"]: r["count"] for r in rows}

                async def all_done() -> bool:
                    return await schedule_states() == {"done": len(created)}

                assert await eventually(all_done, timeout=30), await schedule_states()
            finally:
                await db.close()
        finally:
            for process in [*doomed, survivor]:
                process.terminate()


@pytest.mark.timeout(300)
async def test_a_rule_charges_what_a_payment_intacct_does_not_show_yet_left(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """A payer paid part of an invoice, and the payment is not posted yet (no deposit
    account), so the AR store still shows the whole balance. The rule's charge, decided
    from the AR store, takes what is left rather than being refused as too much."""
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=12,
            invoices=60,
            services=SERVICES,
            service_extra={"ARBRIDGE_RULES_TICK_SECONDS": "0.2"},
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        payer = Payer(suite, http, suite.target("payments"))
        await install_smart_events(http, suite)
        (customer, currency), *_ = await _customers_with_currency(suite)
        await payer.add_card(customer, "4242424242424242")

        async def auto_pay(enabled: bool) -> None:
            await rules.SetCustomerAutoPay(
                rules_pb2.SetCustomerAutoPayRequest(
                    account_id="acme", customer_id=customer, enabled=enabled
                )
            )

        await auto_pay(False)
        rule = (
            await rules.CreateRule(
                rules_pb2.CreateRuleRequest(
                    rule=_rule(
                        "charge new invoices", currency, conditions={"customer_ids": [customer]}
                    )
                )
            )
        ).rule
        created = await _create_invoice(http, suite, customer, "100.00", f"PART-{unique}")

        async def stored() -> Any:
            try:
                return await sync.GetInvoice(
                    sync_pb2.GetInvoiceRequest(account_id="acme", record_no=created)
                )
            except grpc.aio.AioRpcError:
                return None

        assert await eventually(stored, timeout=30), "the new invoice did not reach the AR store"
        part = (await payer.charge("by-link", customer, [(created, 4000)], currency)).charge
        assert part.state == payments_pb2.CHARGE_STATE_SUCCEEDED
        await auto_pay(True)

        async def by_rule() -> list[payments_pb2.Charge] | None:
            charges = (
                await payer.stub.ListCharges(
                    payments_pb2.ListChargesRequest(account_id="acme", invoice_record_no=created)
                )
            ).charges
            made = [c for c in charges if c.source == payments_pb2.CHARGE_SOURCE_RULE]
            return made or None

        made = await eventually(by_rule, timeout=60)
        assert made is not None, await rules.ExplainInvoice(
            rules_pb2.ExplainInvoiceRequest(account_id="acme", invoice_record_no=created)
        )
        assert [(c.rule_id, c.state, c.amount.amount_minor) for c in made] == [
            (rule.rule_id, payments_pb2.CHARGE_STATE_SUCCEEDED, to_minor("60.00", currency))
        ]


@pytest.mark.timeout(300)
async def test_an_invoice_paid_between_the_check_and_the_charge_is_cleared_not_failed(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """A replica dies after checking the invoice and recording its attempt; before the
    attempt is charged, the invoice is paid in Intacct. Payments refuses the charge (the
    invoice is paid): the schedule is cleared, not failed, retried or stopped."""
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=12,
            invoices=60,
            services=("connector", "sync", "payments", "gateway"),
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        doomed = await _rules_replica(
            tmp_path, suite, database_url, nats_url, unique, "doomed", "rules.after_attempt:kill"
        )
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(doomed.grpc_target, TOKEN))
        payer = Payer(suite, http, suite.target("payments"))
        await install_smart_events(http, suite)
        (customer, currency), *_ = await _customers_with_currency(suite)
        await payer.add_card(customer, "4242424242424242")
        await rules.CreateRule(
            rules_pb2.CreateRuleRequest(
                rule=_rule("charge new invoices", currency, conditions={"customer_ids": [customer]})
            )
        )
        try:
            created = await _create_invoice(http, suite, customer, "80.00", f"RACE-{unique}")
            assert await asyncio.to_thread(doomed.process.wait, 60) == -9
        finally:
            if doomed.process.poll() is None:  # (a failed test leaves no replica behind)
                doomed.process.kill()

        # Paid in Intacct in full, by a payment arbridge did not make.
        today = date.today()
        bank = "BOA-USD" if currency == "USD" else f"BANK-{currency}"
        async with http.post(
            f"{suite.sandbox_admin}/companies/{suite.sandbox['company_id']}/ui",
            data=(
                f"<create_arpayment><customerid>{customer}</customerid>"
                f"<paymentamount>80.00</paymentamount><bankaccountid>{bank}</bankaccountid>"
                f"<datereceived><year>{today.year}</year><month>{today.month}</month>"
                f"<day>{today.day}</day></datereceived><currency>{currency}</currency>"
                f"<arpaymentitem><invoicekey>{created}</invoicekey><amount>80.00</amount>"
                "</arpaymentitem></create_arpayment>"
            ),
            headers={"Content-Type": "application/xml"},
        ) as reply:
            assert reply.status == 200, await reply.text()
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))

        async def paid_in_store() -> bool:
            invoice = (
                await sync.GetInvoice(
                    sync_pb2.GetInvoiceRequest(account_id="acme", record_no=created)
                )
            ).invoice
            return invoice.due.amount_minor == 0

        assert await eventually(paid_in_store, timeout=30), "the payment never reached sync"

        survivor = await _rules_replica(tmp_path, suite, database_url, nats_url, unique, "ok")
        try:
            db = await asyncpg.connect(database_url)
            try:

                async def settled() -> Any:
                    row = await db.fetchrow(
                        f'SELECT state, note FROM "{unique}_rules".schedule'
                        " WHERE invoice_record_no = $1",
                        created,
                    )
                    return row if row is not None and row["state"] != "charging" else None

                row = await eventually(settled, timeout=30)
                attempts = await db.fetch(
                    f'SELECT outcome, charge_id FROM "{unique}_rules".attempts'
                    " WHERE invoice_record_no = $1",
                    created,
                )
            finally:
                await db.close()
            assert row is not None
            assert (row["state"], row["note"]) == (
                "cleared",
                "the invoice was paid before this attempt could charge it; nothing was charged",
            ), row
            # The attempt was refused, and charged nothing.
            assert [(a["outcome"], a["charge_id"]) for a in attempts] == [("failed", "")]
            charges = (
                await payer.stub.ListCharges(
                    payments_pb2.ListChargesRequest(account_id="acme", invoice_record_no=created)
                )
            ).charges
            assert list(charges) == []
        finally:
            survivor.process.terminate()
