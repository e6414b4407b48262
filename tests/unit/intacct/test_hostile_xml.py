"""Hostile XML is refused with a clear error: no entity expansion, no file read, bounded memory."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from arbridge_intacct.response import StreamingResponseReader, parse_response
from arbridge_runtime.xml import XmlRejected, parse_xml

OK_HEAD = (
    b"<response><control><status>success</status></control><operation><authentication>"
    b"<status>success</status><userid>u</userid><companyid>c</companyid></authentication>"
    b"<result><status>success</status><function>readByQuery</function><controlid>x</controlid>"
)


def _hostile(tmp_path: Path) -> dict[str, bytes]:
    canary = tmp_path / "canary.txt"
    canary.write_text("SECRET-CANARY-CONTENT")
    laughs = (
        b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(8)
        )
        + b"]><response>&i;</response>"
    )
    return {
        "xxe_file": (
            f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{canary}">]>'
            "<response><control><status>&x;</status></control></response>"
        ).encode(),
        "xxe_http": (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>'
            b"<response>&x;</response>"
        ),
        "external_dtd": b'<?xml version="1.0"?><!DOCTYPE response SYSTEM "http://127.0.0.1:9/d.dtd"><response/>',
        "parameter_entity": (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd">'
            b"%p;]><response/>"
        ),
        "billion_laughs": laughs,
        "lowercase_doctype": b"<!doctype response><response/>",
    }


@pytest.mark.parametrize(
    "name",
    [
        "xxe_file",
        "xxe_http",
        "external_dtd",
        "parameter_entity",
        "billion_laughs",
        "lowercase_doctype",
    ],
)
def test_every_parser_refuses_declarations(name: str, tmp_path: Path) -> None:
    body = _hostile(tmp_path)[name]
    with pytest.raises(XmlRejected, match="DOCTYPE and entity declarations are not allowed"):
        parse_xml(body)
    with pytest.raises(XmlRejected, match="not allowed"):
        parse_response(body)
    with pytest.raises(XmlRejected, match="not allowed"):
        StreamingResponseReader().feed(body)


def test_a_doctype_after_a_long_comment_is_still_refused() -> None:
    body = b"<!--" + b"x" * 5000 + b'--><!DOCTYPE r [<!ENTITY x "y">]><response>&x;</response>'
    with pytest.raises(XmlRejected):
        parse_xml(body)


def test_undeclared_entities_are_errors_not_expansions() -> None:
    with pytest.raises(XmlRejected, match="malformed XML"):
        parse_response(b"<response>&undeclared;</response>")


def test_oversized_documents_are_refused_before_parsing() -> None:
    body = (
        OK_HEAD
        + b"<data>"
        + b"<r><F>"
        + b"x" * 2_000_000
        + b"</F></r></data></result></operation></response>"
    )
    with pytest.raises(XmlRejected, match="over the 1000000-byte limit"):
        parse_xml(body, max_bytes=1_000_000)
    reader = StreamingResponseReader(max_bytes=1_000_000)
    chunks = [body[start : start + 65536] for start in range(0, len(body), 65536)]
    for chunk in chunks[:15]:
        reader.feed(chunk)
    with pytest.raises(XmlRejected, match="larger than 1000000 bytes"):
        reader.feed(chunks[15])


def test_deep_nesting_is_refused_and_memory_stays_bounded() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    body = b"<response>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</response>"
    with pytest.raises(XmlRejected):
        parse_xml(body)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 256 * 1024  # KiB: far below the 256 MB bound
