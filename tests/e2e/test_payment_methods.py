"""Stored payment methods through the payments service, the card gateway sandbox and sync."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from arbridge.common.v1 import common_pb2
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from tests.conftest import TOKEN
from tests.support.payments import (
    FAST_RECOVERY,
    Payer,
    arbridge_logs,
    card_token,
    doomed_replica,
    empty_token,
    eventually,
    gateway_shopper,
    gateway_transactions,
    open_invoices_by_customer,
    synced_payments_suite,
    vault_at_gateway,
)
from tests.support.suite import Suite

VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"
# A number used nowhere else: it must appear in no table, log or error of arbridge.
CANARY = "4000056655665556"


async def shoppers_at_gateway(http: aiohttp.ClientSession, suite: Suite) -> int:
    async with http.get(suite.cards["base_url"] + "/sandbox/stats") as reply:
        return int((await reply.json())["shoppers"])


@pytest.mark.timeout(300)
async def test_payment_methods_add_dedupe_default_remove(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=30,
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        customers = (
            await sync.ListCustomers(sync_pb2.ListCustomersRequest(account_id="acme"))
        ).customers
        first, second = customers[0].customer_id, customers[1].customer_id
        payments = payments_pb2_grpc.PaymentsServiceStub(
            service_channel(suite.target("payments"), TOKEN)
        )

        async def add(
            http: aiohttp.ClientSession, customer: str, number: str, default: bool = False
        ) -> payments_pb2.AddPaymentMethodResponse:
            return await payments.AddPaymentMethod(
                payments_pb2.AddPaymentMethodRequest(
                    account_id="acme",
                    customer_id=customer,
                    gateway_token=await card_token(http, suite, number),
                    type=common_pb2.PAYMENT_METHOD_TYPE_CARD,
                    make_default=default,
                )
            )

        async def listed(customer: str) -> list[payments_pb2.PaymentMethod]:
            reply = await payments.ListPaymentMethods(
                payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=customer)
            )
            return list(reply.payment_methods)

        async with aiohttp.ClientSession() as http:
            shoppers_before = await shoppers_at_gateway(http, suite)
            visa = await add(http, first, VISA)
            method = visa.payment_method
            assert not visa.already_on_file
            assert (method.brand, method.last4, method.exp_month, method.exp_year) == (
                "VISA",
                "4242",
                11,
                2031,
            )
            assert method.is_default, "the first method of a customer is its default"
            assert method.fingerprint
            assert method.payment_method_id.startswith("pm_")
            assert method.type == common_pb2.PAYMENT_METHOD_TYPE_CARD

            # The same card again, under a new token: the method on file, nothing vaulted twice.
            again = await add(http, first, VISA)
            assert again.already_on_file
            assert again.payment_method.payment_method_id == method.payment_method_id

            master = (await add(http, first, MASTERCARD)).payment_method
            assert not master.is_default
            assert master.fingerprint != method.fingerprint
            assert [m.last4 for m in await listed(first)] == ["4242", "4444"]

            await payments.SetDefaultPaymentMethod(
                payments_pb2.SetDefaultPaymentMethodRequest(
                    account_id="acme", payment_method_id=master.payment_method_id
                )
            )
            assert [(m.last4, m.is_default) for m in await listed(first)] == [
                ("4444", True),
                ("4242", False),
            ]
            # Removing the default hands it to the remaining method.
            await payments.RemovePaymentMethod(
                payments_pb2.RemovePaymentMethodRequest(
                    account_id="acme", payment_method_id=master.payment_method_id
                )
            )
            assert [(m.last4, m.is_default) for m in await listed(first)] == [("4242", True)]

            # Five concurrent adds of one card for a customer without a shopper yet:
            # one shopper at the gateway, one method, one default.
            replies = await asyncio.gather(*(add(http, second, CANARY) for _ in range(5)))
            assert len({r.payment_method.payment_method_id for r in replies}) == 1
            assert sum(not r.already_on_file for r in replies) == 1
            assert [(m.last4, m.is_default) for m in await listed(second)] == [("5556", True)]
            assert await shoppers_at_gateway(http, suite) == shoppers_before + 2

            # A retry after a lost answer (same single-use token) gets the stored method,
            # not "token already used"; so does a retry under the same idempotency key.
            amex_token = await card_token(http, suite, AMEX)
            amex = await add_raw(payments, first, amex_token, key="add-amex-1")
            assert not amex.already_on_file
            for _ in range(2):
                retried = await add_raw(payments, first, amex_token, key="add-amex-1")
                assert retried.payment_method == amex.payment_method
                assert await add_raw(payments, first, amex_token) is not None
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await add_raw(payments, first, await card_token(http, suite, VISA), "add-amex-1")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "idempotency_key" in str(err.value.details())
            assert [m.last4 for m in await listed(first)] == ["4242", "0005"]

            # Bad input: a clear status, nothing written.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await add_raw(payments, first, await empty_token(http, suite))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "gateway_token" in str(err.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await add(http, "NO-SUCH-CUSTOMER", VISA)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "NO-SUCH-CUSTOMER" in str(err.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await add_raw(payments, "", "x")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "customer_id" in str(err.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await payments.SetDefaultPaymentMethod(
                    payments_pb2.SetDefaultPaymentMethodRequest(
                        account_id="acme", payment_method_id=master.payment_method_id
                    )
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await payments.AddPaymentMethod(
                    payments_pb2.AddPaymentMethodRequest(
                        account_id="acme",
                        customer_id=first,
                        gateway_token=await card_token(http, suite, VISA),
                        type=common_pb2.PAYMENT_METHOD_TYPE_ACH,
                    )
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "holds a card, not the bank account" in str(err.value.details())
            # Another account cannot see or touch these methods.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await payments.RemovePaymentMethod(
                    payments_pb2.RemovePaymentMethodRequest(
                        account_id="other", payment_method_id=method.payment_method_id
                    )
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(await listed(first)) == 2

        # No card number anywhere arbridge keeps things: its tables and its log.
        schema = f"{unique}_payments"
        conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
        try:
            dump = ""
            for table in ("payment_methods", "gateway_shoppers"):
                rows = await conn.fetch(f"SELECT t::text AS row FROM {table} t")
                dump += "\n".join(r["row"] for r in rows)
        finally:
            await conn.close()
        assert "4242" in dump, "the dump holds the methods (last four digits only)"
        log = suite.processes["payments"].logs()
        assert "payment_method.added" in log
        for number in (VISA, MASTERCARD, AMEX, CANARY):
            assert number not in dump
            assert number not in log


async def add_raw(
    payments: payments_pb2_grpc.PaymentsServiceAsyncStub, customer: str, token: str, key: str = ""
) -> payments_pb2.AddPaymentMethodResponse:
    return await payments.AddPaymentMethod(
        payments_pb2.AddPaymentMethodRequest(
            account_id="acme", customer_id=customer, gateway_token=token, idempotency_key=key
        )
    )


# A Mastercard whose last four digits are the Visa's.
MASTERCARD_4242 = "5105000000034242"


@pytest.mark.timeout(300)
async def test_cards_the_gateway_names_alike_are_charged_by_type_and_replaced_not_doubled(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """The card gateway names a shopper's stored card by type and last four digits. A
    charge names both; a new card with the name of one on file (the same card with a new
    expiry) replaces it; a removed method's source leaves the gateway's vault."""
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=40,
        service_extra={"ARBRIDGE_PAYMENTS_RECOVERY_SECONDS": "0.3"},
    ) as suite:
        by_customer = await open_invoices_by_customer(suite, "acme")
        customer = max(by_customer, key=lambda c: len(by_customer[c]))
        invoices = by_customer[customer]
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            visa = await payer.add_card(customer, VISA)
            master = await payer.add_card(customer, MASTERCARD_4242)  # the default now
            db = await asyncpg.connect(database_url)
            try:
                shopper_id = await db.fetchval(
                    f'SELECT shopper_id FROM "{unique}_payments".gateway_shoppers'
                    " WHERE customer_id = $1",
                    customer,
                )
            finally:
                await db.close()

            async def vaulted() -> list[tuple[str, str, str]]:
                shopper = await gateway_shopper(http, suite, shopper_id)
                return sorted(
                    (
                        c["creditCard"]["cardType"],
                        c["creditCard"]["cardLastFourDigits"],
                        c["creditCard"]["expirationYear"],
                    )
                    for c in shopper["paymentSources"]["creditCardInfo"]
                )

            async def charged_card(key: str, invoice: Any) -> dict[str, str]:
                reply = await payer.charge(
                    key, customer, [(invoice.record_no, 100)], currency=invoice.currency
                )
                assert reply.charge.state == payments_pb2.CHARGE_STATE_SUCCEEDED, reply.charge
                made = [
                    t
                    for t in await gateway_transactions(http, suite)
                    if t["merchantTransactionId"] == reply.charge.charge_id
                ]
                return dict(made[0]["creditCard"])

            assert await vaulted() == [("MASTERCARD", "4242", "2031"), ("VISA", "4242", "2031")]
            # The default is the Mastercard, and it is the card charged, not the Visa.
            assert await charged_card("by-type-1", invoices[0]) == {
                "cardLastFourDigits": "4242",
                "cardType": "MASTERCARD",
            }

            # The Visa reissued with a new expiry: it replaces the Visa on file, in the
            # vault too, so the gateway never holds two cards it names alike.
            reissue = payments_pb2.AddPaymentMethodRequest(
                account_id="acme",
                customer_id=customer,
                gateway_token=await card_token(http, suite, VISA, exp="12/33"),
            )
            reissued = await payer.stub.AddPaymentMethod(reissue)
            assert reissued.replaced_payment_method_id == visa.payment_method_id
            # A retry answers as the first did, the method it replaced included.
            assert await payer.stub.AddPaymentMethod(reissue) == reissued
            assert not reissued.already_on_file
            assert (reissued.payment_method.exp_month, reissued.payment_method.exp_year) == (
                12,
                2033,
            )
            listed = await payer.stub.ListPaymentMethods(
                payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=customer)
            )
            assert [(m.payment_method_id, m.is_default) for m in listed.payment_methods] == [
                (master.payment_method_id, True),
                (reissued.payment_method.payment_method_id, False),
            ]
            assert await vaulted() == [("MASTERCARD", "4242", "2031"), ("VISA", "4242", "2033")]

            # Removing the default Mastercard deletes it from the vault; the Visa, now the
            # default, is what the next charge takes.
            await payer.stub.RemovePaymentMethod(
                payments_pb2.RemovePaymentMethodRequest(
                    account_id="acme", payment_method_id=master.payment_method_id
                )
            )
            assert await vaulted() == [("VISA", "4242", "2033")]
            assert await charged_card("by-type-2", invoices[0]) == {
                "cardLastFourDigits": "4242",
                "cardType": "VISA",
            }

            # With the gateway down a removal still takes at once (a pay page discarding
            # a card it only charged never fails on it); the card leaves the vault when
            # the gateway answers again.
            async def gateway_faults(rate: float) -> None:
                async with http.put(
                    suite.cards["base_url"] + "/sandbox/faults", json={"error_5xx_rate": rate}
                ) as reply:
                    assert reply.status == 200, await reply.text()

            await gateway_faults(1.0)
            await payer.stub.RemovePaymentMethod(
                payments_pb2.RemovePaymentMethodRequest(
                    account_id="acme", payment_method_id=reissued.payment_method.payment_method_id
                )
            )
            listed = await payer.stub.ListPaymentMethods(
                payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=customer)
            )
            assert list(listed.payment_methods) == []
            await asyncio.sleep(1.0)  # recovery passes that meet the gateway down
            await gateway_faults(0.0)

            async def emptied() -> bool:
                return await vaulted() == []

            assert await eventually(emptied, timeout=20), await vaulted()

            # Two cards of one name added at once: whichever order they meet in, the
            # customer ends with one method of that name and the vault with one card (a
            # loser is replaced, or told to retry: ABORTED).
            async def add_visa(exp: str) -> payments_pb2.AddPaymentMethodResponse:
                return await payer.stub.AddPaymentMethod(
                    payments_pb2.AddPaymentMethodRequest(
                        account_id="acme",
                        customer_id=customer,
                        gateway_token=await card_token(http, suite, VISA, exp=exp),
                    )
                )

            replies = await asyncio.gather(
                *(add_visa(exp) for exp in ("01/34", "02/35")), return_exceptions=True
            )
            refused = [r for r in replies if isinstance(r, BaseException)]
            assert len(refused) < 2
            assert all(
                isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ABORTED
                for r in refused
            ), refused
            listed = await payer.stub.ListPaymentMethods(
                payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=customer)
            )
            assert [(m.brand, m.last4) for m in listed.payment_methods] == [("VISA", "4242")]
            assert [(kind, last4) for kind, last4, _ in await vaulted()] == [("VISA", "4242")]


@pytest.mark.timeout(300)
async def test_a_replacing_add_survives_a_crash_and_refused_vault_deletions_back_off(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    """A replica killed between retiring the card a new one replaces and saving the new
    one: the retry saves it and still names the card it replaced. A vault deletion the
    gateway refuses is not asked again on every recovery pass, and a card of that name
    cannot be saved until the gateway deletes the old one (the gateway could not tell
    them apart)."""
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=30,
        service_extra=FAST_RECOVERY,
    ) as suite:
        by_customer = await open_invoices_by_customer(suite, "acme")
        customer = next(iter(by_customer))
        schema = f'"{unique}_payments"'
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            visa = await payer.add_card(customer, VISA)
            doomed = await doomed_replica(
                tmp_path, suite, database_url, nats_url, unique, "method.after_retire", "retire"
            )
            reissue = payments_pb2.AddPaymentMethodRequest(
                account_id="acme",
                customer_id=customer,
                gateway_token=await card_token(http, suite, VISA, exp="12/33"),
            )
            victim = Payer(suite, http, doomed.grpc_target)  # (kept: its channel with it)
            try:
                with pytest.raises(grpc.aio.AioRpcError):
                    await victim.stub.AddPaymentMethod(reissue)
                assert await asyncio.to_thread(doomed.process.wait, 30) == -9
            finally:
                if doomed.process.poll() is None:  # (a failed test leaves no replica behind)
                    doomed.process.kill()
            # The old card is retired and nothing new is saved yet.
            listed = await payer.stub.ListPaymentMethods(
                payments_pb2.ListPaymentMethodsRequest(account_id="acme", customer_id=customer)
            )
            assert list(listed.payment_methods) == []

            reissued = await payer.stub.AddPaymentMethod(reissue)
            assert reissued.replaced_payment_method_id == visa.payment_method_id
            assert (reissued.payment_method.exp_year, reissued.payment_method.is_default) == (
                2033,
                True,
            )
            assert await payer.stub.AddPaymentMethod(reissue) == reissued
            db = await asyncpg.connect(database_url)
            try:
                shopper_id = await db.fetchval(
                    f"SELECT shopper_id FROM {schema}.gateway_shoppers WHERE customer_id = $1",
                    customer,
                )
                shopper = await gateway_shopper(http, suite, shopper_id)
                assert [
                    c["creditCard"]["expirationYear"]
                    for c in shopper["paymentSources"]["creditCardInfo"]
                ] == ["2033"]

                # Another Visa ending 4242 vaulted at the gateway behind arbridge's back:
                # the gateway can no longer tell which one a deletion by name means.
                await vault_at_gateway(
                    http, suite, shopper_id, await card_token(http, suite, VISA, exp="01/35")
                )
                await payer.stub.RemovePaymentMethod(
                    payments_pb2.RemovePaymentMethodRequest(
                        account_id="acme",
                        payment_method_id=reissued.payment_method.payment_method_id,
                    )
                )
                await asyncio.sleep(1.5)  # several recovery passes (0.2 s apart)
                pending = await db.fetchrow(
                    "SELECT vault_delete_pending, vault_delete_refusals, vault_delete_error,"
                    f" vault_delete_next_at - now() AS wait FROM {schema}.payment_methods"
                    " WHERE payment_method_id = $1",
                    reissued.payment_method.payment_method_id,
                )
                assert pending["vault_delete_pending"]
                assert pending["vault_delete_refusals"] == 1, pending
                assert pending["vault_delete_error"] == "CARD_NOT_IDENTIFIED"
                assert pending["wait"].total_seconds() > 30

                # A new Visa ending 4242 would be a third card of that name: refused, and
                # the deletion was asked again for it.
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await payer.stub.AddPaymentMethod(
                        payments_pb2.AddPaymentMethodRequest(
                            account_id="acme",
                            customer_id=customer,
                            gateway_token=await card_token(http, suite, VISA, exp="02/36"),
                        )
                    )
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "refuses to delete the removed VISA ending 4242" in str(err.value.details())
                assert (
                    await db.fetchval(
                        f"SELECT vault_delete_refusals FROM {schema}.payment_methods"
                        " WHERE payment_method_id = $1",
                        reissued.payment_method.payment_method_id,
                    )
                    == 2
                )
            finally:
                await db.close()
            assert arbridge_logs(suite).count("payment_method.vault_delete_refused") == 2
