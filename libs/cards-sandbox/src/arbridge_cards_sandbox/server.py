"""The card gateway sandbox over HTTP: a BlueSnap-style JSON API, hosted fields, admin API.

Merchant calls (``/services/2/...``) use HTTP Basic auth. The hosted-fields
page (``/hosted-fields``) and its token endpoint are what a payer's browser
talks to, so card numbers reach the gateway and never the merchant.
``idempotency-key`` on a POST replays the first answer for the same request
and refuses a different request under the same key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import urllib.parse
from collections.abc import Coroutine
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from arbridge_cards_sandbox.gateway import Card, Gateway, GatewayError, Transaction

log = structlog.get_logger(__name__)
GATEWAY = web.AppKey("gateway", Gateway)
RANDOM = web.AppKey("random", random.Random)
# Settlements and notifications on their way (held so they are not collected before
# they are done).
NOTIFYING = web.AppKey("notifying", set)

HOSTED_FIELDS = (resources.files("arbridge_cards_sandbox") / "hosted_fields.html").read_text()


def _error(err: GatewayError) -> web.Response:
    return web.json_response(err.body, status=err.status)


def _authorized(request: web.Request) -> bool:
    gateway = request.app[GATEWAY]
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user, gateway.username) and hmac.compare_digest(
        password, gateway.password
    )


@web.middleware
async def merchant_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    payer_call = request.path.startswith("/services/2/payment-fields-tokens/") and (
        request.method in ("PUT", "OPTIONS")
    )
    if request.path.startswith("/services/2/") and not payer_call:
        if not _authorized(request):
            return web.json_response(
                {
                    "message": [
                        {
                            "errorName": "UNAUTHORIZED",
                            "code": "10001",
                            "description": "Invalid merchant credentials.",
                        }
                    ]
                },
                status=401,
            )
        gateway = request.app[GATEWAY]
        if gateway.faults.latency_ms:
            await asyncio.sleep(gateway.faults.latency_ms / 1000)
        if (
            gateway.faults.error_5xx_rate
            and request.app[RANDOM].random() < gateway.faults.error_5xx_rate
        ):
            return web.Response(status=503, text="Service Unavailable")
    try:
        response: web.StreamResponse = await handler(request)
    except GatewayError as err:
        return _error(err)
    return response


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GatewayError(400, "INVALID_INPUT", "10010", "The body must be JSON.") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "INVALID_INPUT", "10010", "The body must be a JSON object.")
    return body


async def _idempotent(request: web.Request, compute: Any) -> web.Response:
    """Replays the first answer for an idempotency key; refuses the key on another request."""
    gateway = request.app[GATEWAY]
    key = request.headers.get("idempotency-key", "")
    raw = await request.read()
    fingerprint = hashlib.sha256(request.path.encode() + b"|" + raw).hexdigest()
    if key:
        if len(key) > 64:
            raise GatewayError(
                400, "INVALID_IDEMPOTENCY_KEY", "10050", "idempotency-key is at most 64 characters."
            )
        seen = gateway.idempotency.get(key)
        if seen is not None:
            if seen[0] != fingerprint:
                raise GatewayError(
                    400,
                    "IDEMPOTENCY_KEY_MISMATCH",
                    "10051",
                    "This idempotency-key was used with another request.",
                )
            return web.json_response(seen[2], status=seen[1], headers={"idempotency-key": key})
    try:
        status, body = await compute()
    except GatewayError as err:
        status, body = err.status, err.body
    if key and status < 500:
        gateway.idempotency[key] = (fingerprint, status, body)
    return web.json_response(body, status=status, headers={"idempotency-key": key} if key else None)


async def new_token(request: web.Request) -> web.Response:
    token = request.app[GATEWAY].new_token()
    return web.Response(
        status=201,
        headers={
            "Location": f"{request.scheme}://{request.host}/services/2/payment-fields-tokens/{token}"
        },
    )


def _cors(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = "PUT, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type"
    return response


async def fill_token(request: web.Request) -> web.StreamResponse:
    """What the hosted fields send from the payer's browser: a card, or a bank account."""
    body = await _json(request)
    gateway = request.app[GATEWAY]
    token = request.match_info["token"]
    try:
        if "accountNumber" in body or "routingNumber" in body:
            bank = gateway.fill_bank_token(
                token,
                str(body.get("routingNumber", "")),
                str(body.get("accountNumber", "")),
                str(body.get("accountType", "CONSUMER_CHECKING")),
            )
            answer = {"publicAccountNumber": bank.public()["publicAccountNumber"]}
        else:
            card = gateway.fill_token(
                token,
                str(body.get("ccNumber", "")),
                str(body.get("expDate", "")),
                str(body.get("cvv", "")),
            )
            answer = {"cardLastFourDigits": card.last4, "ccType": card.brand}
    except GatewayError as err:
        return _cors(_error(err))
    return _cors(web.json_response(answer))


