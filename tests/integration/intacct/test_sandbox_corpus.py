"""The sandbox accepts the corpus's requests it supports and answers in the corpus's shapes."""

from __future__ import annotations

import copy

import pytest
from lxml import etree

from arbridge_intacct_sandbox.functions import HANDLERS
from arbridge_intacct_sandbox.schema import resolve_object
from tests.integration.intacct import corpus
from tests.support.intacct import live_sandbox

pytestmark = pytest.mark.skipif(
    not corpus.available(), reason="shared/intacct-corpus not beside the checkout"
)

GENERIC_WITH_OBJECT = {"readByQuery", "read", "readByName", "query", "inspect", "delete"}


def _supported(function: etree._Element) -> bool:
    if len(function) != 1:
        return False
    body = function[0]
    name = str(body.tag)
    if name == "getAPISession":
        return True
    if name not in HANDLERS:
        return False
    if name in ("create", "update"):
        return len(body) > 0 and all(resolve_object(str(r.tag)) is not None for r in body)
    if name in GENERIC_WITH_OBJECT:
        obj = body.findtext("object") or ""
        return (name == "inspect" and obj in ("", "*")) or resolve_object(obj.strip()) is not None
    return True


def _requests() -> list[tuple[str, etree._Element]]:
    if not corpus.available():
        return []
    found = []
    for entry in corpus.manifest():
        if not entry["role"].startswith("request"):
            continue
        function = corpus.function_of(entry)
        if function is not None and _supported(function):
            found.append((entry["file"], function))
    return found


REQUESTS = _requests()


def test_the_corpus_has_supported_requests_of_many_functions() -> None:
    names = {str(f[0].tag) for _, f in REQUESTS}
    # (The corpus's read/readByQuery/inspect requests name objects the sandbox
    # does not serve, such as CLASS and APBILL; the shape test covers those functions.)
    assert {
        "query",
        "create",
        "update",
        "getAPISession",
        "create_invoice",
        "create_arpayment",
        "apply_arpayment",
    } <= names


async def test_every_supported_corpus_request_is_accepted() -> None:
    failures = []
    async with live_sandbox() as live:
        for file_name, function in REQUESTS:
            function = copy.deepcopy(function)
            function.set("controlid", function.get("controlid") or "corpus")
            body = etree.tostring(function).decode()
            root = await live.call(body)
            control = root.findtext("control/status")
            result = root.find("operation/result")
            if control != "success" or result is None:
                failures.append((file_name, etree.tostring(root)[:300]))
                continue
            assert result.findtext("function") == function[0].tag
            errors = [e.findtext("errorno") for e in result.iter("error")]
            # Accepted: the function ran. A business refusal (unknown key, missing
            # customer) is an answer; a schema or unknown-function error is not.
            if result.findtext("status") == "failure" and any(e in ("XL03000003",) for e in errors):
                failures.append((file_name, etree.tostring(result)[:300]))
    assert not failures, failures[:5]
    assert len(REQUESTS) >= 25


async def test_response_shapes_match_the_corpus() -> None:
    async with live_sandbox() as live:
        session = await live.session()
        rbq = (
            await live.call(
                '<function controlid="a"><readByQuery><object>CUSTOMER</object><fields>*</fields>'
                "<query></query><pagesize>5</pagesize></readByQuery></function>",
                session=session,
            )
        ).find("operation/result/data")
        assert rbq is not None
        assert rbq.get("listtype") == "customer"
        assert rbq[0].tag == "customer"
        assert rbq.get("resultId")
        assert int(rbq.get("count", "0")) == 5
        assert int(rbq.get("numremaining", "0")) == int(rbq.get("totalcount", "0")) - 5
        assert rbq[0].find("DISPLAYCONTACT/MAILADDRESS/CITY") is not None  # nested
        query = (
            await live.call(
                '<function controlid="b"><query><object>ARINVOICE</object>'
                "<select><field>RECORDNO</field>"
                "<field>BILLTO.CONTACTNAME</field></select><pagesize>3</pagesize><offset>2</offset>"
                "</query></function>",
                session=session,
            )
        ).find("operation/result/data")
        assert query is not None
        assert query.get("listtype") == "ARINVOICE"
        assert query.get("offset") == "2"
        assert query.get("resultId") is None
        assert query[0].tag == "ARINVOICE"
        assert query[0].find("BILLTO.CONTACTNAME") is not None  # flat, dotted
        read = (
            await live.call(
                '<function controlid="c"><read><object>CUSTOMER</object>'
                f"<keys>{rbq[0].findtext('RECORDNO')}"
                "</keys><fields>RECORDNO,NAME</fields></read></function>",
                session=session,
            )
        ).find("operation/result/data")
        assert read is not None
        assert read.get("listtype") == "CUSTOMER"
        assert [c.tag for c in read[0]] == ["RECORDNO", "NAME"]
        created = (
            await live.call(
                '<function controlid="d"><create><CUSTOMER><CUSTOMERID>NEW-1</CUSTOMERID>'
                "<NAME>New One</NAME><DISPLAYCONTACT><EMAIL1>a@b.example</EMAIL1></DISPLAYCONTACT>"
                "</CUSTOMER></create></function>",
                session=session,
            )
        ).find("operation/result/data")
        assert created is not None
        assert created.get("listtype") == "objects"
        assert created[0].tag == "customer"
        assert created[0].findtext("CUSTOMERID") == "NEW-1"
        api = (await live.call('<function controlid="e"><getAPISession/></function>')).find(
            "operation/result/data/api"
        )
        assert api is not None
        assert [c.tag for c in api] == ["sessionid", "endpoint", "locationid"]
        assert api.findtext("endpoint") == live.endpoint
