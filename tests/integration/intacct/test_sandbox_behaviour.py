"""The Intacct sandbox behaves as Intacct does: errors, sessions, permissions, paging, writes."""

from __future__ import annotations

import asyncio
import random

from lxml import etree

from tests.support.intacct import SENDER, envelope, live_sandbox


def _errors(el: etree._Element) -> list[str]:
    return [e.findtext("errorno") or "" for e in el.iter("error")]


def _desc(el: etree._Element) -> str:
    return " ".join((e.findtext("description2") or "") for e in el.iter("error"))


async def test_envelope_errors_are_intacts() -> None:
    async with live_sandbox() as live:
        status, root, _ = await live.post(b"<request><control><senderid>x</senderid")
        assert status == 200
        assert root is not None
        assert root.findtext("control/status") == "failure"
        assert _errors(root) == ["XL03000003"]
        _, root, _ = await live.post(
            envelope("<function controlid='a'><getAPISession/></function>", sender_password="wrong")
        )
        assert root is not None
        assert root.findtext("control/status") == "failure"
        assert _errors(root) == ["XL03000006"]
        assert "Partner ID or password" in _desc(root)
        _, root, _ = await live.post(
            envelope("<function controlid='a'><getAPISession/></function>", password="wrong")
        )
        assert root is not None
        assert root.findtext("control/status") == "success"
        assert root.findtext("operation/authentication/status") == "failure"
        assert root.find("operation/result") is None
        assert "Sign-in information is incorrect" in _desc(root)
        _, root, _ = await live.post(envelope("<function controlid='a'><frobnicate/></function>"))
        assert root is not None
        assert _errors(root) == ["XL03000003"]
        root = await live.call(
            "<function controlid='a'><readByQuery><object>NOPE</object>"
            "<query/></readByQuery></function>"
        )
        assert root.findtext("operation/result/status") == "failure"
        assert _errors(root) == ["Query Failed"]
        assert "Object definition NOPE not found" in _desc(root)
        root = await live.call(
            "<function controlid='a'><readByQuery><object>CUSTOMER</object>"
            "<query>NAME = </query></readByQuery></function>"
        )
        assert _errors(root) == ["Query Failed"]
        root = await live.call(
            "<function controlid='a'><readByQuery><object>CUSTOMER</object>"
            "<fields>NAME,NOSUCH</fields><query/></readByQuery></function>"
        )
        assert root.findtext("operation/result/status") == "failure"
        assert "NOSUCH" in _desc(root)
        async with live.http.get(live.endpoint) as reply:
            assert reply.status == 405


async def test_sessions_slide_expire_and_fail_as_intacct_does() -> None:
    async with live_sandbox() as live:
        session = await live.session()
        ok = await live.call(
            "<function controlid='a'><read><object>CUSTOMER</object><keys>1</keys>"
            "</read></function>",
            session=session,
        )
        assert ok.findtext("operation/authentication/status") == "success"
        assert ok.findtext("operation/authentication/sessiontimeout")
        bad = await live.call(
            "<function controlid='a'><read><object>CUSTOMER</object><keys>1</keys>"
            "</read></function>",
            session="not-a-session",
        )
        assert bad.findtext("operation/authentication/status") == "failure"
        assert "Invalid session" in _desc(bad)
        # getAPISession must be alone in its request.
        mixed = await live.call(
            "<function controlid='a'><getAPISession/></function>"
            "<function controlid='b'><inspect><object>CUSTOMER</object></inspect></function>"
        )
        assert mixed.findall("operation/result")[0].findtext("status") == "failure"
        status, _body = await live.admin(
            "PUT", "/sandbox/companies/acme-test/faults", json={"session_expiry_calls": 2}
        )
        assert status == 200
        fresh = await live.session()
        first = await live.call(
            "<function controlid='a'><inspect><object>CUSTOMER</object></inspect></function>",
            session=fresh,
        )
        assert first.findtext("operation/authentication/status") == "success"
        second = await live.call(
            "<function controlid='a'><inspect><object>CUSTOMER</object></inspect></function>",
            session=fresh,
        )
        assert second.findtext("operation/authentication/status") == "failure"


