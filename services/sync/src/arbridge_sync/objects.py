"""The Intacct objects sync mirrors: how each is read, mapped and stored."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from arbridge.common.v1 import common_pb2
from arbridge_sync import mapping, store

Mapper = Callable[[str, Mapping[str, str], str], dict[str, Any]]


@dataclass(frozen=True)
class Synced:
    name: str  # Intacct object name, as smart events name it
    object_type: common_pb2.ObjectType.ValueType
    table: store.Table
    map: Mapper
    # Every field the mapping reads: asked of StreamRecords and put in smart-event
    # templates, so an event carries the whole record and costs no API call.
    fields: tuple[str, ...] = ()


def _customer(account_id: str, f: Mapping[str, str], _tax: str) -> dict[str, Any]:
    return mapping.customer_row(account_id, f)


def _invoice(account_id: str, f: Mapping[str, str], tax: str) -> dict[str, Any]:
    return mapping.invoice_row(account_id, f, tax)


def _payment(account_id: str, f: Mapping[str, str], _tax: str) -> dict[str, Any]:
    return mapping.payment_row(account_id, f)


def _checking(account_id: str, f: Mapping[str, str], _tax: str) -> dict[str, Any]:
    return mapping.bank_row(account_id, "checking", f)


def _savings(account_id: str, f: Mapping[str, str], _tax: str) -> dict[str, Any]:
    return mapping.bank_row(account_id, "savings", f)


def _label(account_id: str, f: Mapping[str, str], _tax: str) -> dict[str, Any]:
    return mapping.label_row(account_id, f)


_CONTACT = tuple(
    f"DISPLAYCONTACT.{f}"
    for f in (
        "CONTACTNAME",
        "EMAIL1",
        "PHONE1",
        "MAILADDRESS.ADDRESS1",
        "MAILADDRESS.ADDRESS2",
        "MAILADDRESS.CITY",
        "MAILADDRESS.STATE",
        "MAILADDRESS.ZIP",
        "MAILADDRESS.COUNTRY",
    )
)
_BANK = (
    "RECORDNO",
    "BANKACCOUNTID",
    "BANKNAME",
    "CURRENCY",
    "MEGAENTITYID",
    "GLACCOUNTNO",
    "WHENMODIFIED",
)

SYNCED: tuple[Synced, ...] = (
    Synced(
        "CUSTOMER",
        common_pb2.OBJECT_TYPE_CUSTOMER,
        store.CUSTOMERS,
        _customer,
        (
            "RECORDNO",
            "CUSTOMERID",
            "NAME",
            "STATUS",
            "CURRENCY",
            "TERMNAME",
            "GROUPID",
            "MEGAENTITYID",
            "WHENMODIFIED",
            *_CONTACT,
            "BILLTO.CONTACTNAME",
            "PAY_BALANCE_LINK",
            "PAYMENT_METHOD_LINK",
            "NEXT_AUTO_CHARGE",
        ),
    ),
    Synced(
        "ARINVOICE",
        common_pb2.OBJECT_TYPE_AR_INVOICE,
        store.INVOICES,
        _invoice,
        (
            "RECORDNO",
            "RECORDID",
            "STATE",
            "CUSTOMERID",
            "DOCNUMBER",
            "TERMNAME",
            "WHENCREATED",
            "WHENDUE",
            "CURRENCY",
            "BASECURR",
            "TRX_TOTALENTERED",
            "TRX_TOTALPAID",
            "TRX_TOTALDUE",
            "MODULEKEY",
            "MEGAENTITYID",
            "WHENMODIFIED",
            "PAYMENT_LINK",
            "NEXT_AUTO_CHARGE",
        ),
    ),
    Synced(
        "ARPYMT",
        common_pb2.OBJECT_TYPE_AR_PAYMENT,
        store.PAYMENTS,
        _payment,
        (
            "RECORDNO",
            "CUSTOMERID",
            "TRX_TOTALENTERED",
            "CURRENCY",
            "BASECURR",
            "STATE",
            "PAYMENTMETHOD",
            "RECEIPTDATE",
            "DOCNUMBER",
            "FINANCIALENTITY",
            "WHENMODIFIED",
        ),
    ),
    Synced(
        "CHECKINGACCOUNT",
        common_pb2.OBJECT_TYPE_CHECKING_ACCOUNT,
        store.BANK_ACCOUNTS,
        _checking,
        _BANK,
    ),
    Synced(
        "SAVINGSACCOUNT",
        common_pb2.OBJECT_TYPE_SAVINGS_ACCOUNT,
        store.BANK_ACCOUNTS,
        _savings,
        _BANK,
    ),
    Synced(
        "ARACCOUNTLABEL",
        common_pb2.OBJECT_TYPE_AR_ACCOUNT_LABEL,
        store.LABELS,
        _label,
        ("RECORDNO", "ACCOUNTLABEL", "DESCRIPTION", "GLACCOUNTNO", "WHENMODIFIED"),
    ),
)


def read_fields(synced: Synced, tax_field: str) -> list[str]:
    """The fields to read for an object, with the account's Level 2 tax field on invoices."""
    extra = [tax_field] if tax_field and synced.name == "ARINVOICE" else []
    return list(dict.fromkeys([*synced.fields, *extra]))


BY_NAME = {s.name: s for s in SYNCED}
BY_TYPE: dict[int, Synced] = {int(s.object_type): s for s in SYNCED}
NAMES = {int(v): k for k, v in common_pb2.ObjectType.items()}
