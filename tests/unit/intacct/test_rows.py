"""Records as rows: the shape StreamRecords sends them in."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from arbridge_intacct.client import peek_page
from arbridge_intacct.response import as_rows, flatten


def test_a_page_of_flat_records_is_one_run_of_their_values_in_order() -> None:
    records: list[dict[str, Any]] = [
        {"RECORDNO": "1", "CUSTOMERID": "C1", "TOTAL": "10.00"},
        {"RECORDNO": "2", "CUSTOMERID": "C2", "TOTAL": ""},
    ]
    assert as_rows(records) == [
        (["RECORDNO", "CUSTOMERID", "TOTAL"], [["1", "C1", "10.00"], ["2", "C2", ""]])
    ]


def test_other_names_start_a_run_and_nested_records_are_flattened() -> None:
    records: list[dict[str, Any]] = [
        {"RECORDNO": "1", "NAME": "a"},
        {"RECORDNO": "2", "DISPLAYCONTACT": {"EMAIL1": "x@example.com"}, "NAME": "b"},
        {"RECORDNO": "3", "DISPLAYCONTACT.EMAIL1": "y@example.com", "NAME": "c"},
        {"RECORDNO": "4", "NAME": "d"},
        {},
    ]
    assert as_rows(records) == [
        (["RECORDNO", "NAME"], [["1", "a"]]),
        (
            ["RECORDNO", "DISPLAYCONTACT.EMAIL1", "NAME"],
            [["2", "x@example.com", "b"], ["3", "y@example.com", "c"]],
        ),
        (["RECORDNO", "NAME"], [["4", "d"]]),
        ([], [[]]),
    ]


leaf = st.text(max_size=5)
record = st.dictionaries(
    st.sampled_from(["RECORDNO", "A", "B", "C"]),
    leaf | st.dictionaries(st.sampled_from(["X", "Y"]), leaf, max_size=2) | st.lists(leaf),
    max_size=4,
)


@settings(deadline=None)  # the first example pays for imports
@given(st.lists(record, max_size=8))
def test_rows_hold_exactly_the_flattened_records(records: list[dict[str, Any]]) -> None:
    rebuilt = [
        dict(zip(names, values, strict=True)) for names, rows in as_rows(records) for values in rows
    ]
    assert rebuilt == [flatten(r) for r in records]


def test_a_pages_last_key_and_remaining_count_are_read_from_its_bytes() -> None:
    body = (
        b'<response><operation><result><data listtype="ARINVOICE" totalcount="9" '
        b'count="2" numremaining="7"><ARINVOICE><RECORDNO>41</RECORDNO></ARINVOICE>'
        b"<ARINVOICE><RECORDNO>42</RECORDNO><X>1</X></ARINVOICE></data></result>"
        b"</operation></response>"
    )
    assert peek_page([body], "RECORDNO") == (42, 7)
    # Split anywhere after the <data> tag, it reads the same; before it, it reads nothing
    # (the walk then waits for the decoded page).
    opened = body.index(b'numremaining="7"') + len(b'numremaining="7"')
    for at in range(1, len(body)):
        expected = (42, 7) if at >= opened else None
        assert peek_page([body[:at], body[at:]], "RECORDNO") == expected, at
    assert peek_page([body.replace(b">42<", b">4x2<")], "RECORDNO") is None
    assert peek_page([body.replace(b'numremaining="7"', b"")], "RECORDNO") is None
    assert peek_page([body], "id") is None
    assert peek_page([], "RECORDNO") is None
