"""`make demo`: the whole story on the embedded default, with no input.

Starts a private suite (its own database, NATS namespace and free ports, so it
runs beside `make run`), then, through the same gRPC APIs and sandbox screens a
platform team and an Intacct user would use:

1. connects the sandbox company and checks the integration user's permissions;
2. watches the initial sync (six months of customers and invoices);
3. installs the smart events sync asks for, and the deposit accounts;
4. stores a card for a customer (through the gateway's hosted fields) and
   creates an "on creation" auto-payment rule for that customer;
5. creates an invoice in the sandbox Intacct, as a user would, and waits for it
   to be charged and for the payment to be applied in Intacct;
6. opens the payment link of another invoice;

and prints a summary with counts and timings, and the trace of the charge
(webhook -> sync -> rules -> payments -> Intacct) from the spans the services
exported. Exits 0 only when every step did what it should.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_devinfra.suite import StartedSuite, free_ports, started_suite
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import from_minor, to_minor

ACCOUNT = "demo"
T = TypeVar("T")


class DemoFailed(Exception):
    """A step did not do what it should; the message says which and why."""


@dataclass
class Summary:
    facts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: object) -> None:
        self.facts.append((what, str(value)))


async def _until(
    what: str, check: Callable[[], Awaitable[T | None]], timeout: float, every: float = 0.25
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(every)
    raise DemoFailed(f"{what} did not happen within {timeout:.0f}s")


class Sandbox:
    """The sandbox Intacct's admin screens and the card gateway's hosted fields."""

    def __init__(self, http: aiohttp.ClientSession, suite: StartedSuite) -> None:
        self.http = http
        self.admin = (
            str(suite.sandbox["admin"]).rstrip("/")
            + "/companies/"
            + str(suite.sandbox["company_id"])
        )
        self.cards = suite.cards

    async def add_smart_event(self, spec: Any) -> None:
        async with self.http.post(
            f"{self.admin}/smart-events",
            json={
                "object": spec.object,
                "actions": list(spec.actions),
                "url": spec.url,
                "body_template": spec.body_template,
                "content_type": spec.content_type,
            },
        ) as reply:
            if reply.status not in (200, 201):
                raise DemoFailed(f"smart event {spec.name} refused: {await reply.text()}")

    async def create_invoice(self, customer: str, amount: str, number: str) -> str:
        """An AR invoice entered in the Intacct UI; returns its RECORDNO."""
        due = date.today() + timedelta(days=30)
        body = (
            f"<create_invoice><customerid>{customer}</customerid>"
            f"<datedue><year>{due.year}</year><month>{due.month}</month><day>{due.day}</day>"
            f"</datedue><invoiceno>{number}</invoiceno><invoiceitems><lineitem>"
            f"<glaccountno>4000</glaccountno><amount>{amount}</amount></lineitem>"
            "</invoiceitems></create_invoice>"
        )
        async with self.http.post(
            f"{self.admin}/ui", data=body, headers={"Content-Type": "application/xml"}
        ) as reply:
            text = await reply.text()
            if reply.status != 200:
                raise DemoFailed(f"the sandbox refused the invoice: {text}")
        match = re.search(r"<key>(\d+)</key>", text)
        if not match:
            raise DemoFailed(f"the sandbox did not say the invoice's key: {text[:300]}")
        return match.group(1)

    async def invoice_due(self, record_no: str) -> str:
        async with self.http.get(f"{self.admin}/records/ARINVOICE") as reply:
            rows = (await reply.json())["records"]
        found = {str(r["recordno"]): r["values"] for r in rows}
        return str(found[record_no]["TRX_TOTALDUE"])

    async def card_token(self, number: str) -> str:
        """A hosted-fields token holding a card, as the payer's browser makes one."""
        credentials = base64.b64encode(
            f"{self.cards['username']}:{self.cards['password']}".encode()
        ).decode()
        base = str(self.cards["base_url"]) + "/services/2/payment-fields-tokens"
        async with self.http.post(base, headers={"Authorization": f"Basic {credentials}"}) as r:
            token = r.headers["Location"].rsplit("/", 1)[1]
        async with self.http.put(
            f"{base}/{token}", json={"ccNumber": number, "expDate": "11/31", "cvv": "737"}
        ) as reply:
            if reply.status != 200:
                raise DemoFailed(f"the hosted fields refused the card: {await reply.text()}")
        return token


