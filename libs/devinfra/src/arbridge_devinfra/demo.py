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
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge.sync.v1 import sync_pb2
from arbridge_devinfra.onboarding import (
    Stubs,
    add_card,
    connect,
    deposit_everywhere,
    install_smart_events,
    open_invoices,
    until,
    wait_for_sync,
)
from arbridge_devinfra.sandboxes import Sandbox, SandboxRefused
from arbridge_devinfra.suite import StartedSuite, free_ports, started_suite
from arbridge_runtime.money import from_minor, to_minor

ACCOUNT = "demo"


class DemoFailed(Exception):
    """A step did not do what it should; the message says which and why."""


@dataclass
class Summary:
    facts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: object) -> None:
        self.facts.append((what, str(value)))


async def _story(suite: StartedSuite, say: Callable[[str], None], traces: Path) -> Summary:
    summary = Summary()
    stubs = Stubs.of(suite)
    try:
        async with aiohttp.ClientSession() as http:
            sandbox = Sandbox(http, suite)

            say("\n1. Connect the sandbox company")
            checked = await connect(stubs, suite, ACCOUNT)
            granted = sum(
                1 for c in checked.checks if c.status == connector_pb2.PERMISSION_STATUS_GRANTED
            )
            say(f"   connected; permissions granted {granted} of {len(checked.checks)}")
            if not checked.all_granted:
                raise DemoFailed("the sandbox user lacks permissions the integration needs")

            say("2. The initial sync (six months of history)")
            started = time.monotonic()

            def show(current: sync_pb2.Sync) -> None:
                done = sum(o.done for o in current.objects)
                total = max(done, sum(o.total for o in current.objects), 1)
                bar = "#" * round(30 * done / total)
                say(
                    f"   [{bar:<30}] {done:>6,} of {total:,} records, {current.api_calls} API calls"
                )

            initial = await wait_for_sync(stubs, ACCOUNT, progress=show, every=1.0)
            if initial.state != sync_pb2.SYNC_STATE_SUCCEEDED:
                raise DemoFailed(f"the initial sync failed: {initial.error}")
            sync_seconds = time.monotonic() - started
            records = {
                common_pb2.ObjectType.Name(o.object_type).removeprefix("OBJECT_TYPE_").lower(): (
                    o.done
                )
                for o in initial.objects
            }
            say(
                f"   done in {sync_seconds:.1f}s: "
                + ", ".join(f"{n} {c:,}" for n, c in records.items())
            )

            say("3. Smart events and deposit accounts")
            events = await install_smart_events(stubs, sandbox, suite, ACCOUNT)
            currencies, entities = await deposit_everywhere(stubs, ACCOUNT)
            invoices = await open_invoices(stubs, ACCOUNT)
            say(
                f"   {events} smart events installed in Intacct; deposit accounts for "
                f"{', '.join(currencies)} in {len(entities)} entities"
            )

            say("4. A card on file and an 'on creation' rule")
            by_customer: dict[str, list[Any]] = {}
            for invoice in invoices:
                if invoice.currency in currencies:
                    by_customer.setdefault(invoice.customer_id, []).append(invoice)
            customer = next(
                c
                for c, found in sorted(by_customer.items())
                if len({i.currency for i in found}) == 1
            )
            currency = by_customer[customer][0].currency
            method = await add_card(stubs, sandbox, ACCOUNT, customer)
            rule = (
                await stubs.rules.CreateRule(
                    rules_pb2.CreateRuleRequest(rule=on_creation(ACCOUNT, customer, currency))
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
                    await stubs.payments.ListCharges(
                        payments_pb2.ListChargesRequest(
                            account_id=ACCOUNT, invoice_record_no=record_no
                        )
                    )
                ).charges
                done = [c for c in found if c.state == payments_pb2.CHARGE_STATE_SUCCEEDED]
                return done[0] if done else None

            charge = await until("the rule's charge", charged, timeout=120)
            charged_seconds = time.monotonic() - created_at
            say(
                f"   charged {from_minor(charge.amount.amount_minor, currency)} {currency} "
                f"({charge.charge_id}) {charged_seconds * 1000:.0f} ms after the invoice was"
                " created"
            )

            async def applied() -> bool:
                return to_minor(await sandbox.invoice_due(record_no), currency) == 0

            await until("the payment applied in Intacct", applied, timeout=120)
            applied_seconds = time.monotonic() - created_at
            say(f"   applied in Intacct: amount due 0.00, {applied_seconds * 1000:.0f} ms in all")

            say("6. The payment link of another invoice")
            other = next(i for i in invoices if i.record_no != record_no and i.due.amount_minor > 0)
            link = (
                await stubs.payments.CreateLink(
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

            usage = await stubs.connector.GetApiUsage(
                connector_pb2.GetApiUsageRequest(account_id=ACCOUNT)
            )
            chain = await _trace_of(traces, record_no)

            summary.add("initial sync", f"{sync_seconds:.1f} s, {initial.api_calls} API calls")
            for name, count in records.items():
                summary.add(f"  {name}", f"{count:,}")
            summary.add("smart events installed", events)
            summary.add("invoice created -> charged", f"{charged_seconds * 1000:.0f} ms")
            summary.add("invoice created -> applied in Intacct", f"{applied_seconds * 1000:.0f} ms")
            summary.add("charges made", 1)
            summary.add("payment link", link.url)
            summary.add("Intacct API calls in all", usage.total_calls)
            for step, span in enumerate(chain):
                summary.add("trace of the charge" if step == 0 else "", ("  " * step) + span)
            return summary
    finally:
        await stubs.close()


def on_creation(account: str, customer: str, currency: str) -> rules_pb2.Rule:
    """An enabled rule that charges a customer's new invoices in full, as they are created."""
    return rules_pb2.Rule(
        account_id=account,
        name=f"charge {customer}'s new invoices",
        enabled=True,
        priority=10,
        conditions=rules_pb2.Conditions(customer_ids=[customer], currencies=[currency]),
        timing=rules_pb2.Timing(trigger=rules_pb2.TIMING_TRIGGER_ON_CREATE_OR_UPDATE),
        amount=rules_pb2.AmountPolicy(mode=rules_pb2.AMOUNT_MODE_OPEN_BALANCE),
    )


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
    except (DemoFailed, SandboxRefused, TimeoutError, grpc.aio.AioRpcError) as exc:
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
