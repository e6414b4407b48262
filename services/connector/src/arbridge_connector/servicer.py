"""gRPC handlers of ``arbridge.connector.v1.ConnectorService``: protobuf to domain and back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge_connector.core import Connector, ConnectRequest, Write, WriteResult, default_window
from arbridge_connector.objects import object_for
from arbridge_connector.repository import AccountRow
from arbridge_intacct import request as rq
from arbridge_intacct.errors import ErrorDetail, IntacctError
from arbridge_runtime.errors import InvalidArgument

# Records per StreamRecords message.
STREAM_BATCH = 500

Context = grpc.aio.ServicerContext[Any, Any]

_STATES = {
    "connected": connector_pb2.CONNECTION_STATE_CONNECTED,
    "disconnected": connector_pb2.CONNECTION_STATE_DISCONNECTED,
    "credentials_rejected": connector_pb2.CONNECTION_STATE_CREDENTIALS_REJECTED,
}
_OPERATIONS = {
    connector_pb2.WRITE_OPERATION_CREATE: "create",
    connector_pb2.WRITE_OPERATION_UPDATE: "update",
    connector_pb2.WRITE_OPERATION_DELETE: "delete",
}
_CUSTOM_FIELD_OBJECTS = {
    common_pb2.OBJECT_TYPE_CUSTOMER: "CUSTOMER",
    common_pb2.OBJECT_TYPE_AR_INVOICE: "ARINVOICE",
}


def _account(row: AccountRow) -> connector_pb2.Account:
    account = connector_pb2.Account(
        account_id=row.account_id,
        company_id=row.company_id,
        user_id=row.user_id,
        sender_id=row.sender_id,
        entity_id=row.entity_id,
        multi_entity=row.multi_entity,
        platform_services=row.platform_services,
        time_zone=row.time_zone,
        state=_STATES.get(row.state, connector_pb2.CONNECTION_STATE_UNSPECIFIED),
    )
    account.connected_at.FromDatetime(row.connected_at)
    return account


def _errors(details: list[ErrorDetail]) -> list[common_pb2.IntacctError]:
    return [
        common_pb2.IntacctError(
            errorno=d.errorno,
            description=d.description,
            description2=d.description2,
            correction=d.correction,
        )
        for d in details
    ]


def _result(result: WriteResult) -> connector_pb2.RecordWriteResult:
    return connector_pb2.RecordWriteResult(
        idempotency_key=result.idempotency_key,
        ok=result.ok,
        record_no=result.record_no,
        already_applied=result.already_applied,
        errors=_errors(result.errors),
    )


def _when(ts: Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def _money_text(money: common_pb2.Money) -> str:
    if money.amount_minor <= 0:
        raise InvalidArgument("amount must be positive (integer minor units)")
    if len(money.currency) != 3 or not money.currency.isupper():
        raise InvalidArgument("currency must be an ISO 4217 code such as USD")
    digits = 0 if money.currency in ("JPY", "KRW", "VND", "CLP", "ISK") else 2
    return f"{Decimal(money.amount_minor).scaleb(-digits):.{digits}f}"


def _iso_date(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be an ISO date (YYYY-MM-DD), not {text!r}") from None


class ConnectorService(connector_pb2_grpc.ConnectorServiceServicer):
    """The connector's gRPC API."""

    def __init__(self, connector: Connector) -> None:
        self._core = connector

    async def ConnectAccount(
        self, request: connector_pb2.ConnectAccountRequest, context: Context
    ) -> connector_pb2.ConnectAccountResponse:
        row = await self._core.connect(
            ConnectRequest(
                account_id=request.account_id,
                company_id=request.company_id,
                user_id=request.user_id,
                user_password=request.user_password,
                sender_id=request.sender_id,
                sender_password=request.sender_password,
                entity_id=request.entity_id,
                endpoint_url=request.endpoint_url,
                time_zone=request.time_zone,
            )
        )
        return connector_pb2.ConnectAccountResponse(account=_account(row))

    async def GetAccount(
        self, request: connector_pb2.GetAccountRequest, context: Context
    ) -> connector_pb2.GetAccountResponse:
        return connector_pb2.GetAccountResponse(
            account=_account(await self._core.account(request.account_id))
        )

    async def DisconnectAccount(
        self, request: connector_pb2.DisconnectAccountRequest, context: Context
    ) -> connector_pb2.DisconnectAccountResponse:
        await self._core.disconnect(request.account_id)
        return connector_pb2.DisconnectAccountResponse()

    async def RotateEncryptionKey(
        self, request: connector_pb2.RotateEncryptionKeyRequest, context: Context
    ) -> connector_pb2.RotateEncryptionKeyResponse:
        rotated = await self._core.rotate_keys()
        return connector_pb2.RotateEncryptionKeyResponse(
            rotated=rotated, key_id=self._core.cipher.primary
        )

    async def CheckPermissions(
        self, request: connector_pb2.CheckPermissionsRequest, context: Context
    ) -> connector_pb2.CheckPermissionsResponse:
        results, platform, calls = await self._core.check_permissions(request.account_id)
        statuses = {
            "granted": connector_pb2.PERMISSION_STATUS_GRANTED,
            "missing": connector_pb2.PERMISSION_STATUS_MISSING,
            "not_applicable": connector_pb2.PERMISSION_STATUS_NOT_APPLICABLE,
        }
        checks = [
            connector_pb2.PermissionCheck(
                module=r.required.module,
                object=r.required.obj,
                rights=list(r.required.rights),
                status=statuses[r.status],
                fix=r.fix,
            )
            for r in results
        ]
        return connector_pb2.CheckPermissionsResponse(
            checks=checks,
            all_granted=all(r.status != "missing" for r in results),
            platform_services=platform,
            api_calls=calls,
        )

    async def ListEntities(
        self, request: connector_pb2.ListEntitiesRequest, context: Context
    ) -> connector_pb2.ListEntitiesResponse:
        records = await self._core.entities(request.account_id)
        return connector_pb2.ListEntitiesResponse(
            entities=[
                connector_pb2.Entity(
                    entity_id=str(r.get("LOCATIONID", "")),
                    name=str(r.get("NAME", "")),
                    record_no=str(r.get("RECORDNO", "")),
                    currency=str(r.get("CURRENCY", "")),
                )
                for r in records
            ]
        )

    async def StreamRecords(
        self, request: connector_pb2.StreamRecordsRequest, context: Context
    ) -> AsyncIterator[connector_pb2.StreamRecordsResponse]:
        obj = object_for(request.object_type)
        client = await self._core.client(request.account_id)
        async for total, runs in self._core.stream_records(
            request.account_id,
            obj,
            since=_when(request.modified_since, request.HasField("modified_since")),
            before=_when(request.modified_before, request.HasField("modified_before")),
            fields=list(request.fields),
        ):
            if total is not None:
                yield connector_pb2.StreamRecordsResponse(total=total)
            # Rows under one list of names, a message per few hundred: gRPC's
            # per-message cost, then a map per record, were most of a large sync's time.
            for names, rows in runs:
                key = names.index(obj.key_field) if obj.key_field in names else None
                when = names.index(obj.modified_field) if obj.modified_field in names else None
                for start in range(0, len(rows), STREAM_BATCH):
                    message = connector_pb2.StreamRecordsResponse()
                    out = message.rows  # built in place: a message passed in is copied
                    out.object_type = request.object_type
                    out.fields.extend(names)
                    add = out.rows.add
                    for values in rows[start : start + STREAM_BATCH]:
                        stamp = None if when is None else client.epoch_from_local(values[when])
                        add(
                            record_no="" if key is None else values[key],
                            values=values,
                            when_modified=None if stamp is None else {"seconds": stamp},
                        )
                    yield message

    async def GetRecords(
        self, request: connector_pb2.GetRecordsRequest, context: Context
    ) -> connector_pb2.GetRecordsResponse:
        obj = object_for(request.object_type)
        records = await self._core.get_records(
            request.account_id, obj, list(request.record_nos), list(request.fields)
        )
        return connector_pb2.GetRecordsResponse(
            records=[
                connector_pb2.Record(
                    object_type=request.object_type,
                    record_no=str(r.get(obj.key_field, "")),
                    fields={k: str(v) for k, v in r.items()},
                )
                for r in records
            ]
        )

    async def WriteRecords(
        self, request: connector_pb2.WriteRecordsRequest, context: Context
    ) -> connector_pb2.WriteRecordsResponse:
        obj = object_for(request.object_type)
        writes = []
        for write in request.writes:
            operation = _OPERATIONS.get(write.operation)
            if operation is None:
                raise InvalidArgument("each write needs an operation: CREATE, UPDATE or DELETE")
            writes.append(
                Write(operation, write.record_no, dict(write.fields), write.idempotency_key)
            )
        results = await self._core.write_records(request.account_id, obj, writes)
        return connector_pb2.WriteRecordsResponse(results=[_result(r) for r in results])

    async def PostArPayment(
        self, request: connector_pb2.PostArPaymentRequest, context: Context
    ) -> connector_pb2.PostArPaymentResponse:
        applications = []
        for application in request.applications:
            if not application.invoice_record_no:
                raise InvalidArgument("each application needs invoice_record_no")
            if application.amount.currency != request.amount.currency:
                raise InvalidArgument("applications must be in the payment's currency")
            applications.append(
                rq.Application(application.invoice_record_no, _money_text(application.amount))
            )
        total = sum(a.amount_minor for a in (x.amount for x in request.applications))
        if total != request.amount.amount_minor:
            raise InvalidArgument(
                f"applications add up to {total} minor units but amount is "
                f"{request.amount.amount_minor}"
            )
        received: date | datetime
        if request.received_date and request.HasField("received_at"):
            raise InvalidArgument("give received_date or received_at, not both")
        if request.received_date:
            received = _iso_date(request.received_date, "received_date")
        elif request.HasField("received_at"):
            received = request.received_at.ToDatetime(tzinfo=UTC)
        else:
            received = datetime.now(UTC)
        record_no, already = await self._core.post_payment(
            request.account_id,
            idempotency_key=request.idempotency_key,
            customer_id=request.customer_id,
            amount=_money_text(request.amount),
            currency=request.amount.currency,
            received=received,
            payment_method=request.payment_method or "Credit Card",
            applications=applications,
            bank_account_id=request.bank_account_id,
            undeposited_funds_account=request.undeposited_funds_account,
        )
        return connector_pb2.PostArPaymentResponse(
            payment_record_no=record_no, already_posted=already
        )

    async def UpdateCustomFields(
        self, request: connector_pb2.UpdateCustomFieldsRequest, context: Context
    ) -> connector_pb2.UpdateCustomFieldsResponse:
        updates = []
        for update in request.updates:
            name = _CUSTOM_FIELD_OBJECTS.get(update.object_type)
            if name is None:
                raise InvalidArgument("custom fields can be updated on CUSTOMER and AR_INVOICE")
            if not update.record_no or not update.values:
                raise InvalidArgument("each update needs record_no and at least one value")
            updates.append((name, update.record_no, dict(update.values)))
        results = await self._core.update_custom_fields(
            request.account_id, request.idempotency_key, updates
        )
        return connector_pb2.UpdateCustomFieldsResponse(results=[_result(r) for r in results])

    async def GetApiUsage(
        self, request: connector_pb2.GetApiUsageRequest, context: Context
    ) -> connector_pb2.GetApiUsageResponse:
        start, end = default_window()
        if request.from_date:
            start = _iso_date(request.from_date, "from_date")
        if request.to_date:
            end = _iso_date(request.to_date, "to_date")
        rows = await self._core.usage(request.account_id, start, end)
        return connector_pb2.GetApiUsageResponse(
            rows=[
                connector_pb2.ApiUsageRow(date=d.isoformat(), function=f, calls=c)
                for d, f, c in rows
            ],
            total_calls=sum(c for _, _, c in rows),
        )

    async def GetInvoicePdf(
        self, request: connector_pb2.GetInvoicePdfRequest, context: Context
    ) -> connector_pb2.GetInvoicePdfResponse:
        if not request.account_id or not request.invoice_record_no:
            raise InvalidArgument("account_id and invoice_record_no must be set")
        source = (
            "sales_invoice"
            if request.source == common_pb2.INVOICE_SOURCE_SALES_INVOICE
            else "ar_invoice"
        )
        modified = (
            request.invoice_modified_at.ToDatetime(tzinfo=UTC)
            if request.HasField("invoice_modified_at")
            else None
        )
        pdf, _cached = await self._core.invoice_pdf(
            request.account_id, request.invoice_record_no, source, modified
        )
        return connector_pb2.GetInvoicePdfResponse(
            pdf=pdf,
            file_name=f"invoice-{request.invoice_record_no}.pdf",
            etag=hashlib.sha256(pdf).hexdigest()[:32],
        )


__all__ = ["ConnectorService", "IntacctError", "InvalidOperation"]
