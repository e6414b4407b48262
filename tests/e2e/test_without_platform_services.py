"""A company without Platform Services: everything works from the AR side, and no Intacct
call fails along the way (nothing asks for the charge queue or other custom objects)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import asyncpg
import pytest

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge_devinfra.infra import free_port
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import from_minor, to_minor
from tests.conftest import TOKEN
from tests.e2e.test_pay_page_guards import _fill, _form, _post
from tests.e2e.test_rules import _create_invoice, _customers_with_currency, _rule
from tests.support.payments import (
    Payer,
    deposit_everywhere,
    eventually,
    intacct_values,
    open_invoices_by_customer,
    synced_payments_suite,
)
from tests.support.suite import install_smart_events


@pytest.mark.timeout(300)
async def test_connect_sync_pay_by_link_and_auto_charge_without_a_failed_intacct_call(
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
            customers=10,
            invoices=80,
            services=("connector", "sync", "payments", "gateway", "rules"),
            service_extra={
                "ARBRIDGE_PAY_PORT": str(port),
                "ARBRIDGE_PAY_BASE_URL": base,
                "ARBRIDGE_PAYMENTS_QUEUE_POLL_SECONDS": "1",
                "ARBRIDGE_RULES_TICK_SECONDS": "0.2",
            },
            sandbox_args=("--no-platform-services",),
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        company = suite.sandbox["company_id"]
        connector = connector_pb2_grpc.ConnectorServiceStub(
            service_channel(suite.target("connector"), TOKEN)
        )
        # The permission check says so plainly.
        checked = await connector.CheckPermissions(
            connector_pb2.CheckPermissionsRequest(account_id="acme")
        )
        assert not checked.platform_services
        queue = next(c for c in checked.checks if c.object == "BlueSnapARQueue")
        assert queue.status == connector_pb2.PERMISSION_STATUS_NOT_APPLICABLE
        assert "AR Automation only" in queue.fix
        # The smart events of the AR objects only (the queue's cannot exist here).
        assert await install_smart_events(
            http, suite, exclude=frozenset({"bluesnaparqueue", "bluesnaparrule"})
        )
        payer = Payer(suite, http, suite.target("payments"))
        await deposit_everywhere(payer, suite)
        (customer, currency), (other, _) = (await _customers_with_currency(suite))[:2]

        # Pay by link.
        invoice = (await open_invoices_by_customer(suite, "acme"))[customer][0]
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
        form = await _form(http, url)
        await _fill(http, suite, form["card_token"], "4242424242424242")
        status, location, _ = await _post(
            http,
            url,
            {
                "attempt": form["attempt"],
                "card_token": form["card_token"],
                "method": "new-card",
                "invoice": invoice.record_no,
                f"amount_{invoice.record_no}": from_minor(
                    invoice.due.amount_minor, invoice.currency
                ),
            },
            base,
        )
        assert status == 303, location

        # Auto-charge by a rule.
        await payer.add_card(other, "4242424242424242")
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        await rules.CreateRule(rules_pb2.CreateRuleRequest(rule=_rule("new invoices", currency)))
        created = await _create_invoice(http, suite, other, "42.00", f"NOPS-{unique}")

        async def both_applied() -> bool:
            found = await intacct_values(http, suite.sandbox_admin, company, "ARINVOICE")
            return (
                to_minor(found[created]["TRX_TOTALDUE"], currency) == 0
                and to_minor(found[invoice.record_no]["TRX_TOTALDUE"], invoice.currency) == 0
            )

        assert await eventually(both_applied, timeout=60), "a payment was not applied in Intacct"

        # The charge queue was never read, and no Intacct call failed along the way.
        db = await asyncpg.connect(database_url)
        try:
            row = await db.fetchrow(
                f'SELECT enabled, state, last_error, cursor FROM "{unique}_payments".queue_accounts'
            )
        finally:
            await db.close()
        assert (row["enabled"], row["state"], row["cursor"]) == (False, "unavailable", None)
        assert "no Platform Services" in row["last_error"]
        async with http.get(f"{suite.sandbox_admin}/stats?company={company}") as reply:
            stats = (await reply.json())["companies"][company]
        assert stats["failed_functions"] == {}
        assert stats["api_calls"] > 0
