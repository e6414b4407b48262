"""The pay pages' guards, as a hostile or clumsy client meets them over plain HTTP.

A double-submitted form charges once; a cross-site post, a tampered or
expired link, a bad amount and another link's receipt are refused with a
page that says why; a link used to test cards stops taking them.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from arbridge.common.v1 import common_pb2
from arbridge.payments.v1 import payments_pb2
from arbridge_devinfra.infra import free_port
from arbridge_runtime.money import from_minor
from tests.support.payments import (
    Payer,
    gateway_transactions,
    open_invoices_by_customer,
    synced_payments_suite,
)

FIELD = re.compile(r'name="(attempt|card_token)" value="([^"]+)"')


async def _form(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with http.get(url) as reply:
        assert reply.status == 200, await reply.text()
        return dict(FIELD.findall(await reply.text()))


async def _fill(
    http: aiohttp.ClientSession, suite: Any, token: str, number: str, exp: str = "11/31"
) -> None:
    """What the hosted-fields frame does in the payer's browser."""
    async with http.put(
        suite.cards["base_url"] + f"/services/2/payment-fields-tokens/{token}",
        json={"ccNumber": number, "expDate": exp, "cvv": "737"},
    ) as reply:
        assert reply.status == 200


async def _post(
    http: aiohttp.ClientSession, url: str, data: dict[str, str], origin: str
) -> tuple[int, str, str]:
    async with http.post(
        url + "/pay", data=data, headers={"Origin": origin}, allow_redirects=False
    ) as reply:
        return reply.status, reply.headers.get("Location", ""), await reply.text()


