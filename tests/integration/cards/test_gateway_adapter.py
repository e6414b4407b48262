"""The payments service's card gateway adapter against the card gateway sandbox."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from arbridge_cards_sandbox.gateway import Gateway
from arbridge_cards_sandbox.server import build_app
from arbridge_payments.gateway import (
    ACH,
    CARD,
    CardGateway,
    GatewayConfig,
    GatewayRefused,
    GatewayTimeout,
    GatewayUnavailable,
)


@dataclass
class Rig:
    adapter: CardGateway
    sandbox: Gateway
    http: aiohttp.ClientSession
    base: str

    async def token(self, number: str) -> str:
        auth = "Basic " + base64.b64encode(b"api:secret-pw").decode()
        async with self.http.post(
            self.base + "/services/2/payment-fields-tokens", headers={"Authorization": auth}
        ) as reply:
            token = reply.headers["Location"].rsplit("/", 1)[1]
        async with self.http.put(
            self.base + f"/services/2/payment-fields-tokens/{token}",
            json={"ccNumber": number, "expDate": "04/29", "cvv": "123"},
        ) as reply:
            assert reply.status == 200
        return token

    async def shopper_with(self, number: str, key: str) -> str:
        shopper = await self.adapter.create_shopper(
            merchant_shopper_id=key, name="Ada Lovelace", idempotency_key=f"shopper-{key}"
        )
        await self.adapter.add_source(shopper.shopper_id, await self.token(number), "card")
        return shopper.shopper_id


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    sandbox = Gateway("m1", "api", "secret-pw")
    server = TestServer(build_app(sandbox), host="127.0.0.1", port=0)
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            adapter = CardGateway(GatewayConfig(base, "api", "secret-pw", timeout=5), http)
            yield Rig(adapter, sandbox, http, base)
    finally:
        await server.close()


async def test_token_shopper_and_card_charge_in_minor_units(rig: Rig) -> None:
    token = await rig.token("4111111111111111")
    source = await rig.adapter.token_source(token)
    assert (source.kind, source.brand, source.last4, source.exp_month, source.exp_year) == (
        CARD,
        "VISA",
        "1111",
        4,
        2029,
    )
    first = await rig.adapter.create_shopper(
        merchant_shopper_id="c1", name="Ada Lovelace", idempotency_key="shopper-c1"
    )
    again = await rig.adapter.create_shopper(
        merchant_shopper_id="c1", name="Ada Lovelace", idempotency_key="shopper-c1"
    )
    assert again.shopper_id == first.shopper_id, "the same key gives the same shopper"
    vaulted = await rig.adapter.add_source(first.shopper_id, token, "card")
    assert [s.fingerprint for s in vaulted.sources] == [source.fingerprint]
    charged = await rig.adapter.charge(
        kind=CARD,
        merchant_transaction_id="ch_1",
        shopper_id=first.shopper_id,
        amount_minor=12_345,
        currency="USD",
        last4="1111",
        tax_minor=1_005,
        customer_reference="PO-77",
    )
    assert (charged.status, charged.amount_minor, charged.currency) == ("success", 12_345, "USD")
    stored = rig.sandbox.transactions[charged.transaction_id]
    assert str(stored.amount) == "123.45"
    assert stored.level2 == {"taxAmount": "10.05", "customerReferenceNumber": "PO-77"}
    yen = await rig.adapter.charge(
        kind=CARD,
        merchant_transaction_id="ch_2",
        shopper_id=first.shopper_id,
        amount_minor=5_000,
        currency="JPY",
        last4="1111",
    )
    assert yen.amount_minor == 5_000
    assert str(rig.sandbox.transactions[yen.transaction_id].amount) == "5000"


async def test_declines_duplicates_and_unknown_tokens_are_refusals(rig: Rig) -> None:
    shopper = await rig.shopper_with("4000000000009995", "c2")
    with pytest.raises(GatewayRefused) as err:
        await rig.adapter.charge(
            kind=CARD,
            merchant_transaction_id="ch_d",
            shopper_id=shopper,
            amount_minor=100,
            currency="USD",
            last4="9995",
        )
    assert (err.value.name, err.value.code) == ("INSUFFICIENT_FUNDS", "14016")
    assert "insufficient funds" in err.value.description
    declined = await rig.adapter.lookup("ch_d")
    assert declined is not None
    assert declined.status == "declined"
    with pytest.raises(GatewayRefused) as err:
        await rig.adapter.token_source("no-such-token")
    assert err.value.name == "EXPIRED_TOKEN"
    # Reading a token's card is a merchant call: without credentials it is refused.
    token = await rig.token("4242424242424242")
    async with rig.http.get(rig.base + f"/services/2/payment-fields-tokens/{token}") as reply:
        assert reply.status == 401
    wrong = CardGateway(GatewayConfig(rig.base, "api", "wrong-password"), rig.http)
    with pytest.raises(GatewayRefused) as err:
        await wrong.token_source(token)
    assert err.value.status == 401
    assert "wrong-password" not in str(err.value)
    assert await rig.adapter.lookup("never-charged") is None


async def test_a_lost_answer_is_a_timeout_and_the_lookup_finds_the_charge(rig: Rig) -> None:
    shopper = await rig.shopper_with("4242424242424242", "c3")
    rig.sandbox.faults.timeout_after_charge_next = 1
    with pytest.raises(GatewayTimeout):
        await rig.adapter.charge(
            kind=CARD,
            merchant_transaction_id="ch_lost",
            shopper_id=shopper,
            amount_minor=777,
            currency="USD",
            last4="4242",
        )
    found = await rig.adapter.lookup("ch_lost")
    assert found is not None
    assert (found.status, found.amount_minor, found.merchant_transaction_id) == (
        "success",
        777,
        "ch_lost",
    )
    # Repeating the charge under the same id never charges twice: the stored answer replays.
    replay = await rig.adapter.charge(
        kind=CARD,
        merchant_transaction_id="ch_lost",
        shopper_id=shopper,
        amount_minor=777,
        currency="USD",
        last4="4242",
    )
    assert replay.transaction_id == found.transaction_id
    assert len(rig.sandbox.transactions) == 1


async def test_5xx_is_unavailable_and_refunds_are_bounded(rig: Rig) -> None:
    shopper = await rig.shopper_with("5555555555554444", "c4")
    rig.sandbox.faults.error_5xx_rate = 1.0
    with pytest.raises(GatewayUnavailable):
        await rig.adapter.lookup("anything")
    rig.sandbox.faults.error_5xx_rate = 0.0
    charged = await rig.adapter.charge(
        kind=CARD,
        merchant_transaction_id="ch_r",
        shopper_id=shopper,
        amount_minor=10_000,
        currency="USD",
        last4="4444",
    )
    await rig.adapter.refund(charged.transaction_id, 2_550, "USD", "rf_1")
    after = await rig.adapter.lookup("ch_r")
    assert after is not None
    assert after.refunded_minor == 2_550
    with pytest.raises(GatewayRefused) as err:
        await rig.adapter.refund(charged.transaction_id, 8_000, "USD", "rf_2")
    assert err.value.name == "REFUND_MAX_AMOUNT_FAILURE"


async def test_ach_is_pending_until_it_settles(rig: Rig) -> None:
    rig.sandbox.ach_settle_seconds = 0.05
    shopper = rig.sandbox.create_shopper(
        {
            "firstName": "Bo",
            "lastName": "Bank",
            "paymentSources": {
                "ecpDetails": [
                    {
                        "ecp": {
                            "accountNumber": "123456789",
                            "routingNumber": "011000015",
                            "accountType": "CONSUMER_SAVINGS",
                        }
                    }
                ]
            },
        }
    )
    pending = await rig.adapter.charge(
        kind=ACH,
        merchant_transaction_id="ach_1",
        shopper_id=str(shopper.shopper_id),
        amount_minor=50_000,
        currency="USD",
        last4="6789",
    )
    assert pending.status == "PENDING"
    for _ in range(100):
        settled = await rig.adapter.lookup("ach_1", ACH)
        if settled is not None and settled.status != "PENDING":
            break
        await asyncio.sleep(0.02)
    assert settled is not None
    assert settled.status == "success"
