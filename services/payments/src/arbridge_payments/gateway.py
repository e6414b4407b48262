"""The card gateway adapter: a BlueSnap-style REST API over aiohttp.

This is the only module that speaks to the card gateway. It holds gateway
references only: vaulted shopper ids, brands, last four digits, fingerprints.
Card numbers never pass through it; payers' browsers send them to the
gateway's hosted fields, which hand back a token.

Outcomes are typed so callers can act on them:

- ``GatewayRefused``: the gateway answered and said no (a decline, an invalid
  token, a refund above the refundable amount). Retrying the same request
  gives the same answer.
- ``GatewayUnavailable``: a 5xx, a refused connection. Nothing happened, or we
  cannot tell; for a charge, the caller resolves it with ``lookup``.
- ``GatewayTimeout``: the request may have been carried out and its answer
  lost. For a charge, the caller must look the transaction up by its own
  merchant transaction id, never charge again under a new one.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp
from opentelemetry.trace import SpanKind

from arbridge_runtime import tracing
from arbridge_runtime.money import from_minor, to_minor

CARD = "card"
ACH = "ach"


class GatewayError(Exception):
    """Base class of gateway outcomes other than success. Messages never hold card data."""


class GatewayRefused(GatewayError):
    """The gateway answered with a refusal (4xx)."""

    def __init__(self, status: int, name: str, code: str, description: str) -> None:
        super().__init__(f"{name}: {description}")
        self.status = status
        self.name = name
        self.code = code
        self.description = description


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached or answered 5xx."""


class GatewayTimeout(GatewayError):
    """No answer in time: the request may or may not have been carried out."""


@dataclass(frozen=True)
class Source:
    """A payment source as the gateway describes it: no card number, no account number.

    Attributes:
        kind: ``card`` or ``ach``.
        brand: Card brand (``VISA``); empty for ACH.
        last4: Last four digits of the card or bank account.
        exp_month, exp_year: Card expiry; 0 for ACH.
        fingerprint: The gateway's fingerprint: the same card or account, the same value.
        bank_account_type: ``checking`` or ``savings`` for ACH.
    """

    kind: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    bank_account_type: str = ""


