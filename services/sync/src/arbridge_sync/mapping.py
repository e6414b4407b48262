"""Intacct records (flat field maps, as the connector or a smart event gives them) to AR store rows.

A record that cannot be mapped raises :class:`Unmappable` with the reason an
operator reads in the unsynced registry. Money becomes integer minor units;
Intacct's ``MM/DD/YYYY`` dates become dates; ``WHENMODIFIED`` stays company
local wall time, which is what orders versions of a record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import orjson

from arbridge_runtime.dates import us_datetime
from arbridge_runtime.money import to_minor

# Amounts are stored as bigint and sent as int64: one beyond is refused by its record.
LARGEST_MINOR = 2**63 - 1

INVOICE_STATES = {
    "Draft": "draft",
    "Posted": "open",
    "Partially Paid": "partially_paid",
    "Paid": "paid",
    "Reversed": "void",
    "Void": "void",
}
# A payment that is not money received says so; every other state is a posted payment.
PAYMENT_STATES = {
    "Draft": "draft",
    "Reversed": "reversed",
    "Reversal": "reversed",
    "Voided": "reversed",
    "Void": "reversed",
}


class Unmappable(ValueError):
    """The record's data cannot be mirrored (the reason says which field and why)."""


def minor_units(value: str, currency: str, field: str) -> int:
    if value in ("", None):
        return 0
    try:
        minor = to_minor(value, currency)
    except ValueError as err:
        raise Unmappable(f"{field} {err}") from None
    if abs(minor) > LARGEST_MINOR:
        raise Unmappable(f"{field} {value} is beyond the largest amount arbridge stores")
    return minor


def intacct_date(value: str, field: str) -> date | None:
    if not value:
        return None
    fast = us_datetime(value[:10])
    if fast is not None:
        return fast.date()
    try:  # the forms strptime also takes (unpadded months and days)
        return datetime.strptime(value[:10], "%m/%d/%Y").date()
    except ValueError:
        raise Unmappable(f"{field} {value!r} is not a date (MM/DD/YYYY)") from None


def intacct_timestamp(value: str) -> datetime | None:
    """``MM/DD/YYYY HH:MM:SS`` (or a bare date), company-local wall time."""
    if not value:
        return None
    fast = us_datetime(value)
    if fast is not None:
        return fast
    for fmt in ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y"):  # the forms strptime also takes
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    raise Unmappable(f"WHENMODIFIED {value!r} is not an Intacct timestamp")


# The data hash's definition, as stored: its version, then the SHA-256 of the row
# (everything but WHENMODIFIED, whose change alone is no change of data) as JSON with
# sorted keys (orjson: compact, dates as ISO text). Rows stored before it carry the
# first definition's, without a version: see ``legacy_hash``.
HASH_VERSION = "2:"


