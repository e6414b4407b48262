"""The Intacct sandbox's typed-column scan selects exactly what its general filter does.

A ``query`` whose filter is comparisons of numbers and dates (an initial sync's
WHENMODIFIED window) is answered from typed columns; any other filter by the
general predicate. Both must select the same records, including after a change.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from arbridge_intacct_sandbox import functions
from arbridge_intacct_sandbox.functions import Call, Journal, query
from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company
from arbridge_intacct_sandbox.query import _OPERATORS, _compare, holding
from arbridge_intacct_sandbox.store import Company

_COMPANY: Company | None = None


def _company() -> Company:
    global _COMPANY  # one generated company for every example
    if _COMPANY is None:
        _COMPANY = _generated("c", seed=5, invoices=400)
    return _COMPANY


def _generated(company_id: str, *, seed: int, invoices: int) -> Company:
    return make_company(
        company_id=company_id,
        user_id="u",
        user_password="p",
        sender_id="s",
        spec=GeneratorSpec(seed=seed, customers=invoices // 10, invoices=invoices),
        now=datetime(2026, 11, 1, 12, 0),
    )


def _call(company: Company) -> Call:
    return Call(
        company=company,
        user=next(iter(company.users.values())),
        entity="",
        journal=Journal(),
        result_sets={},
        last_result_by_object={},
        session_key="k",
    )


_OPS = [
    "equalto",
    "notequalto",
    "lessthan",
    "lessthanorequalto",
    "greaterthan",
    "greaterthanorequalto",
]
_DATES = st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 1, 1))
_LEAF = st.one_of(
    st.tuples(
        st.just("WHENMODIFIED"),
        st.sampled_from(_OPS),
        _DATES.map(lambda d: d.strftime("%m/%d/%Y") + " 10:00:00"),
    ),
    st.tuples(
        st.just("WHENDUE"), st.sampled_from(_OPS), _DATES.map(lambda d: d.strftime("%m/%d/%Y"))
    ),
    st.tuples(
        st.just("TRX_TOTALDUE"),
        st.sampled_from(_OPS),
        st.integers(0, 5000).map(lambda n: f"{n}.00"),
    ),
)


def _query(leaves: list[tuple[str, str, str]], after: int | None) -> etree._Element:
    parts = [
        f"<{op}><field>{name}</field><value>{value}</value></{op}>" for name, op, value in leaves
    ]
    if after is not None:
        parts.append(f"<greaterthan><field>RECORDNO</field><value>{after}</value></greaterthan>")
    condition = parts[0] if len(parts) == 1 else "<and>" + "".join(parts) + "</and>"
    return etree.fromstring(
        "<query><object>ARINVOICE</object><select><field>RECORDNO</field></select>"
        f"<filter>{condition}</filter><pagesize>2000</pagesize></query>"
    )


def _selected(call: Call, el: etree._Element) -> list[str]:
    body = query(call, el).body
    return etree.fromstring(body.encode()).xpath("//RECORDNO/text()")  # type: ignore[no-any-return]


@settings(max_examples=150, deadline=None)
@given(leaves=st.lists(_LEAF, min_size=1, max_size=3), after=st.none() | st.integers(0, 600))
def test_the_column_scan_selects_what_the_general_filter_does(
    leaves: list[tuple[str, str, str]], after: int | None
) -> None:
    company = _company()
    company.query_cache.clear()
    fast = _selected(_call(company), _query(leaves, after))
    company.query_cache.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(functions, "comparisons", _never)
        general = _selected(_call(company), _query(leaves, after))
    assert fast == general


def _never(*_args: Any) -> None:
    return None  # the general filter for every query


def test_a_change_is_seen_by_the_next_scan() -> None:
    company = _generated("c2", seed=6, invoices=50)
    functions.warm(company)
    window = [("WHENMODIFIED", "greaterthanorequalto", "01/01/2030 00:00:00")]
    assert _selected(_call(company), _query(window, None)) == []
    table = company.tables["ARINVOICE"]
    row = next(iter(table.rows.values()))
    company.put(table.obj, {}, recordno=row.recordno, now=datetime(2030, 2, 1, 16, tzinfo=UTC))
    assert _selected(_call(company), _query(window, None)) == [str(row.recordno)]


@pytest.mark.parametrize("op", ["=", "!=", "<", ">", "<=", ">="])
def test_holding_decides_as_the_general_comparison(op: str) -> None:
    """No value never passes; a value of another type (text that is not a date)
    compares as text, as the general filter does."""
    column = [None, datetime(2026, 1, 1), "not a date", datetime(2024, 5, 1), "01/01/2025"]
    right = datetime(2025, 1, 1)
    expected = [i for i, value in enumerate(column) if _compare(op, value, right)]
    assert holding(range(len(column)), column, _OPERATORS[op], right) == expected