async def test_missing_permission_says_what_to_grant() -> None:
    async with live_sandbox() as live:
        status, _ = await live.admin(
            "PUT",
            "/sandbox/companies/acme-test/users/xmlgw-armatic",
            json={"permissions": {"ar.customers": ["View"]}},
        )
        assert status == 200
        root = await live.call(
            "<function controlid='a'><readByQuery><object>CUSTOMER</object>"
            "<query/></readByQuery></function>"
        )
        assert root.findtext("operation/result/status") == "failure"
        text = _desc(root) + " ".join(e.findtext("correction") or "" for e in root.iter("error"))
        assert "You do not have permission for API operation READ_BY_QUERY" in text
        assert "Accounts Receivable > Customers" in text
        read = await live.call(
            "<function controlid='a'><read><object>CUSTOMER</object><keys>1</keys>"
            "</read></function>"
        )
        assert read.findtext("operation/result/status") == "success"


async def test_platform_services_absent_means_no_charge_queue() -> None:
    async with live_sandbox(platform_services=False) as live:
        root = await live.call(
            "<function controlid='a'><readByQuery><object>bluesnaparqueue</object>"
            "<query/></readByQuery></function>"
        )
        assert "Object definition bluesnaparqueue not found" in _desc(root)
    async with live_sandbox() as live:
        root = await live.call(
            "<function controlid='a'><create><bluesnaparqueue><name>REQ-1</name>"
            "<customerid>C-00001</customerid><amount>10.00</amount>"
            "</bluesnaparqueue></create></function>"
        )
        assert root.findtext("operation/result/status") == "success"
        assert root.find("operation/result/data/bluesnaparqueue/id") is not None


async def test_transaction_rolls_back_and_aborts_the_rest() -> None:
    async with live_sandbox() as live:
        before = live.sandbox.companies["acme-test"].tables["CUSTOMER"].rows.copy()
        root = await live.call(
            "<function controlid='a'><create><CUSTOMER><CUSTOMERID>T-1</CUSTOMERID><NAME>T1</NAME>"
            "</CUSTOMER></create></function>"
            "<function controlid='b'><create><CUSTOMER><NAME>no id</NAME><NOSUCH>x</NOSUCH>"
            "</CUSTOMER></create></function>"
            "<function controlid='c'><create><CUSTOMER><CUSTOMERID>T-3</CUSTOMERID><NAME>T3</NAME>"
            "</CUSTOMER></create></function>",
            transaction=True,
        )
        statuses = [r.findtext("status") for r in root.findall("operation/result")]
        assert statuses == ["aborted", "failure", "aborted"]
        assert "XL03000009" in _errors(root.findall("operation/result")[0])
        assert live.sandbox.companies["acme-test"].tables["CUSTOMER"].rows == before
        root = await live.call(
            "<function controlid='a'><create><CUSTOMER><CUSTOMERID>T-1</CUSTOMERID><NAME>T1</NAME>"
            "</CUSTOMER></create></function>"
            "<function controlid='b'><create><CUSTOMER><NAME>bad</NAME><NOSUCH>x</NOSUCH>"
            "</CUSTOMER></create></function>"
        )
        assert [r.findtext("status") for r in root.findall("operation/result")] == [
            "success",
            "failure",
        ]
        assert (
            live.sandbox.companies["acme-test"].find(
                live.sandbox.companies["acme-test"].tables["CUSTOMER"].obj, "T-1"
            )
            is not None
        )


async def test_uniqueid_refuses_a_repeated_write() -> None:
    async with live_sandbox() as live:
        write = (
            "<function controlid='pay-123'><create><CUSTOMER><CUSTOMERID>U-1</CUSTOMERID>"
            "<NAME>Once</NAME></CUSTOMER></create></function>"
        )
        first = await live.call(write, unique=True)
        assert first.findtext("operation/result/status") == "success"
        again = await live.call(write, unique=True)
        assert again.findtext("operation/result/status") == "failure"
        assert _errors(again) == ["XL03000012"]
        count = sum(
            1
            for r in live.sandbox.companies["acme-test"].tables["CUSTOMER"].rows.values()
            if r.values.get("CUSTOMERID") == "U-1"
        )
        assert count == 1


