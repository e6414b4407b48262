"""The compiled record extractor answers exactly what the pure Python decoder answers.

Records of every shape (flat, nested, repeated names, empty, CDATA, escaped
text, non-ASCII) are decoded both ways; a streamed response cut into chunks
of every size gives the same records, in order, with the same result owners,
as the whole-document parse.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

import arbridge_intacct.response as response
from arbridge_intacct.response import StreamingResponseReader, parse_response, record_of

speedups = pytest.importorskip("arbridge_intacct_speedups")

names = st.sampled_from(["RECORDNO", "CUSTOMERID", "TOTAL", "DISPLAYCONTACT", "EMAIL", "ÄNDERUNG"])
# Text XML 1.0 can hold (Intacct sends nothing else): no surrogates or control
# characters, and not U+FFFE or U+FFFF, which XML excludes too.
texts = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00\ufffe\uffff"
    ),
    max_size=20,
)


def _xml(node: Any) -> str:
    """A node: (name, text) for a leaf, (name, [children]) for a nested one."""
    name, value = node
    if isinstance(value, list):
        return f"<{name}>{''.join(_xml(c) for c in value)}</{name}>"
    if value == "":
        return f"<{name}/>"
    if value.startswith("cdata:"):
        return f"<{name}><![CDATA[{value[6:].replace(']]>', '')}]]></{name}>"
    return f"<{name}>{escape(value)}</{name}>"


leaves = st.tuples(names, texts)
nodes = st.recursive(
    leaves, lambda inner: st.tuples(names, st.lists(inner, max_size=4)), max_leaves=12
)
records = st.lists(nodes, max_size=8)


def _document(rows: list[list[Any]], results: int = 1) -> bytes:
    body = "".join(
        f"<result><status>success</status><function>readByQuery</function>"
        f"<controlid>r{n}</controlid><data listtype='ARINVOICE' count='{len(rows)}'>"
        + "\n".join(f"<ARINVOICE>{''.join(_xml(f) for f in row)}</ARINVOICE>" for row in rows)
        + "</data></result>"
        for n in range(results)
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?><response><control><status>success</status>"
        "</control><operation><authentication><status>success</status><userid>u</userid>"
        f"<companyid>c</companyid></authentication>{body}</operation></response>"
    ).encode()


@given(row=records)
@settings(max_examples=300)
def test_one_record_decodes_as_record_of_does(row: list[Any]) -> None:
    element = etree.fromstring(f"<R>{''.join(_xml(f) for f in row)}</R>".encode())
    assert speedups.record(element) == record_of(element)


@given(rows=st.lists(records, max_size=6), results=st.integers(1, 3), chunk=st.integers(1, 400))
@settings(max_examples=200)
def test_streamed_records_equal_the_whole_parse(
    rows: list[list[Any]], results: int, chunk: int
) -> None:
    body = _document(rows, results)
    whole = parse_response(body)
    expected = [r for res in whole.results for r in (res.data.records if res.data else [])]
    expected_owners = [
        i for i, res in enumerate(whole.results) for _ in (res.data.records if res.data else [])
    ]
    reader = StreamingResponseReader(record_tag="ARINVOICE")
    got = []
    for start in range(0, len(body), chunk):
        got.extend(reader.feed(body[start : start + chunk]))
    got.extend(reader.end())
    reader.close()
    assert got == expected
    assert reader.record_results == expected_owners
    # And both agree with the pure Python decoder.
    slow = [record_of(el) for el in etree.fromstring(body).iter("ARINVOICE")]
    assert got == slow


def test_the_compiled_reader_is_the_one_in_use() -> None:
    assert response._speedups is speedups
