"""Sync's mapping of Intacct records: the stored data hash must not drift between releases."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime

import pytest

from arbridge_sync import mapping

FIELDS = {
    "RECORDNO": "12345",
    "RECORDID": "INV-012345",
    "STATE": "Posted",
    "CUSTOMERID": "C-00042",
    "CURRENCY": "EUR",
    "TRX_TOTALENTERED": "1234.56",
    "TRX_TOTALPAID": "0",
    "TRX_TOTALDUE": "1234.56",
    "TERMNAME": "Net 30",
    "WHENCREATED": "10/01/2026",
    "WHENDUE": "10/31/2026",
    "DOCNUMBER": "PO-1",
    "WHENMODIFIED": "10/01/2026 10:11:12",
    "PAYMENT_LINK": "https://pay.example/x",
}


def test_the_data_hash_is_the_one_stored_rows_carry() -> None:
    # Stored rows are compared by this hash: a different one for the same data would
    # make the next sync rewrite and re-announce every record.
    row = mapping.invoice_row("acme", FIELDS, "")
    assert row["data_hash"] == "a9dfe5d7696e50dcd3061cdc9e4e3f3e72127543ec074909302f75258ac2c5b3"
    newer = mapping.invoice_row("acme", {**FIELDS, "WHENMODIFIED": "11/01/2026 00:00:00"}, "")
    assert newer["data_hash"] == row["data_hash"]  # the time alone is not a change
    paid = mapping.invoice_row("acme", {**FIELDS, "TRX_TOTALPAID": "1.00"}, "")
    assert paid["data_hash"] != row["data_hash"]


def _reference_hash(row: dict[str, object]) -> str:
    # The stored hashes' definition: the row without its time, as sorted JSON.
    material = {k: v for k, v in row.items() if k not in ("intacct_modified", "data_hash")}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


@pytest.mark.parametrize(
    "row",
    [
        mapping.invoice_row("acme", FIELDS, ""),
        mapping.invoice_row("acme", {**FIELDS, "WHENDUE": "", "WHENCREATED": ""}, ""),
        mapping.payment_row(
            "acme", {**FIELDS, "RECEIPTDATE": "09/30/2026", "PAYMENTMETHOD": "Check"}
        ),
        mapping.payment_row("acme", FIELDS),
        mapping.customer_row(
            "acme",
            {**FIELDS, "NAME": "Zoë & Co", "DISPLAYCONTACT.EMAIL1": "a@example.com"},
        ),
        mapping.bank_row("acme", "checking", {**FIELDS, "BANKACCOUNTID": "BOA"}),
        mapping.label_row("acme", {**FIELDS, "ACCOUNTLABEL": "Sales"}),
    ],
    ids=["invoice", "invoice-undated", "payment", "payment-undated", "customer", "bank", "label"],
)
def test_every_row_kind_hashes_by_the_stored_definition(row: dict[str, object]) -> None:
    assert row["data_hash"] == _reference_hash(row)


def test_dates_in_intacct_forms() -> None:
    row = mapping.invoice_row(
        "acme", {**FIELDS, "WHENCREATED": "1/5/2026", "WHENMODIFIED": "10/01/2026"}, ""
    )
    assert row["invoice_date"] == date(2026, 1, 5)  # unpadded, as strptime allows
    assert row["intacct_modified"] == datetime(2026, 10, 1)
    assert row["due_date"] == date(2026, 10, 31)
    assert (row["total_minor"], row["due_minor"], row["currency"]) == (123456, 123456, "EUR")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("WHENDUE", "31/10/2026", "WHENDUE '31/10/2026' is not a date (MM/DD/YYYY)"),
        ("WHENMODIFIED", "10/01/2026 25:00:00", "is not an Intacct timestamp"),
    ],
)
def test_bad_dates_are_refused_with_the_field_named(field: str, value: str, reason: str) -> None:
    with pytest.raises(mapping.Unmappable, match=re.escape(reason)):
        mapping.invoice_row("acme", {**FIELDS, field: value}, "")
