"""Reads of sync's AR store (customers, invoices) with one translation of its errors.

Payments owns no AR data: it asks sync. A record sync does not hold is
NOT_FOUND with what to do about it; any other failure is UNAVAILABLE, since
asking again later may work.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc

from arbridge.common.v1 import ar_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.errors import NotFound, Unavailable


async def _ask(call: Awaitable[Any], what: str, account_id: str, retry: str) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(
                f"{what} is not in the AR store of account {account_id!r}; check the id, "
                "or sync the account if it is new in Intacct"
            ) from None
        raise Unavailable(
            f"the sync service could not be asked about {what} ({err.code().name}); {retry}"
        ) from None


async def get_customer(
    sync: sync_pb2_grpc.SyncServiceAsyncStub,
    account_id: str,
    customer_id: str,
    retry: str = "retry",
) -> ar_pb2.Customer:
    reply = await _ask(
        sync.GetCustomer(
            sync_pb2.GetCustomerRequest(account_id=account_id, customer_id=customer_id)
        ),
        f"customer {customer_id!r}",
        account_id,
        retry,
    )
    customer: ar_pb2.Customer = reply.customer
    return customer


async def get_invoice(
    sync: sync_pb2_grpc.SyncServiceAsyncStub,
    account_id: str,
    record_no: str,
    retry: str = "retry",
) -> ar_pb2.Invoice:
    reply = await _ask(
        sync.GetInvoice(sync_pb2.GetInvoiceRequest(account_id=account_id, record_no=record_no)),
        f"invoice {record_no!r}",
        account_id,
        retry,
    )
    invoice: ar_pb2.Invoice = reply.invoice
    return invoice