async def _story(suite: StartedSuite, say: Callable[[str], None], traces: Path) -> Summary:
    summary = Summary()
    channels = {
        n: service_channel(suite.target(n), suite.token, deadline=120)
        for n in ("connector", "sync", "payments", "rules")
    }
    connector = connector_pb2_grpc.ConnectorServiceStub(channels["connector"])
    sync = sync_pb2_grpc.SyncServiceStub(channels["sync"])
    payments = payments_pb2_grpc.PaymentsServiceStub(channels["payments"])
    rules = rules_pb2_grpc.RulesServiceStub(channels["rules"])
    try:
        async with aiohttp.ClientSession() as http:
            sandbox = Sandbox(http, suite)

            say("\n1. Connect the sandbox company")
            await connector.ConnectAccount(
                connector_pb2.ConnectAccountRequest(
                    account_id=ACCOUNT,
                    company_id=str(suite.sandbox["company_id"]),
                    user_id=str(suite.sandbox["user_id"]),
                    user_password=str(suite.sandbox["user_password"]),
                    sender_id=str(suite.sandbox["sender_id"]),
                    sender_password=str(suite.sandbox["sender_password"]),
                    time_zone="America/New_York",
                )
            )
            checked = await connector.CheckPermissions(
                connector_pb2.CheckPermissionsRequest(account_id=ACCOUNT)
            )
            granted = sum(
                1 for c in checked.checks if c.status == connector_pb2.PERMISSION_STATUS_GRANTED
            )
            say(f"   connected; permissions granted {granted} of {len(checked.checks)}")
            if not checked.all_granted:
                raise DemoFailed("the sandbox user lacks permissions the integration needs")

            say("2. The initial sync (six months of history)")
            started = time.monotonic()

            async def finished() -> sync_pb2.Sync | None:
                syncs = (await sync.ListSyncs(sync_pb2.ListSyncsRequest(account_id=ACCOUNT))).syncs
                if not syncs:
                    return None
                current = syncs[0]
                done = sum(o.done for o in current.objects)
                total = max(done, sum(o.total for o in current.objects), 1)
                bar = "#" * round(30 * done / total)
                say(
                    f"   [{bar:<30}] {done:>6,} of {total:,} records, {current.api_calls} API calls"
                )
                ended = (sync_pb2.SYNC_STATE_SUCCEEDED, sync_pb2.SYNC_STATE_FAILED)
                return current if current.state in ended else None

            initial = await _until("the initial sync", finished, timeout=600, every=1.0)
            if initial.state != sync_pb2.SYNC_STATE_SUCCEEDED:
                raise DemoFailed(f"the initial sync failed: {initial.error}")
            sync_seconds = time.monotonic() - started
            records = {
                common_pb2.ObjectType.Name(o.object_type)
                .removeprefix("OBJECT_TYPE_")
                .lower(): o.done
                for o in initial.objects
            }
            say(
                f"   done in {sync_seconds:.1f}s: "
                + ", ".join(f"{n} {c:,}" for n, c in records.items())
            )

            say("3. Smart events and deposit accounts")
            setup = await sync.GetSmartEventSetup(
                sync_pb2.GetSmartEventSetupRequest(
                    account_id=ACCOUNT, gateway_base_url=suite.webhooks_base
                )
            )
            for spec in setup.events:
                await sandbox.add_smart_event(spec)
            banks = {
                b.currency: b
                for b in (
                    await sync.ListBankAccounts(
                        sync_pb2.ListBankAccountsRequest(account_id=ACCOUNT)
                    )
                ).bank_accounts
            }
            invoices = await _open_invoices(sync)
            entities = sorted({i.entity_id for i in invoices})
            for currency, bank in sorted(banks.items()):
                for entity in entities:
                    await payments.SetDepositAccount(
                        payments_pb2.SetDepositAccountRequest(
                            deposit_account=payments_pb2.DepositAccount(
                                account_id=ACCOUNT,
                                entity_id=entity,
                                currency=currency,
                                bank_account_id=bank.bank_account_id,
                            )
                        )
                    )
            say(
                f"   {len(setup.events)} smart events installed in Intacct; deposit accounts for "
                f"{', '.join(sorted(banks))} in {len(entities)} entities"
            )

            say("4. A card on file and an 'on creation' rule")
            by_customer: dict[str, list[Any]] = {}
            for invoice in invoices:
                if invoice.currency in banks:
                    by_customer.setdefault(invoice.customer_id, []).append(invoice)
            customer = next(
                c
                for c, found in sorted(by_customer.items())
                if len({i.currency for i in found}) == 1
            )
            currency = by_customer[customer][0].currency
            method = (
                await payments.AddPaymentMethod(
                    payments_pb2.AddPaymentMethodRequest(
                        account_id=ACCOUNT,
                        customer_id=customer,
                        gateway_token=await sandbox.card_token("4242424242424242"),
                        make_default=True,
                    )
                )
            ).payment_method
            rule = (
                await rules.CreateRule(
                    rules_pb2.CreateRuleRequest(
                        rule=rules_pb2.Rule(
                            account_id=ACCOUNT,
                            name=f"charge {customer}'s new invoices",
                            enabled=True,
                            priority=10,
                            conditions=rules_pb2.Conditions(
                                customer_ids=[customer], currencies=[currency]
                            ),
                            timing=rules_pb2.Timing(
                                trigger=rules_pb2.TIMING_TRIGGER_ON_CREATE_OR_UPDATE
                            ),
                            amount=rules_pb2.AmountPolicy(mode=rules_pb2.AMOUNT_MODE_OPEN_BALANCE),
                        )
                    )
                )
            ).rule
            say(f"   customer {customer}: card ending {method.last4}; rule {rule.rule_id}")

            say("5. An invoice created in Intacct, charged by the rule, applied in Intacct")
            amount = "123.45"
            number = f"DEMO-{secrets.token_hex(3).upper()}"
            created_at = time.monotonic()
            record_no = await sandbox.create_invoice(customer, amount, number)
            say(f"   invoice {number} (RECORDNO {record_no}) for {amount} {currency} created")

            async def charged() -> payments_pb2.Charge | None:
                found = (
                    await payments.ListCharges(
                        payments_pb2.ListChargesRequest(
                            account_id=ACCOUNT, invoice_record_no=record_no
                        )
                    )
                ).charges
                done = [c for c in found if c.state == payments_pb2.CHARGE_STATE_SUCCEEDED]
                return done[0] if done else None

            charge = await _until("the rule's charge", charged, timeout=120)
            charged_seconds = time.monotonic() - created_at
            say(
                f"   charged {from_minor(charge.amount.amount_minor, currency)} {currency} "
                f"({charge.charge_id}) {charged_seconds * 1000:.0f} ms after the invoice was"
                " created"
            )

            async def applied() -> bool:
                return to_minor(await sandbox.invoice_due(record_no), currency) == 0

            await _until("the payment applied in Intacct", applied, timeout=120)
            applied_seconds = time.monotonic() - created_at
            say(f"   applied in Intacct: amount due 0.00, {applied_seconds * 1000:.0f} ms in all")

            say("6. The payment link of another invoice")
            other = next(i for i in invoices if i.record_no != record_no and i.due.amount_minor > 0)
            link = (
                await payments.CreateLink(
                    payments_pb2.CreateLinkRequest(
                        account_id=ACCOUNT,
                        kind=payments_pb2.LINK_KIND_PAYMENT,
                        customer_id=other.customer_id,
                        invoice_record_no=other.record_no,
                    )
                )
            ).link
            async with http.get(link.url) as reply:
                page = await reply.text()
                if reply.status != 200 or other.invoice_number not in page:
                    raise DemoFailed(f"the payment link answered {reply.status}")
            due = from_minor(other.due.amount_minor, other.currency)
            say(
                f"   {link.url}\n   shows invoice {other.invoice_number},"
                f" {due} {other.currency} due"
            )

            usage = await connector.GetApiUsage(
                connector_pb2.GetApiUsageRequest(account_id=ACCOUNT)
            )
            chain = await _trace_of(traces, record_no)

            summary.add("initial sync", f"{sync_seconds:.1f} s, {initial.api_calls} API calls")
            for name, count in records.items():
                summary.add(f"  {name}", f"{count:,}")
            summary.add("smart events installed", len(setup.events))
            summary.add("invoice created -> charged", f"{charged_seconds * 1000:.0f} ms")
            summary.add("invoice created -> applied in Intacct", f"{applied_seconds * 1000:.0f} ms")
            summary.add("charges made", 1)
            summary.add("payment link", link.url)
            summary.add("Intacct API calls in all", usage.total_calls)
            for step, span in enumerate(chain):
                summary.add("trace of the charge" if step == 0 else "", ("  " * step) + span)
            return summary
    finally:
        for channel in channels.values():
            await channel.close(None)