def _hash(row: Mapping[str, Any]) -> str:
    """The data hash of a row built without its ``intacct_modified`` (yet)."""
    return HASH_VERSION + hashlib.sha256(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()


def legacy_hash(row: Mapping[str, Any]) -> str:
    """The first definition of the data hash (sorted JSON by the standard library, with
    its spaces and ASCII escapes), for comparing a row with one stored under it."""
    material = {k: v for k, v in row.items() if k not in ("intacct_modified", "data_hash")}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def is_legacy_hash(stored: str) -> bool:
    return not stored.startswith(HASH_VERSION)


def _hashed(row: dict[str, Any], f: Mapping[str, str]) -> dict[str, Any]:
    """The row with its data hash, then its WHENMODIFIED (which the hash leaves out)."""
    row["data_hash"] = _hash(row)
    row["intacct_modified"] = intacct_timestamp(f.get("WHENMODIFIED", ""))
    return row


def _iso_currency(text: str) -> str:
    currency = text.strip().upper()
    if len(currency) != 3 or not currency.isalpha():
        raise Unmappable(f"CURRENCY {currency!r} is not an ISO 4217 code")
    return currency


def _currency(f: Mapping[str, str], default: str = "USD") -> str:
    return _iso_currency(f.get("CURRENCY") or default)


def _amount_currency(f: Mapping[str, str]) -> str:
    """The currency of a record's amounts: its transaction currency, else the base
    currency it was entered in (a company without multi-currency may leave CURRENCY
    empty). Never assumed: a payer must not be charged in a currency the invoice is not in.
    """
    given = (f.get("CURRENCY") or "").strip() or (f.get("BASECURR") or "").strip()
    if not given:
        raise Unmappable(
            "CURRENCY and BASECURR are both empty, so the currency of its amounts is unknown"
        )
    return _iso_currency(given)


def _need(f: Mapping[str, str], name: str) -> str:
    value = f.get(name, "")
    if not value:
        raise Unmappable(f"{name} is missing")
    return value


def customer_row(account_id: str, f: Mapping[str, str]) -> dict[str, Any]:
    contact = {
        k.split(".", 1)[1]: v
        for k, v in f.items()
        if k.startswith(("DISPLAYCONTACT.", "BILLTO.")) and v
    }
    row = {
        "account_id": account_id,
        "record_no": _need(f, "RECORDNO"),
        "customer_id": _need(f, "CUSTOMERID"),
        "name": f.get("NAME", ""),
        "active": f.get("STATUS", "active") != "inactive",
        "currency": _currency(f),
        "term_name": f.get("TERMNAME", ""),
        "entity_id": f.get("MEGAENTITYID", ""),
        "groups": [g for g in [f.get("GROUPID", "")] if g],
        "contact": contact,
        "custom_fields": {
            k: v
            for k, v in f.items()
            if k in ("PAY_BALANCE_LINK", "PAYMENT_METHOD_LINK", "NEXT_AUTO_CHARGE") and v
        },
    }
    return _hashed(row, f)


def invoice_row(account_id: str, f: Mapping[str, str], tax_field: str) -> dict[str, Any]:
    currency = _amount_currency(f)
    total = minor_units(f.get("TRX_TOTALENTERED", ""), currency, "TRX_TOTALENTERED")
    paid = minor_units(f.get("TRX_TOTALPAID", ""), currency, "TRX_TOTALPAID")
    due = minor_units(f.get("TRX_TOTALDUE", ""), currency, "TRX_TOTALDUE")
    if total < 0 or paid < 0 or due < 0:
        raise Unmappable("negative invoice amounts (credit memos) are not mirrored as invoices")
    tax = None
    if tax_field:
        raw = f.get(tax_field, "")
        tax = minor_units(raw, currency, tax_field) if raw else None
    state = INVOICE_STATES.get(f.get("STATE", ""), "open" if due else "paid")
    row = {
        "account_id": account_id,
        "record_no": _need(f, "RECORDNO"),
        "source": "sales_invoice" if f.get("MODULEKEY") == "8.SO" else "ar_invoice",
        "invoice_number": f.get("RECORDID", ""),
        "customer_id": _need(f, "CUSTOMERID"),
        "entity_id": f.get("MEGAENTITYID", ""),
        "state": state,
        "currency": currency,
        "total_minor": total,
        "paid_minor": paid,
        "due_minor": due,
        "tax_minor": tax,
        "term_name": f.get("TERMNAME", ""),
        "invoice_date": intacct_date(f.get("WHENCREATED", ""), "WHENCREATED"),
        "due_date": intacct_date(f.get("WHENDUE", ""), "WHENDUE"),
        "po_number": f.get("DOCNUMBER", ""),
        "custom_fields": {
            k: v for k, v in f.items() if k in ("PAYMENT_LINK", "NEXT_AUTO_CHARGE") and v
        },
    }
    return _hashed(row, f)


def payment_row(account_id: str, f: Mapping[str, str]) -> dict[str, Any]:
    currency = _amount_currency(f)
    row = {
        "account_id": account_id,
        "record_no": _need(f, "RECORDNO"),
        "customer_id": _need(f, "CUSTOMERID"),
        "state": PAYMENT_STATES.get(f.get("STATE", ""), "posted"),
        "amount_minor": minor_units(f.get("TRX_TOTALENTERED", ""), currency, "TRX_TOTALENTERED"),
        "currency": currency,
        "payment_method": f.get("PAYMENTMETHOD", ""),
        "received_date": intacct_date(f.get("RECEIPTDATE", ""), "RECEIPTDATE"),
        "reference": f.get("DOCNUMBER", ""),
        "bank_account_id": f.get("FINANCIALENTITY", ""),
    }
    return _hashed(row, f)


def bank_row(account_id: str, kind: str, f: Mapping[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "account_id": account_id,
        "kind": kind,
        "record_no": _need(f, "RECORDNO"),
        "bank_account_id": f.get("BANKACCOUNTID", ""),
        "name": f.get("BANKNAME", ""),
        "currency": _currency(f),
        "entity_id": f.get("MEGAENTITYID", ""),
        "gl_account_no": f.get("GLACCOUNTNO", ""),
    }
    return _hashed(row, f)


def label_row(account_id: str, f: Mapping[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "account_id": account_id,
        "record_no": _need(f, "RECORDNO"),
        "label": f.get("ACCOUNTLABEL", ""),
        "description": f.get("DESCRIPTION", ""),
        "gl_account_no": f.get("GLACCOUNTNO", ""),
    }
    return _hashed(row, f)