async def token_info(request: web.Request) -> web.Response:
    """What a filled token holds (merchant API): a card's brand, last four, expiry and
    fingerprint, or a bank account's masked numbers, type and fingerprint under ``ecp``."""
    source = request.app[GATEWAY].token_source(request.match_info["token"])
    if isinstance(source, Card):
        return web.json_response(source.public())
    return web.json_response({"ecp": source.public()})


async def token_preflight(_request: web.Request) -> web.StreamResponse:
    return _cors(web.Response(status=204))


async def hosted_fields(_request: web.Request) -> web.Response:
    return web.Response(
        text=HOSTED_FIELDS,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; frame-ancestors *"
        },
    )


async def create_shopper(request: web.Request) -> web.Response:
    async def compute() -> tuple[int, dict[str, Any]]:
        shopper = request.app[GATEWAY].create_shopper(await _json(request))
        return 200, shopper.public()

    return await _idempotent(request, compute)


async def get_shopper(request: web.Request) -> web.Response:
    return web.json_response(request.app[GATEWAY].shopper(int(request.match_info["id"])).public())


async def update_shopper(request: web.Request) -> web.Response:
    shopper = request.app[GATEWAY].update_shopper(
        int(request.match_info["id"]), await _json(request)
    )
    return web.json_response(shopper.public())


async def _charge(request: web.Request, kind: str) -> web.Response:
    gateway = request.app[GATEWAY]
    faults = gateway.faults
    made: list[Transaction] = []

    async def compute() -> tuple[int, dict[str, Any]]:
        transaction = gateway.charge(await _json(request), kind)
        made.append(transaction)
        if transaction.kind == "ach":
            asyncio.get_running_loop().call_later(
                gateway.ach_settle_seconds,
                lambda: _in_background(request.app, _settle_ach(request.app, transaction)),
            )
        return 200, transaction.public()

    response = await _idempotent(request, compute)
    lose = faults.timeout_after_charge_next > 0 or (
        faults.timeout_after_charge_rate
        and request.app[RANDOM].random() < faults.timeout_after_charge_rate
    )
    if made and lose:
        if faults.timeout_after_charge_next > 0:
            faults.timeout_after_charge_next -= 1
        log.info("card_sandbox_lost_answer", transaction_id=made[0].transaction_id)
        if request.transport is not None:
            request.transport.close()  # charged, and the answer never arrives
    return response


async def card_transaction(request: web.Request) -> web.Response:
    return await _charge(request, "card")


async def ach_transaction(request: web.Request) -> web.Response:
    return await _charge(request, "ach")


async def get_transaction(request: web.Request) -> web.Response:
    key = request.match_info["key"].split(",")[0]
    return web.json_response(request.app[GATEWAY].lookup(key).public())


async def refund(request: web.Request) -> web.Response:
    amount = None
    if request.query.get("amount"):
        try:
            amount = Decimal(request.query["amount"])
        except InvalidOperation:
            raise GatewayError(400, "INVALID_AMOUNT", "10020", "amount must be a number.") from None
    gateway = request.app[GATEWAY]
    before = gateway.lookup(request.match_info["id"]).refunded
    transaction = gateway.refund(
        request.match_info["id"], amount, request.query.get("reason", "")[:255]
    )
    # A REFUND notification, as for a refund made in the merchant console (or by the API).
    form = {
        "transactionType": "REFUND",
        "referenceNumber": transaction.transaction_id,
        "merchantTransactionId": transaction.merchant_transaction_id,
        "reversalRefNum": transaction.transaction_id,
        "invoiceAmount": str(transaction.amount),
        "refundAmount": str(transaction.refunded - before),
        "currency": transaction.currency,
    }
    _in_background(request.app, _notify(gateway, form))
    return web.Response(status=204)


def _in_background(app: web.Application, work: Coroutine[Any, Any, None]) -> None:
    """Runs ``work`` as a task the app holds until it ends (a task nobody holds may be
    collected before it is done)."""
    keep = app[NOTIFYING]
    task = asyncio.ensure_future(work)
    keep.add(task)
    task.add_done_callback(keep.discard)