async def test_invoice_and_payment_functions_keep_balances() -> None:
    async with live_sandbox() as live:
        created = await live.call(
            "<function controlid='i'><create_invoice><customerid>C-00002</customerid>"
            "<datecreated><year>2026</year><month>11</month><day>20</day></datecreated>"
            "<termname>N30</termname><invoiceno>NEW-INV-1</invoiceno>"
            "<customfields><customfield><customfieldname>TAX_AMOUNT</customfieldname>"
            "<customfieldvalue>8.25</customfieldvalue></customfield></customfields>"
            "<invoiceitems><lineitem><glaccountno>4000</glaccountno><amount>60.00</amount></lineitem>"
            "<lineitem><glaccountno>4000</glaccountno><amount>40.00</amount></lineitem>"
            "</invoiceitems></create_invoice></function>"
        )
        key = created.findtext("operation/result/key")
        assert key
        assert key.isdigit()
        paid = await live.call(
            "<function controlid='p'><create_arpayment><customerid>C-00002</customerid>"
            "<paymentamount>30.00</paymentamount><bankaccountid>BOA-USD</bankaccountid>"
            "<datereceived><year>2026</year><month>11</month><day>21</day></datereceived>"
            "<paymentmethod>Credit Card</paymentmethod>"
            f"<arpaymentitem><invoicekey>{key}</invoicekey>"
            "<amount>30.00</amount></arpaymentitem></create_arpayment></function>"
        )
        assert paid.findtext("operation/result/status") == "success", etree.tostring(paid)
        invoice = (
            await live.call(
                f"<function controlid='r'><read><object>ARINVOICE</object>"
                f"<keys>{key}</keys></read></function>"
            )
        ).find("operation/result/data/ARINVOICE")
        assert invoice is not None
        assert invoice.findtext("TOTALENTERED") == "100.00"
        assert invoice.findtext("TOTALPAID") == "30.00"
        assert invoice.findtext("TOTALDUE") == "70.00"
        assert invoice.findtext("STATE") == "Partially Paid"
        assert invoice.findtext("TAX_AMOUNT") == "8.25"
        over = await live.call(
            "<function controlid='o'><create_arpayment><customerid>C-00002</customerid>"
            "<paymentamount>500.00</paymentamount><bankaccountid>BOA-USD</bankaccountid>"
            f"<arpaymentitem><invoicekey>{key}</invoicekey><amount>500.00</amount></arpaymentitem>"
            "</create_arpayment></function>"
        )
        assert over.findtext("operation/result/status") == "failure"
        assert "more than" in _desc(over)
        generic = await live.call(
            "<function controlid='g'><update><ARINVOICE><RECORDNO>"
            + key
            + "</RECORDNO><DESCRIPTION>x</DESCRIPTION></ARINVOICE></update></function>"
        )
        assert "update_invoice" in " ".join(
            e.findtext("correction") or "" for e in generic.iter("error")
        )


async def test_multi_entity_visibility() -> None:
    async with live_sandbox(entities=("US", "CA"), customers=30, invoices=60) as live:
        company = live.sandbox.companies["acme-test"]
        by_entity: dict[str, int] = {}
        for row in company.tables["CUSTOMER"].rows.values():
            by_entity[row.entity] = by_entity.get(row.entity, 0) + 1
        query = (
            "<function controlid='q'><query><object>CUSTOMER</object><select><field>RECORDNO"
            "</field></select><pagesize>2000</pagesize>{options}</query></function>"
        )
        top = await live.call(query.format(options=""))
        assert int(top.find("operation/result/data").get("totalcount")) == by_entity.get("", 0)
        private = await live.call(
            query.format(options="<options><showprivate>true</showprivate></options>")
        )
        assert int(private.find("operation/result/data").get("totalcount")) == sum(
            by_entity.values()
        )
        us = await live.session("US")
        scoped = await live.call(query.format(options=""), session=us)
        assert int(scoped.find("operation/result/data").get("totalcount")) == (
            by_entity.get("", 0) + by_entity["US"]
        )
        assert scoped.findtext("operation/authentication/locationid") == "US"
        bad = await live.call(
            "<function controlid='s'><getAPISession><locationid>XX</locationid>"
            "</getAPISession></function>"
        )
        assert bad.findtext("operation/result/status") == "failure"


