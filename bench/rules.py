"""Rules: evaluations per second, and the time from an Intacct change to the applied payment.

1. The engine: 100,000 open invoices against 50 rules (customer, group, amount,
   currency, terms and method conditions; the matching rule usually far down
   the priority list), one `decide` per invoice, in one process: evaluations
   per second and invoice-rule checks per second.
2. The schedule with a million charges on it: how long claiming the due ones
   takes, and that the plan uses the partial index (no scan).
3. End to end with every service as a process: invoices created in the
   sandbox Intacct UI one after another (one every 250 ms, open loop) for
   customers an "on creation" rule charges; the time from each creation to
   the moment the sandbox shows the invoice paid by the applied AR payment,
   p50 and p99.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge_devinfra.infra import ensure_infra, scratch_database
from arbridge_rules import engine
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import to_minor
from tests.conftest import TOKEN
from tests.e2e.test_rules import (
    SERVICES,
    _create_invoice,
    _customers_with_currency,
    _rule,
)
from tests.support.payments import (
    Payer,
    deposit_everywhere,
    intacct_values,
    synced_payments_suite,
)
from tests.support.suite import install_smart_events


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _engine(invoices: int = 100_000, rules: int = 50) -> dict[str, Any]:
    rng = random.Random(7)  # noqa: S311 (reproducible data, not secrets)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    currencies = ["USD", "CAD", "EUR", "GBP"]
    terms = ["Net 15", "Net 30", "Net 60", "Due on receipt"]
    triggers = [t for t in engine.TRIGGERS]
    specs = []
    for n in range(rules):
        specs.append(
            engine.RuleSpec(
                rule_id=f"r{n:03d}",
                name=f"rule {n}",
                priority=n,
                created_at=created,
                customer_ids=frozenset(
                    f"C{rng.randrange(5000):05d}" for _ in range(rng.choice((0, 0, 20)))
                ),
                customer_groups=frozenset({f"g{rng.randrange(10)}"} if n % 3 == 0 else ()),
                min_amount=rng.choice((None, 10_000)),
                max_amount=rng.choice((None, 500_000)),
                amount_currency="",
                currencies=frozenset({rng.choice(currencies)}),
                payment_terms=frozenset({rng.choice(terms)} if n % 2 else ()),
                method_types=frozenset({"card"} if n % 4 else ()),
                trigger=rng.choice(triggers),
                days=rng.randrange(10),
                time_of_day=clock(rng.randrange(24), 0),
                retry_after_days=(3, 5, 7),
            )
        )
    facts = []
    for n in range(invoices):
        total = rng.randrange(1_000, 1_000_000)
        invoice_date = date(2026, 1, 1) + timedelta(days=rng.randrange(365))
        facts.append(
            (
                engine.InvoiceFacts(
                    record_no=str(n),
                    customer_id=f"C{rng.randrange(5000):05d}",
                    currency=rng.choice(currencies),
                    total_minor=total,
                    due_minor=total,
                    state="open",
                    term_name=rng.choice(terms),
                    invoice_date=invoice_date,
                    due_date=invoice_date + timedelta(days=30),
                ),
                engine.CustomerFacts(
                    customer_id="",
                    groups=frozenset({f"g{rng.randrange(10)}"}),
                    method_types=frozenset({"card"}),
                ),
            )
        )
    zone = ZoneInfo("America/Los_Angeles")
    ordered = engine.ordered(specs)
    started = time.perf_counter()
    charged = 0
    checks = 0
    for invoice, customer in facts:
        decision = engine.decide(ordered, invoice, customer, zone, created)
        checks += len(decision.verdicts)
        charged += decision.charges
    elapsed = time.perf_counter() - started
    return {
        "engine_invoices": invoices,
        "engine_rules": rules,
        "engine_evaluations_per_s": round(invoices / elapsed),
        "engine_rule_checks_per_s": round(checks / elapsed),
        "engine_matched": charged,
        "engine_seconds": round(elapsed, 2),
    }


async def _end_to_end(count: int = 60, interval: float = 0.25) -> dict[str, Any]:
    infra = await asyncio.to_thread(ensure_infra)
    namespace = f"b{secrets.token_hex(3)}"
    async with (
        scratch_database(infra.database_url, "arbridge_bench") as dsn,
        synced_payments_suite(
            Path(tempfile.mkdtemp()),
            dsn,
            infra.nats_url,
            namespace,
            customers=20,
            invoices=200,
            services=SERVICES,
            service_extra={"ARBRIDGE_RULES_TICK_SECONDS": "0.1"},
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        payer = Payer(suite, http, suite.target("payments"))
        await install_smart_events(http, suite)
        await deposit_everywhere(payer, suite)
        candidates = await _customers_with_currency(suite)
        currency = candidates[0][1]
        customers = [c for c, cur in candidates if cur == currency][:5]
        for customer in customers:
            await payer.add_card(customer, "4242424242424242")
        await rules.CreateRule(rules_pb2.CreateRuleRequest(rule=_rule("bench", currency)))
        started: dict[str, float] = {}
        done: dict[str, float] = {}

        async def create_all() -> None:
            for n in range(count):
                at = time.monotonic()
                key = await _create_invoice(
                    http, suite, customers[n % len(customers)], "25.00", f"BENCH-{n}"
                )
                started[key] = at
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - at)))

        creating = asyncio.create_task(create_all())
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = await intacct_values(
                http, suite.sandbox_admin, suite.sandbox["company_id"], "ARINVOICE"
            )
            now = time.monotonic()
            for key in list(started):
                row = found.get(key)
                if key not in done and row and to_minor(row["TRX_TOTALDUE"], currency) == 0:
                    done[key] = now - started[key]
            if creating.done() and len(done) == count:
                break
            await asyncio.sleep(0.05)
        await creating
        memory = suite.peak_memory()
    lags = list(done.values())
    return {
        "e2e_invoices": count,
        "e2e_applied": len(lags),
        "e2e_interval_ms": int(interval * 1000),
        "e2e_change_to_applied_p50_ms": round(_percentile(lags, 0.5) * 1000),
        "e2e_change_to_applied_p99_ms": round(_percentile(lags, 0.99) * 1000),
        "peak_rss_mib": memory,
        "samples": {"change_to_applied_ms": [round(v * 1000, 1) for v in sorted(lags)]},
    }


async def run() -> dict[str, Any]:
    figures: dict[str, Any] = {"name": "rules"}
    figures.update(await asyncio.to_thread(_engine))
    figures.update(await _schedule_scale())
    figures.update(await _end_to_end())
    return figures


async def _schedule_scale(rows: int = 1_000_000, due: int = 200) -> dict[str, Any]:
    """The claim of due charges with a million scheduled: time per claim of 20, and the plan."""
    import asyncpg

    from arbridge_rules.scheduler import CLAIM_DUE

    migration = (resources.files("arbridge_rules") / "migrations/0001_rules.sql").read_text()
    infra = await asyncio.to_thread(ensure_infra)
    async with scratch_database(infra.database_url, "arbridge_bench") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(migration)
            started = time.perf_counter()
            await conn.execute(
                "INSERT INTO schedule (account_id, invoice_record_no, customer_id, rule_id, state,"
                " charge_at, scheduled_for, amount_minor, currency)"
                " SELECT 'acct-' || (n % 100), n::text, 'C' || (n % 5000), 'r1', 'scheduled',"
                " now() + make_interval(mins => 10 + n % 525600), current_date, 1000, 'USD'"
                " FROM generate_series(1, $1) n",
                rows,
            )
            await conn.execute(
                "UPDATE schedule SET charge_at = now() - interval '1 minute'"
                " WHERE invoice_record_no::bigint <= $1",
                due,
            )
            await conn.execute("ANALYZE schedule")
            loaded = time.perf_counter() - started
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN " + CLAIM_DUE.replace("$1", "20").replace("$2", "60")
                )
            )
            timings = []
            claimed = 0
            while claimed < due:
                at = time.perf_counter()
                got = await conn.fetch(CLAIM_DUE, 20, 60.0)
                timings.append(time.perf_counter() - at)
                claimed += len(got)
                if not got:
                    break
        finally:
            await conn.close()
    return {
        "schedule_rows": rows,
        "schedule_load_seconds": round(loaded, 1),
        "schedule_claims": len(timings),
        "schedule_claimed": claimed,
        "schedule_claim_p50_ms": round(_percentile(timings, 0.5) * 1000, 2),
        "schedule_claim_max_ms": round(max(timings) * 1000, 2),
        "schedule_claim_uses_index": "schedule_due" in plan and "Seq Scan" not in plan,
    }