async def _settle_ach(app: web.Application, transaction: Transaction) -> None:
    gateway = app[GATEWAY]
    returned = transaction.bank is not None and transaction.bank.account_number.endswith("0000")
    transaction.status = "returned" if returned else "success"
    form = {
        "transactionType": "DECLINE" if returned else "CHARGE",
        "referenceNumber": transaction.transaction_id,
        "merchantTransactionId": transaction.merchant_transaction_id,
        "invoiceAmount": str(transaction.amount),
        "currency": transaction.currency,
        "paymentMethod": "ECP",
        "reason": "R01 Insufficient funds" if returned else "",
    }
    await _notify(gateway, form)


async def _notify(gateway: Gateway, form: dict[str, str]) -> None:
    """Posts an IPN to the merchant's notification URL, if set, trying three times."""
    if not gateway.notification_url:
        return
    for delay in (0.0, 1.0, 3.0):
        await asyncio.sleep(delay)
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    gateway.notification_url,
                    data=urllib.parse.urlencode(form),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as reply,
            ):
                if reply.status < 300:
                    return
        except (aiohttp.ClientError, TimeoutError):
            continue


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[GATEWAY].faults.__dict__)


async def put_faults(request: web.Request) -> web.Response:
    faults = request.app[GATEWAY].faults
    body = await _json(request)
    for name, cast in (
        ("latency_ms", int),
        ("error_5xx_rate", float),
        ("timeout_after_charge_rate", float),
        ("timeout_after_charge_next", int),
    ):
        if name in body:
            try:
                setattr(faults, name, cast(body[name]))
            except (TypeError, ValueError):
                return web.json_response({"error": f"{name} must be a number"}, status=400)
    return web.json_response(faults.__dict__)


async def put_notifications(request: web.Request) -> web.Response:
    body = await _json(request)
    gateway = request.app[GATEWAY]
    gateway.notification_url = str(body.get("url", ""))
    if "ach_settle_seconds" in body:
        gateway.ach_settle_seconds = float(body["ach_settle_seconds"])
    return web.json_response(
        {"url": gateway.notification_url, "ach_settle_seconds": gateway.ach_settle_seconds}
    )


async def list_transactions(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    # The merchant console's view: the API's, and each refund with its reason.
    return web.json_response(
        {
            "transactions": [
                {
                    **t.public(),
                    "refunds": [{"amount": str(a), "reason": r} for a, r in t.refunds],
                }
                for t in gateway.transactions.values()
            ]
        }
    )


async def stats(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    by_status: dict[str, int] = {}
    for transaction in gateway.transactions.values():
        by_status[transaction.status] = by_status.get(transaction.status, 0) + 1
    return web.json_response(
        {
            "transactions": len(gateway.transactions),
            "by_status": by_status,
            "shoppers": len(gateway.shoppers),
        }
    )


def build_app(gateway: Gateway, seed: int = 0) -> web.Application:
    app = web.Application(middlewares=[merchant_auth], client_max_size=1024 * 1024)
    app[GATEWAY] = gateway
    app[RANDOM] = random.Random(seed)
    app[NOTIFYING] = set()
    r = app.router
    r.add_post("/services/2/payment-fields-tokens", new_token)
    r.add_put("/services/2/payment-fields-tokens/{token}", fill_token)
    r.add_get("/services/2/payment-fields-tokens/{token}", token_info)
    r.add_route("OPTIONS", "/services/2/payment-fields-tokens/{token}", token_preflight)
    r.add_get("/hosted-fields", hosted_fields)
    r.add_post("/services/2/vaulted-shoppers", create_shopper)
    r.add_get("/services/2/vaulted-shoppers/{id:\\d+}", get_shopper)
    r.add_put("/services/2/vaulted-shoppers/{id:\\d+}", update_shopper)
    r.add_post("/services/2/transactions", card_transaction)
    r.add_post("/services/2/alt-transactions", ach_transaction)
    r.add_get("/services/2/transactions/{key}", get_transaction)
    r.add_get("/services/2/alt-transactions/{key}", get_transaction)
    r.add_put("/services/2/transaction/{id}/refund", refund)
    r.add_get("/sandbox/faults", get_faults)
    r.add_put("/sandbox/faults", put_faults)
    r.add_put("/sandbox/notifications", put_notifications)
    r.add_get("/sandbox/transactions", list_transactions)
    r.add_get("/sandbox/stats", stats)
    return app
