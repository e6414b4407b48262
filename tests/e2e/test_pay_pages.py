"""The hosted pay pages driven in a real headless Chromium, down to applied payments in Intacct.

Each flow is what a payer does: open the link from an invoice, enter a card
into the gateway's hosted fields (a cross-origin frame), pay, read the
receipt. The page runs under its strict CSP; a CSP violation or script error
fails the test. Every payment must then be in the sandbox Intacct as an AR
payment applied to its invoices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect
from pypdf import PdfReader

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_devinfra.infra import free_port
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import from_minor, to_minor
from tests.conftest import TOKEN
from tests.support.browser import headless_chromium
from tests.support.payments import (
    Payer,
    arbridge_logs,
    deposit_everywhere,
    eventually,
    gateway_transactions,
    intacct_values,
    leaks,
    open_invoices_by_customer,
    synced_payments_suite,
)

PHONE: ViewportSize = {"width": 390, "height": 844}


async def _open(browser: Browser, url: str, problems: list[str]) -> tuple[Page, Any]:
    """A phone-sized page at ``url``; script errors and CSP violations go to ``problems``."""
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = await context.new_page()
    page.on("pageerror", lambda err: problems.append(f"script error: {err}"))

    def console(msg: Any) -> None:
        # A 402 or 410 page logs its own status as a failed load; anything else counts.
        where = msg.location.get("url", "")
        own_status = msg.text.startswith("Failed to load resource") and "/l/" in where
        if msg.type == "error" and not own_status:
            problems.append(f"console {msg.type}: {msg.text} at {where}")

    page.on("console", console)
    response = await page.goto(url)
    assert response is not None
    return page, response


async def _enter_card(page: Page, number: str) -> None:
    fields = page.frame_locator("#fields-new-card")
    await fields.locator("#cc").fill(number)
    await fields.locator("#exp").fill("11/31")
    await fields.locator("#cvv").fill("737")


async def _fits_phone(page: Page) -> bool:
    return bool(
        await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    )


@pytest.mark.timeout(420)
async def test_payers_pay_by_card_across_invoices_after_a_decline_and_save_a_method(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with synced_payments_suite(
        tmp_path,
        database_url,
        nats_url,
        unique,
        customers=12,
        invoices=160,
        service_extra={"ARBRIDGE_PAY_PORT": str(port), "ARBRIDGE_PAY_BASE_URL": base},
    ) as suite:
        sync = sync_pb2_grpc.SyncServiceStub(service_channel(suite.target("sync"), TOKEN))
        banks = (
            await sync.ListBankAccounts(sync_pb2.ListBankAccountsRequest(account_id="acme"))
        ).bank_accounts
        bank_currencies = {b.currency for b in banks}
        by_customer = await open_invoices_by_customer(suite, "acme")

        def uniform(invoices: list[Any]) -> bool:
            return len({(i.currency, i.entity_id) for i in invoices}) == 1 and all(
                i.currency in bank_currencies for i in invoices
            )

        # C pays a balance across exactly three invoices: the page offers all of C's
        # open invoices (one currency and entity), and the payer leaves three ticked.
        balance_customer = next(
            c for c, found in by_customer.items() if len(found) >= 3 and uniform(found)
        )
        others = [
            c for c, found in by_customer.items() if c != balance_customer and uniform(found[:1])
        ]
        card_customer, decline_customer, method_customer = others[:3]
        async with aiohttp.ClientSession() as http:
            payer = Payer(suite, http, suite.target("payments"))
            await deposit_everywhere(payer, suite)

            async def link(kind: Any, customer: str, invoice: str = "") -> str:
                reply = await payer.stub.CreateLink(
                    payments_pb2.CreateLinkRequest(
                        account_id="acme",
                        kind=kind,
                        customer_id=customer,
                        invoice_record_no=invoice,
                    )
                )
                assert reply.link.url.startswith(base + "/l/")
                return str(reply.link.url)

            paid: dict[str, int] = {}  # invoice record no -> minor units paid through pages
            problems: list[str] = []
            async with headless_chromium() as browser:
                # 1. An invoice paid by a new card, on a phone screen.
                invoice = by_customer[card_customer][0]
                page, response = await _open(
                    browser,
                    await link(payments_pb2.LINK_KIND_PAYMENT, card_customer, invoice.record_no),
                    problems,
                )
                assert response.status == 200
                csp = response.headers["content-security-policy"]
                assert "script-src 'self'" in csp
                assert "frame-ancestors 'none'" in csp
                assert suite.cards["base_url"] in csp  # the only frame allowed: the gateway
                assert response.headers["referrer-policy"] == "same-origin"
                assert response.headers["cache-control"] == "no-store"
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    f"Invoice {invoice.invoice_number}"
                )
                assert await _fits_phone(page)
                # The invoice as the company's Intacct template prints it, twice: the
                # second comes from the connector's cache (one retrievepdf in all).
                for _ in range(2):
                    async with page.expect_download() as download_info:
                        await page.get_by_role(
                            "link", name=f"PDF of invoice {invoice.invoice_number}"
                        ).click()
                    download = await download_info.value
                    assert download.suggested_filename == f"{invoice.invoice_number}.pdf"
                    saved = tmp_path / download.suggested_filename
                    await download.save_as(saved)
                    text = PdfReader(saved).pages[0].extract_text()
                    assert f"Invoice number: {invoice.invoice_number}" in text
                    assert (
                        f"Amount due: {from_minor(invoice.due.amount_minor, invoice.currency)}"
                        in text
                    )
                assert await _intacct_calls(suite, "retrievepdf") == 1
                await _enter_card(page, "4111111111111111")
                await page.locator("#pay-button").click()
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "Payment received", timeout=20_000
                )
                receipt = await page.locator("main").inner_text()
                assert "Card ending 1111" in receipt
                assert invoice.invoice_number in receipt
                paid[invoice.record_no] = invoice.due.amount_minor
                # The same page again: nothing left to pay on the invoice.
                await page.goto(page.url.split("/charges/")[0])
                await expect(page.get_by_role("heading", level=1)).to_have_text("Nothing to pay")

                # 2. A decline explained, then a retry with another card on the same link.
                invoice = by_customer[decline_customer][0]
                page, _ = await _open(
                    browser,
                    await link(payments_pb2.LINK_KIND_PAYMENT, decline_customer, invoice.record_no),
                    problems,
                )
                await _enter_card(page, "4000000000009995")
                async with page.expect_navigation() as declined:
                    await page.locator("#pay-button").click()
                assert (await declined.value).status == 402
                message = page.locator("#message")
                await expect(message).to_contain_text("Your card was declined")
                await expect(message).to_contain_text("insufficient funds")
                await expect(message).to_contain_text("No money was taken")
                await _enter_card(page, "5555555555554444")
                await page.locator("#pay-button").click()
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "Payment received", timeout=20_000
                )
                paid[invoice.record_no] = invoice.due.amount_minor

                # 3. A balance across three invoices, paid by keyboard.
                invoices = by_customer[balance_customer]
                chosen = invoices[:3]
                page, _ = await _open(
                    browser,
                    await link(payments_pb2.LINK_KIND_PAY_BALANCE, balance_customer, ""),
                    problems,
                )
                await expect(page.locator("tbody tr")).to_have_count(len(invoices))
                # Every control is reached with Tab, in order, the card frame included.
                reached = await _tab_to(page, "pay-button")
                assert reached[0] == ""  # the skip link comes first
                assert {f"pay-{i.record_no}" for i in invoices} <= set(reached)
                assert f"amount-{chosen[0].record_no}" in reached
                assert reached.index("fields-new-card") < reached.index("pay-button")
                for extra in invoices[3:]:
                    await page.locator(f"#pay-{extra.record_no}").uncheck()
                await _enter_card(page, "4242424242424242")
                # A decimal comma is no amount to the page either (the server refuses it).
                amount = page.locator(f"#amount-{chosen[0].record_no}")
                typed = await amount.input_value()
                await amount.fill("0,50")
                await expect(page.locator("#total")).to_have_text("—")
                await amount.fill(typed)
                total = sum(i.due.amount_minor for i in chosen)
                await expect(page.locator("#total")).to_have_text(_shown(total, chosen[0].currency))
                await page.locator("#pay-button").focus()
                await page.keyboard.press("Enter")
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "Payment received", timeout=20_000
                )
                rows = page.locator("table.invoices tbody tr")
                await expect(rows).to_have_count(3)
                for invoice in chosen:
                    paid[invoice.record_no] = invoice.due.amount_minor

                # 4. A method saved from a method link, then used on a payment link.
                page, _ = await _open(
                    browser,
                    await link(payments_pb2.LINK_KIND_PAYMENT_METHOD, method_customer),
                    problems,
                )
                await _enter_card(page, "378282246310005")
                await page.locator("#pay-button").click()
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "Payment method saved"
                )
                methods = (
                    await payer.stub.ListPaymentMethods(
                        payments_pb2.ListPaymentMethodsRequest(
                            account_id="acme", customer_id=method_customer
                        )
                    )
                ).payment_methods
                assert [(m.brand, m.last4, m.is_default) for m in methods] == [
                    ("AMEX", "0005", True)
                ]
                invoice = by_customer[method_customer][0]
                page, _ = await _open(
                    browser,
                    await link(payments_pb2.LINK_KIND_PAYMENT, method_customer, invoice.record_no),
                    problems,
                )
                stored = page.get_by_role("radio", name="Amex ending 0005, expires 11/2031")
                await expect(stored).to_be_checked()
                await expect(page.locator("#new-card")).to_be_hidden()
                await page.locator("#pay-button").click()
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "Payment received", timeout=20_000
                )
                paid[invoice.record_no] = invoice.due.amount_minor

                # A revoked link is explained, not shown.
                revoked_url = await link(payments_pb2.LINK_KIND_PAY_BALANCE, card_customer, "")
                links = await payer.stub.ListLinks(
                    payments_pb2.ListLinksRequest(account_id="acme", customer_id=card_customer)
                )
                target = next(x for x in links.links if x.url == revoked_url)
                await payer.stub.RevokeLink(
                    payments_pb2.RevokeLinkRequest(account_id="acme", link_id=target.link_id)
                )
                page, response = await _open(browser, revoked_url, problems)
                assert response.status == 410
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "This link is no longer active"
                )
            assert problems == []

            # At the gateway: one decline, four approvals (the balance is one charge).
            transactions = await gateway_transactions(http, suite)
            statuses = sorted(t["processingInfo"]["processingStatus"] for t in transactions)
            assert statuses == ["declined"] + ["success"] * 4
            assert len({t["merchantTransactionId"] for t in transactions}) == len(transactions)

            # In Intacct: each payment applied to its invoices.
            async def all_applied() -> dict[str, Any] | None:
                found = await intacct_values(
                    http, suite.sandbox_admin, suite.sandbox["company_id"], "ARINVOICE"
                )
                done = all(
                    _due_went_down(found, record_no, paid_minor, by_customer)
                    for record_no, paid_minor in paid.items()
                )
                return found if done else None

            assert await eventually(all_applied, timeout=60), "payments not applied in Intacct"
            arpayments = await intacct_values(
                http, suite.sandbox_admin, suite.sandbox["company_id"], "ARPYMT"
            )
            ours = [
                p for p in arpayments.values() if str(p.get("DOCNUMBER", "")).startswith("ARB-")
            ]
            assert len(ours) == 4

            # The card numbers went from the browser to the gateway only: none is in any
            # table of payments (events included, through its outbox) or any arbridge log.
            entered = [
                "4111111111111111",
                "4000000000009995",
                "5555555555554444",
                "4242424242424242",
                "378282246310005",
            ]
            leaked = await leaks(database_url, f"{unique}_payments", arbridge_logs(suite), entered)
            assert leaked == []


def _due_went_down(
    found: dict[str, Any], record_no: str, paid_minor: int, by_customer: dict[str, list[Any]]
) -> bool:
    """Whether Intacct's due on the invoice went down by what the pages took."""
    invoice = next(i for found_ in by_customer.values() for i in found_ if i.record_no == record_no)
    due = to_minor(str(found[record_no]["TRX_TOTALDUE"]), invoice.currency)
    return bool(due == invoice.due.amount_minor - paid_minor)


async def _intacct_calls(suite: Any, function: str) -> int:
    """API calls of ``function`` the connector metered for account "acme"."""
    channel = service_channel(suite.target("connector"), TOKEN)
    try:
        usage = await connector_pb2_grpc.ConnectorServiceStub(channel).GetApiUsage(
            connector_pb2.GetApiUsageRequest(account_id="acme")
        )
    finally:
        await channel.close(None)
    return sum(r.calls for r in usage.rows if r.function == function)


def _shown(minor: int, currency: str) -> str:
    whole, dot, fraction = from_minor(minor, currency).partition(".")
    return f"{int(whole):,}{dot}{fraction}"


async def _tab_to(page: Page, target: str, limit: int = 60) -> list[str]:
    """Presses Tab from where a freshly loaded page starts until ``target`` has focus; the
    ids of the elements passed (an empty string for one without an id)."""
    seen: list[str] = []
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement && document.activeElement.id")
        seen.append(str(focused or ""))
        if focused == target:
            return seen
    raise AssertionError(f"Tab never reached #{target}; focus went through {seen}")
