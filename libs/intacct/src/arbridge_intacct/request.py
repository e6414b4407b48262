"""Building Intacct XML requests: the envelope and the function bodies arbridge sends.

Writes get deterministic function controlids derived from what they are
(their idempotency key), sent with ``uniqueid=true``, so Intacct itself
refuses to apply a repeated write.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def esc(value: str) -> str:
    return value.translate(_TEXT)


def el(tag: str, value: str | int) -> str:
    return f"<{tag}>{esc(str(value))}</{tag}>"


def controlid_for(key: str) -> str:
    """A stable function controlid (1-256 chars) for an idempotency key."""
    if _SAFE_ID.match(key):
        return f"w-{key}"
    return "w-" + hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    """Object and field names go into XML tags: refuse anything but identifiers."""
    if not _NAME.match(name):
        raise ValueError(f"not a valid Intacct object or field name: {name!r}")
    return name


@dataclass(frozen=True)
class Function:
    """One ``<function>``: its controlid and inner XML."""

    controlid: str
    body: str
    write: bool = False

    @property
    def name(self) -> str:
        match = re.match(r"<([A-Za-z_]+)", self.body)
        return match.group(1) if match else ""

    def xml(self) -> str:
        return f'<function controlid="{esc(self.controlid)}">{self.body}</function>'


@dataclass(frozen=True)
class Login:
    user_id: str
    company_id: str
    password: str
    location_id: str = ""

    def __repr__(self) -> str:
        return f"Login(user_id={self.user_id!r}, company_id={self.company_id!r}, password=***)"


def envelope(
    *,
    sender_id: str,
    sender_password: str,
    functions: Sequence[Function],
    session_id: str | None = None,
    login: Login | None = None,
    unique: bool = False,
    transaction: bool = False,
    controlid: str = "arbridge",
) -> bytes:
    """The request document for one operation."""
    if (session_id is None) == (login is None):
        raise ValueError("give exactly one of session_id and login")
    if session_id is not None:
        auth = el("sessionid", session_id)
    else:
        assert login is not None
        location = el("locationid", login.location_id) if login.location_id else ""
        auth = (
            "<login>"
            + el("userid", login.user_id)
            + el("companyid", login.company_id)
            + el("password", login.password)
            + location
            + "</login>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><request><control>'
        + el("senderid", sender_id)
        + el("password", sender_password)
        + el("controlid", controlid)
        + el("uniqueid", "true" if unique else "false")
        + el("dtdversion", "3.0")
        + el("includewhitespace", "false")
        + "</control>"
        + f'<operation transaction="{"true" if transaction else "false"}">'
        + f"<authentication>{auth}</authentication><content>"
        + "".join(f.xml() for f in functions)
        + "</content></operation></request>"
    ).encode()


# Function bodies ------------------------------------------------------------------


def get_api_session(location_id: str | None = None) -> str:
    if location_id is None:
        return "<getAPISession/>"
    return f"<getAPISession>{el('locationid', location_id)}</getAPISession>"


@dataclass(frozen=True)
class Condition:
    """A ``query`` filter leaf: operator (equalto, greaterthanorequalto, in, ...), field, values."""

    operator: str
    field: str
    values: tuple[str, ...] = ()

    def xml(self) -> str:
        return (
            f"<{self.operator}>{el('field', check_name(self.field))}"
            + "".join(el("value", v) for v in self.values)
            + f"</{self.operator}>"
        )


def query(
    object_name: str,
    fields: Iterable[str],
    *,
    conditions: Sequence[Condition] = (),
    order_by: Sequence[tuple[str, bool]] = (),
    page_size: int = 2000,
    offset: int = 0,
    show_private: bool = False,
    docparid: str = "",
) -> str:
    select = "".join(el("field", check_name(f)) for f in fields)
    if len(conditions) == 1:
        filter_xml = f"<filter>{conditions[0].xml()}</filter>"
    elif conditions:
        filter_xml = "<filter><and>" + "".join(c.xml() for c in conditions) + "</and></filter>"
    else:
        filter_xml = ""
    order = ""
    if order_by:
        order = (
            "<orderby>"
            + "".join(
                "<order>"
                + el("field", check_name(f))
                + ("<ascending/>" if up else "<descending/>")
                + "</order>"
                for f, up in order_by
            )
            + "</orderby>"
        )
    options = "<options><showprivate>true</showprivate></options>" if show_private else ""
    docpar = el("docparid", docparid) if docparid else ""
    return (
        f"<query><select>{select}</select>{el('object', check_name(object_name))}{docpar}"
        f"{filter_xml}{order}{options}{el('pagesize', page_size)}{el('offset', offset)}</query>"
    )


def read(
    object_name: str, keys: Sequence[str], fields: Sequence[str] = ("*",), docparid: str = ""
) -> str:
    if len(keys) > 100:
        raise ValueError("read takes at most 100 keys per function")
    field_list = ",".join(f if f == "*" else check_name(f) for f in fields)
    docpar = el("docparid", docparid) if docparid else ""
    return (
        f"<read>{el('object', check_name(object_name))}{el('keys', ','.join(keys))}"
        f"{el('fields', field_list)}{el('returnFormat', 'xml')}{docpar}</read>"
    )


def read_by_name(object_name: str, names: Sequence[str], fields: Sequence[str] = ("*",)) -> str:
    if len(names) > 100:
        raise ValueError("readByName takes at most 100 keys per function")
    field_list = ",".join(f if f == "*" else check_name(f) for f in fields)
    return (
        f"<readByName>{el('object', check_name(object_name))}{el('keys', ','.join(names))}"
        f"{el('fields', field_list)}{el('returnFormat', 'xml')}</readByName>"
    )


def retrieve_pdf(kind: str, key: str) -> str:
    """``retrievepdf``: an invoice printed with the company's template (``arinvoice`` by
    RECORDNO with the AR invoice template, ``sotransaction`` by DOCID with the Sales
    Invoice one); the answer carries it base64 in ``pdfdata``."""
    if kind not in ("arinvoice", "sotransaction"):
        raise ValueError("retrievepdf prints an arinvoice or a sotransaction")
    return f"<retrievepdf><{kind}>{el('key', key)}</{kind}></retrievepdf>"


def inspect(object_name: str) -> str:
    return f"<inspect>{el('object', object_name)}</inspect>"


def get_user_permissions(user_id: str) -> str:
    return f"<getUserPermissions>{el('userId', user_id)}</getUserPermissions>"


def _nested(values: Mapping[str, str]) -> str:
    tree: dict[str, object] = {}
    for name, value in values.items():
        node = tree
        parts = [check_name(p) for p in name.split(".")]
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            assert isinstance(child, dict)
            node = child
        node[parts[-1]] = value

    def render(node: Mapping[str, object]) -> str:
        return "".join(
            f"<{k}>{render(v)}</{k}>" if isinstance(v, dict) else el(k, str(v))
            for k, v in node.items()
        )

    return render(tree)


def create(object_name: str, records: Sequence[Mapping[str, str]]) -> str:
    if not 1 <= len(records) <= 100:
        raise ValueError("create takes 1 to 100 records per function")
    tag = check_name(object_name)
    return "<create>" + "".join(f"<{tag}>{_nested(r)}</{tag}>" for r in records) + "</create>"


def update(object_name: str, records: Sequence[Mapping[str, str]]) -> str:
    if not 1 <= len(records) <= 100:
        raise ValueError("update takes 1 to 100 records per function")
    tag = check_name(object_name)
    return "<update>" + "".join(f"<{tag}>{_nested(r)}</{tag}>" for r in records) + "</update>"


def delete(object_name: str, keys: Sequence[str]) -> str:
    return f"<delete>{el('object', check_name(object_name))}{el('keys', ','.join(keys))}</delete>"


def _date(tag: str, value: date) -> str:
    month, day = f"{value.month:02d}", f"{value.day:02d}"
    return f"<{tag}>{el('year', value.year)}{el('month', month)}{el('day', day)}</{tag}>"


def custom_fields(values: Mapping[str, str]) -> str:
    if not values:
        return ""
    return (
        "<customfields>"
        + "".join(
            "<customfield>"
            + el("customfieldname", check_name(k))
            + el("customfieldvalue", v)
            + "</customfield>"
            for k, v in values.items()
        )
        + "</customfields>"
    )


def update_invoice(record_no: str, *, custom: Mapping[str, str]) -> str:
    return f'<update_invoice key="{esc(record_no)}">{custom_fields(custom)}</update_invoice>'


@dataclass(frozen=True)
class Application:
    invoice_record_no: str
    amount: str  # decimal text, e.g. "125.00"


def create_arpayment(
    *,
    customer_id: str,
    amount: str,
    received: date,
    payment_method: str,
    applications: Sequence[Application],
    bank_account_id: str = "",
    undeposited_funds_account: str = "",
    reference: str = "",
    currency: str = "",
) -> str:
    if bool(bank_account_id) == bool(undeposited_funds_account):
        raise ValueError("give exactly one of bank_account_id and undeposited_funds_account")
    account = (
        el("bankaccountid", bank_account_id)
        if bank_account_id
        else el("undepfundsacct", undeposited_funds_account)
    )
    items = "".join(
        f"<arpaymentitem>{el('invoicekey', a.invoice_record_no)}{el('amount', a.amount)}"
        f"</arpaymentitem>"
        for a in applications
    )
    return (
        f"<create_arpayment>{el('customerid', customer_id)}{el('paymentamount', amount)}"
        f"{account}{el('refid', reference) if reference else ''}{_date('datereceived', received)}"
        f"{el('paymentmethod', payment_method)}{el('currency', currency) if currency else ''}"
        f"{items}</create_arpayment>"
    )
