"""ACH bank accounts: stored through hosted fields, debited, settled or returned days later.

The gateway notifies settlement through the webhook gateway; payments treats
the notification as a hint and asks the gateway's API, and looks settling
debits up on its own when notifications are lost. Only a settled debit is
posted to Intacct; a returned one frees its invoice.
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from playwright.async_api import expect

from arbridge.common.v1 import common_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_devinfra.infra import free_port
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import to_minor
from tests.conftest import TOKEN
from tests.e2e.test_rules import SERVICES as RULES_SERVICES
from tests.e2e.test_rules import _create_invoice, _rule
from tests.support.browser import headless_chromium
from tests.support.payments import (
    Payer,
    arbridge_logs,
    bank_token,
    deposit_everywhere,
    eventually,
    intacct_values,
    leaks,
    notify_url,
    open_invoices_by_customer,
    sandbox_notifications,
    synced_payments_suite,
)
from tests.support.suite import Suite, install_smart_events

SETTLING = payments_pb2.CHARGE_STATE_SETTLING


async def _usd_setup(suite: Suite, payer: Payer, how_many: int) -> list[tuple[str, list[Any]]]:
    """Customers with USD invoices, and a deposit account for each USD entity used."""
    sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
    banks = (
        await sync.ListBankAccounts(sync_pb2.ListBankAccountsRequest(account_id="acme"))
    ).bank_accounts
    assert any(b.currency == "USD" for b in banks), "the sandbox company has a USD bank"
    by_customer = await open_invoices_by_customer(suite, "acme")
    chosen = []
    for customer, invoices in sorted(by_customer.items(), key=lambda kv: -len(kv[1])):
        usd = [i for i in invoices if i.currency == "USD"]
        if len(usd) >= 2:
            chosen.append((customer, usd))
        if len(chosen) == how_many:
            break
    await deposit_everywhere(payer, suite)
    return chosen


async def _add_bank(payer: Payer, customer: str, account: str) -> payments_pb2.PaymentMethod:
    reply = await payer.stub.AddPaymentMethod(
        payments_pb2.AddPaymentMethodRequest(
            account_id="acme",
            customer_id=customer,
            gateway_token=await bank_token(payer.http, payer.suite, account),
            type=common_pb2.PAYMENT_METHOD_TYPE_ACH,
        )
    )
    return reply.payment_method


async def _state(payer: Payer, charge_id: str) -> payments_pb2.Charge:
    reply = await payer.stub.GetCharge(
        payments_pb2.GetChargeRequest(account_id="acme", charge_id=charge_id)
    )
    return reply.charge


async def _until(payer: Payer, charge_id: str, state: Any, posted: bool = False) -> Any:
    async def check() -> payments_pb2.Charge | None:
        charge = await _state(payer, charge_id)
        done = charge.state == state and (
            not posted or charge.posting_state == payments_pb2.POSTING_STATE_POSTED
        )
        return charge if done else None

    return await eventually(check, timeout=45)


@pytest.mark.timeout(300)
async def test_ach_debits_settle_by_notification_are_returned_and_ignore_forged_hints(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=160,
        services=("connector", "sync", "payments", "gateway"),
        service_extra={"ARBRIDGE_PAYMENTS_RECOVERY_SECONDS": "0.3"},  # no ACH polling: 1 h
    ) as suite:
        notify = notify_url(suite)
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            (customer, invoices), (other, other_invoices) = await _usd_setup(suite, payer, 2)
            method = await _add_bank(payer, customer, "7392046789")
            assert method.type == common_pb2.PAYMENT_METHOD_TYPE_ACH
            assert (method.last4, method.bank_account_type) == ("6789", "checking")
            again = await _add_bank(payer, customer, "7392046789")
            assert again.payment_method_id == method.payment_method_id  # same account, once

            # A debit the gateway has not settled: a forged "settled" notification
            # through the real webhook door changes nothing (payments asks the gateway).
            await sandbox_notifications(http, suite, notify, 3600)
            first = invoices[0]
            held = (await payer.charge("ach-held", customer, [(first.record_no, None)])).charge
            assert held.state == SETTLING
            forged = (
                f"transactionType=CHARGE&merchantTransactionId={held.charge_id}"
                "&referenceNumber=1&paymentMethod=ECP"
            )
            async with http.post(
                notify,
                data=forged,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as reply:
                assert reply.status in (200, 202), await reply.text()
            # While settling, the invoice is taken: no second charge on it.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await payer.charge("ach-twice", customer, [(first.record_no, None)])
            assert err.value.code() in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.ABORTED,
            )
            assert (await _state(payer, held.charge_id)).state == SETTLING

            # Settled by the gateway a second later: the notification finishes it, and
            # the payment is posted to Intacct and applied.
            await sandbox_notifications(http, suite, notify, 1)
            second = invoices[1]
            settled = (
                await payer.charge("ach-settles", customer, [(second.record_no, None)])
            ).charge
            assert settled.state == SETTLING
            done = await _until(
                payer, settled.charge_id, payments_pb2.CHARGE_STATE_SUCCEEDED, posted=True
            )
            assert done is not None, "the settled debit was not finished and posted"
            found = await intacct_values(
                http, suite.sandbox_admin, suite.sandbox["company_id"], "ARINVOICE"
            )
            assert to_minor(found[second.record_no]["TRX_TOTALDUE"], "USD") == 0
            assert (await _state(payer, held.charge_id)).state == SETTLING

            # A debit returned by the bank fails with the reason; the invoice is free again.
            await _add_bank(payer, other, "9876540000")
            target = other_invoices[0]
            returned = (
                await payer.charge("ach-returned", other, [(target.record_no, None)])
            ).charge
            failed = await _until(payer, returned.charge_id, payments_pb2.CHARGE_STATE_FAILED)
            assert failed is not None, "the returned debit did not fail"
            assert "returned" in failed.failure_reason
            assert failed.posting_state != payments_pb2.POSTING_STATE_POSTED
            retry = await payer.charge("ach-retry", other, [(target.record_no, None)])
            assert retry.charge.state == SETTLING


@pytest.mark.timeout(300)
async def test_a_payer_pays_by_bank_account_and_a_lost_notification_is_found_by_look_up(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=8,
            invoices=80,
            service_extra={
                "ARBRIDGE_PAY_PORT": str(port),
                "ARBRIDGE_PAY_BASE_URL": base,
                "ARBRIDGE_PAYMENTS_RECOVERY_SECONDS": "0.3",
                "ARBRIDGE_PAYMENTS_ACH_POLL_SECONDS": "1",
            },
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        payer = Payer(suite, http, suite.target("payments"))
        # The gateway's notifications go nowhere: only the look-ups can see the end.
        await sandbox_notifications(http, suite, "", 1)
        ((customer, invoices),) = await _usd_setup(suite, payer, 1)
        invoice = invoices[0]
        url = (
            await payer.stub.CreateLink(
                payments_pb2.CreateLinkRequest(
                    account_id="acme",
                    kind=payments_pb2.LINK_KIND_PAYMENT,
                    customer_id=customer,
                    invoice_record_no=invoice.record_no,
                )
            )
        ).link.url
        async with headless_chromium() as browser:
            page = await browser.new_page()
            await page.goto(url)
            await expect(page.locator("#new-bank")).to_be_hidden()
            await page.get_by_role("radio", name="A US bank account (ACH debit)").check()
            await expect(page.locator("#new-bank")).to_be_visible()
            await expect(page.locator("#new-card")).to_be_hidden()
            fields = page.frame_locator("#fields-new-bank")
            await fields.locator("#routing").fill("011000015")
            await fields.locator("#account").fill("000739204689")
            await page.get_by_role("checkbox", name="Save it for future payments").check()
            await page.locator("#pay-button").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text(
                "Payment submitted", timeout=20_000
            )
            await expect(page.locator("main")).to_contain_text("Bank account ending 4689")
        charges = await payer.stub.ListCharges(
            payments_pb2.ListChargesRequest(account_id="acme", customer_id=customer)
        )
        (charge,) = charges.charges
        assert charge.source == payments_pb2.CHARGE_SOURCE_LINK
        done = await _until(
            payer, charge.charge_id, payments_pb2.CHARGE_STATE_SUCCEEDED, posted=False
        )
        assert done is not None, "the look-up did not find the settled debit"
        methods = await payer.stub.ListPaymentMethods(
            payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=customer)
        )
        assert [(m.type, m.last4) for m in methods.payment_methods] == [
            (common_pb2.PAYMENT_METHOD_TYPE_ACH, "4689")
        ]
        # The account numbers went from the browser (or test) to the gateway only.
        numbers = ["000739204689", "7392046789"]
        leaked = await leaks(database_url, f"{unique}_payments", arbridge_logs(suite), numbers)
        assert leaked == []


@pytest.mark.timeout(300)
async def test_a_rules_debit_the_bank_returns_is_a_failed_attempt_and_the_rule_retries(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """A rule's ACH debit counts as collected while it settles. Returned by the bank a
    moment later, it is the rule's failed attempt: the schedule moves to the rule's
    next retry instead of staying done with the invoice unpaid."""
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=120,
        services=RULES_SERVICES,
        service_extra={
            "ARBRIDGE_RULES_TICK_SECONDS": "0.2",
            "ARBRIDGE_PAYMENTS_RECOVERY_SECONDS": "0.3",
        },
    ) as suite:
        notify = notify_url(suite)
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            await install_smart_events(http, suite)
            [(customer, _)] = await _usd_setup(suite, payer, 1)
            await _add_bank(payer, customer, "9876540000")  # its debits are returned
            await sandbox_notifications(http, suite, notify, 1)
            rule = (
                await rules.CreateRule(
                    rules_pb2.CreateRuleRequest(
                        rule=_rule(
                            "debit new invoices",
                            "USD",
                            conditions={"customer_ids": [customer]},
                            retry=rules_pb2.RetryPolicy(retry_after_days=[3]),
                        )
                    )
                )
            ).rule
            record_no = await _create_invoice(http, suite, customer, "45.60", f"ACH-{unique}")
            db = await asyncpg.connect(database_url)
            try:

                async def rescheduled() -> Any:
                    row = await db.fetchrow(
                        f'SELECT * FROM "{unique}_rules".schedule WHERE invoice_record_no = $1',
                        record_no,
                    )
                    return row if row is not None and row["attempt"] == 2 else None

                row = await eventually(rescheduled, timeout=60)
                assert row is not None, "the returned debit left the rule's schedule done"
                first = await db.fetchrow(
                    f'SELECT * FROM "{unique}_rules".attempts WHERE invoice_record_no = $1'
                    " AND attempt = 1",
                    record_no,
                )
            finally:
                await db.close()
            assert (row["state"], row["rule_id"]) == ("scheduled", rule.rule_id)
            assert "returned" in row["note"]
            days = (row["charge_at"] - first["attempted_at"]).total_seconds() / 86400
            assert 2.9 < days < 3.2, days
            assert first["outcome"] == "failed"
            charge = await _state(payer, first["charge_id"])
            assert charge.state == payments_pb2.CHARGE_STATE_FAILED
            explained = await rules.ExplainInvoice(
                rules_pb2.ExplainInvoiceRequest(account_id="acme", invoice_record_no=record_no)
            )
            assert explained.outcome == rules_pb2.EXPLANATION_OUTCOME_WILL_CHARGE, explained
            assert explained.next_charge_at.ToDatetime(tzinfo=UTC) == row["charge_at"]
