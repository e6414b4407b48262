"""Sync's mapping of Intacct records (the stored data hash must not drift between releases)
and the instants its messages give for Intacct's company-local times."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from arbridge_sync import convert, mapping

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
    assert row["data_hash"] == (
        "2:0af151725e2d1eb7f96ecf304e72c7833211156977df07ce6a08facdf4267a91"
    )
    # Rows stored before the version prefix carry the first definition's hash.
    assert mapping.legacy_hash(row) == (
        "a9dfe5d7696e50dcd3061cdc9e4e3f3e72127543ec074909302f75258ac2c5b3"
    )
    assert mapping.is_legacy_hash(mapping.legacy_hash(row))
    assert not mapping.is_legacy_hash(row["data_hash"])
    newer = mapping.invoice_row("acme", {**FIELDS, "WHENMODIFIED": "11/01/2026 00:00:00"}, "")
    assert newer["data_hash"] == row["data_hash"]  # the time alone is not a change
    paid = mapping.invoice_row("acme", {**FIELDS, "TRX_TOTALPAID": "1.00"}, "")
    assert paid["data_hash"] != row["data_hash"]


def _reference_hash(row: dict[str, object]) -> str:
    # The stored hashes' definition: the row without its time, as sorted compact JSON
    # (dates as ISO text, text as UTF-8), after the definition's version.
    material = {k: v for k, v in row.items() if k not in ("intacct_modified", "data_hash")}
    text = json.dumps(
        material, sort_keys=True, default=date.isoformat, separators=(",", ":"), ensure_ascii=False
    )
    return "2:" + hashlib.sha256(text.encode()).hexdigest()


ROWS = [
    mapping.invoice_row("acme", FIELDS, ""),
    mapping.invoice_row("acme", {**FIELDS, "WHENDUE": "", "WHENCREATED": ""}, ""),
    mapping.invoice_row("acme", {**FIELDS, "TAX": "12.00"}, "TAX"),
    mapping.payment_row("acme", {**FIELDS, "RECEIPTDATE": "09/30/2026", "PAYMENTMETHOD": "Check"}),
    mapping.payment_row("acme", FIELDS),
    mapping.customer_row(
        "acme",
        {
            **FIELDS,
            "NAME": 'Zoë & Co \u2028 "quoted" \\ ✓',
            "DISPLAYCONTACT.EMAIL1": "a@example.com",
            "GROUPID": "G1",
        },
    ),
    mapping.bank_row("acme", "checking", {**FIELDS, "BANKACCOUNTID": "BOA"}),
    mapping.label_row("acme", {**FIELDS, "ACCOUNTLABEL": "Sales"}),
]
IDS = ["invoice", "invoice-undated", "invoice-taxed", "payment", "payment-undated", "customer"]
IDS += ["bank", "label"]


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_every_row_kind_hashes_by_the_stored_definition(row: dict[str, object]) -> None:
    assert row["data_hash"] == _reference_hash(row)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_first_definition_is_kept_for_rows_stored_under_it(row: dict[str, object]) -> None:
    material = {k: v for k, v in row.items() if k not in ("intacct_modified", "data_hash")}
    first = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    assert mapping.legacy_hash(row) == first


@given(
    st.dictionaries(
        st.sampled_from(sorted(set(FIELDS) - {"WHENMODIFIED"})),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
        min_size=1,
    )
)
def test_the_hash_moves_with_the_data_and_only_with_it(change: dict[str, str]) -> None:
    def hashed(fields: dict[str, str]) -> str | None:
        try:
            return str(mapping.invoice_row("acme", fields, "")["data_hash"])
        except mapping.Unmappable:
            return None

    base = mapping.invoice_row("acme", FIELDS, "")
    changed_fields = {**FIELDS, **change}
    digest = hashed(changed_fields)
    if digest is None:
        return
    row = mapping.invoice_row("acme", changed_fields, "")
    same_data = all(row[k] == base[k] for k in base if k not in ("intacct_modified", "data_hash"))
    assert (digest == base["data_hash"]) == same_data
    # Field order and the modification time never count.
    reordered = dict(reversed(list({**changed_fields, "WHENMODIFIED": "01/02/2027"}.items())))
    assert hashed(reordered) == digest


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


def test_an_amount_beyond_int64_is_refused_by_its_record() -> None:
    # Stored as bigint and sent as int64: the record goes to the unsynced registry with
    # the reason instead of failing its whole batch.
    with pytest.raises(mapping.Unmappable, match=r"TRX_TOTALDUE .* beyond the largest amount"):
        mapping.invoice_row("acme", {**FIELDS, "TRX_TOTALDUE": "92233720368547758.08"}, "")
    largest = mapping.invoice_row("acme", {**FIELDS, "TRX_TOTALDUE": "92233720368547758.07"}, "")
    assert largest["due_minor"] == 2**63 - 1


def test_amounts_are_in_the_base_currency_when_the_record_names_no_other() -> None:
    # A company without multi-currency may leave CURRENCY empty; its amounts are in the
    # base currency, which is never assumed to be USD.
    plain = {**FIELDS, "CURRENCY": "", "BASECURR": "JPY", "TRX_TOTALENTERED": "1234"}
    plain["TRX_TOTALDUE"] = "1234"
    invoice = mapping.invoice_row("acme", plain, "")
    assert (invoice["currency"], invoice["due_minor"]) == ("JPY", 1234)
    payment = mapping.payment_row("acme", plain)
    assert (payment["currency"], payment["amount_minor"]) == ("JPY", 1234)
    # A transaction currency, where given, is the amounts' currency.
    assert mapping.invoice_row("acme", {**FIELDS, "BASECURR": "USD"}, "")["currency"] == "EUR"


def test_a_dinar_invoice_keeps_its_fils() -> None:
    # KWD has three decimals: 12.345 is 12,345 fils, not an amount to refuse.
    kuwaiti = {**FIELDS, "CURRENCY": "KWD", "TRX_TOTALENTERED": "12.345"}
    kuwaiti.update(TRX_TOTALPAID="2.005", TRX_TOTALDUE="10.340")
    invoice = mapping.invoice_row("acme", kuwaiti, "")
    assert (invoice["total_minor"], invoice["paid_minor"], invoice["due_minor"]) == (
        12_345,
        2_005,
        10_340,
    )


@pytest.mark.parametrize(
    ("given", "state"),
    [
        ("Posted", "posted"),
        ("", "posted"),
        ("Partially Applied", "posted"),
        ("Draft", "draft"),
        ("Reversed", "reversed"),
        ("Voided", "reversed"),
        ("Reversal", "reversed"),
    ],
)
def test_a_payment_says_when_it_is_not_money_received(given: str, state: str) -> None:
    row = mapping.payment_row("acme", {**FIELDS, "STATE": given})
    assert row["state"] == state
    assert convert.payment(row).state == convert.PAYMENT_STATES[state]
    posted = mapping.payment_row("acme", {**FIELDS, "STATE": "Posted"})
    assert (row["data_hash"] == posted["data_hash"]) == (state == "posted")


def test_amounts_without_any_currency_are_refused_by_their_record() -> None:
    reason = "CURRENCY and BASECURR are both empty"
    with pytest.raises(mapping.Unmappable, match=reason):
        mapping.invoice_row("acme", {**FIELDS, "CURRENCY": ""}, "")
    with pytest.raises(mapping.Unmappable, match=reason):
        mapping.payment_row("acme", {**FIELDS, "CURRENCY": " ", "BASECURR": ""})
    with pytest.raises(mapping.Unmappable, match="'GB' is not an ISO 4217 code"):
        mapping.invoice_row("acme", {**FIELDS, "CURRENCY": "", "BASECURR": "gb"}, "")


ZONES = ["UTC", "America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"]


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
    st.sampled_from([*ZONES, ""]),
)
def test_stamps_are_the_instant_of_the_wall_time_in_the_zone(local: datetime, zone: str) -> None:
    # The reference: an aware datetime of the wall time (fold 0, as the store's naive
    # timestamps are), across DST gaps and repeats and half-hour zones.
    expected = local.replace(tzinfo=ZoneInfo(zone) if zone else UTC)
    stamp = Timestamp()
    convert._stamp(stamp, local, zone)
    assert stamp.seconds * 1_000_000 + stamp.nanos // 1000 == round(
        (expected - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)
    )
    aware = Timestamp()
    convert._stamp(aware, expected, "Asia/Tokyo")  # an aware time keeps its own zone
    assert aware == stamp


def test_stamps_across_a_dst_change_in_los_angeles() -> None:
    zone = "America/Los_Angeles"
    cases = {
        datetime(2026, 3, 8, 1, 59, 59): datetime(2026, 3, 8, 9, 59, 59, tzinfo=UTC),
        datetime(2026, 3, 8, 2, 30): datetime(2026, 3, 8, 10, 30, tzinfo=UTC),  # skipped
        datetime(2026, 3, 8, 3, 0): datetime(2026, 3, 8, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 1, 1, 30): datetime(2026, 11, 1, 8, 30, tzinfo=UTC),  # first 1:30
        datetime(2026, 11, 1, 2, 0): datetime(2026, 11, 1, 10, 0, tzinfo=UTC),
    }
    for local, instant in cases.items():
        stamp = Timestamp()
        convert._stamp(stamp, local, zone)
        assert stamp.ToDatetime(tzinfo=UTC) == instant, local
    unset = Timestamp()
    convert._stamp(unset, None, zone)
    assert unset == Timestamp()
