"""The Intacct sandbox's XML writing escapes exactly what XML needs, whatever the value."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from arbridge_intacct_sandbox.xmlout import attr, element, esc, flat_record

# Text XML 1.0 can hold: no surrogates or control characters, not U+FFFE or U+FFFF.
texts = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00\ufffe\uffff"
    ),
    max_size=30,
) | st.sampled_from(["", "a & b", "<x>", "&amp;", 'say "hi"', "ok"])


@settings(deadline=None)
@given(texts)
def test_text_and_attributes_escape_as_the_standard_library_does(value: str) -> None:
    assert esc(value) == escape(value)
    assert f'"{attr(value)}"' == quoteattr(value, {'"': "&quot;"})
    assert (etree.fromstring(element("V", value).encode()).text or "") == value


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["RECORDNO", "NAME", "MEMO"]), texts))
def test_a_flat_record_reads_back_as_its_values(values: dict[str, str]) -> None:
    names = ["RECORDNO", "NAME", "MEMO"]
    parsed = etree.fromstring(flat_record("ARINVOICE", values, names).encode())
    assert [child.tag for child in parsed] == names
    assert [child.text or "" for child in parsed] == [values.get(n, "") for n in names]
