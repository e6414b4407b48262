"""Charges end to end: the AR store, the payments service and the card gateway sandbox.

Idempotency keys, balance and currency checks, declines, a lost gateway answer,
concurrent requests with one key, and a crash at each phase of a charge.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from arbridge.common.v1 import common_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge_runtime.money import from_minor
from tests.support.payments import (
    FAST_RECOVERY,
    Payer,
    doomed_replica,
    eventually,
    gateway_transactions,
    notify_url,
    open_invoices_by_customer,
    refund_at_gateway,
    sandbox_notifications,
    synced_payments_suite,
)
from tests.support.suite import Suite

# Every error message a test saw, scanned for card numbers at the end.
ERRORS_SEEN: list[str] = []


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    ERRORS_SEEN.append(str(err.value.details()))
    return err.value


@pytest.mark.timeout(600)
async def test_charges_idempotent_checked_and_made_once(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=30,
        invoices=400,
        service_extra=FAST_RECOVERY,
    ) as suite:
        by_customer = await open_invoices_by_customer(suite, "acme")
        ranked = sorted(by_customer, key=lambda c: -len(by_customer[c]))

        def one_currency(customer: str) -> list[Any]:
            groups = collections.defaultdict(list)
            for invoice in by_customer[customer]:
                groups[invoice.currency].append(invoice)
            return max(groups.values(), key=len)

        rich = max(ranked, key=lambda c: len(one_currency(c)))
        ranked.remove(rich)
        decliner = ranked.pop(0)
        usd = one_currency(rich)
        cur = usd[0].currency
        other = "EUR" if cur != "EUR" else "USD"
        assert len(usd) >= 6, "a customer has six open invoices in one currency"
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            await payer.add_card(rich, "4242424242424242")

            # One invoice, its whole balance; the same key again replays it.
            first = (await payer.charge("k-one", rich, [(usd[0].record_no, None)])).charge
            assert first.state == payments_pb2.CHARGE_STATE_SUCCEEDED, first.failure_reason
            assert first.amount.amount_minor == usd[0].due.amount_minor
            assert first.gateway_transaction_id
            assert first.source == payments_pb2.CHARGE_SOURCE_API
            assert first.posting_state == payments_pb2.POSTING_STATE_PENDING
            again = await payer.charge("k-one", rich, [(usd[0].record_no, None)])
            assert again.replayed
            assert again.charge == first
            mismatch = await refused(payer.charge("k-one", rich, [(usd[1].record_no, None)]))
            assert mismatch.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "another request" in str(mismatch.details())
            # The AR store still shows the balance until the payment is posted; the
            # charge already made counts against it.
            paid = await refused(payer.charge("k-one-b", rich, [(usd[0].record_no, None)]))
            assert paid.code() == grpc.StatusCode.ABORTED  # (until the AR store shows it paid)

            # Amounts: above the balance, another currency, a wrong expected total.
            over = usd[1].due.amount_minor + 1
            err = await refused(payer.charge("k-over", rich, [(usd[1].record_no, over)], cur))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "above its open balance" in str(err.details())
            err = await refused(payer.charge("k-eur", rich, [(usd[1].record_no, 100)], other))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert other in str(err.details())
            err = await refused(
                payer.charge(
                    "k-expect",
                    rich,
                    [(usd[1].record_no, None)],
                    expected_total=common_pb2.Money(amount_minor=1, currency=cur),
                )
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "expected_total" in str(err.details())
            err = await refused(
                payer.charge("k-l3", rich, [(usd[1].record_no, None)], include_level3=True)
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            err = await refused(payer.charge("", rich, [(usd[1].record_no, None)]))
            assert "idempotency_key" in str(err.details())
            err = await refused(payer.charge("k-none", rich, [("999999999", None)]))
            assert err.code() == grpc.StatusCode.NOT_FOUND

            # Pay balance: three invoices, one gateway transaction for their sum.
            three = usd[1:4]
            balance = (
                await payer.charge("k-balance", rich, [(i.record_no, None) for i in three])
            ).charge
            assert balance.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            assert balance.amount.amount_minor == sum(i.due.amount_minor for i in three)
            assert sorted(p.invoice_record_no for p in balance.invoices) == sorted(
                i.record_no for i in three
            )

            # Refunds: part, replay, bounds, the rest, then nothing left.
            async def refund(key: str, amount: int | None) -> payments_pb2.RefundChargeResponse:
                return await payer.refund(balance.charge_id, key, amount, cur, "customer asked")

            partial = await refund("r-1", 100)
            assert partial.refund.state == "succeeded"
            assert partial.charge.state == payments_pb2.CHARGE_STATE_PARTIALLY_REFUNDED
            assert partial.charge.refunded.amount_minor == 100
            assert (await refund("r-1", 100)).refund.refund_id == partial.refund.refund_id
            err = await refused(refund("r-1", 200))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            err = await refused(refund("r-big", balance.amount.amount_minor))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most" in str(err.details())
            rest = await refund("r-2", None)
            assert rest.refund.amount.amount_minor == balance.amount.amount_minor - 100
            assert rest.charge.state == payments_pb2.CHARGE_STATE_REFUNDED
            err = await refused(refund("r-3", None))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            at_gateway = {
                t["merchantTransactionId"]: t for t in await gateway_transactions(http, suite)
            }
            assert round(at_gateway[balance.charge_id]["refundedAmount"] * 100) == (
                balance.amount.amount_minor
            )
            # Level 2 data went with the charge: the invoices' PO numbers and their tax.
            level2 = at_gateway[balance.charge_id].get("level3Data", {})
            pos = [i.po_number for i in three if i.po_number]
            if pos:
                assert level2["customerReferenceNumber"] == balance.level2.customer_reference
                assert set(balance.level2.customer_reference.split(", ")) == set(pos)
            expected_tax = sum(
                i.tax.amount_minor * i.due.amount_minor // i.total.amount_minor
                for i in three
                if i.total.amount_minor
            )
            assert balance.level2.tax_amount.amount_minor == expected_tax

            # A partial payment.
            part = (await payer.charge("k-part", rich, [(usd[4].record_no, 150)], cur)).charge
            assert part.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            assert part.amount.amount_minor == 150
            # A caller that read the balance from the AR store (an auto-payment rule), which
            # does not show that payment yet, asks for the open balance up to what it read:
            # what the partial payment left is charged, not refused as too much.
            err = await refused(
                payer.stub.ChargeInvoices(
                    payments_pb2.ChargeInvoicesRequest(
                        account_id="acme",
                        idempotency_key="k-max-bad",
                        customer_id=rich,
                        invoices=[
                            payments_pb2.InvoiceAmount(
                                invoice_record_no=usd[4].record_no,
                                amount=common_pb2.Money(amount_minor=1, currency=cur),
                                maximum=common_pb2.Money(amount_minor=1, currency=cur),
                            )
                        ],
                    )
                )
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "both an amount and a maximum" in str(err.details())
            remainder = (
                await payer.stub.ChargeInvoices(
                    payments_pb2.ChargeInvoicesRequest(
                        account_id="acme",
                        idempotency_key="k-max",
                        customer_id=rich,
                        invoices=[
                            payments_pb2.InvoiceAmount(
                                invoice_record_no=usd[4].record_no,
                                maximum=common_pb2.Money(
                                    amount_minor=usd[4].due.amount_minor, currency=cur
                                ),
                            )
                        ],
                    )
                )
            ).charge
            assert remainder.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            assert remainder.amount.amount_minor == usd[4].due.amount_minor - 150

            # A decline, explained; then a retry with a good card succeeds.
            target = by_customer[decliner][0]
            await payer.add_card(decliner, "4000000000000002")
            declined = (await payer.charge("k-d1", decliner, [(target.record_no, None)])).charge
            assert declined.state == payments_pb2.CHARGE_STATE_DECLINED
            assert declined.failure_code == "DO_NOT_HONOR"
            assert "declined" in declined.failure_reason
            await payer.add_card(decliner, "5555555555554444")
            retry = (await payer.charge("k-d2", decliner, [(target.record_no, None)])).charge
            assert retry.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            err = await refused(
                payer.stub.RefundCharge(
                    payments_pb2.RefundChargeRequest(
                        account_id="acme", charge_id=declined.charge_id, idempotency_key="r-d"
                    )
                )
            )
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "only succeeded charges" in str(err.details())

            # The gateway charges and the answer is lost: found by lookup, recorded once.
            async with http.put(
                suite.cards["base_url"] + "/sandbox/faults",
                json={"timeout_after_charge_next": 1},
            ) as reply:
                assert reply.status == 200
            lost = (await payer.charge("k-lost", rich, [(usd[5].record_no, None)])).charge
            assert lost.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            assert lost.gateway_transaction_id

            # The gateway answers 5xx to the charge and to the lookup: the outcome is not
            # known, and the charge says so; once the gateway is back, a retry with the
            # same key looks it up, finds nothing, sends it under the same id: one charge.
            spare = ranked[10]
            spare_invoice = by_customer[spare][0]
            await payer.add_card(spare, "4242424242424242")
            faults_url = suite.cards["base_url"] + "/sandbox/faults"
            async with http.put(faults_url, json={"error_5xx_rate": 1.0}) as reply:
                assert reply.status == 200
            unknown = (await payer.charge("k-5xx", spare, [(spare_invoice.record_no, None)])).charge
            assert unknown.state == payments_pb2.CHARGE_STATE_PROCESSING
            async with http.put(faults_url, json={"error_5xx_rate": 0.0}) as reply:
                assert reply.status == 200
            waits: list[grpc.StatusCode] = []
            for _ in range(100):
                try:
                    resolved = await payer.charge("k-5xx", spare, [(spare_invoice.record_no, None)])
                except grpc.aio.AioRpcError as in_flight:
                    waits.append(in_flight.code())
                    await asyncio.sleep(0.2)
                    continue
                if resolved.charge.state != payments_pb2.CHARGE_STATE_PROCESSING:
                    break
                await asyncio.sleep(0.2)
            assert set(waits) <= {grpc.StatusCode.ABORTED}
            assert resolved.charge.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            assert resolved.charge.charge_id == unknown.charge_id

            # Five concurrent requests with one key per invoice: one charge per invoice.
            targets: list[tuple[str, Any]] = []
            for customer in ranked[:10]:
                await payer.add_card(customer, "4111111111111111")
                targets += [(customer, i) for i in by_customer[customer][:4]]

            async def five(customer: str, invoice: Any) -> list[Any]:
                key = f"k-conc-{invoice.record_no}"
                calls = [
                    payer.charge(
                        key, customer, [(invoice.record_no, None)], currency=invoice.currency
                    )
                    for _ in range(5)
                ]
                return list(await asyncio.gather(*calls, return_exceptions=True))

            results = await asyncio.gather(*(five(c, i) for c, i in targets))
            for answers in results:
                for answer in answers:
                    if isinstance(answer, grpc.aio.AioRpcError):
                        # Still in flight under this key: said so, retry later.
                        assert answer.code() == grpc.StatusCode.ABORTED, answer.details()
                        assert "in progress" in str(answer.details())
                    else:
                        assert answer.charge.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            for customer, invoice in targets:
                settled = await payer.charge(
                    f"k-conc-{invoice.record_no}",
                    customer,
                    [(invoice.record_no, None)],
                    currency=invoice.currency,
                )
                assert settled.replayed

            # The customer's charges, newest first, two per page.
            seen: list[payments_pb2.Charge] = []
            token = ""
            while True:
                page = await payer.stub.ListCharges(
                    payments_pb2.ListChargesRequest(
                        account_id="acme",
                        customer_id=rich,
                        page=common_pb2.PageRequest(page_size=2, page_token=token),
                    )
                )
                assert len(page.charges) <= 2
                seen += page.charges
                token = page.page.next_page_token
                if not token:
                    break
            assert [c.charge_id for c in seen] == [
                c.charge_id for c in (lost, remainder, part, balance, first)
            ]
            assert seen[3].state == payments_pb2.CHARGE_STATE_REFUNDED
            by_invoice = await payer.stub.ListCharges(
                payments_pb2.ListChargesRequest(
                    account_id="acme", invoice_record_no=usd[2].record_no
                )
            )
            assert [c.charge_id for c in by_invoice.charges] == [balance.charge_id]
            err = await refused(
                payer.stub.ListCharges(
                    payments_pb2.ListChargesRequest(
                        account_id="acme", page=common_pb2.PageRequest(page_token="ch_nope")
                    )
                )
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

            # Two different keys for one invoice at once: one charge, the other refused
            # (in progress, or the balance already taken), never both.
            rivals = [(c, i) for c in ranked[11:16] for i in by_customer[c][:2]]
            assert rivals
            for customer in {c for c, _ in rivals}:
                await payer.add_card(customer, "4111111111111111")

            async def two_keys(customer: str, invoice: Any) -> list[Any]:
                calls = [
                    payer.charge(
                        f"k-rival-{n}-{invoice.record_no}", customer, [(invoice.record_no, None)]
                    )
                    for n in range(2)
                ]
                return list(await asyncio.gather(*calls, return_exceptions=True))

            for pair in await asyncio.gather(*(two_keys(c, i) for c, i in rivals)):
                won = [a for a in pair if isinstance(a, payments_pb2.ChargeInvoicesResponse)]
                refusals = [a for a in pair if isinstance(a, grpc.aio.AioRpcError)]
                assert len(won) == 1, pair
                assert won[0].charge.state == payments_pb2.CHARGE_STATE_SUCCEEDED
                assert len(refusals) == 1, pair
                assert refusals[0].code() in (
                    grpc.StatusCode.ABORTED,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ), refusals[0].details()

            made = await gateway_transactions(http, suite)
            per_id = collections.Counter(t["merchantTransactionId"] for t in made)
            assert all(n == 1 for n in per_id.values()), per_id.most_common(3)
            # k-one, k-balance, k-part, k-max, k-d1 (declined), k-d2, k-lost, k-5xx, one
            # per target and one per rival pair.
            assert len(made) == 8 + len(targets) + len(rivals)
            approved = [t for t in made if t["processingInfo"]["processingStatus"] == "success"]
            assert len(approved) == 7 + len(targets) + len(rivals)

        conn = await asyncpg.connect(
            database_url, server_settings={"search_path": f"{unique}_payments"}
        )
        try:
            events = await conn.fetch("SELECT subject, payload FROM outbox")
            rows = []
            for table in ("charges", "charge_invoices", "refunds", "payment_methods"):
                rows += await conn.fetch(f"SELECT t::text AS row FROM {table} t")
            text = "\n".join(r["row"] for r in rows)
        finally:
            await conn.close()
        subjects = collections.Counter(r["subject"] for r in events)
        assert subjects["payments.charge.succeeded"] == 7 + len(targets) + len(rivals)
        assert subjects["payments.charge.declined"] == 1
        assert subjects["payments.charge.refunded"] == 2
        log = suite.processes["payments"].logs()
        payloads = b"".join(bytes(r["payload"]) for r in events)
        errors = "\n".join(ERRORS_SEEN)
        assert "above its open balance" in errors, "the error messages were collected"
        for number in ("4242424242424242", "4000000000000002", "4111111111111111"):
            assert number.encode() not in payloads
            assert number not in errors
            assert number not in text
            assert number not in log


@pytest.mark.timeout(600)
async def test_a_crash_at_each_phase_is_finished_by_recovery_once(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=10,
        invoices=120,
        service_extra=FAST_RECOVERY,
    ) as suite:
        by_customer = await open_invoices_by_customer(suite, "acme")
        pairs = [(c, i) for c, invoices in by_customer.items() for i in invoices]
        points = ("charge.after_record", "charge.after_processing", "charge.after_gateway")
        assert len(pairs) >= len(points) * 2
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            for customer in {c for c, _ in pairs[: len(points) * 2]}:
                await payer.add_card(customer, "4242424242424242")
            charged: list[payments_pb2.Charge] = []
            for round_no in range(2):
                for n, point in enumerate(points):
                    customer, invoice = pairs[round_no * len(points) + n]
                    key = f"crash-{round_no}-{point}"
                    # A replica that dies at this point of the charge.
                    doomed = await doomed_replica(
                        tmp_path, suite, database_url, nats_url, unique, point, f"{round_no}-{n}"
                    )
                    victim = Payer(suite, http, doomed.grpc_target)
                    err = await refused(
                        victim.charge(key, customer, [(invoice.record_no, None)], invoice.currency)
                    )
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    assert await asyncio.to_thread(doomed.process.wait, 30) == -9
                    # The surviving replica's recovery worker (or the caller's retry
                    # with the same key) finishes the charge.
                    codes: list[grpc.StatusCode] = []
                    for _ in range(100):
                        try:
                            answer = await payer.charge(
                                key, customer, [(invoice.record_no, None)], invoice.currency
                            )
                        except grpc.aio.AioRpcError as retry_err:
                            # In flight under this key until its lease lapses.
                            codes.append(retry_err.code())
                            await asyncio.sleep(0.2)
                            continue
                        if answer.charge.state != payments_pb2.CHARGE_STATE_PROCESSING:
                            break
                        await asyncio.sleep(0.2)
                    assert set(codes) <= {grpc.StatusCode.ABORTED}
                    assert answer.replayed
                    assert answer.charge.state == payments_pb2.CHARGE_STATE_SUCCEEDED, point
                    assert answer.charge.amount.amount_minor == invoice.due.amount_minor
                    charged.append(answer.charge)
            # A refund whose replica dies after the gateway refunded: the retry with the
            # same key records it from the gateway's refunded total, and refunds once.
            for n, point in enumerate(("refund.after_record", "refund.after_gateway")):
                target = charged[n]
                request = payments_pb2.RefundChargeRequest(
                    account_id="acme", charge_id=target.charge_id, idempotency_key=f"rf-{n}"
                )
                doomed = await doomed_replica(
                    tmp_path, suite, database_url, nats_url, unique, point, f"refund-{n}"
                )
                victim = Payer(suite, http, doomed.grpc_target)
                err = await refused(victim.stub.RefundCharge(request))
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert await asyncio.to_thread(doomed.process.wait, 30) == -9
                settled = await payer.stub.RefundCharge(request)
                assert settled.refund.state == "succeeded"
                assert settled.charge.state == payments_pb2.CHARGE_STATE_REFUNDED
            made = await gateway_transactions(http, suite)
        refunded = {t["merchantTransactionId"]: t["refundedAmount"] for t in made}
        for n in range(2):
            assert refunded[charged[n].charge_id] * 100 == pytest.approx(
                charged[n].amount.amount_minor
            ), "refunded once, not twice"
        per_id = collections.Counter(t["merchantTransactionId"] for t in made)
        assert len(made) == len(points) * 2, "one gateway charge per crashed request"
        assert set(per_id.values()) == {1}
        conn = await asyncpg.connect(
            database_url, server_settings={"search_path": f"{unique}_payments"}
        )
        try:
            stuck = await conn.fetchval(
                "SELECT count(*) FROM charges WHERE phase IN ('pending', 'processing')"
            )
            live = await conn.fetchval("SELECT count(*) FROM charge_invoices WHERE live")
        finally:
            await conn.close()
        assert (stuck, live) == (0, 0)


@pytest.mark.timeout(300)
async def test_refunds_made_at_the_gateway_outside_arbridge_are_recorded(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """A refund made in the card gateway's console, behind arbridge's back, is recorded:
    at once from the gateway's REFUND notification, or, with none, before arbridge's
    next refund of the charge, which is then neither held nor let past what is left."""
    async with _two_card_charges(tmp_path, database_url, nats_url, unique, "ext") as (
        suite,
        http,
        payer,
        one,
        two,
    ):

        async def refund(
            charge: payments_pb2.Charge, key: str, minor: int | None
        ) -> payments_pb2.RefundChargeResponse:
            return await payer.stub.RefundCharge(
                payments_pb2.RefundChargeRequest(
                    account_id="acme",
                    charge_id=charge.charge_id,
                    idempotency_key=key,
                    amount=None
                    if minor is None
                    else common_pb2.Money(amount_minor=minor, currency=charge.amount.currency),
                )
            )

        # With notifications: the console's refund is recorded from its notification.
        await sandbox_notifications(http, suite, notify_url(suite), 5)
        await refund_at_gateway(
            http, suite, one.gateway_transaction_id, from_minor(300, one.amount.currency)
        )

        async def noticed() -> payments_pb2.Charge | None:
            charge = await payer.get_charge(one.charge_id)
            return charge if charge.refunded.amount_minor else None

        seen = await eventually(noticed, timeout=30)
        assert seen is not None, "the console's refund was never recorded"
        assert seen.refunded.amount_minor == 300
        assert seen.state == payments_pb2.CHARGE_STATE_PARTIALLY_REFUNDED
        # The rest through arbridge: what is left, not held for totals that disagree.
        rest = await refund(one, "ext-rest", None)
        assert rest.refund.amount.amount_minor == 700
        assert rest.refund.state == "succeeded"
        assert rest.charge.state == payments_pb2.CHARGE_STATE_REFUNDED

        # Without a notification: found before arbridge's next refund of the charge.
        await sandbox_notifications(http, suite, "", 5)
        await refund_at_gateway(
            http, suite, two.gateway_transaction_id, from_minor(400, two.amount.currency)
        )
        too_much = await refused(refund(two, "ext-too-much", 700))
        assert too_much.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {from_minor(600, two.amount.currency)}" in str(too_much.details())
        left = await refund(two, "ext-left", 600)
        assert left.refund.state == "succeeded"
        assert left.charge.refunded.amount_minor == 1000
        assert left.charge.state == payments_pb2.CHARGE_STATE_REFUNDED
        made = {
            t["merchantTransactionId"]: t
            for t in await gateway_transactions(http, suite)
            if t["merchantTransactionId"] in (one.charge_id, two.charge_id)
        }
        assert {k: float(t["refundedAmount"]) for k, t in made.items()} == {
            one.charge_id: 10.0,
            two.charge_id: 10.0,
        }


@pytest.mark.timeout(600)
async def test_a_held_refund_is_resolved_by_an_operator_from_the_gateway_console(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """A refund pending while someone refunds in the gateway's console is held: the totals
    cannot tell whether it went out. The console shows arbridge's refunds by their id;
    an operator says sent or not sent, and the console's refund is recorded beside it."""
    async with _two_card_charges(tmp_path, database_url, nats_url, unique, "held") as (
        suite,
        http,
        payer,
        one,
        two,
    ):
        currency = one.amount.currency

        def refund_of(charge: payments_pb2.Charge, key: str) -> Any:
            return payments_pb2.RefundChargeRequest(
                account_id="acme",
                charge_id=charge.charge_id,
                idempotency_key=key,
                amount=common_pb2.Money(amount_minor=400, currency=currency),
            )

        async def console(charge: payments_pb2.Charge) -> list[dict[str, str]]:
            made = await gateway_transactions(http, suite)
            found = next(t for t in made if t["merchantTransactionId"] == charge.charge_id)
            return list(found["refunds"])

        async def resolve(refund_id: str, resolution: Any) -> Any:
            return await payer.stub.ResolveRefund(
                payments_pb2.ResolveRefundRequest(
                    account_id="acme", refund_id=refund_id, resolution=resolution
                )
            )

        # Sent: the replica dies once the gateway refunded; meanwhile the console
        # refunds 3.00 more. The retry finds neither total and holds the refund.
        doomed = await doomed_replica(
            tmp_path, suite, database_url, nats_url, unique, "refund.after_gateway", "held"
        )
        victim = Payer(suite, http, doomed.grpc_target)
        err = await refused(victim.stub.RefundCharge(refund_of(one, "held-sent")))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.to_thread(doomed.process.wait, 30) == -9
        await refund_at_gateway(http, suite, one.gateway_transaction_id, from_minor(300, currency))
        held = await refused(payer.stub.RefundCharge(refund_of(one, "held-sent")))
        assert held.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ResolveRefund" in str(held.details())
        match = re.search(r"rf_[0-9a-f]+", str(held.details()))
        assert match is not None
        sent_id = match.group(0)
        # The console lists arbridge's refund by its id, and the other without one.
        assert sorted(r["reason"] for r in await console(one)) == ["", sent_id]
        unsaid = await refused(resolve(sent_id, payments_pb2.REFUND_RESOLUTION_UNSPECIFIED))
        assert unsaid.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "REFUND_RESOLUTION_SENT" in str(unsaid.details())
        elsewhere = await refused(
            payer.stub.ResolveRefund(
                payments_pb2.ResolveRefundRequest(
                    account_id="globex",
                    refund_id=sent_id,
                    resolution=payments_pb2.REFUND_RESOLUTION_SENT,
                )
            )
        )
        assert elsewhere.code() == grpc.StatusCode.NOT_FOUND
        resolved = await resolve(sent_id, payments_pb2.REFUND_RESOLUTION_SENT)
        assert resolved.refund.state == "succeeded"
        assert resolved.charge.refunded.amount_minor == 700  # 4.00 ours, 3.00 the console's
        assert resolved.charge.state == payments_pb2.CHARGE_STATE_PARTIALLY_REFUNDED
        again = await refused(resolve(sent_id, payments_pb2.REFUND_RESOLUTION_SENT))
        assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "succeeded" in str(again.details())
        replay = await payer.stub.RefundCharge(refund_of(one, "held-sent"))
        assert (replay.refund.refund_id, replay.refund.state) == (sent_id, "succeeded")

        # Not sent: the gateway answers 503 to everything, so the refund stays pending;
        # then the console refunds 2.50.
        faults_url = suite.cards["base_url"] + "/sandbox/faults"
        async with http.put(faults_url, json={"error_5xx_rate": 1.0}) as reply:
            assert reply.status == 200, await reply.text()
        try:
            down = await refused(payer.stub.RefundCharge(refund_of(two, "held-unsent")))
            assert down.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            async with http.put(faults_url, json={"error_5xx_rate": 0.0}) as reply:
                assert reply.status == 200, await reply.text()
        await refund_at_gateway(http, suite, two.gateway_transaction_id, from_minor(250, currency))
        held = await refused(payer.stub.RefundCharge(refund_of(two, "held-unsent")))
        assert held.code() == grpc.StatusCode.FAILED_PRECONDITION
        match = re.search(r"rf_[0-9a-f]+", str(held.details()))
        assert match is not None
        unsent_id = match.group(0)
        assert [r["reason"] for r in await console(two)] == [""]
        # "Sent" is refused: the gateway's total cannot hold it.
        wrong = await refused(resolve(unsent_id, payments_pb2.REFUND_RESOLUTION_SENT))
        assert wrong.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot have been sent" in str(wrong.details())
        resolved = await resolve(unsent_id, payments_pb2.REFUND_RESOLUTION_NOT_SENT)
        assert resolved.refund.state == "failed"
        assert resolved.charge.refunded.amount_minor == 250  # the console's only
        replay = await payer.stub.RefundCharge(refund_of(two, "held-unsent"))
        assert replay.refund.state == "failed"  # never sent, whoever asks again
        rest = await payer.stub.RefundCharge(
            payments_pb2.RefundChargeRequest(
                account_id="acme", charge_id=two.charge_id, idempotency_key="held-rest"
            )
        )
        assert rest.refund.amount.amount_minor == 750
        assert rest.charge.state == payments_pb2.CHARGE_STATE_REFUNDED
        made = {
            t["merchantTransactionId"]: float(t["refundedAmount"])
            for t in await gateway_transactions(http, suite)
        }
        assert made[one.charge_id] == 7.0
        assert made[two.charge_id] == 10.0


@contextlib.asynccontextmanager
async def _two_card_charges(
    tmp_path: Path, database_url: str, nats_url: str, unique: str, prefix: str
) -> AsyncIterator[
    tuple[Suite, aiohttp.ClientSession, Payer, payments_pb2.Charge, payments_pb2.Charge]
]:
    """A suite with payments (quick recovery) and two succeeded card charges of 10.00 of
    one customer: (suite, http session, payer, first charge, second charge)."""
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=60,
        services=("connector", "sync", "payments", "gateway"),
        service_extra=FAST_RECOVERY,
    ) as suite:
        by_customer = await open_invoices_by_customer(suite, "acme")
        customer = max(by_customer, key=lambda c: len(by_customer[c]))
        first, second = [i for i in by_customer[customer] if i.due.amount_minor >= 1000][:2]
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            await payer.add_card(customer, "4242424242424242")
            one, two = [
                (
                    await payer.charge(f"{prefix}-{n}", customer, [(i.record_no, 1000)], i.currency)
                ).charge
                for n, i in enumerate((first, second))
            ]
            assert one.state == two.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            yield suite, http, payer, one, two
