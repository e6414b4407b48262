"""AR store rows to the v1 protobuf messages (API answers and domain events)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge_runtime.dates import wall_epoch_seconds

_STATES = {
    "draft": ar_pb2.INVOICE_STATE_DRAFT,
    "open": ar_pb2.INVOICE_STATE_OPEN,
    "partially_paid": ar_pb2.INVOICE_STATE_PARTIALLY_PAID,
    "paid": ar_pb2.INVOICE_STATE_PAID,
    "void": ar_pb2.INVOICE_STATE_VOID,
}
PAYMENT_STATES = {
    "posted": ar_pb2.PAYMENT_STATE_POSTED,
    "draft": ar_pb2.PAYMENT_STATE_DRAFT,
    "reversed": ar_pb2.PAYMENT_STATE_REVERSED,
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


def _stamp(target: Timestamp, local: datetime | None, time_zone: str) -> None:
    """Sets ``target`` to company-local wall time as an instant (leaves it unset for None)."""
    if local is None:
        return
    target.SetInParent()
    target.seconds = wall_epoch_seconds(local, ZoneInfo(time_zone) if time_zone else None)
    target.nanos = local.microsecond * 1000


# The messages are filled in place: a sub-message passed to a constructor is
# copied, and a sync builds one of these for every record it announces.


def fill_customer(m: ar_pb2.Customer, row: Mapping[str, Any], time_zone: str = "") -> None:
    contact = _json(row["contact"]) or {}
    m.account_id = row["account_id"]
    m.record_no = row["record_no"]
    m.customer_id = row["customer_id"]
    m.name = row["name"]
    m.active = row["active"]
    m.currency = row["currency"]
    m.term_name = row["term_name"]
    m.entity_id = row["entity_id"]
    m.groups.extend(row["groups"])
    m.custom_fields.update(_json(row["custom_fields"]) or {})
    m.version = row.get("version", 1)
    _stamp(m.intacct_modified_at, row.get("intacct_modified"), time_zone)
    get = contact.get
    shown = m.display_contact
    shown.SetInParent()
    shown.name = get("CONTACTNAME", "")
    shown.email = get("EMAIL1", "")
    shown.phone = get("PHONE1", "")
    address = shown.address
    address.SetInParent()
    address.line1 = get("MAILADDRESS.ADDRESS1", "")
    address.line2 = get("MAILADDRESS.ADDRESS2", "")
    address.city = get("MAILADDRESS.CITY", "")
    address.state = get("MAILADDRESS.STATE", "")
    address.postal_code = get("MAILADDRESS.ZIP", "")
    address.country = get("MAILADDRESS.COUNTRY", "")
    m.bill_to.SetInParent()
    m.bill_to.name = get("CONTACTNAME", "")


def customer(row: Mapping[str, Any], time_zone: str = "") -> ar_pb2.Customer:
    message = ar_pb2.Customer()
    fill_customer(message, row, time_zone)
    return message


def _money(target: common_pb2.Money, minor: int | None, currency: str) -> None:
    target.SetInParent()
    target.amount_minor = minor or 0
    target.currency = currency


def fill_invoice(m: ar_pb2.Invoice, row: Mapping[str, Any], time_zone: str = "") -> None:
    currency = row["currency"]
    m.account_id = row["account_id"]
    m.record_no = row["record_no"]
    m.invoice_number = row["invoice_number"]
    m.source = _SOURCES[row["source"]]
    m.customer_id = row["customer_id"]
    m.entity_id = row["entity_id"]
    m.state = _STATES.get(row["state"], ar_pb2.INVOICE_STATE_OPEN)
    m.currency = currency
    _money(m.total, row["total_minor"], currency)
    _money(m.paid, row["paid_minor"], currency)
    _money(m.due, row["due_minor"], currency)
    m.term_name = row["term_name"]
    m.invoice_date = row["invoice_date"].isoformat() if row["invoice_date"] else ""
    m.due_date = row["due_date"].isoformat() if row["due_date"] else ""
    m.po_number = row["po_number"]
    m.custom_fields.update(_json(row["custom_fields"]) or {})
    m.version = row.get("version", 1)
    _stamp(m.intacct_modified_at, row.get("intacct_modified"), time_zone)
    m.allow_partial_payment = True
    if row.get("tax_minor") is not None:
        _money(m.tax, row["tax_minor"], currency)


def invoice(row: Mapping[str, Any], time_zone: str = "") -> ar_pb2.Invoice:
    message = ar_pb2.Invoice()
    fill_invoice(message, row, time_zone)
    return message


def fill_payment(m: ar_pb2.Payment, row: Mapping[str, Any], time_zone: str = "") -> None:
    m.account_id = row["account_id"]
    m.record_no = row["record_no"]
    m.customer_id = row["customer_id"]
    _money(m.amount, row["amount_minor"], row["currency"])
    m.payment_method = row["payment_method"]
    m.reference = row["reference"]
    m.received_date = row["received_date"].isoformat() if row["received_date"] else ""
    m.state = PAYMENT_STATES[row["state"]]
    m.version = row.get("version", 1)
    _stamp(m.intacct_modified_at, row.get("intacct_modified"), time_zone)


def payment(row: Mapping[str, Any], time_zone: str = "") -> ar_pb2.Payment:
    message = ar_pb2.Payment()
    fill_payment(message, row, time_zone)
    return message


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
