"""Payer links through the payments service, written back to Intacct by sync."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2

from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from tests.conftest import TOKEN
from tests.support.payments import (
    eventually,
    intacct_values,
    open_invoices_by_customer,
    synced_payments_suite,
)


@pytest.mark.timeout(300)
async def test_links_are_signed_expiring_revocable_and_written_back(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=120,
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        await sync.UpdatePreferences(
            sync_pb2.UpdatePreferencesRequest(
                preferences=sync_pb2.Preferences(account_id="acme", write_back_links=True),
                update_mask=field_mask_pb2.FieldMask(paths=["write_back_links"]),
            )
        )
        payments = payments_pb2_grpc.PaymentsServiceStub(
            service_channel(suite.target("payments"), TOKEN)
        )
        by_customer = await open_invoices_by_customer(suite, "acme")
        customer = max(by_customer, key=lambda c: len(by_customer[c]))
        invoice = by_customer[customer][0]
        other_customer = next(c for c in by_customer if c != customer)

        async def create(
            kind: payments_pb2.LinkKind.ValueType,
            invoice_no: str = "",
            who: str = customer,
            ttl: int = 0,
        ) -> payments_pb2.Link:
            reply = await payments.CreateLink(
                payments_pb2.CreateLinkRequest(
                    account_id="acme",
                    kind=kind,
                    customer_id=who,
                    invoice_record_no=invoice_no,
                    ttl_seconds=ttl,
                )
            )
            return reply.link

        first = await create(payments_pb2.LINK_KIND_PAYMENT, invoice.record_no)
        assert first.url.startswith("http://127.0.0.1:8430/l/" + first.link_id + ".")
        days = (first.expires_at.ToDatetime(UTC) - datetime.now(UTC)).days
        assert 29 <= days <= 30, "the default lifetime is 30 days"
        second = await create(payments_pb2.LINK_KIND_PAYMENT, invoice.record_no, ttl=3600)
        assert second.url != first.url
        assert second.link_id != first.link_id
        balance = await create(payments_pb2.LINK_KIND_PAY_BALANCE)
        listed = await payments.ListLinks(
            payments_pb2.ListLinksRequest(account_id="acme", customer_id=customer)
        )
        assert {x.link_id for x in listed.links} == {
            first.link_id,
            second.link_id,
            balance.link_id,
        }

        company = suite.sandbox["company_id"]
        admin = suite.sandbox_admin
        async with aiohttp.ClientSession() as http:

            async def invoice_link(expected: str) -> bool:
                values = await intacct_values(http, admin, company, "ARINVOICE")
                return bool(values[invoice.record_no].get("PAYMENT_LINK") == expected)

            async def balance_link(expected: str) -> bool:
                values = await intacct_values(http, admin, company, "CUSTOMER")
                row = next(v for v in values.values() if v["CUSTOMERID"] == customer)
                return bool(row.get("PAY_BALANCE_LINK") == expected)

            # The newest link is what Intacct shows.
            assert await eventually(lambda: invoice_link(second.url))
            assert await eventually(lambda: balance_link(balance.url))
            # Revoking the newest hands the field back to the link still live.
            revoked = (
                await payments.RevokeLink(
                    payments_pb2.RevokeLinkRequest(account_id="acme", link_id=second.link_id)
                )
            ).link
            assert revoked.revoked
            again = await payments.RevokeLink(
                payments_pb2.RevokeLinkRequest(account_id="acme", link_id=second.link_id)
            )
            assert again.link == revoked
            assert await eventually(lambda: invoice_link(first.url))
            await payments.RevokeLink(
                payments_pb2.RevokeLinkRequest(account_id="acme", link_id=first.link_id)
            )
            assert await eventually(lambda: invoice_link(""))

            # An expired link leaves Intacct too: the field goes back to the link still
            # live for the customer, or is emptied when none is.
            brief = await create(payments_pb2.LINK_KIND_PAY_BALANCE, ttl=4)
            assert await eventually(lambda: balance_link(brief.url))
            assert await eventually(lambda: balance_link(balance.url))
            other_brief = await create(
                payments_pb2.LINK_KIND_PAY_BALANCE, who=other_customer, ttl=4
            )

            async def other_balance_link(expected: str) -> bool:
                values = await intacct_values(http, admin, company, "CUSTOMER")
                row = next(v for v in values.values() if v["CUSTOMERID"] == other_customer)
                return bool(row.get("PAY_BALANCE_LINK") == expected)

            assert await eventually(lambda: other_balance_link(other_brief.url))
            assert await eventually(lambda: other_balance_link(""))

            # A field set back to a value it had is written again (each write is its own,
            # not a repeat Intacct would skip): A, then B, then A again.
            a = await create(payments_pb2.LINK_KIND_PAY_BALANCE, who=other_customer)
            assert await eventually(lambda: other_balance_link(a.url))
            b = await create(payments_pb2.LINK_KIND_PAY_BALANCE, who=other_customer)
            assert await eventually(lambda: other_balance_link(b.url))
            await payments.RevokeLink(
                payments_pb2.RevokeLinkRequest(account_id="acme", link_id=b.link_id)
            )
            assert await eventually(lambda: other_balance_link(a.url))

        active = await payments.ListLinks(
            payments_pb2.ListLinksRequest(account_id="acme", invoice_record_no=invoice.record_no)
        )
        assert list(active.links) == []
        everything = await payments.ListLinks(
            payments_pb2.ListLinksRequest(
                account_id="acme", invoice_record_no=invoice.record_no, include_inactive=True
            )
        )
        assert {x.link_id for x in everything.links} == {first.link_id, second.link_id}
        assert all(x.revoked for x in everything.links)

        # Bad requests: clear statuses.
        async def refused(call: Any) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            return err.value

        err = await refused(create(payments_pb2.LINK_KIND_PAYMENT))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "invoice_record_no" in str(err.details())
        err = await refused(
            create(payments_pb2.LINK_KIND_PAYMENT, invoice.record_no, who=other_customer)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "belongs to customer" in str(err.details())
        err = await refused(create(payments_pb2.LINK_KIND_PAY_BALANCE, who="NOBODY"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "NOBODY" in str(err.details())
        err = await refused(create(payments_pb2.LINK_KIND_PAYMENT, "987654321"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "987654321" in str(err.details())
        err = await refused(create(payments_pb2.LINK_KIND_UNSPECIFIED))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = await refused(create(payments_pb2.LINK_KIND_PAY_BALANCE, ttl=-5))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = await refused(
            payments.RevokeLink(payments_pb2.RevokeLinkRequest(account_id="acme", link_id="lk_x"))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        # Another account cannot revoke this account's link.
        err = await refused(
            payments.RevokeLink(
                payments_pb2.RevokeLinkRequest(account_id="other", link_id=balance.link_id)
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