@dataclass(frozen=True)
class Shopper:
    """A vaulted shopper and its sources."""

    shopper_id: str
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Transaction:
    """A gateway transaction.

    Attributes:
        transaction_id: The gateway's id.
        merchant_transaction_id: Ours (the charge id), for lookups.
        status: ``success``, ``PENDING`` (ACH settling), ``declined`` or ``returned``.
        amount_minor: Amount in minor units of ``currency``.
        refunded_minor: Refunded so far, in minor units.
    """

    transaction_id: str
    merchant_transaction_id: str
    status: str
    amount_minor: int
    currency: str
    refunded_minor: int


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway is and how to sign in (the password is a secret)."""

    base_url: str
    username: str
    password: str
    timeout: float = 30.0

    def __repr__(self) -> str:
        return (
            f"GatewayConfig(base_url={self.base_url!r}, username={self.username!r}, password=***)"
        )


def _source_from_card(card: dict[str, Any]) -> Source:
    return Source(
        kind=CARD,
        brand=str(card.get("cardType", "")),
        last4=str(card.get("cardLastFourDigits", "")),
        exp_month=int(card.get("expirationMonth") or 0),
        exp_year=int(card.get("expirationYear") or 0),
        fingerprint=str(card.get("cardFingerprint", "")),
    )


def _source_from_ecp(ecp: dict[str, Any]) -> Source:
    kind = str(ecp.get("accountType", "")).upper()
    return Source(
        kind=ACH,
        brand="",
        last4=str(ecp.get("publicAccountNumber", ""))[-4:],
        exp_month=0,
        exp_year=0,
        fingerprint=str(ecp.get("accountFingerprint", "")),
        bank_account_type="savings" if "SAVINGS" in kind else "checking",
    )


def _shopper(body: dict[str, Any]) -> Shopper:
    sources = body.get("paymentSources") or {}
    found = [
        _source_from_card(c.get("creditCard") or {}) for c in sources.get("creditCardInfo") or []
    ]
    found += [_source_from_ecp(e.get("ecp") or {}) for e in sources.get("ecpDetails") or []]
    return Shopper(str(body.get("vaultedShopperId", "")), tuple(found))


# The gateway's JSON numbers are read as decimals, never as floats (an amount of
# 90071992547409.93 is 90071992547409.94 as a float).
read_json = functools.partial(json.loads, parse_float=Decimal)


def _transaction(body: dict[str, Any]) -> Transaction:
    currency = str(body.get("currency", ""))
    return Transaction(
        transaction_id=str(body.get("transactionId", "")),
        merchant_transaction_id=str(body.get("merchantTransactionId", "")),
        status=str((body.get("processingInfo") or {}).get("processingStatus", "")),
        amount_minor=to_minor(str(body.get("amount", "0")), currency),
        currency=currency,
        refunded_minor=to_minor(str(body.get("refundedAmount", "0")), currency),
    )


class CardGateway:
    """Calls to the card gateway. One instance per service; share its HTTP session."""

    def __init__(self, config: GatewayConfig, http: aiohttp.ClientSession) -> None:
        self._config = config
        self._http = http
        credentials = f"{config.username}:{config.password}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Authorization": self._authorization}
        if idempotency_key:
            headers["idempotency-key"] = idempotency_key
        url = self._config.base_url.rstrip("/") + path
        with tracing.span(
            f"cards {method}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.path": path.split("?")[0]},
        ):
            return await self._send(method, path, url, body, headers)

    async def _send(
        self, method: str, path: str, url: str, body: dict[str, Any] | None, headers: dict[str, str]
    ) -> dict[str, Any]:
        try:
            async with self._http.request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            ) as reply:
                text = await reply.text()
                if reply.status >= 500:
                    raise GatewayUnavailable(
                        f"the card gateway answered HTTP {reply.status} to {method} {path}"
                    )
                try:
                    data = read_json(text) if text else {}
                except ValueError:
                    raise GatewayUnavailable(
                        f"the card gateway sent a body that is not JSON to {method} {path}"
                    ) from None
                if reply.status >= 400:
                    raise _refusal(reply.status, data)
                return data if isinstance(data, dict) else {}
        except TimeoutError:
            raise GatewayTimeout(f"no answer from the card gateway to {method} {path}") from None
        except aiohttp.ServerDisconnectedError:
            # The request was sent; the charge may have been made.
            raise GatewayTimeout(
                f"the card gateway closed the connection during {method} {path}"
            ) from None
        except aiohttp.ClientError as err:
            raise GatewayUnavailable(
                f"the card gateway could not be reached for {method} {path}: {type(err).__name__}"
            ) from None

    async def new_token(self) -> str:
        """A fresh hosted-fields token for a payer's browser to enter a card or account into."""
        headers = {"Accept": "application/json", "Authorization": self._authorization}
        url = self._config.base_url.rstrip("/") + "/services/2/payment-fields-tokens"
        try:
            async with self._http.post(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=self._config.timeout)
            ) as reply:
                if reply.status >= 500:
                    raise GatewayUnavailable(
                        f"the card gateway answered HTTP {reply.status} to a token request"
                    )
                if reply.status >= 400:
                    raise _refusal(reply.status, read_json(await reply.text()))
                location = reply.headers.get("Location", "")
        except (TimeoutError, aiohttp.ClientError, ValueError) as err:
            raise GatewayUnavailable(
                f"the card gateway could not give a hosted-fields token: {type(err).__name__}"
            ) from None
        token = location.rstrip("/").rsplit("/", 1)[-1]
        if not token:
            raise GatewayUnavailable("the card gateway's token answer had no Location")
        return token

    async def token_source(self, token: str) -> Source:
        """The card or bank account a payer entered into a hosted-fields token, before it
        is vaulted."""
        data = await self._call("GET", f"/services/2/payment-fields-tokens/{token}")
        if isinstance(data.get("ecp"), dict):
            return _source_from_ecp(data["ecp"])
        return _source_from_card(data)

    async def create_shopper(
        self, *, merchant_shopper_id: str, name: str, idempotency_key: str
    ) -> Shopper:
        """Creates a vaulted shopper without sources; the same key gives the same shopper."""
        first, _, last = name.partition(" ")
        data = await self._call(
            "POST",
            "/services/2/vaulted-shoppers",
            {
                "firstName": first or "Customer",
                "lastName": last or merchant_shopper_id,
                "merchantShopperId": merchant_shopper_id,
            },
            idempotency_key,
        )
        return _shopper(data)

    async def add_source(self, shopper_id: str, token: str, kind: str) -> Shopper:
        """Vaults the card or bank account of a hosted-fields token on a shopper (the token
        is used up)."""
        sources = "creditCardInfo" if kind == CARD else "ecpDetails"
        data = await self._call(
            "PUT",
            f"/services/2/vaulted-shoppers/{shopper_id}",
            {"paymentSources": {sources: [{"pfToken": token}]}},
        )
        return _shopper(data)

    async def remove_source(self, shopper_id: str, kind: str, brand: str, last4: str) -> None:
        """Deletes a vaulted card (named by type and last four digits, as the gateway
        names it) or bank account from a shopper; one already gone counts as deleted."""
        if kind == CARD:
            entry: dict[str, Any] = {
                "creditCardInfo": [
                    {"creditCard": {"cardLastFourDigits": last4, "cardType": brand}, "status": "D"}
                ]
            }
        else:
            entry = {"ecpDetails": [{"ecp": {"publicAccountNumber": last4}, "status": "D"}]}
        try:
            await self._call(
                "PUT", f"/services/2/vaulted-shoppers/{shopper_id}", {"paymentSources": entry}
            )
        except GatewayRefused as err:
            if err.name not in ("CARD_NOT_FOUND", "ECP_NOT_FOUND", "SHOPPER_NOT_FOUND"):
                raise

    async def charge(
        self,
        *,
        kind: str,
        merchant_transaction_id: str,
        shopper_id: str,
        amount_minor: int,
        currency: str,
        last4: str,
        brand: str = "",
        tax_minor: int = 0,
        customer_reference: str = "",
    ) -> Transaction:
        """Charges a stored source once: the merchant transaction id and idempotency key are ours.

        A decline raises ``GatewayRefused``; a lost answer raises
        ``GatewayTimeout`` and must be resolved with ``lookup``.
        """
        body: dict[str, Any] = {
            "amount": from_minor(amount_minor, currency),
            "currency": currency,
            "vaultedShopperId": int(shopper_id),
            "merchantTransactionId": merchant_transaction_id,
        }
        if tax_minor or customer_reference:
            body["level3Data"] = {
                "taxAmount": from_minor(tax_minor, currency),
                "customerReferenceNumber": customer_reference,
            }
        if kind == CARD:
            body["cardTransactionType"] = "AUTH_CAPTURE"
            # The gateway names a shopper's stored card by its last four digits and type
            # (a charge recorded before the type was kept names the digits only).
            body["creditCard"] = {"cardLastFourDigits": last4}
            if brand:
                body["creditCard"]["cardType"] = brand
            path = "/services/2/transactions"
        else:
            body["ecpTransaction"] = {"publicAccountNumber": last4}
            path = "/services/2/alt-transactions"
        return _transaction(await self._call("POST", path, body, merchant_transaction_id))

    async def lookup(self, merchant_transaction_id: str, kind: str = CARD) -> Transaction | None:
        """The transaction made under our id, or None when the gateway has none."""
        path = "transactions" if kind == CARD else "alt-transactions"
        try:
            data = await self._call("GET", f"/services/2/{path}/{merchant_transaction_id}")
        except GatewayRefused as err:
            if err.status == 404:
                return None
            raise
        return _transaction(data)

    async def refund(
        self,
        transaction_id: str,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
        reason: str = "",
    ) -> None:
        """Refunds part or all of a succeeded transaction (``lookup`` shows the refunded
        total); ``reason`` is shown with the refund in the gateway's console."""
        query = urlencode(
            {
                "amount": str(from_minor(amount_minor, currency)),
                **({"reason": reason} if reason else {}),
            }
        )
        await self._call(
            "PUT",
            f"/services/2/transaction/{transaction_id}/refund?{query}",
            None,
            idempotency_key,
        )


def _refusal(status: int, data: Any) -> GatewayRefused:
    messages = data.get("message") if isinstance(data, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else {}
    if not isinstance(first, dict):
        first = {}
    return GatewayRefused(
        status,
        str(first.get("errorName", "UNKNOWN")),
        str(first.get("code", "")),
        str(first.get("description", f"the card gateway refused the request (HTTP {status})")),
    )
