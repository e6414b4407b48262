"""One account's identifiers used to reach another account's records, through every method.

Two accounts are connected ("acme" and "globex"). Acme gets a stored card, a
charge, a rule, a payer link and a sync of its own. Then every method of
connector, sync, payments and rules is called as globex, with every
identifier field filled with acme's; and acme's webhook token is used on
globex's webhook address. No answer may carry an acme identifier, and
nothing of acme's may change.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from arbridge.connector.v1 import connector_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.demo import on_creation
from arbridge_devinfra.infra import Infra
from arbridge_devinfra.onboarding import (
    Stubs,
    add_card,
    connect,
    onboard,
    open_invoices,
    wait_for_sync,
)
from arbridge_devinfra.sandboxes import Sandbox
from arbridge_devinfra.suite import StartedSuite
from arbridge_runtime import webhooks
from arbridge_runtime.grpc_client import service_channel
from tests.chaos.harness import Ledger, Outcome, chaos_suite, clients

pytestmark = pytest.mark.chaos
SERVICES = {
    "connector": (connector_pb2, "ConnectorService"),
    "sync": (sync_pb2, "SyncService"),
    "payments": (payments_pb2, "PaymentsService"),
    "rules": (rules_pb2, "RulesService"),
}
# Methods that start work for the calling account (harmless to acme), left out of the sweep
# because they take the other account's credentials or would only slow the run.
SKIPPED = {"ConnectAccount", "StreamIngestEvents", "WatchSync"}


def _request(module: Any, method: Any, ids: dict[str, str]) -> Any:
    message = getattr(module, method.input_type.name)()
    for field in method.input_type.fields:
        if field.type != FieldDescriptor.TYPE_STRING or field.is_repeated:
            continue
        if field.name == "account_id":
            setattr(message, field.name, "globex")
        elif field.name in ids:
            setattr(message, field.name, ids[field.name])
    return message


async def _acme(stubs: Stubs, sandbox: Sandbox, suite: StartedSuite) -> dict[str, str]:
    """Acme's own identifiers: a method, a charge, a rule, a link, a sync."""
    await onboard(stubs, sandbox, suite, "acme")
    invoices = [i for i in await open_invoices(stubs, "acme") if i.currency == "USD"]
    first, second = invoices[0], invoices[1]
    method = await add_card(stubs, sandbox, "acme", first.customer_id)
    charge = (
        await stubs.payments.ChargeInvoices(
            payments_pb2.ChargeInvoicesRequest(
                account_id="acme",
                idempotency_key="xacct-1",
                customer_id=first.customer_id,
                invoices=[payments_pb2.InvoiceAmount(invoice_record_no=first.record_no)],
            )
        )
    ).charge
    rule = (
        await stubs.rules.CreateRule(
            rules_pb2.CreateRuleRequest(rule=on_creation("acme", first.customer_id, "USD"))
        )
    ).rule
    link = (
        await stubs.payments.CreateLink(
            payments_pb2.CreateLinkRequest(
                account_id="acme",
                kind=payments_pb2.LINK_KIND_PAYMENT,
                customer_id=second.customer_id,
                invoice_record_no=second.record_no,
            )
        )
    ).link
    syncs = (await stubs.sync.ListSyncs(sync_pb2.ListSyncsRequest(account_id="acme"))).syncs
    return {
        "payment_method_id": method.payment_method_id,
        "charge_id": charge.charge_id,
        "rule_id": rule.rule_id,
        "link_id": link.link_id,
        "sync_id": syncs[0].sync_id,
        "customer_id": first.customer_id,
        "invoice_record_no": first.record_no,
        "idempotency_key": "xacct-1",
    }


