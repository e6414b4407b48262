"""AR store rows to the v1 protobuf messages (API answers and domain events)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge_runtime.dates import timestamp

_STATES = {
    "draft": ar_pb2.INVOICE_STATE_DRAFT,
    "open": ar_pb2.INVOICE_STATE_OPEN,
    "partially_paid": ar_pb2.INVOICE_STATE_PARTIALLY_PAID,
    "paid": ar_pb2.INVOICE_STATE_PAID,
    "void": ar_pb2.INVOICE_STATE_VOID,
}
_SOURCES = {
    "ar_invoice": common_pb2.INVOICE_SOURCE_AR_INVOICE,
    "sales_invoice": common_pb2.INVOICE_SOURCE_SALES_INVOICE,
}
BANK_KINDS = {
    "checking": common_pb2.OBJECT_TYPE_CHECKING_ACCOUNT,
    "savings": common_pb2.OBJECT_TYPE_SAVINGS_ACCOUNT,
}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _stamp(local: datetime | None, time_zone: str) -> Timestamp | None:
    """Company-local wall time as an instant."""
    if local is None:
        return None
    return timestamp(local.replace(tzinfo=ZoneInfo(time_zone) if time_zone else UTC))


def customer(row: Mapping[str, Any], time_zone: str = "") -> ar_pb2.Customer:
    contact = _json(row["contact"]) or {}
    return ar_pb2.Customer(
        account_id=row["account_id"],
        record_no=row["record_no"],
        customer_id=row["customer_id"],
        name=row["name"],
        active=row["active"],
        currency=row["currency"],
        term_name=row["term_name"],
        entity_id=row["entity_id"],
        groups=list(row["groups"]),
        custom_fields=_json(row["custom_fields"]) or {},
        version=row.get("version", 1),
        intacct_modified_at=_stamp(row.get("intacct_modified"), time_zone),
        display_contact=ar_pb2.Contact(
            name=contact.get("CONTACTNAME", ""),
            email=contact.get("EMAIL1", ""),
            phone=contact.get("PHONE1", ""),
            address=ar_pb2.Address(
                line1=contact.get("MAILADDRESS.ADDRESS1", ""),
                line2=contact.get("MAILADDRESS.ADDRESS2", ""),
                city=contact.get("MAILADDRESS.CITY", ""),
                state=contact.get("MAILADDRESS.STATE", ""),
                postal_code=contact.get("MAILADDRESS.ZIP", ""),
                country=contact.get("MAILADDRESS.COUNTRY", ""),
            ),
        ),
        bill_to=ar_pb2.Contact(name=contact.get("CONTACTNAME", "")),
    )


def _money(minor: int | None, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=minor or 0, currency=currency)


def invoice(row: Mapping[str, Any], time_zone: str = "") -> ar_pb2.Invoice:
    currency = row["currency"]
    message = ar_pb2.Invoice(
        account_id=row["account_id"],
        record_no=row["record_no"],
        invoice_number=row["invoice_number"],
        source=_SOURCES[row["source"]],
        customer_id=row["customer_id"],
        entity_id=row["entity_id"],
        state=_STATES.get(row["state"], ar_pb2.INVOICE_STATE_OPEN),
        currency=currency,
        total=_money(row["total_minor"], currency),
        paid=_money(row["paid_minor"], currency),
        due=_money(row["due_minor"], currency),
        term_name=row["term_name"],
        invoice_date=row["invoice_date"].isoformat() if row["invoice_date"] else "",
        due_date=row["due_date"].isoformat() if row["due_date"] else "",
        po_number=row["po_number"],
        custom_fields=_json(row["custom_fields"]) or {},
        version=row.get("version", 1),
        intacct_modified_at=_stamp(row.get("intacct_modified"), time_zone),
        allow_partial_payment=True,
    )
    if row.get("tax_minor") is not None:
        message.tax.CopyFrom(_money(row["tax_minor"], currency))
    return message


def payment(row: Mapping[str, Any], time_zone: str = "") -> ar_pb2.Payment:
    return ar_pb2.Payment(
        account_id=row["account_id"],
        record_no=row["record_no"],
        customer_id=row["customer_id"],
        amount=_money(row["amount_minor"], row["currency"]),
        payment_method=row["payment_method"],
        reference=row["reference"],
        received_date=row["received_date"].isoformat() if row["received_date"] else "",
        version=row.get("version", 1),
        intacct_modified_at=_stamp(row.get("intacct_modified"), time_zone),
    )


def bank_account(row: Mapping[str, Any]) -> ar_pb2.BankAccount:
    return ar_pb2.BankAccount(
        account_id=row["account_id"],
        bank_account_id=row["bank_account_id"],
        name=row["name"],
        currency=row["currency"],
        entity_id=row["entity_id"],
        kind=BANK_KINDS.get(row["kind"], common_pb2.OBJECT_TYPE_UNSPECIFIED),
        gl_account_no=row["gl_account_no"],
    )