async def test_paging_is_stable_while_records_change() -> None:
    async with live_sandbox(customers=30, invoices=900) as live:
        session = await live.session()
        company = live.sandbox.companies["acme-test"]
        expected = set(company.tables["ARINVOICE"].rows)
        stop = asyncio.Event()
        rng = random.Random(3)

        async def churn() -> None:
            while not stop.is_set():
                key = rng.choice(sorted(expected))
                await live.admin(
                    "PUT",
                    f"/sandbox/companies/acme-test/records/ARINVOICE/{key}",
                    json={"values": {"DESCRIPTION": f"edited {rng.random()}"}},
                )
                await live.admin(
                    "POST",
                    "/sandbox/companies/acme-test/records/ARINVOICE",
                    json={"values": {"RECORDID": "late", "CUSTOMERID": "C-00001"}},
                )

        churner = asyncio.create_task(churn())
        try:
            seen: list[int] = []
            first = await live.call(
                "<function controlid='a'><readByQuery><object>ARINVOICE</object>"
                "<fields>RECORDNO</fields><query/><pagesize>100</pagesize>"
                "</readByQuery></function>",
                session=session,
            )
            data = first.find("operation/result/data")
            seen += [int(r.findtext("RECORDNO")) for r in data]
            while data.get("resultId"):
                more = await live.call(
                    f"<function controlid='m'><readMore><resultId>"
                    f"{data.get('resultId')}</resultId></readMore></function>",
                    session=session,
                )
                data = more.find("operation/result/data")
                seen += [int(r.findtext("RECORDNO")) for r in data]
                await asyncio.sleep(0)
            assert len(seen) == len(set(seen)), "a record was repeated"
            assert expected <= set(seen), "a record was skipped"
            walked: list[int] = []
            offset = 0
            while True:
                page = await live.call(
                    "<function controlid='q'><query><object>ARINVOICE</object>"
                    "<select><field>RECORDNO"
                    "</field></select><filter><lessthanorequalto><field>RECORDNO</field><value>"
                    f"{max(expected)}</value></lessthanorequalto></filter><orderby><order><field>RECORDNO"
                    f"</field><ascending/></order></orderby><pagesize>70</pagesize><offset>{offset}"
                    "</offset></query></function>",
                    session=session,
                )
                pdata = page.find("operation/result/data")
                walked += [int(r.findtext("RECORDNO")) for r in pdata]
                offset += int(pdata.get("count"))
                if pdata.get("numremaining") == "0":
                    break
            assert len(walked) == len(set(walked))
            assert set(walked) == expected
        finally:
            stop.set()
            await churner


async def test_readmore_with_an_unknown_result_id_fails_as_intacct_does() -> None:
    async with live_sandbox() as live:
        root = await live.call(
            "<function controlid='m'><readMore><resultId>nope</resultId></readMore></function>"
        )
        assert _errors(root) == ["readMore failed"]
        assert "invalid or expired resultId: nope" in _desc(root)


async def test_throttling_and_gateway_faults() -> None:
    async with live_sandbox() as live:
        await live.admin(
            "PUT",
            "/sandbox/companies/acme-test/faults",
            json={"concurrency_limit": 2, "latency_ms": 200},
        )
        body = envelope(
            "<function controlid='a'><inspect><object>CUSTOMER</object></inspect></function>"
        )
        replies = await asyncio.gather(*(live.post(body) for _ in range(6)))
        codes = sorted(status for status, _, _ in replies)
        assert codes.count(429) >= 1
        assert codes.count(200) >= 2
        throttled = next(raw for status, _, raw in replies if status == 429)
        assert b"GW-0010" in throttled
        _, stats = await live.admin("GET", "/sandbox/stats?company=acme-test")
        company_stats = stats["companies"]["acme-test"]  # type: ignore[index]
        assert company_stats["max_concurrency"] <= 2
        await live.admin(
            "PUT",
            "/sandbox/companies/acme-test/faults",
            json={"concurrency_limit": 0, "latency_ms": 0, "error_524_rate": 1.0},
        )
        status, _, _ = await live.post(
            envelope(
                "<function controlid='w'><create><CUSTOMER><CUSTOMERID>AFTER-524</CUSTOMERID>"
                "<NAME>Made anyway</NAME></CUSTOMER></create></function>"
            )
        )
        assert status == 524
        # A 524 means the work was done: the record exists.
        company = live.sandbox.companies["acme-test"]
        assert company.find(company.tables["CUSTOMER"].obj, "AFTER-524") is not None