@pytest.mark.timeout(300)
async def test_pay_pages_charge_once_and_refuse_what_they_must(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=120,
        service_extra={
            "ARBRIDGE_PAY_PORT": str(port),
            "ARBRIDGE_PAY_BASE_URL": base,
            "ARBRIDGE_LINK_TTL_SECONDS": "60",
        },
    ) as suite:
        by_customer = await open_invoices_by_customer(suite, "acme")
        customer, other = sorted(by_customer, key=lambda c: -len(by_customer[c]))[:2]
        invoice = by_customer[customer][0]
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))

            async def link(kind: Any, who: str, record_no: str = "", ttl: int = 0) -> str:
                reply = await payer.stub.CreateLink(
                    payments_pb2.CreateLinkRequest(
                        account_id="acme",
                        kind=kind,
                        customer_id=who,
                        invoice_record_no=record_no,
                        ttl_seconds=ttl,
                    )
                )
                return str(reply.link.url)

            url = await link(payments_pb2.LINK_KIND_PAYMENT, customer, invoice.record_no)
            form = await _form(http, url)
            await _fill(http, suite, form["card_token"], "4111111111111111")
            amount = "1.00"
            data = {
                "attempt": form["attempt"],
                "card_token": form["card_token"],
                "method": "new-card",
                "invoice": invoice.record_no,
                f"amount_{invoice.record_no}": amount,
            }

            # A form posted from another site is refused before anything happens.
            status, _, text = await _post(http, url, data, "https://evil.example")
            assert status == 403
            assert "another site" in text

            # The same form sent twice (a double click): one charge, the same receipt.
            first = await _post(http, url, data, base)
            again = await _post(http, url, data, base)
            assert first[0] == again[0] == 303
            assert first[1] == again[1]
            assert "/charges/ch_" in first[1]
            mine = [
                t
                for t in await gateway_transactions(http, suite)
                if t["processingInfo"]["processingStatus"] == "success"
            ]
            assert len(mine) == 1
            assert mine[0]["amount"] == 1.0
            async with http.get(base + first[1]) as reply:
                assert reply.status == 200
                assert "Payment received" in await reply.text()

            # Refunds show on the receipt: a part, then the rest.
            charge_id = first[1].split("/charges/")[1]
            cur = invoice.currency
            for key, minor in (("refund-part", 40), ("refund-rest", None)):
                await payer.stub.RefundCharge(
                    payments_pb2.RefundChargeRequest(
                        account_id="acme",
                        charge_id=charge_id,
                        idempotency_key=key,
                        amount=None
                        if minor is None
                        else common_pb2.Money(amount_minor=minor, currency=cur),
                    )
                )
                async with http.get(base + first[1]) as reply:
                    receipt = _plain_text(await reply.text())
                if minor is not None:
                    assert "Payment received" in receipt
                    assert (
                        f"Part of it was refunded: {from_minor(40, cur)} {cur} back to the"
                        " card ending 1111." in receipt
                    ), receipt
                    assert f"Refunded {from_minor(40, cur)} {cur}" in receipt
                else:
                    assert "Payment refunded" in receipt
                    assert (
                        f"This payment was refunded in full: {amount} {cur} back to the card"
                        " ending 1111." in receipt
                    ), receipt
                    assert f"Refunded {amount} {cur}" in receipt

            # Paying once with a new card never takes a saved one away. The gateway tells
            # a customer's cards apart by type and last four digits only, so a saved card
            # with the new one's (here the same card with a new expiry) stays, and the
            # payer is told to use it or save the new one in its place.
            saved = await payer.add_card(customer, "4111111111111111")
            form = await _form(http, url)
            await _fill(http, suite, form["card_token"], "4111111111111111", exp="12/33")
            status, _, text = await _post(
                http,
                url,
                {**data, "attempt": form["attempt"], "card_token": form["card_token"]},
                base,
            )
            assert status == 422
            assert "VISA ending 1111 is already saved" in text
            kept = await payer.stub.ListPaymentMethods(
                payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=customer)
            )
            assert [m.payment_method_id for m in kept.payment_methods] == [saved.payment_method_id]

            # Another link cannot show this receipt.
            elsewhere = await link(payments_pb2.LINK_KIND_PAY_BALANCE, customer)
            charge_path = first[1].split("/charges/")[1]
            async with http.get(f"{elsewhere}/charges/{charge_path}") as reply:
                assert reply.status == 404

            # An amount that is not one, and one above what is due, are explained.
            form = await _form(http, url)
            bad = {**data, "attempt": form["attempt"], "card_token": form["card_token"]}
            status, _, text = await _post(
                http, url, {**bad, f"amount_{invoice.record_no}": "twelve"}, base
            )
            assert status == 422
            assert f"Enter the amount for invoice {invoice.invoice_number} as a number" in text
            # A decimal comma is refused, not read as thousands (12,50 is not 1250).
            status, _, text = await _post(
                http, url, {**bad, f"amount_{invoice.record_no}": "0,50"}, base
            )
            assert status == 422
            assert "with a point before the cents" in text
            too_much = from_minor(invoice.due.amount_minor + 1, invoice.currency)
            status, _, text = await _post(
                http, url, {**bad, f"amount_{invoice.record_no}": too_much}, base
            )
            assert status == 422
            assert f"The amount for invoice {invoice.invoice_number} is more than is due" in text

            # A tampered link and an unknown one are not valid; an expired one says so.
            head, _, signature = url.rpartition(".")
            for wrong in (f"{head}.{signature[::-1]}", base + "/l/lk_0.1.x"):
                async with http.get(wrong) as reply:
                    assert reply.status == 404
                    assert "This link is not valid" in await reply.text()
            parts = url.rsplit("/", 1)[1].split(".")
            expired = f"{base}/l/{parts[0]}.1700000000.{parts[2]}"
            async with http.get(expired) as reply:
                assert reply.status == 404  # the expiry is signed: changing it breaks the link
            short = await link(payments_pb2.LINK_KIND_PAYMENT, customer, invoice.record_no, ttl=1)
            await asyncio.sleep(1.5)
            async with http.get(short) as reply:
                assert reply.status == 410
                assert "This link has expired" in await reply.text()
            status, _, text = await _post(http, short, data, base)
            assert status == 410

            # A link used to test cards: five declines within the hour, then no more tries.
            card_tester = await link(
                payments_pb2.LINK_KIND_PAYMENT, other, by_customer[other][0].record_no
            )
            record_no = by_customer[other][0].record_no
            statuses = []
            for _ in range(6):
                form = await _form(http, card_tester)
                await _fill(http, suite, form["card_token"], "4000000000000002")
                status, _, text = await _post(
                    http,
                    card_tester,
                    {
                        "attempt": form["attempt"],
                        "card_token": form["card_token"],
                        "method": "new-card",
                        "invoice": record_no,
                        f"amount_{record_no}": "1.00",
                    },
                    base,
                )
                statuses.append(status)
            assert statuses == [402] * 5 + [429]
            assert "Too many payments on this link were declined" in text
            declined = [
                t
                for t in await gateway_transactions(http, suite)
                if t["processingInfo"]["processingStatus"] == "declined"
            ]
            assert len(declined) == 5
            # The declined cards were not kept.
            methods = await payer.stub.ListPaymentMethods(
                payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=other)
            )
            assert list(methods.payment_methods) == []


def _plain_text(html: str) -> str:
    """A page's text with its tags and the white space between them collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())