async def _open_invoices(sync: sync_pb2_grpc.SyncServiceAsyncStub) -> list[Any]:
    found: list[Any] = []
    token = ""
    while True:
        reply = await sync.ListInvoices(
            sync_pb2.ListInvoicesRequest(
                account_id=ACCOUNT,
                open_only=True,
                page=common_pb2.PageRequest(page_size=500, page_token=token),
            )
        )
        found.extend(reply.invoices)
        token = reply.page.next_page_token
        if not token:
            return found


async def _trace_of(traces: Path, record_no: str) -> list[str]:
    """The spans from the webhook to the posting of the charge of ``record_no``."""

    def read() -> list[dict[str, Any]]:
        if not traces.exists():
            return []
        return [json.loads(line) for line in traces.read_text().splitlines() if line.strip()]

    for _ in range(40):  # each service exports on its own schedule
        spans = read()
        charge = next(
            (
                s
                for s in spans
                if s["name"] == "rules.charge"
                and s["attributes"].get("arbridge.invoice") == record_no
            ),
            None,
        )
        posting = charge and next(
            (
                s
                for s in spans
                if s["name"] == "payments.post" and s["trace_id"] == charge["trace_id"]
            ),
            None,
        )
        if posting:
            by_id = {s["span_id"]: s for s in spans if s["trace_id"] == posting["trace_id"]}
            chain = []
            span: dict[str, Any] | None = posting
            while span is not None:
                chain.append(f"{span['service'].removeprefix('arbridge-')}: {span['name']}")
                span = by_id.get(span["parent_span_id"])
            return chain[::-1]
        await asyncio.sleep(0.25)
    return []


