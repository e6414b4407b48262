"""Hosted pay pages: what a payer sees when they open a payment, pay-balance or method link.

``GET /l/{token}`` shows the link's invoice (or the customer's open invoices
for a pay-balance link) with the amounts due and a form to pay them with a
stored method or a new card entered into the card gateway's hosted fields;
``POST /l/{token}/pay`` charges through the same ``Charges`` as the gRPC API
(source ``link``) and redirects to the receipt, ``GET /l/{token}/charges/{id}``.
A payment-method link saves a card instead (``POST /l/{token}/method``).

The pages never see a card number: the hosted-fields frame is served by the
gateway and sends the number there; the page only learns that the token it
was given at render time is filled. Every page carries a strict
Content-Security-Policy (scripts and styles from this origin only, frames
only from the gateway, no inline code), ``Referrer-Policy: same-origin`` (the
link in the address bar is the payer's credential: no other site, the
gateway's frame included, sees it; ``no-referrer`` would also blank the
``Origin`` of our own form posts, which is how cross-site posts are refused)
and is never cached.

A form carries an ``attempt`` id made when the page is rendered; the charge's
idempotency key is the link id and that attempt, so a double click or a
resubmitted form charges once, and a payer retrying after a decline gets a
new page and so a new attempt. A link that collects several declines within
an hour stops taking cards for a while (card testing).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import secrets
from dataclasses import dataclass
from datetime import UTC
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import grpc
import structlog
from aiohttp import web

from arbridge.common.v1 import ar_pb2, common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_payments.arstore import get_customer, get_invoice
from arbridge_payments.charges import MAX_INVOICES, ChargeRequest, Charges, ChargeView, InvoicePart
from arbridge_payments.gateway import CardGateway, GatewayRefused, GatewayUnavailable
from arbridge_payments.links import Link, LinkRefused, Links
from arbridge_payments.methods import PaymentMethod, PaymentMethods, charged_source
from arbridge_runtime.errors import Conflict, DomainError, NotFound, Unavailable
from arbridge_runtime.money import exponent, from_minor, to_minor

log = structlog.get_logger(__name__)

STATIC = resources.files("arbridge_payments") / "static"
STATIC_TYPES = {"pay.css": "text/css", "pay.js": "text/javascript"}
ATTEMPT = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_LINK_DECLINES_PER_HOUR = 5
# New methods a payer can enter: the form's radio value -> its hidden token field, and
# (label, kind, what the frame holds). ACH debits are offered for USD invoices only.
NEW_CARD_ONLY = ("new-card",)
NEW_SOURCES = ("new-card", "new-bank")
TOKEN_FIELDS = {"new-card": "card_token", "new-bank": "bank_token"}
NEW_SOURCE_TEXT = {
    "new-card": ("A new card", "card", "Card details"),
    "new-bank": ("A US bank account (ACH debit)", "ach", "Bank account details"),
}
REFUSALS = {
    "invalid": (
        404,
        "This link is not valid",
        "Check that you opened the whole address from your invoice or email. If it still "
        "does not work, ask the sender for a new link.",
    ),
    "expired": (
        410,
        "This link has expired",
        "Links to pay are valid for a limited time. Ask the sender for a new link; "
        "nothing was charged.",
    ),
    "revoked": (
        410,
        "This link is no longer active",
        "The sender has replaced or withdrawn this link. Ask them for the current one; "
        "nothing was charged.",
    ),
}


class PageError(Exception):
    """A problem to show on the form the payer submitted, with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PageConfig:
    """Where payers reach the pages and the gateway's hosted fields (both public URLs)."""

    base_url: str
    gateway_public_url: str

    @property
    def origin(self) -> str:
        return _origin(self.base_url)

    @property
    def gateway_origin(self) -> str:
        return _origin(self.gateway_public_url)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class PayPages:
    """The aiohttp application of the hosted pages."""

    def __init__(
        self,
        config: PageConfig,
        links: Links,
        charges: Charges,
        methods: PaymentMethods,
        gateway: CardGateway,
        sync: sync_pb2_grpc.SyncServiceAsyncStub,
        connector: connector_pb2_grpc.ConnectorServiceAsyncStub,
    ) -> None:
        self._connector = connector
        self._config = config
        self._links = links
        self._charges = charges
        self._methods = methods
        self._gateway = gateway
        self._sync = sync
        self._static = {name: (STATIC / name).read_bytes() for name in STATIC_TYPES}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=64 * 1024)
        app.router.add_get("/l/{token}", self.show)
        app.router.add_post("/l/{token}/pay", self.pay)
        app.router.add_post("/l/{token}/method", self.save_method)
        app.router.add_get("/l/{token}/charges/{charge_id}", self.receipt)
        app.router.add_get(r"/l/{token}/invoices/{record_no:\d+}.pdf", self.invoice_pdf)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/favicon.ico", self.no_icon)
        return app

    # Every answer -----------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and not self._same_origin(request):
            response: web.StreamResponse = self._page(
                403,
                "This form was sent from another site",
                "<p>For your safety, payments are taken only from this site's own pages. "
                "Open the link from your invoice again.</p>",
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status >= 400:
                    response = self._page(
                        exc.status,
                        "This page does not exist",
                        "<p>Check the address, or open the link from your invoice again.</p>",
                    )
                else:
                    response = exc
            except Exception:
                log.exception("pay_page.failed", path=request.path.split("/l/")[0])
                response = self._page(
                    500,
                    "Something went wrong",
                    "<p>We could not finish this request. If you were paying, open the link "
                    "again before paying again: it shows whether the payment went through.</p>",
                )
        gateway = self._config.gateway_origin
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
            f" connect-src 'self'; frame-src {gateway}; form-action 'self'; base-uri 'none';"
            " frame-ancestors 'none'"
        )
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "public, max-age=300"
        else:
            response.headers["Cache-Control"] = "no-store"
        if self._config.base_url.startswith("https://"):
            response.headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
        return response

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            # Browsers send Origin on every cross-site POST; its absence is a same-site
            # form or a non-browser client, which the link token already authenticates.
            return origin is None
        return origin == self._config.origin

    async def livez(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def no_icon(self, _request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC_TYPES[name])

    # Showing a link ---------------------------------------------------------------

    async def show(self, request: web.Request) -> web.Response:
        link = await self._resolve(request)
        if isinstance(link, web.Response):
            return link
        if link.kind == "payment_method":
            return await self._method_page(link, request.match_info["token"])
        return await self._pay_page(link, request.match_info["token"])

    async def _resolve(self, request: web.Request) -> Link | web.Response:
        try:
            return await self._links.resolve(request.match_info["token"])
        except LinkRefused as refused:
            status, title, text = REFUSALS[refused.reason]
            return self._page(status, title, f"<p>{_e(text)}</p>")

    async def _pay_page(
        self,
        link: Link,
        token: str,
        *,
        status: int = 200,
        message: str = "",
        entered: dict[str, str] | None = None,
    ) -> web.Response:
        try:
            customer = await get_customer(self._sync, link.account_id, link.customer_id)
            invoices = await self._invoices(link)
            balances = await self._charges.open_balances(link.account_id, invoices)
            methods = await self._methods.for_customer(link.account_id, link.customer_id)
        except DomainError:
            return self._unavailable()
        payable = [i for i in invoices if balances.get(i.record_no, 0) > 0]
        if not payable:
            what = (
                (f"invoice {invoices[0].invoice_number}" if link.kind == "payment" else "you")
                if invoices
                else "you"
            )
            return self._page(
                200,
                "Nothing to pay",
                f"<p>There is nothing due on {_e(what)} right now. Thank you.</p>",
                customer=customer.name,
            )
        currency = payable[0].currency
        try:
            tokens = await self._new_tokens(NEW_SOURCES if currency == "USD" else NEW_CARD_ONLY)
        except (GatewayRefused, GatewayUnavailable):
            return self._unavailable()
        single = link.kind == "payment"
        rows = []
        for invoice in payable:
            rows.append(
                self._invoice_row(invoice, balances[invoice.record_no], single, entered, token)
            )
        total = sum(balances[i.record_no] for i in payable)
        heading = f"Invoice {payable[0].invoice_number}" if single else "Your open invoices"
        body = f"""
<form method="post" action="/l/{_e(token)}/pay" id="pay-form" class="pay"
      data-gateway-origin="{_e(self._config.gateway_origin)}"
      data-currency="{_e(currency)}" data-exponent="{exponent(currency)}">
<input type="hidden" name="attempt" value="{_e(secrets.token_urlsafe(18))}">
<div class="table-wrap"><table class="invoices">
<caption>{"Invoice" if single else "Invoices to pay"}</caption>
<thead><tr>{"" if single else '<th scope="col">Pay</th>'}<th scope="col">Invoice</th>
<th scope="col">Due date</th><th scope="col" class="num">Total</th>
<th scope="col" class="num">Due</th><th scope="col" class="num">Amount to pay</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></div>
<p class="total">Total to pay:
<output id="total" for="pay-form">{_e(_amount(total, currency))}</output> {_e(currency)}</p>
{self._methods_fieldset("Pay with", methods, tokens, save=True)}
<p id="message" class="message" role="alert" aria-live="assertive">{_e(message)}</p>
<button type="submit" id="pay-button" class="primary">Pay now</button>
</form>"""
        return self._page(status, heading, body, customer=customer.name)

    def _invoice_row(
        self,
        invoice: ar_pb2.Invoice,
        balance: int,
        single: bool,
        entered: dict[str, str] | None,
        token: str,
    ) -> str:
        record_no = invoice.record_no
        pdf_href = f"/l/{token}/invoices/{record_no}.pdf"
        currency = invoice.currency
        number = invoice.invoice_number or record_no
        amount = (entered or {}).get(f"amount_{record_no}", from_minor(balance, currency))
        locked = "" if invoice.allow_partial_payment else " readonly"
        hint = "" if invoice.allow_partial_payment else " (paid in full)"
        checked = "checked" if entered is None or record_no in entered["_chosen"].split() else ""
        choose = (
            ""
            if single
            else f'<td class="pick"><input type="checkbox" name="invoice" value="{_e(record_no)}" '
            f'id="pay-{_e(record_no)}" {checked} aria-label="Pay invoice {_e(number)}"></td>'
        )
        chosen = f'<input type="hidden" name="invoice" value="{_e(record_no)}">' if single else ""
        return (
            f'<tr>{choose}<th scope="row">{chosen}{_e(number)}'
            f' <a class="pdf" href="{_e(pdf_href)}">PDF<span class="sr"> of invoice '
            f"{_e(number)}</span></a></th>"
            f'<td data-label="Due date">{_e(invoice.due_date or "-")}</td>'
            f'<td class="num" data-label="Total">'
            f"{_e(_amount(invoice.total.amount_minor, currency))}</td>"
            f'<td class="num" data-label="Due">{_e(_amount(balance, currency))}</td>'
            f'<td class="num pay-amount"><label class="sr" for="amount-{_e(record_no)}">'
            f"Amount to pay for invoice {_e(number)}{hint}</label>"
            f'<input class="amount" id="amount-{_e(record_no)}" name="amount_{_e(record_no)}" '
            f'inputmode="decimal" autocomplete="off" value="{_e(amount)}"{locked}></td></tr>'
        )

    async def _new_tokens(self, choices: tuple[str, ...]) -> dict[str, str]:
        """A fresh hosted-fields token for each way to enter a new method."""
        return {choice: await self._gateway.new_token() for choice in choices}

    def _methods_fieldset(
        self,
        legend: str,
        methods: list[PaymentMethod],
        tokens: dict[str, str],
        *,
        save: bool,
    ) -> str:
        """Radios for the stored methods and each new kind, with a hosted-fields frame per
        new kind (shown when chosen) and its token in a hidden field."""
        options = []
        for index, method in enumerate(methods):
            options.append(
                f'<label class="choice"><input type="radio" name="method" '
                f'value="{_e(method.payment_method_id)}" {"checked" if index == 0 else ""}> '
                f"{_e(_describe(method))}</label>"
            )
        frames = []
        for index, (choice, token) in enumerate(tokens.items()):
            label, kind, title = NEW_SOURCE_TEXT[choice]
            checked = "checked" if not methods and index == 0 else ""
            options.append(
                f'<label class="choice"><input type="radio" name="method" value="{choice}" '
                f"{checked}> {label}</label>"
            )
            src = (
                f"{self._config.gateway_public_url.rstrip('/')}/hosted-fields"
                f"?token={token}&kind={kind}"
            )
            frames.append(
                f'<div class="new-source" id="{choice}" data-method="{choice}">'
                f'<input type="hidden" name="{TOKEN_FIELDS[choice]}" value="{_e(token)}">'
                f'<iframe id="fields-{choice}" class="hosted-fields" src="{_e(src)}" '
                f'title="{title} (entered securely with our payment processor)" '
                'sandbox="allow-scripts allow-same-origin allow-forms"></iframe></div>'
            )
        keep = (
            '<div id="save-new"><label class="choice"><input type="checkbox" name="save" '
            'value="1"> Save it for future payments</label></div>'
            if save
            else ""
        )
        return (
            f'<fieldset class="methods"><legend>{_e(legend)}</legend>{"".join(options)}'
            f"{''.join(frames)}{keep}</fieldset>"
        )

    async def _method_page(
        self, link: Link, token: str, *, status: int = 200, message: str = ""
    ) -> web.Response:
        try:
            customer = await get_customer(self._sync, link.account_id, link.customer_id)
            methods = await self._methods.for_customer(link.account_id, link.customer_id)
            tokens = await self._new_tokens(NEW_SOURCES)
        except (DomainError, GatewayRefused, GatewayUnavailable):
            return self._unavailable()
        on_file = "".join(f"<li>{_e(_describe(m))}</li>" for m in methods)
        on_file_block = f'<h2>On file</h2><ul class="on-file">{on_file}</ul>' if methods else ""
        body = f"""{on_file_block}
<form method="post" action="/l/{_e(token)}/method" id="method-form" class="pay"
      data-gateway-origin="{_e(self._config.gateway_origin)}">
{self._methods_fieldset("Add a card or bank account", [], tokens, save=False)}
<label class="choice"><input type="checkbox" name="make_default" value="1" checked> Use it
for future payments by default</label>
<p id="message" class="message" role="alert" aria-live="assertive">{_e(message)}</p>
<button type="submit" id="pay-button" class="primary">Save</button>
</form>"""
        return self._page(status, "Save a payment method", body, customer=customer.name)

    async def _invoices(self, link: Link) -> list[ar_pb2.Invoice]:
        if link.kind == "payment":
            invoice = await get_invoice(self._sync, link.account_id, link.invoice_record_no)
            return [invoice]
        found: list[ar_pb2.Invoice] = []
        token = ""
        try:
            while len(found) < MAX_INVOICES:
                reply = await self._sync.ListInvoices(
                    sync_pb2.ListInvoicesRequest(
                        account_id=link.account_id,
                        customer_id=link.customer_id,
                        open_only=True,
                        page=common_pb2.PageRequest(page_size=MAX_INVOICES, page_token=token),
                    )
                )
                found.extend(reply.invoices)
                token = reply.page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as err:
            log.warning("pay_page.invoices_unavailable", code=err.code().name)
            raise Unavailable("the AR store could not list the customer's invoices") from None
        open_states = (ar_pb2.INVOICE_STATE_OPEN, ar_pb2.INVOICE_STATE_PARTIALLY_PAID)
        found = [i for i in found if i.state in open_states]
        found.sort(key=lambda i: (i.due_date or "9999", i.invoice_number, i.record_no))
        if found:
            # One charge is in one currency and posts to one entity: the page offers the
            # invoices that share the earliest due invoice's currency and entity.
            first = (found[0].currency, found[0].entity_id)
            found = [i for i in found if (i.currency, i.entity_id) == first]
        return found[:MAX_INVOICES]

    # Paying -----------------------------------------------------------------------

    async def pay(self, request: web.Request) -> web.Response:
        link = await self._resolve(request)
        if isinstance(link, web.Response):
            return link
        token = request.match_info["token"]
        if link.kind == "payment_method":
            raise web.HTTPNotFound()
        form = await request.post()
        entered = {k: str(v) for k, v in form.items() if k.startswith("amount_")}
        chosen = [str(v) for v in form.getall("invoice", [])]
        entered["_chosen"] = " ".join(chosen)
        try:
            charge = await self._charge(link, form, chosen)
        except PageError as err:
            return await self._pay_page(
                link, token, status=err.status, message=err.message, entered=entered
            )
        row = charge.row
        if row["phase"] in ("declined", "failed"):
            reason = row["failure_reason"] or "The payment was not accepted."
            lead = (
                "Your card was declined"
                if row["phase"] == "declined"
                else "We could not take this payment"
            )
            return await self._pay_page(
                link,
                token,
                status=402,
                message=f"{lead}: {reason} No money was taken. Try again or use another card.",
                entered=entered,
            )
        raise web.HTTPSeeOther(f"/l/{token}/charges/{row['charge_id']}")

    async def _charge(self, link: Link, form: Any, chosen: list[str]) -> ChargeView:
        attempt = str(form.get("attempt", ""))
        if not ATTEMPT.match(attempt):
            raise PageError(400, "This form is out of date. Reload the page and pay again.")
        if link.kind == "payment":
            chosen = [link.invoice_record_no]
        if not chosen:
            raise PageError(422, "Choose at least one invoice to pay.")
        if len(chosen) > MAX_INVOICES or len(set(chosen)) != len(chosen):
            raise PageError(422, "The invoices chosen are not valid. Reload the page.")
        if await self._charges.recent_link_declines(link.link_id) >= MAX_LINK_DECLINES_PER_HOUR:
            raise PageError(
                429,
                "Too many payments on this link were declined in the last hour. Wait an hour "
                "or contact the sender to pay another way.",
            )
        parts = [(r, str(form.get(f"amount_{r}", ""))) for r in chosen]
        method_choice = str(form.get("method", "")) or "new-card"
        save = form.get("save") == "1"
        new_source = method_choice in TOKEN_FIELDS
        try:
            invoices = await asyncio.gather(
                *(get_invoice(self._sync, link.account_id, r) for r, _ in parts)
            )
        except DomainError as err:
            raise PageError(
                422, "An invoice on this page is no longer available. Reload the page."
            ) from err
        for invoice in invoices:
            if invoice.customer_id != link.customer_id:
                raise PageError(422, "The invoices chosen are not valid. Reload the page.")
        balances = await self._charges.open_balances(link.account_id, invoices)
        amounts: list[InvoicePart] = []
        for (record_no, text), invoice in zip(parts, invoices, strict=True):
            currency = invoice.currency
            number = invoice.invoice_number or record_no
            try:
                minor = entered_minor(text, currency)
            except AmbiguousAmount:
                how = (
                    f"with a point before the cents, like {_amount(123450, currency)}"
                    if exponent(currency)
                    else f"in whole {currency}, like {_amount(1234, currency)}"
                )
                raise PageError(
                    422,
                    f"Enter the amount for invoice {number} {how}: "
                    "a comma there could be read two ways.",
                ) from None
            except ValueError:
                raise PageError(
                    422,
                    f"Enter the amount for invoice {number} as a number, like "
                    f"{from_minor(12050, currency)}.",
                ) from None
            if minor <= 0:
                raise PageError(422, f"The amount for invoice {number} must be more than zero.")
            due = balances.get(record_no, 0)
            if minor > due:
                raise PageError(
                    422,
                    f"The amount for invoice {number} is more than is due on it "
                    f"({_amount(due, currency)} {currency}).",
                )
            if minor < due and not invoice.allow_partial_payment:
                raise PageError(
                    422,
                    f"Invoice {number} is paid in full only: {_amount(due, currency)} {currency}.",
                )
            amounts.append(InvoicePart(record_no, minor, currency))
        method_id = "" if new_source else method_choice
        discard = False
        if new_source:
            what = NEW_SOURCE_TEXT[method_choice][2].lower()
            try:
                method, already, _ = await self._methods.add(
                    account_id=link.account_id,
                    customer_id=link.customer_id,
                    token=str(form.get(TOKEN_FIELDS[method_choice], "")),
                    make_default=save,
                    kind=NEW_SOURCE_TEXT[method_choice][1],
                    # Paying once with a card never takes away a saved one.
                    replace=save,
                )
            except DomainError as err:
                raise PageError(
                    422, f"Enter your {what}, then pay. ({_plain(err.message)})"
                ) from None
            method_id = method.payment_method_id
            # Vaulted only to be charged when the payer did not ask to keep it (a card
            # they saved before stays saved).
            discard = not save and not already
        try:
            view, _ = await self._charges.charge(
                ChargeRequest(
                    account_id=link.account_id,
                    idempotency_key=f"link:{link.link_id}:{attempt}",
                    customer_id=link.customer_id,
                    invoices=tuple(amounts),
                    payment_method_id=method_id,
                    source="link",
                    link_id=link.link_id,
                )
            )
        except Conflict:
            raise PageError(
                409,
                "A payment for this invoice is already being processed. Wait a minute and "
                "reload the page before paying again.",
            ) from None
        except DomainError as err:
            raise PageError(422, _plain(err.message)) from None
        finally:
            if discard:
                with contextlib.suppress(NotFound):  # a resent form removed it already
                    await self._methods.remove(link.account_id, method_id)
        return view

    async def save_method(self, request: web.Request) -> web.Response:
        link = await self._resolve(request)
        if isinstance(link, web.Response):
            return link
        if link.kind != "payment_method":
            raise web.HTTPNotFound()
        token = request.match_info["token"]
        form = await request.post()
        choice = str(form.get("method", "")) or "new-card"
        if choice not in TOKEN_FIELDS:
            return await self._method_page(
                link, token, status=422, message="Choose a card or a bank account to save."
            )
        try:
            method, already, replaced = await self._methods.add(
                account_id=link.account_id,
                customer_id=link.customer_id,
                token=str(form.get(TOKEN_FIELDS[choice], "")),
                make_default=form.get("make_default") == "1",
                kind=NEW_SOURCE_TEXT[choice][1],
            )
        except DomainError as err:
            return await self._method_page(
                link,
                token,
                status=422,
                message=f"Nothing was saved: {_plain(err.message)}",
            )
        said = "was already on file" if already else "is saved"
        if replaced:
            said += ". It replaces the one with the same type and last four digits saved before"
        return self._page(
            200,
            "Payment method saved",
            f'<p class="done" role="status">{_e(_describe(method))} {said}. '
            "You can close this page.</p>",
        )

    # Invoice PDFs -----------------------------------------------------------------

    async def invoice_pdf(self, request: web.Request) -> web.StreamResponse:
        """The invoice as the company's Intacct template prints it (a link's own invoice,
        or any invoice of a balance link's customer)."""
        link = await self._resolve(request)
        if isinstance(link, web.Response):
            return link
        record_no = request.match_info["record_no"]
        if link.kind == "payment_method" or (
            link.kind == "payment" and record_no != link.invoice_record_no
        ):
            raise web.HTTPNotFound()
        try:
            invoice = await get_invoice(self._sync, link.account_id, record_no)
        except NotFound:
            raise web.HTTPNotFound() from None
        except DomainError:
            return self._unavailable()
        if invoice.customer_id != link.customer_id:
            raise web.HTTPNotFound()
        # The account's preference (invoice_source) decides which invoices sync, and so
        # which template prints them: the AR invoice or the Sales Invoice one.
        ask = connector_pb2.GetInvoicePdfRequest(
            account_id=link.account_id, invoice_record_no=record_no, source=invoice.source
        )
        if invoice.HasField("intacct_modified_at"):
            ask.invoice_modified_at.CopyFrom(invoice.intacct_modified_at)
        try:
            reply = await self._connector.GetInvoicePdf(ask, timeout=60)
        except grpc.aio.AioRpcError as err:
            log.warning("pay_page.pdf_unavailable", code=err.code().name)
            return self._page(
                503,
                "The invoice PDF is briefly unavailable",
                "<p>We could not fetch the invoice from the accounting system just now. "
                "Try again in a minute; you can still pay from the previous page.</p>",
            )
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", invoice.invoice_number or record_no).strip("-")
        return web.Response(
            body=reply.pdf,
            content_type="application/pdf",
            headers={
                "Content-Disposition": f'attachment; filename="{name or "invoice"}.pdf"',
                "ETag": f'"{reply.etag}"',
            },
        )

    # Receipts ---------------------------------------------------------------------

    async def receipt(self, request: web.Request) -> web.Response:
        link = await self._resolve(request)
        if isinstance(link, web.Response):
            return link
        try:
            charge = await self._charges.get(link.account_id, request.match_info["charge_id"])
        except DomainError:
            raise web.HTTPNotFound() from None
        row = charge.row
        if row["customer_id"] != link.customer_id or row["link_id"] != link.link_id:
            raise web.HTTPNotFound()
        currency = row["currency"]
        found = await asyncio.gather(
            *(get_invoice(self._sync, link.account_id, r) for r, _ in charge.invoices),
            return_exceptions=True,
        )
        numbers = {
            record_no: invoice.invoice_number if isinstance(invoice, ar_pb2.Invoice) else record_no
            for (record_no, _), invoice in zip(charge.invoices, found, strict=True)
        }
        token = request.match_info["token"]
        lines = "".join(
            f'<tr><th scope="row">{_e(numbers.get(r) or r)} '
            f'<a class="pdf" href="/l/{_e(token)}/invoices/{_e(r)}.pdf">PDF<span class="sr">'
            f" of invoice {_e(numbers.get(r) or r)}</span></a></th>"
            f'<td class="num">{_e(_amount(a, currency))}</td></tr>'
            for r, a in charge.invoices
        )
        phase = row["phase"]
        refresh = phase in ("pending", "processing")
        paid_with = charged_source(row["kind"], row["last4"])
        refunded = int(row["refunded_minor"]) if phase in ("succeeded", "settling") else 0
        title = {
            "succeeded": "Payment received",
            "settling": "Payment submitted",
            "declined": "Payment declined",
            "failed": "Payment not taken",
        }.get(phase, "Confirming your payment")
        status_text = {
            "succeeded": "Thank you. Your payment was received.",
            "settling": "Thank you. Your bank payment was submitted; bank debits take a few "
            "business days to clear, and the invoice shows it as paid once it has.",
            "declined": f"Your card was declined: {row['failure_reason']} No money was taken.",
            "failed": f"We could not take this payment: {row['failure_reason']} "
            "No money was taken.",
        }.get(
            phase,
            "We are confirming your payment with the card network. This page updates "
            "by itself; there is no need to pay again.",
        )
        if refunded:
            back_to = f"{_amount(refunded, currency)} {currency} back to the {paid_with}"
            if refunded >= row["amount_minor"]:
                title = "Payment refunded"
                status_text = (
                    f"This payment was refunded in full: {back_to}. A refund takes a few "
                    "business days to show on your statement."
                )
            else:
                status_text += (
                    f" Part of it was refunded: {back_to}. A refund takes a few business "
                    "days to show on your statement."
                )
        when = row["created_at"].astimezone(UTC).strftime("%d %b %Y %H:%M UTC")
        tone = "done" if phase in ("succeeded", "settling") else "message"
        back = "the invoice" if link.kind == "payment" else "your invoices"
        refund_line = (
            f"\n<dt>Refunded</dt><dd>{_e(_amount(refunded, currency))} {_e(currency)}</dd>"
            if refunded
            else ""
        )
        body = f"""<p class="{tone}" role="status">{_e(status_text)}</p>
<dl class="receipt">
<dt>Amount</dt><dd>{_e(_amount(row["amount_minor"], currency))} {_e(currency)}</dd>
<dt>Paid with</dt><dd>{_e(paid_with.capitalize())}</dd>{refund_line}
<dt>Date</dt><dd>{_e(when)}</dd>
<dt>Reference</dt><dd><code>{_e(row["charge_id"])}</code></dd>
</dl>
<div class="table-wrap"><table class="invoices"><caption>Applied to</caption>
<thead><tr><th scope="col">Invoice</th><th scope="col" class="num">Amount</th></tr></thead>
<tbody>{lines}</tbody></table></div>
<p><a href="/l/{_e(request.match_info["token"])}">Back to {back}</a></p>"""
        return self._page(200, title, body, refresh=refresh)

    # Rendering --------------------------------------------------------------------

    def _unavailable(self) -> web.Response:
        return self._page(
            503,
            "Payments are briefly unavailable",
            "<p>We could not load this page just now. Nothing was charged. "
            "Try again in a minute.</p>",
        )

    def _page(
        self,
        status: int,
        title: str,
        body: str,
        *,
        customer: str = "",
        refresh: bool = False,
    ) -> web.Response:
        billed = f'<p class="billed">Billed to {_e(customer)}</p>' if customer else ""
        meta_refresh = '<meta http-equiv="refresh" content="3">' if refresh else ""
        text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">{meta_refresh}
<title>{_e(title)}</title>
<link rel="stylesheet" href="/static/pay.css"></head>
<body><a class="skip" href="#main">Skip to content</a>
<main id="main"><header>{billed}<h1>{_e(title)}</h1></header>
{body}
</main>
<footer><p>Card details are entered into our payment processor's secure fields and never
reach this site.</p></footer>
<script src="/static/pay.js" defer></script>
</body></html>"""
        return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


class AmbiguousAmount(ValueError):
    """A comma that is not the page's thousands grouping: "12,50" may mean 12.50 or 1250."""


# What a payer may type: digits, a point before the decimals, and commas only as the
# page groups thousands ("1,234.50"); a currency sign and spaces around are let go.
_PLAIN = re.compile(r"\d+(?:\.\d*)?")
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def entered_minor(text: str, currency: str) -> int:
    """An amount typed on a pay page, in minor units. ValueError when it is not an
    amount in ``currency``; AmbiguousAmount for a comma that is not thousands grouping,
    which is refused rather than guessed: money is never moved on a guess."""
    clean = text.strip()
    if clean[:1] in ("$", "€", "£", "¥"):
        clean = clean[1:].strip()
    if _GROUPED.fullmatch(clean):
        clean = clean.replace(",", "")
    elif "," in clean:
        raise AmbiguousAmount(text)
    if not _PLAIN.fullmatch(clean):
        raise ValueError(f"{text!r} is not an amount")
    return to_minor(clean, currency)


def _amount(minor: int, currency: str) -> str:
    whole, dot, fraction = from_minor(minor, currency).partition(".")
    sign = "-" if whole.startswith("-") else ""
    digits = whole.lstrip("-")
    grouped = f"{int(digits):,}"
    return f"{sign}{grouped}{dot}{fraction}"


def _describe(method: PaymentMethod) -> str:
    if method.kind == "ach":
        return f"Bank account ending {method.last4} ({method.bank_account_type})"
    return (
        f"{method.brand.title() or 'Card'} ending {method.last4}, "
        f"expires {method.exp_month:02d}/{method.exp_year}"
    )


def _plain(message: str) -> str:
    """An API error message as a payer reads it: first letter up, a full stop at the end."""
    text = message.strip()
    if not text:
        return "Something went wrong."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