async def _state(stubs: Stubs, ids: dict[str, str]) -> tuple[Any, ...]:
    charge = (
        await stubs.payments.GetCharge(
            payments_pb2.GetChargeRequest(account_id="acme", charge_id=ids["charge_id"])
        )
    ).charge
    rules = (await stubs.rules.ListRules(rules_pb2.ListRulesRequest(account_id="acme"))).rules
    links = (
        await stubs.payments.ListLinks(
            payments_pb2.ListLinksRequest(account_id="acme", include_inactive=True)
        )
    ).links
    methods = (
        await stubs.payments.ListPaymentMethods(
            payments_pb2.ListPaymentMethodsRequest(
                account_id="acme", customer_id=ids["customer_id"]
            )
        )
    ).payment_methods
    return (
        charge.state,
        charge.refunded.amount_minor,
        sorted((r.rule_id, r.enabled, r.revision) for r in rules),
        sorted((lk.link_id, lk.revoked) for lk in links),
        sorted(m.payment_method_id for m in methods),
    )


async def _scenario(suite: StartedSuite, outcome: Outcome) -> None:
    async with clients(suite, deadline=30) as (stubs, sandbox):
        ids = await _acme(stubs, sandbox, suite)
        await connect(stubs, suite, "globex")
        await wait_for_sync(stubs, "globex")
        before = await _state(stubs, ids)
        unique = {k: v for k, v in ids.items() if k not in ("customer_id", "invoice_record_no")}
        leaks: list[str] = []
        for service, (module, name) in SERVICES.items():
            descriptor = module.DESCRIPTOR.services_by_name[name]
            channel = service_channel(suite.target(service), suite.token, deadline=30)
            try:
                for method in descriptor.methods:
                    if method.name in SKIPPED or method.client_streaming:
                        continue
                    request = _request(module, method, ids)
                    if not any(f.name == "account_id" for f in method.input_type.fields):
                        continue
                    outcome.attempted += 1
                    path = f"/{descriptor.full_name}/{method.name}"
                    output = getattr(module, method.output_type.name)
                    answers = await _call(channel, path, method, request, output)
                    if answers is None:
                        continue
                    outcome.acknowledged += 1
                    text = "".join(json_format.MessageToJson(a) for a in answers)
                    for what, value in unique.items():
                        if value and value in text:
                            leaks.append(f"{method.name} answered globex with acme's {what}")
            finally:
                await channel.close(None)
        # Acme's webhook token on globex's address.
        secret = (suite.root / ".infra" / "webhook.secret").read_text().strip()
        acme_token = webhooks.url_token(secret, "acme")
        outcome.attempted += 1
        async with sandbox.http.post(
            f"{suite.webhooks_base}/v1/intacct/globex/{acme_token}",
            data=b"<intacct-event><object>CUSTOMER</object><action>set</action></intacct-event>",
            headers={"Content-Type": "application/xml"},
        ) as reply:
            if reply.status != 401:
                leaks.append(f"acme's webhook token accepted for globex ({reply.status})")
        after = await _state(stubs, ids)
        if after != before:
            leaks.append(f"acme's records changed: {before} -> {after}")
        outcome.cross_account = len(leaks)
        outcome.notes += leaks[:10]
        outcome.notes.append(
            f"{outcome.attempted} calls as globex with acme's identifiers;"
            f" {outcome.acknowledged} answered OK (with globex's own data)"
        )


async def _call(
    channel: grpc.aio.Channel, path: str, method: Any, request: Any, output: Any
) -> list[Any] | None:
    try:
        if method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=output.FromString,
            )
            answers = []
            async for answer in call(request, timeout=30):
                answers.append(answer)
                if len(answers) > 50:
                    break
            return answers
        answer = await channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=output.FromString,
        )(request, timeout=30)
        return [answer]
    except grpc.aio.AioRpcError:
        return None


def test_one_accounts_identifiers_reach_nothing_of_another(
    tmp_path: Path, infra: Infra, unique: str, ledger: Ledger
) -> None:
    outcome = ledger.start("another account's identifiers")
    with chaos_suite(tmp_path, infra, unique, outcome=outcome) as suite:
        asyncio.run(_scenario(suite, outcome))
    assert outcome.passed, outcome.json()
