"""The card gateway sandbox: hosted fields, shoppers, charges, lookups, refunds, ACH, faults."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from arbridge_cards_sandbox.gateway import Gateway
from arbridge_cards_sandbox.server import build_app


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Live:
    base: str
    http: aiohttp.ClientSession
    auth: dict[str, str]

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, self.base + path, headers={**self.auth, **(headers or {})}, **kw
        ) as reply:
            text = await reply.text()
            return reply.status, (await reply.json()) if text else None

    async def card_token(self, number: str, exp: str = "12/30", cvv: str = "123") -> str:
        async with self.http.post(
            self.base + "/services/2/payment-fields-tokens", headers=self.auth
        ) as reply:
            assert reply.status == 201
            token = reply.headers["Location"].rsplit("/", 1)[1]
        # The payer's browser (hosted fields) sends the card straight to the gateway.
        async with self.http.put(
            self.base + f"/services/2/payment-fields-tokens/{token}",
            json={"ccNumber": number, "expDate": exp, "cvv": cvv},
        ) as reply:
            assert reply.status == 200, await reply.text()
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
        return token

    async def shopper(self, number: str) -> dict[str, Any]:
        token = await self.card_token(number)
        status, body = await self.call(
            "POST",
            "/services/2/vaulted-shoppers",
            json={
                "firstName": "Ada",
                "lastName": "Payer",
                "merchantShopperId": "C-00001",
                "paymentSources": {"creditCardInfo": [{"pfToken": token}]},
            },
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    server = TestServer(build_app(Gateway("m1", "api", "secret-pw")), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield Live(f"http://127.0.0.1:{server.port}", http, basic("api", "secret-pw"))
    finally:
        await server.close()


async def test_hosted_fields_shopper_and_a_charge_reveal_no_card_number(live: Live) -> None:
    shopper = await live.shopper("4111 1111 1111 1111")
    card = shopper["paymentSources"]["creditCardInfo"][0]["creditCard"]
    assert card["cardLastFourDigits"] == "1111"
    assert card["cardType"] == "VISA"
    assert "4111111111111111" not in str(shopper)
    status, charge = await live.call(
        "POST",
        "/services/2/transactions",
        json={
            "amount": 125.5,
            "currency": "USD",
            "cardTransactionType": "AUTH_CAPTURE",
            "vaultedShopperId": shopper["vaultedShopperId"],
            "merchantTransactionId": "ch-1",
            "level3Data": {"taxAmount": 9.5, "customerReferenceNumber": "PO-1"},
        },
    )
    assert status == 200
    assert charge["processingInfo"]["processingStatus"] == "success"
    assert charge["level3Data"] == {"taxAmount": 9.5, "customerReferenceNumber": "PO-1"}
    status, found = await live.call("GET", "/services/2/transactions/ch-1,m1")
    assert status == 200
    assert found["transactionId"] == charge["transactionId"]
    async with live.http.get(live.base + "/hosted-fields?token=x") as reply:
        page = await reply.text()
        assert "frame-ancestors" in reply.headers["Content-Security-Policy"]
    assert 'autocomplete="cc-number"' in page


async def test_declines_duplicates_and_idempotency(live: Live) -> None:
    declined = await live.shopper("4000000000009995")
    status, body = await live.call(
        "POST",
        "/services/2/transactions",
        json={
            "amount": 10,
            "currency": "USD",
            "vaultedShopperId": declined["vaultedShopperId"],
            "merchantTransactionId": "d-1",
        },
    )
    assert status == 400
    assert body["message"][0]["errorName"] == "INSUFFICIENT_FUNDS"
    ok = await live.shopper("5555555555554444")
    request = {
        "amount": 20,
        "currency": "USD",
        "vaultedShopperId": ok["vaultedShopperId"],
        "merchantTransactionId": "i-1",
    }
    first = await live.call(
        "POST", "/services/2/transactions", json=request, headers={"idempotency-key": "key-1"}
    )
    again = await live.call(
        "POST", "/services/2/transactions", json=request, headers={"idempotency-key": "key-1"}
    )
    assert first == again
    assert first[0] == 200
    status, body = await live.call(
        "POST",
        "/services/2/transactions",
        json={**request, "amount": 21},
        headers={"idempotency-key": "key-1"},
    )
    assert status == 400
    assert body["message"][0]["errorName"] == "IDEMPOTENCY_KEY_MISMATCH"
    status, body = await live.call("POST", "/services/2/transactions", json=request)
    assert status == 400
    assert body["message"][0]["errorName"] == "PROCESSING_DUPLICATE"
    _, listed = await live.call("GET", "/sandbox/transactions")
    assert len([t for t in listed["transactions"] if t["merchantTransactionId"] == "i-1"]) == 1
    async with live.http.get(live.base + "/services/2/transactions/i-1") as reply:
        assert reply.status == 401


async def test_refunds_are_bounded(live: Live) -> None:
    shopper = await live.shopper("378282246310005")
    _, charge = await live.call(
        "POST",
        "/services/2/transactions",
        json={"amount": 50, "currency": "USD", "vaultedShopperId": shopper["vaultedShopperId"]},
    )
    tx = charge["transactionId"]
    assert (await live.call("PUT", f"/services/2/transaction/{tx}/refund?amount=20"))[0] == 204
    status, body = await live.call("PUT", f"/services/2/transaction/{tx}/refund?amount=40")
    assert status == 400
    assert body["message"][0]["errorName"] == "REFUND_MAX_AMOUNT_FAILURE"
    _, found = await live.call("GET", f"/services/2/transactions/{tx}")
    assert found["refundedAmount"] == 20


async def test_a_lost_answer_leaves_a_charge_found_by_lookup(live: Live) -> None:
    shopper = await live.shopper("4242424242424242")
    await live.call("PUT", "/sandbox/faults", json={"timeout_after_charge_next": 1})
    with pytest.raises(aiohttp.ClientError):
        await live.call(
            "POST",
            "/services/2/transactions",
            json={
                "amount": 75,
                "currency": "USD",
                "vaultedShopperId": shopper["vaultedShopperId"],
                "merchantTransactionId": "lost-1",
            },
        )
    status, found = await live.call("GET", "/services/2/transactions/lost-1,m1")
    assert status == 200
    assert found["amount"] == 75
    status, body = await live.call(
        "POST",
        "/services/2/transactions",
        json={
            "amount": 75,
            "currency": "USD",
            "vaultedShopperId": shopper["vaultedShopperId"],
            "merchantTransactionId": "lost-1",
        },
    )
    assert body["message"][0]["errorName"] == "PROCESSING_DUPLICATE"  # never charged twice


async def test_ach_settles_or_returns_later_with_a_notification(live: Live) -> None:
    received: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.Response()

    app = web.Application()
    app.router.add_post("/ipn", hook)
    receiver = TestServer(app, host="127.0.0.1", port=0)
    await receiver.start_server()
    try:
        await live.call(
            "PUT",
            "/sandbox/notifications",
            json={"url": f"http://127.0.0.1:{receiver.port}/ipn", "ach_settle_seconds": 0.1},
        )
        _, shopper = await live.call(
            "POST",
            "/services/2/vaulted-shoppers",
            json={
                "firstName": "Bo",
                "lastName": "Bank",
                "paymentSources": {
                    "ecpDetails": [
                        {
                            "ecp": {
                                "accountNumber": "123450000",
                                "routingNumber": "011000015",
                                "accountType": "CONSUMER_CHECKING",
                            }
                        },
                        {
                            "ecp": {
                                "accountNumber": "987654321",
                                "routingNumber": "011000015",
                                "accountType": "CONSUMER_SAVINGS",
                            }
                        },
                    ]
                },
            },
        )
        banks = shopper["paymentSources"]["ecpDetails"]
        assert [b["ecp"]["publicAccountNumber"] for b in banks] == ["*****0000", "*****4321"]
        for account, merchant_tx in (("0000", "ach-bad"), ("4321", "ach-good")):
            status, pending = await live.call(
                "POST",
                "/services/2/alt-transactions",
                json={
                    "amount": 30,
                    "currency": "USD",
                    "vaultedShopperId": shopper["vaultedShopperId"],
                    "merchantTransactionId": merchant_tx,
                    "ecpTransaction": {"publicAccountNumber": account},
                },
            )
            assert status == 200
            assert pending["processingInfo"]["processingStatus"] == "PENDING"
        for _ in range(100):
            if len(received) == 2:
                break
            await asyncio.sleep(0.05)
        by_tx = {r["merchantTransactionId"]: r["transactionType"] for r in received}
        assert by_tx == {"ach-bad": "DECLINE", "ach-good": "CHARGE"}
    finally:
        await receiver.close()


async def test_stored_cards_are_named_by_type_and_last_four_and_deleted_by_name(
    live: Live,
) -> None:
    shopper = await live.shopper("4242424242424242")
    path = f"/services/2/vaulted-shoppers/{shopper['vaultedShopperId']}"
    for number, exp in (("5105000000034242", "12/30"), ("4242424242424242", "01/33")):
        token = await live.card_token(number, exp)
        status, body = await live.call(
            "PUT", path, json={"paymentSources": {"creditCardInfo": [{"pfToken": token}]}}
        )
        assert status == 200, body

    async def charge(key: str, card: dict[str, str]) -> tuple[int, Any]:
        return await live.call(
            "POST",
            "/services/2/transactions",
            json={
                "amount": 5,
                "currency": "USD",
                "cardTransactionType": "AUTH_CAPTURE",
                "vaultedShopperId": shopper["vaultedShopperId"],
                "merchantTransactionId": key,
                "creditCard": card,
            },
        )

    # Two Visas end in 4242: a charge that names only the digits, or the type and the
    # digits, reaches no card; the gateway never picks one.
    for key, card in (
        ("t-1", {"cardLastFourDigits": "4242"}),
        ("t-2", {"cardLastFourDigits": "4242", "cardType": "VISA"}),
    ):
        status, body = await charge(key, card)
        assert (status, body["message"][0]["errorName"]) == (400, "CARD_NOT_IDENTIFIED")
    status, body = await charge("t-3", {"cardLastFourDigits": "4242", "cardType": "MASTERCARD"})
    assert status == 200, body
    assert body["creditCard"] == {"cardLastFourDigits": "4242", "cardType": "MASTERCARD"}

    # A deletion names one card too: the Mastercard goes, deleting it again finds no
    # card, and a deletion that would name both Visas is refused.
    delete = {"cardLastFourDigits": "4242", "cardType": "MASTERCARD"}
    status, body = await live.call(
        "PUT",
        path,
        json={"paymentSources": {"creditCardInfo": [{"creditCard": delete, "status": "D"}]}},
    )
    assert status == 200, body
    cards = [c["creditCard"] for c in body["paymentSources"]["creditCardInfo"]]
    assert [(c["cardType"], c["expirationYear"]) for c in cards] == [
        ("VISA", "2030"),
        ("VISA", "2033"),
    ]
    status, body = await live.call(
        "PUT",
        path,
        json={"paymentSources": {"creditCardInfo": [{"creditCard": delete, "status": "D"}]}},
    )
    assert (status, body["message"][0]["errorName"]) == (400, "CARD_NOT_FOUND")
    status, body = await live.call(
        "PUT",
        path,
        json={
            "paymentSources": {
                "creditCardInfo": [
                    {
                        "creditCard": {"cardLastFourDigits": "4242", "cardType": "VISA"},
                        "status": "D",
                    }
                ]
            }
        },
    )
    assert (status, body["message"][0]["errorName"]) == (400, "CARD_NOT_IDENTIFIED")


async def test_bad_cards_and_credentials_are_refused(live: Live) -> None:
    async with live.http.post(
        live.base + "/services/2/payment-fields-tokens", headers=live.auth
    ) as r:
        token = r.headers["Location"].rsplit("/", 1)[1]
    for number, exp, cvv, error in (
        ("4111111111111112", "12/30", "123", "INVALID_CARD_NUMBER"),
        ("4111111111111111", "13/30", "123", "INVALID_EXP_DATE"),
        ("4111111111111111", "12/30", "12a", "INVALID_CVV"),
    ):
        async with live.http.put(
            live.base + f"/services/2/payment-fields-tokens/{token}",
            json={"ccNumber": number, "expDate": exp, "cvv": cvv},
        ) as reply:
            assert reply.status == 400
            assert (await reply.json())["message"][0]["errorName"] == error
    async with live.http.get(
        live.base + "/services/2/vaulted-shoppers/1", headers=basic("api", "wrong")
    ) as reply:
        assert reply.status == 401
