"""Deterministic sandbox companies: the same seed and counts give the same data.

Customers with realistic names, contacts, terms and currencies; invoices
spread over the last 18 months (so the six-month initial-sync window
matters), their lines, partial and full payments applied to them, a share of
Order Entry Sales Invoices, bank accounts, GL and statistical accounts, AR
account labels and, for multi-entity companies, entities that own records.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from arbridge_intacct_sandbox.schema import (
    ARACCOUNTLABEL,
    ARINVOICE,
    ARINVOICEITEM,
    ARPYMT,
    ARPYMTDETAIL,
    CHECKINGACCOUNT,
    CREDITCARD,
    CUSTOMER,
    GLACCOUNT,
    LOCATIONENTITY,
    SAVINGSACCOUNT,
    SODOCUMENT,
    STATACCOUNT,
)
from arbridge_intacct_sandbox.store import Company, User, fmt_date, fmt_money

_FIRST = (
    "Acme",
    "Blue",
    "Cedar",
    "Delta",
    "Evergreen",
    "Falcon",
    "Granite",
    "Harbor",
    "Iron",
    "Juniper",
    "Keystone",
    "Lakeside",
    "Maple",
    "Northwind",
    "Oak",
    "Pioneer",
    "Quarry",
    "Redwood",
    "Summit",
    "Tidewater",
    "Union",
    "Vista",
    "Willow",
    "Yellowstone",
    "Zenith",
)
_SECOND = (
    "Analytics",
    "Builders",
    "Consulting",
    "Dental",
    "Engineering",
    "Foods",
    "Logistics",
    "Health",
    "Interiors",
    "Manufacturing",
    "Media",
    "Outfitters",
    "Partners",
    "Robotics",
    "Software",
    "Supply",
    "Systems",
    "Textiles",
    "Ventures",
    "Wholesale",
)
_SUFFIX = ("Inc.", "LLC", "Co.", "Ltd.", "Group", "Corp.")
_PEOPLE = (
    "Alex Morgan",
    "Sam Patel",
    "Jordan Lee",
    "Taylor Chen",
    "Casey Nguyen",
    "Riley Garcia",
    "Jamie Rossi",
    "Morgan Okafor",
    "Avery Schmidt",
    "Quinn Dubois",
)
_CITIES = (
    ("Seattle", "WA", "98101"),
    ("Portland", "OR", "97201"),
    ("Austin", "TX", "78701"),
    ("Denver", "CO", "80202"),
    ("Boston", "MA", "02108"),
    ("Chicago", "IL", "60601"),
    ("Toronto", "ON", "M5H 2N2"),
    ("London", "", "EC1A 1BB"),
    ("Berlin", "", "10115"),
)
_TERMS = (("N30", 30), ("N15", 15), ("N45", 45), ("N60", 60), ("Due on receipt", 0))
_CURRENCIES = ("USD",) * 8 + ("CAD", "EUR", "GBP")
_GROUPS = ("enterprise", "mid-market", "smb", "public-sector")


@dataclass(frozen=True)
class GeneratorSpec:
    seed: int = 1
    customers: int = 50
    invoices: int = 200
    months: int = 18
    sales_invoice_share: float = 0.1
    entities: tuple[str, ...] = ()


def populate(company: Company, spec: GeneratorSpec, now: datetime | None = None) -> None:
    """Fills ``company`` with deterministic records for ``spec``."""
    rng = random.Random(spec.seed)
    now = now or datetime.now(UTC)
    start = now - timedelta(days=spec.months * 30.5)
    company.multi_entity = company.multi_entity or bool(spec.entities)
    for index, entity_id in enumerate(spec.entities):
        company.put(
            LOCATIONENTITY,
            {
                "LOCATIONID": entity_id,
                "NAME": f"{entity_id} Operations",
                "CURRENCY": ("USD", "CAD", "EUR")[index % 3],
                "STATUS": "active",
                "OPCOUNTRY": ("United States", "Canada", "Germany")[index % 3],
            },
            now=start,
        )
    _accounts(company, start)
    entities = ("", *spec.entities)
    customers: list[tuple[str, str, str, int, str]] = []
    for number in range(1, spec.customers + 1):
        name = (
            f"{rng.choice(_FIRST)} {rng.choice(_SECOND)} {rng.choice(_SUFFIX)}"
            if number > 1
            else "Acme Analytics Inc."
        )
        person = rng.choice(_PEOPLE)
        city, state, zipcode = rng.choice(_CITIES)
        term, days = rng.choice(_TERMS)
        currency = rng.choice(_CURRENCIES)
        entity = entities[number % len(entities)] if spec.entities else ""
        customer_id = f"C-{number:05d}"
        created = start + timedelta(seconds=rng.randrange(int((now - start).total_seconds() // 2)))
        slug = name.split()[0].lower()
        company.put(
            CUSTOMER,
            {
                "CUSTOMERID": customer_id,
                "NAME": name,
                "STATUS": "active",
                "ONETIME": "false",
                "ONHOLD": "false",
                "CUSTTYPE": "Customer",
                "TERMNAME": term,
                "CREDITLIMIT": fmt_money(rng.choice((5000, 10000, 25000, 50000))),
                "TOTALDUE": "0.00",
                "CURRENCY": currency,
                "GROUPID": rng.choice(_GROUPS),
                "DISPLAYCONTACT.CONTACTNAME": f"{name} ({person})",
                "DISPLAYCONTACT.COMPANYNAME": name,
                "DISPLAYCONTACT.PRINTAS": name,
                "DISPLAYCONTACT.FIRSTNAME": person.split()[0],
                "DISPLAYCONTACT.LASTNAME": person.split()[1],
                "DISPLAYCONTACT.EMAIL1": f"{person.split()[0].lower()}@{slug}{number}.example.com",
                "DISPLAYCONTACT.PHONE1": (
                    f"+1 555 {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}"
                ),
                "DISPLAYCONTACT.MAILADDRESS.ADDRESS1": f"{rng.randrange(1, 9999)} Main Street",
                "DISPLAYCONTACT.MAILADDRESS.CITY": city,
                "DISPLAYCONTACT.MAILADDRESS.STATE": state,
                "DISPLAYCONTACT.MAILADDRESS.ZIP": zipcode,
                "DISPLAYCONTACT.MAILADDRESS.COUNTRY": "United States" if state else "Other",
                "BILLTO.CONTACTNAME": f"{name} ({person})",
            },
            entity=entity,
            now=created,
        )
        customers.append((customer_id, name, currency, days, entity))
    dues: dict[str, Decimal] = {}
    for number in range(1, spec.invoices + 1):
        customer_id, customer_name, currency, days, entity = customers[
            rng.randrange(len(customers))
        ]
        moment = start + timedelta(seconds=rng.randrange(int((now - start).total_seconds())))
        local_day = moment.astimezone(company.tz).date()
        due_day = local_day + timedelta(days=days)
        lines = [Decimal(rng.randrange(2500, 500000)) / 100 for _ in range(rng.randint(1, 4))]
        total = sum(lines, Decimal(0))
        tax = (total * Decimal("0.0825")).quantize(Decimal("0.01"))
        age_days = (now - moment).days
        roll = rng.random()
        paid = Decimal(0)
        if (age_days > 60 and roll < 0.75) or (age_days > 20 and roll < 0.4):
            paid = total
        elif roll < 0.55:
            paid = (total * Decimal(rng.choice((25, 40, 50))) / 100).quantize(Decimal("0.01"))
        is_sales = rng.random() < spec.sales_invoice_share
        invoice_no = f"INV-{number:06d}"
        values = {
            "RECORDTYPE": "ri",
            "RECORDID": invoice_no,
            "DOCNUMBER": f"PO-{rng.randrange(10**5):05d}",
            "CUSTOMERID": customer_id,
            "CUSTOMERNAME": customer_name,
            "TERMNAME": next(t for t, d in _TERMS if d == days),
            "DESCRIPTION": "Services",
            "WHENCREATED": fmt_date(local_day),
            "WHENPOSTED": fmt_date(local_day),
            "WHENDUE": fmt_date(due_day),
            "WHENPAID": "",
            "CURRENCY": currency,
            "BASECURR": company.base_currency,
            "STATE": "Posted",
            "RAWSTATE": "A",
            "TOTALENTERED": fmt_money(total),
            "TOTALPAID": "0.00",
            "TOTALDUE": fmt_money(total),
            "TRX_TOTALENTERED": fmt_money(total),
            "TRX_TOTALPAID": "0.00",
            "TRX_TOTALDUE": fmt_money(total),
            "MODULEKEY": "8.SO" if is_sales else "4.AR",
            "TAX_AMOUNT": fmt_money(tax),
        }
        invoice = company.put(ARINVOICE, values, entity=entity, now=moment)
        for line_no, amount in enumerate(lines, start=1):
            company.put(
                ARINVOICEITEM,
                {
                    "RECORDKEY": str(invoice.recordno),
                    "LINE_NO": str(line_no),
                    "ACCOUNTNO": "4000",
                    "AMOUNT": fmt_money(amount),
                    "TRX_AMOUNT": fmt_money(amount),
                    "ENTRYDESCRIPTION": f"Line {line_no}",
                    "CURRENCY": currency,
                },
                entity=entity,
                now=moment,
            )
        if is_sales:
            company.put(
                SODOCUMENT,
                {
                    "DOCID": f"Sales Invoice-{invoice_no}",
                    "DOCNO": invoice_no,
                    "DOCPARID": "Sales Invoice",
                    "CUSTVENDID": customer_id,
                    "CUSTVENDNAME": customer_name,
                    "STATE": "Closed",
                    "WHENCREATED": fmt_date(local_day),
                    "WHENDUE": fmt_date(due_day),
                    "PONUMBER": values["DOCNUMBER"],
                    "TERM.NAME": values["TERMNAME"],
                    "CURRENCY": currency,
                    "BASECURR": company.base_currency,
                    "TOTAL": fmt_money(total),
                    "TRX_TOTAL": fmt_money(total),
                    "PRRECORDKEY": str(invoice.recordno),
                    "AUWHENCREATED": company.fmt_timestamp(moment),
                },
                entity=entity,
                now=moment,
            )
        if paid > 0:
            paid_at = min(now, moment + timedelta(days=rng.randrange(1, max(2, days + 10))))
            paid_day = paid_at.astimezone(company.tz).date()
            payment = company.put(
                ARPYMT,
                {
                    "RECORDTYPE": "rp",
                    "CUSTOMERID": customer_id,
                    "CUSTOMERNAME": customer_name,
                    "FINANCIALENTITY": "BOA-USD" if currency == "USD" else f"BANK-{currency}",
                    "PAYMENTMETHOD": rng.choice(("Check", "EFT", "Credit Card")),
                    "DOCNUMBER": f"REF-{number:06d}",
                    "RECEIPTDATE": fmt_date(paid_day),
                    "PAYMENTDATE": fmt_date(paid_day),
                    "WHENPAID": fmt_date(paid_day),
                    "STATE": "Posted",
                    "CURRENCY": currency,
                    "BASECURR": company.base_currency,
                    "TOTALENTERED": fmt_money(paid),
                    "TOTALPAID": fmt_money(paid),
                    "TRX_TOTALENTERED": fmt_money(paid),
                    "TRX_TOTALPAID": fmt_money(paid),
                },
                entity=entity,
                now=paid_at,
            )
            company.put(
                ARPYMTDETAIL,
                {
                    "PAYMENTKEY": str(payment.recordno),
                    "RECORDKEY": str(invoice.recordno),
                    "TRX_PAYMENTAMOUNT": fmt_money(paid),
                    "PAYMENTAMOUNT": fmt_money(paid),
                    "CURRENCY": currency,
                },
                entity=entity,
                now=paid_at,
            )
            company.put(
                ARINVOICE,
                {
                    "TOTALPAID": fmt_money(paid),
                    "TRX_TOTALPAID": fmt_money(paid),
                    "TOTALDUE": fmt_money(total - paid),
                    "TRX_TOTALDUE": fmt_money(total - paid),
                    "STATE": "Paid" if paid >= total else "Partially Paid",
                    "WHENPAID": fmt_date(paid_day) if paid >= total else "",
                },
                entity=entity,
                recordno=invoice.recordno,
                now=paid_at,
            )
        dues[customer_id] = dues.get(customer_id, Decimal(0)) + total - paid
    for customer_id, due in dues.items():
        row = company.find(CUSTOMER, customer_id)
        if row is not None:
            company.put(
                CUSTOMER,
                {"TOTALDUE": fmt_money(due)},
                entity=row.entity,
                recordno=row.recordno,
                keep_modified=True,
            )


def _accounts(company: Company, when: datetime) -> None:
    for account_id, name, currency in (
        ("BOA-USD", "Bank of America Operating", "USD"),
        ("BANK-CAD", "RBC Operating", "CAD"),
        ("BANK-EUR", "Deutsche Bank Operating", "EUR"),
        ("BANK-GBP", "Barclays Operating", "GBP"),
    ):
        company.put(
            CHECKINGACCOUNT,
            {
                "BANKACCOUNTID": account_id,
                "BANKACCOUNTNO": f"****{zlib.crc32(account_id.encode()) % 10000:04d}",
                "GLACCOUNTNO": "1010",
                "BANKNAME": name,
                "STATUS": "active",
                "CURRENCY": currency,
            },
            now=when,
        )
    company.put(
        SAVINGSACCOUNT,
        {
            "BANKACCOUNTID": "SAV-USD",
            "BANKACCOUNTNO": "****7788",
            "GLACCOUNTNO": "1020",
            "BANKNAME": "Bank of America Savings",
            "STATUS": "active",
            "CURRENCY": "USD",
        },
        now=when,
    )
    company.put(
        CREDITCARD,
        {
            "CARDID": "AMEX-CORP",
            "DESCRIPTION": "Corporate Amex",
            "CARDTYPE": "Amex",
            "STATUS": "active",
            "CURRENCY": "USD",
        },
        now=when,
    )
    for number, title, kind in (
        ("1010", "Operating Cash", "balancesheet"),
        ("1020", "Savings", "balancesheet"),
        ("1200", "Accounts Receivable", "balancesheet"),
        ("1250", "Undeposited Funds", "balancesheet"),
        ("4000", "Revenue", "incomestatement"),
        ("4100", "Services Revenue", "incomestatement"),
    ):
        company.put(
            GLACCOUNT,
            {
                "ACCOUNTNO": number,
                "TITLE": title,
                "ACCOUNTTYPE": kind,
                "NORMALBALANCE": "debit" if number < "4" else "credit",
                "CLOSINGTYPE": "non-closing account",
                "STATUS": "active",
            },
            now=when,
        )
    company.put(
        STATACCOUNT,
        {"ACCOUNTNO": "9000", "TITLE": "Headcount", "ACCOUNTTYPE": "forperiod", "STATUS": "active"},
        now=when,
    )
    for label, gl in (("Revenue", "4000"), ("Services", "4100")):
        company.put(
            ARACCOUNTLABEL,
            {
                "ACCOUNTLABEL": label,
                "DESCRIPTION": f"{label} label",
                "GLACCOUNTNO": gl,
                "STATUS": "active",
            },
            now=when,
        )


def make_company(
    *,
    company_id: str,
    user_id: str,
    user_password: str,
    sender_id: str,
    spec: GeneratorSpec,
    time_zone: str = "America/Los_Angeles",
    platform_services: bool = True,
    now: datetime | None = None,
) -> Company:
    """A populated company with one web-services user holding every permission."""
    company = Company(
        company_id=company_id,
        name=f"{company_id} (sandbox)",
        time_zone=time_zone,
        platform_services=platform_services,
        multi_entity=bool(spec.entities),
    )
    company.authorized_senders.add(sender_id)
    company.users[user_id] = User(user_id=user_id, password=user_password)
    populate(company, spec, now)
    return company


def today_in(company: Company) -> date:
    return datetime.now(UTC).astimezone(company.tz).date()
