"""The tag-filtered streaming reader agrees with the general one, nested records included."""

from __future__ import annotations

import asyncio

import pytest

from arbridge_intacct.response import StreamingResponseReader, parse_response
from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company
from arbridge_intacct_sandbox.sandbox import Sandbox


def _response(function: str) -> bytes:
    sandbox = Sandbox()
    sandbox.add_sender("S", "P")
    sandbox.add_company(
        make_company(
            company_id="c",
            user_id="u",
            user_password="p",
            sender_id="S",
            spec=GeneratorSpec(customers=30, invoices=40),
        )
    )
    body = (
        "<request><control><senderid>S</senderid><password>P</password><controlid>x</controlid>"
        "</control><operation><authentication><login><userid>u</userid><companyid>c</companyid>"
        f"<password>p</password></login></authentication><content>{function}"
        "<function controlid='i'><inspect><object>CUSTOMER</object></inspect></function>"
        "</content></operation></request>"
    ).encode()
    return asyncio.run(sandbox.handle(body, "http://x")).body


@pytest.mark.parametrize(
    ("function", "tag"),
    [
        (
            "<function controlid='a'><readByQuery><object>CUSTOMER</object><query/><pagesize>25"
            "</pagesize></readByQuery></function>",
            "customer",
        ),
        (
            "<function controlid='a'><query><object>ARINVOICE</object><select>"
            "<field>RECORDNO</field><field>CUSTOMERID</field><field>BILLTO.CONTACTNAME</field></select></query></function>",
            "ARINVOICE",
        ),
    ],
)
def test_tagged_and_general_readers_agree(function: str, tag: str) -> None:
    body = _response(function)
    expected = parse_response(body).results[0].data.records  # type: ignore[union-attr]
    assert len(expected) >= 25
    for reader in (StreamingResponseReader(), StreamingResponseReader(record_tag=tag)):
        records = []
        for start in range(0, len(body), 333):
            records += reader.feed(body[start : start + 333])
        records += reader.end()
        response = reader.close()
        first = [r for r, owner in zip(records, reader.record_results, strict=True) if owner == 0]
        assert first == expected
        # The general reader also hands out inspect's record, owned by the second result.
        assert set(reader.record_results) <= {0, 1}
        assert [r.function for r in response.results] == [
            "readByQuery" if "readBy" in function else "query",
            "inspect",
        ]
        assert reader.data is not None
        assert reader.data.count == len(first)
    if tag == "customer":
        assert isinstance(expected[0]["DISPLAYCONTACT"], dict)  # nested, not flattened