def run_demo(root: Path, name: str = "demo") -> int:
    """Runs the story; 0 when every step did what it should. ``name``: the database
    (``arbridge_<name>``) and NATS namespace the run starts afresh in."""

    def say(line: str) -> None:
        print(line, flush=True)

    state = root / ".infra" / "demo"
    state.mkdir(parents=True, exist_ok=True)
    traces = state / "traces.jsonl"
    traces.unlink(missing_ok=True)
    database = f"arbridge_{name}"
    began = time.monotonic()
    say(f"arbridge demo: its own suite on free ports (database {database}, NATS namespace {name})")
    try:
        with started_suite(
            root,
            ports=free_ports(),
            database=database,
            namespace=name,
            fresh=True,
            sandbox_args=("--customers", "300", "--invoices", "6000"),
            service_env={"ARBRIDGE_TRACE_FILE": str(traces), "ARBRIDGE_RULES_TICK_SECONDS": "0.2"},
            say=say,
        ) as suite:
            summary = asyncio.run(_story(suite, say, traces))
    except (DemoFailed, grpc.aio.AioRpcError) as exc:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        print(f"\ndemo failed: {detail}", flush=True)
        return 1
    say("\nSummary")
    width = max(len(what) for what, _ in summary.facts)
    for what, value in summary.facts:
        say(f"  {what:<{width}}  {value}")
    say(f"  {'whole demo':<{width}}  {time.monotonic() - began:.1f} s")
    say("The suite has stopped (its link with it); `make run` keeps one running.")
    return 0
