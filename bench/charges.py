"""Charges: sustained charges per second with idempotency through PostgreSQL, and latency.

The payments service runs as a process against the card gateway sandbox at
zero latency, with sync's AR store behind it. 1,000 open invoices are each
charged by five concurrent requests under one idempotency key (64 invoices
in flight at a time). Reports charges per second, p50/p99 latency of the
request that made each charge, how the other four were answered (a replay
of the result, or ABORTED while the first was in flight), and the number of
gateway transactions, which must be exactly one per invoice. Then 100 more
invoices are charged one request at a time: a charge's latency unqueued.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from arbridge.payments.v1 import payments_pb2
from arbridge_devinfra.infra import ensure_infra, scratch_database
from tests.support.payments import (
    Payer,
    gateway_transactions,
    open_invoices_by_customer,
    synced_payments_suite,
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run(
    invoices: int = 1_000, per_key: int = 5, in_flight: int = 64, sequential: int = 100
) -> dict[str, Any]:
    infra = await asyncio.to_thread(ensure_infra)
    namespace = f"b{secrets.token_hex(3)}"
    async with (
        scratch_database(infra.database_url, "arbridge_bench") as dsn,
        synced_payments_suite(
            Path(tempfile.mkdtemp()),
            dsn,
            infra.nats_url,
            namespace,
            customers=1_000,
            # About one seeded invoice in eight is open in the six-month window.
            invoices=invoices * 10,
            timeout=600,
        ) as suite,
    ):
        by_customer = await open_invoices_by_customer(suite, "acme")
        everything = [(c, i) for c, found in by_customer.items() for i in found]
        targets, singles = everything[:invoices], everything[invoices : invoices + sequential]
        assert len(targets) == invoices, f"only {len(everything)} open invoices"
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            for customer in {c for c, _ in targets + singles}:
                await payer.add_card(customer, "4111111111111111")
            made_latency: list[float] = []
            answers: collections.Counter[str] = collections.Counter()
            gate = asyncio.Semaphore(in_flight)

            async def one(customer: str, invoice: Any) -> None:
                async def call() -> None:
                    started = time.perf_counter()
                    try:
                        reply = await payer.charge(
                            f"bench-{invoice.record_no}",
                            customer,
                            [(invoice.record_no, None)],
                            invoice.currency,
                        )
                    except grpc.aio.AioRpcError as err:
                        answers[err.code().name] += 1
                        return
                    state = payments_pb2.ChargeState.Name(reply.charge.state)
                    answers["replayed" if reply.replayed else state] += 1
                    if not reply.replayed:
                        made_latency.append(time.perf_counter() - started)

                async with gate:
                    await asyncio.gather(*(call() for _ in range(per_key)))

            started = time.perf_counter()
            await asyncio.gather(*(one(c, i) for c, i in targets))
            elapsed = time.perf_counter() - started
            # One request at a time: the latency of a charge without queueing.
            alone: list[float] = []
            for customer, invoice in singles:
                began = time.perf_counter()
                reply = await payer.charge(
                    f"bench-alone-{invoice.record_no}",
                    customer,
                    [(invoice.record_no, None)],
                    invoice.currency,
                )
                alone.append(time.perf_counter() - began)
                assert reply.charge.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            made = await gateway_transactions(http, suite)
        memory = suite.peak_memory()
    per_id = collections.Counter(t["merchantTransactionId"] for t in made)
    # The property the figures are worth nothing without: one gateway charge per invoice.
    expected = invoices + len(singles)
    assert len(made) == expected, f"{len(made)} gateway transactions for {expected} charges"
    assert max(per_id.values()) == 1, per_id.most_common(3)
    return {
        "name": "charges",
        "invoices": invoices,
        "requests_per_key": per_key,
        "in_flight_invoices": in_flight,
        "seconds": round(elapsed, 2),
        "charges_per_second": round(invoices / elapsed, 1),
        "requests_per_second": round(invoices * per_key / elapsed, 1),
        "charge_latency_p50_ms": round(_percentile(made_latency, 0.5) * 1000, 1),
        "charge_latency_p99_ms": round(_percentile(made_latency, 0.99) * 1000, 1),
        "answers": dict(answers),
        "one_at_a_time_charges": len(alone),
        "one_at_a_time_p50_ms": round(_percentile(alone, 0.5) * 1000, 1),
        "one_at_a_time_p99_ms": round(_percentile(alone, 0.99) * 1000, 1),
        "gateway_transactions": len(made),
        "gateway_transactions_per_invoice_max": max(per_id.values()) if per_id else 0,
        "peak_rss_mib": memory,
        "samples": {
            "charge_latency_ms": [round(v * 1000, 1) for v in sorted(made_latency)],
            "one_at_a_time_ms": [round(v * 1000, 1) for v in sorted(alone)],
        },
    }