async def test_a_record_fails_validation_on_demand() -> None:
    async with live_sandbox() as live:
        await live.admin(
            "PUT",
            "/sandbox/companies/acme-test/faults",
            json={"failing_records": ["CUSTOMER:C-00003"]},
        )
        root = await live.call(
            "<function controlid='u'><update><CUSTOMER><CUSTOMERID>C-00003"
            "</CUSTOMERID><NAME>Renamed</NAME></CUSTOMER></update></function>"
        )
        assert root.findtext("operation/result/status") == "failure"
        assert "Validation failed for C-00003" in _desc(root)
        await live.admin("PUT", "/sandbox/companies/acme-test/faults", json={"failing_records": []})
        root = await live.call(
            "<function controlid='u'><update><CUSTOMER><CUSTOMERID>C-00003"
            "</CUSTOMERID><NAME>Renamed</NAME></CUSTOMER></update></function>"
        )
        assert root.findtext("operation/result/status") == "success"


async def test_whenmodified_is_kept_in_the_company_time_zone() -> None:
    async with live_sandbox() as live:
        company = live.sandbox.companies["acme-test"]
        status, body = await live.admin(
            "POST",
            "/sandbox/companies/acme-test/records/CUSTOMER",
            json={"values": {"CUSTOMERID": "TZ-1", "NAME": "Tz"}},
        )
        assert status == 201
        row = company.find(company.tables["CUSTOMER"].obj, "TZ-1")
        assert row is not None
        local = row.modified_utc.astimezone(company.tz).strftime("%m/%d/%Y %H:%M:%S")
        assert row.values["WHENMODIFIED"] == local
        assert body["values"]["WHENCREATED"] == local  # type: ignore[index]
        _ = SENDER


async def test_server_errors_senders_and_reset() -> None:
    async with live_sandbox() as live:
        await live.admin("PUT", "/sandbox/companies/acme-test/faults", json={"error_5xx_rate": 1.0})
        status, _, _ = await live.post(
            envelope("<function controlid='a'><getAPISession/></function>")
        )
        assert status == 503
        await live.admin("PUT", "/sandbox/companies/acme-test/faults", json={"error_5xx_rate": 0})
        status, _ = await live.admin(
            "POST", "/sandbox/senders", json={"sender_id": "Other", "password": "other-pw"}
        )
        assert status == 201
        root = await live.call(
            "<function controlid='a'><getAPISession/></function>",
            sender="Other",
            sender_password="other-pw",
        )
        assert root.findtext("operation/authentication/status") == "failure"
        assert "not authorized for company" in _desc(root)
        await live.admin(
            "POST", "/sandbox/companies/acme-test/senders", json={"sender_id": "Other"}
        )
        root = await live.call(
            "<function controlid='a'><getAPISession/></function>",
            sender="Other",
            sender_password="other-pw",
        )
        assert root.findtext("operation/authentication/status") == "success"
        status, body = await live.admin(
            "POST",
            "/sandbox/companies",
            json={
                "company_id": "second",
                "customers": 3,
                "invoices": 5,
                "user_password": "pw2",
                "sender_id": SENDER,
            },
        )
        assert status == 201
        assert body["counts"]["CUSTOMER"] == 3  # type: ignore[index]
        status, body = await live.admin("POST", "/sandbox/companies", json={"company_id": ""})
        assert status == 400
        assert "company_id is required" in str(body["error"])
        status, body = await live.admin(
            "PUT", "/sandbox/companies/acme-test/faults", json={"latency_ms": "slow"}
        )
        assert status == 400
        _, stats = await live.admin("GET", "/sandbox/stats")
        assert stats["companies"]["acme-test"]["server_errors"] == 1  # type: ignore[index]


def test_the_generator_is_deterministic() -> None:
    from datetime import UTC, datetime

    from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company

    now = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)

    def snapshot(seed: int) -> list[tuple[str, dict[str, str]]]:
        company = make_company(
            company_id="d",
            user_id="u",
            user_password="p",
            sender_id="s",
            spec=GeneratorSpec(seed=seed, customers=20, invoices=80),
            now=now,
        )
        return [
            (name, dict(row.values))
            for name in ("CUSTOMER", "ARINVOICE", "ARPYMT", "ARINVOICEITEM")
            for row in sorted(company.tables[name].rows.values(), key=lambda r: r.recordno)
        ]

    first, again, other = snapshot(5), snapshot(5), snapshot(6)
    assert first == again
    assert first != other
    assert sum(1 for name, _ in first if name == "ARINVOICE") == 80
