"""Succeeded payments posted to the sandbox Intacct as AR payments applied to their invoices."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import grpc
import pytest

from arbridge.payments.v1 import payments_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import from_minor, to_minor
from tests.conftest import TOKEN
from tests.support.payments import (
    Payer,
    eventually,
    intacct_values,
    open_invoices_by_customer,
    synced_payments_suite,
)


async def _payable_customer(
    suite: Any, sync: sync_pb2_grpc.SyncServiceAsyncStub, *, count: int, min_due: int
) -> tuple[str, list[Any], Any]:
    """A customer with ``count`` open invoices of one currency and entity, each with more
    than ``min_due`` due, in a currency the company has a bank account in; and that
    account."""
    banks = (
        await sync.ListBankAccounts(sync_pb2.ListBankAccountsRequest(account_id="acme"))
    ).bank_accounts
    by_customer = await open_invoices_by_customer(suite, "acme")
    customer, invoices = next(
        (c, found)
        for c, found in by_customer.items()
        if len(found) >= count
        and any(b.currency == found[0].currency for b in banks)
        and len({(i.currency, i.entity_id) for i in found[:count]}) == 1
        and all(i.due.amount_minor > min_due for i in found[:count])
    )
    return customer, invoices, next(b for b in banks if b.currency == invoices[0].currency)


@pytest.mark.timeout(300)
async def test_payments_wait_for_a_deposit_account_post_once_and_refusals_stay(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path, database_url, nats_url, unique, customers=12, invoices=160
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        customer, invoices, bank = await _payable_customer(suite, sync, count=4, min_due=100)
        pair, single, halves = invoices[:2], invoices[2], invoices[3]
        currency, entity = pair[0].currency, pair[0].entity_id
        company, admin = suite.sandbox["company_id"], suite.sandbox_admin
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            await payer.add_card(customer, "4242424242424242")
            current = payer.get_charge

            async def set_bank(bank_account_id: str) -> payments_pb2.DepositAccount:
                return await payer.set_deposit(entity, currency, bank_account_id)

            # No deposit account for this entity and currency yet: the posting waits.
            doomed = (
                await payer.charge("post-1", customer, [(i.record_no, None) for i in pair])
            ).charge
            assert doomed.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            await asyncio.sleep(1.5)
            assert (await current(doomed.charge_id)).posting_state == (
                payments_pb2.POSTING_STATE_PENDING
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await payer.stub.SetDepositAccount(
                    payments_pb2.SetDepositAccountRequest(
                        deposit_account=payments_pb2.DepositAccount(
                            account_id="acme", entity_id=entity, currency="dollars"
                        )
                    )
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            # A bank account Intacct does not know: Intacct refuses the payment; the
            # refusal stays (no automatic retry), even once the account is fixed.
            await set_bank("NO-SUCH-BANK")

            async def refused() -> bool:
                state = (await current(doomed.charge_id)).posting_state
                return state == payments_pb2.POSTING_STATE_REFUSED

            assert await eventually(refused)

            # Sync's unsynced registry shows it, with Intacct's reason.
            async def registered() -> list[sync_pb2.UnsyncedRecord]:
                reply = await sync.ListUnsynced(sync_pb2.ListUnsyncedRequest(account_id="acme"))
                return [r for r in reply.records if r.record_no == doomed.charge_id]

            entries = await eventually(registered)
            assert len(entries) == 1
            assert entries[0].direction == sync_pb2.SYNC_DIRECTION_TO_INTACCT
            assert "Invalid bank account NO-SUCH-BANK" in entries[0].reason
            # Re-synced before its cause is fixed, it is refused again, and the entry says so.
            await sync.ResyncRecord(
                sync_pb2.ResyncRecordRequest(account_id="acme", unsynced_id=entries[0].unsynced_id)
            )

            async def refused_again() -> bool:
                return [r.attempts for r in await registered()] == [2]

            assert await eventually(refused_again), "the second refusal was not recorded"
            saved = await set_bank(bank.bank_account_id)
            listed = await payer.stub.ListDepositAccounts(
                payments_pb2.ListDepositAccountsRequest(account_id="acme")
            )
            assert list(listed.deposit_accounts) == [saved]

            # A new payment posts, applied to its invoice, once.
            charge = (await payer.charge("post-2", customer, [(single.record_no, None)])).charge

            async def posted() -> payments_pb2.Charge | None:
                now = await current(charge.charge_id)
                return now if now.posting_state == payments_pb2.POSTING_STATE_POSTED else None

            done = await eventually(posted)
            assert done is not None, "the payment was not posted"
            record_no = done.intacct_payment_record_no
            assert record_no
            payments_in_intacct = await intacct_values(http, admin, company, "ARPYMT")
            payment = payments_in_intacct[record_no]
            assert payment["CUSTOMERID"] == customer
            assert payment["FINANCIALENTITY"] == bank.bank_account_id
            assert to_minor(payment["TRX_TOTALENTERED"], currency) == charge.amount.amount_minor
            # Dated by when the charge succeeded, on the company's calendar (Los Angeles).
            db = await asyncpg.connect(database_url)
            try:
                succeeded_at = await db.fetchval(
                    f'SELECT succeeded_at FROM "{unique}_payments".charges WHERE charge_id = $1',
                    charge.charge_id,
                )
            finally:
                await db.close()
            local_day = succeeded_at.astimezone(ZoneInfo("America/Los_Angeles")).date()
            assert payment["RECEIPTDATE"] == local_day.strftime("%m/%d/%Y")
            reference = payment["DOCNUMBER"]  # derived from the charge id by the connector
            assert (
                sum(1 for p in payments_in_intacct.values() if p.get("DOCNUMBER") == reference) == 1
            )
            sandbox_invoices = await intacct_values(http, admin, company, "ARINVOICE")
            assert Decimal(sandbox_invoices[single.record_no]["TRX_TOTALDUE"]) == 0
            for invoice in pair:  # the refused payment was not applied
                due = sandbox_invoices[invoice.record_no]["TRX_TOTALDUE"]
                assert to_minor(due, currency) == invoice.due.amount_minor
            assert (await current(doomed.charge_id)).posting_state == (
                payments_pb2.POSTING_STATE_REFUSED
            )

            # The AR store has not seen the posted payment yet (no smart events here):
            # the charge still counts against the invoice, so it cannot be paid twice.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await payer.charge("post-again", customer, [(single.record_no, None)])
            # (Retry later: by then the AR store shows the invoice paid.)
            assert err.value.code() == grpc.StatusCode.ABORTED
            assert "no open balance" in str(err.value.details())

            # A part of another invoice is paid and posted; once a sync brings the
            # invoice's new balance into the AR store, the rest is chargeable, and the
            # posted part is not counted twice.
            part = (
                await payer.charge("post-part", customer, [(halves.record_no, 100)], currency)
            ).charge

            async def part_posted() -> bool:
                state = (await current(part.charge_id)).posting_state
                return state == payments_pb2.POSTING_STATE_POSTED

            assert await eventually(part_posted)
            estimate = await sync.EstimateSync(sync_pb2.EstimateSyncRequest(account_id="acme"))
            manual = await sync.StartSync(
                sync_pb2.StartSyncRequest(
                    account_id="acme",
                    kind=sync_pb2.SYNC_KIND_MANUAL,
                    confirmation_token=estimate.confirmation_token,
                )
            )

            async def synced() -> bool:
                job = await sync.GetSync(
                    sync_pb2.GetSyncRequest(account_id="acme", sync_id=manual.sync.sync_id)
                )
                return job.sync.state == sync_pb2.SYNC_STATE_SUCCEEDED

            assert await eventually(synced, timeout=120)
            rest = (await payer.charge("post-rest", customer, [(halves.record_no, None)])).charge
            assert rest.state == payments_pb2.CHARGE_STATE_SUCCEEDED
            assert rest.amount.amount_minor == halves.due.amount_minor - 100

            # The refused payment, re-synced once its cause is fixed (the bank account), is
            # posted again by payments: Intacct has it, and the entry is resolved.
            resync = sync_pb2.ResyncRecordRequest(
                account_id="acme", unsynced_id=entries[0].unsynced_id
            )
            assert not (await sync.ResyncRecord(resync)).synced  # payments posts it

            async def reposted() -> payments_pb2.Charge | None:
                now = await current(doomed.charge_id)
                return now if now.posting_state == payments_pb2.POSTING_STATE_POSTED else None

            again = await eventually(reposted)
            assert again is not None, "the re-synced payment was not posted"

            async def resolved() -> bool:
                reply = await sync.ListUnsynced(
                    sync_pb2.ListUnsyncedRequest(account_id="acme", include_resolved=True)
                )
                entry = next(r for r in reply.records if r.unsynced_id == resync.unsynced_id)
                return entry.state == sync_pb2.UNSYNCED_STATE_RESYNCED

            assert await eventually(resolved), "the registry entry was not resolved"
            reposted_payment = (await intacct_values(http, admin, company, "ARPYMT"))[
                again.intacct_payment_record_no
            ]
            assert reposted_payment["FINANCIALENTITY"] == bank.bank_account_id
            assert to_minor(reposted_payment["TRX_TOTALENTERED"], currency) == (
                doomed.amount.amount_minor
            )
            sandbox_invoices = await intacct_values(http, admin, company, "ARINVOICE")
            assert all(Decimal(sandbox_invoices[i.record_no]["TRX_TOTALDUE"]) == 0 for i in pair)
            # A resolved entry is not re-synced again.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sync.ResyncRecord(resync)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.timeout(300)
async def test_refunds_before_the_posting_come_off_the_payment_and_a_full_one_posts_nothing(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    async with synced_payments_suite(
        tmp_path, database_url, nats_url, unique, customers=12, invoices=160
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        customer, invoices, bank = await _payable_customer(suite, sync, count=3, min_due=1000)
        # A refund comes off the invoice last in record-number order first.
        first, last = sorted(invoices[:2], key=lambda i: (len(i.record_no), i.record_no))
        single = invoices[2]
        currency, entity = first.currency, first.entity_id
        company, admin = suite.sandbox["company_id"], suite.sandbox_admin
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            await payer.add_card(customer, "4242424242424242")
            current = payer.get_charge

            async def refund(charge_id: str, key: str, amount: int | None) -> None:
                await payer.refund(charge_id, key, amount, currency, "paid by cheque instead")

            before = await intacct_values(http, admin, company, "ARPYMT")
            # No deposit account yet, so both payments wait to be posted; meanwhile one is
            # refunded in part and the other in full.
            both = (
                await payer.charge(
                    "both", customer, [(first.record_no, None), (last.record_no, None)]
                )
            ).charge
            one = (await payer.charge("one", customer, [(single.record_no, None)])).charge
            await refund(both.charge_id, "back-150", 150)
            await refund(one.charge_id, "back-all", None)

            # The open balances count only what the charges kept: the refunded 150 of the
            # last invoice and the whole of the other can be charged again.
            rest = (await payer.charge("rest", customer, [(last.record_no, None)])).charge
            assert rest.amount.amount_minor == 150
            again = (await payer.charge("again", customer, [(single.record_no, None)])).charge
            assert again.amount.amount_minor == single.due.amount_minor

            await payer.set_deposit(entity, currency, bank.bank_account_id)

            async def settled() -> list[payments_pb2.Charge] | None:
                now = [await current(c.charge_id) for c in (both, one, rest, again)]
                waiting = [c for c in now if c.posting_state == payments_pb2.POSTING_STATE_PENDING]
                return None if waiting else now

            done = await eventually(settled)
            assert done is not None, "the postings did not finish"
            both_now, one_now, rest_now, again_now = done
            assert [c.posting_state for c in done] == [
                payments_pb2.POSTING_STATE_POSTED,
                payments_pb2.POSTING_STATE_REFUNDED,
                payments_pb2.POSTING_STATE_POSTED,
                payments_pb2.POSTING_STATE_POSTED,
            ]
            assert one_now.intacct_payment_record_no == ""

            # Intacct has what was collected, each invoice paid once and in full.
            after = await intacct_values(http, admin, company, "ARPYMT")
            new = {k: v for k, v in after.items() if k not in before}
            assert sorted(new) == sorted(
                c.intacct_payment_record_no for c in (both_now, rest_now, again_now)
            )
            posted = new[both_now.intacct_payment_record_no]
            kept = first.due.amount_minor + last.due.amount_minor - 150
            assert to_minor(posted["TRX_TOTALENTERED"], currency) == kept
            assert sum(to_minor(p["TRX_TOTALENTERED"], currency) for p in new.values()) == (
                first.due.amount_minor + last.due.amount_minor + single.due.amount_minor
            )
            sandbox_invoices = await intacct_values(http, admin, company, "ARINVOICE")
            for invoice in (first, last, single):
                assert Decimal(sandbox_invoices[invoice.record_no]["TRX_TOTALDUE"]) == 0

            # A refund after the posting does not reverse the payment, and Intacct still
            # shows the invoice paid. The AR store has not seen the payment yet (this
            # suite installs no smart events): the open balance is what Intacct holds,
            # so the invoice is not offered for a second payment Intacct would refuse.
            await refund(again_now.charge_id, "after-posting", None)
            assert (await current(again_now.charge_id)).state == (
                payments_pb2.CHARGE_STATE_REFUNDED
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await payer.charge("after", customer, [(single.record_no, None)])
            assert err.value.code() == grpc.StatusCode.ABORTED
            assert "no open balance left" in str(err.value.details())

            # Intacct still shows that payment as received: the refund waits in the
            # unsynced registry for someone to reverse it there. Re-syncing cannot do
            # it; marking it synced, once done in Intacct, resolves it.
            async def to_reverse() -> sync_pb2.UnsyncedRecord | None:
                listed = await sync.ListUnsynced(sync_pb2.ListUnsyncedRequest(account_id="acme"))
                found = [r for r in listed.records if again_now.charge_id in r.reason]
                return found[0] if found else None

            entry = await eventually(to_reverse)
            assert entry is not None, "the refund after posting never reached the registry"
            assert entry.direction == sync_pb2.SYNC_DIRECTION_TO_INTACCT
            assert entry.kind == sync_pb2.UNSYNCED_KIND_REVERSAL_NEEDED
            assert entry.record_no.startswith("rf_")
            amount = from_minor(single.due.amount_minor, currency)
            assert (
                f"gave back {amount} {currency} of charge {again_now.charge_id} after its"
                f" payment was posted to Intacct as AR payment"
                f" {again_now.intacct_payment_record_no}" in entry.reason
            ), entry.reason
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sync.ResyncRecord(
                    sync_pb2.ResyncRecordRequest(account_id="acme", unsynced_id=entry.unsynced_id)
                )
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "cannot reverse a payment posted to Intacct" in str(err.value.details())
            marked = await sync.MarkSynced(
                sync_pb2.MarkSyncedRequest(
                    account_id="acme",
                    unsynced_id=entry.unsynced_id,
                    actor="ar-clerk",
                    reason="reversed AR payment and recorded the refund",
                )
            )
            assert marked.record.state == sync_pb2.UNSYNCED_STATE_MARKED_SYNCED
            # Refunds made before a posting come off it: nothing of theirs is listed.
            listed = await sync.ListUnsynced(
                sync_pb2.ListUnsyncedRequest(account_id="acme", include_resolved=True)
            )
            assert [r.record_no for r in listed.records if r.direction == entry.direction] == [
                entry.record_no
            ]
