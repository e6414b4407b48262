"""The public webhook edge: authenticate, bound, parse safely, publish durably, answer fast.

* ``POST /v1/intacct/{account_id}/{token}``: Intacct smart events (URL token).
* ``POST /v1/intacct/{account_id}/signed``: forwarders that sign (HMAC-SHA256
  over ``{timestamp}.{body}``, replay window), with ``X-Arbridge-Delivery``.
* ``POST /v1/cards/{account_id}/{token}``: card-gateway notifications.

An event is answered ``202`` only after JetStream acknowledged it (deduped by
``Nats-Msg-Id``), ``200`` with ``duplicate`` when JetStream already had it,
``503`` when it could not be stored (so the sender retries), and ``4xx`` with
a JSON body saying what was wrong. Nothing is published for a refused request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from google.protobuf.message import Message
from nats.js import JetStreamContext

from arbridge.events.v1 import events_pb2
from arbridge_runtime import webhooks
from arbridge_runtime.jetstream import MSG_ID, Namespace
from arbridge_runtime.metrics import ServiceMetrics
from arbridge_runtime.xml import XmlRejected, parse_xml

log = structlog.get_logger(__name__)
_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$")
_DELIVERY = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def check_body(body: bytes, content_type: str, max_bytes: int) -> str:
    """Why a body cannot be taken (empty when it can): XML safely parsed, JSON and forms decoded."""
    kind = content_type.split(";")[0].strip().lower()
    if "json" in kind:
        try:
            json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "the body is not valid JSON"
        return ""
    if "x-www-form-urlencoded" in kind:
        try:
            urllib.parse.parse_qsl(body.decode(), strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            return "the body is not a valid form"
        return ""
    if "xml" in kind or body.lstrip().startswith(b"<"):
        try:
            parse_xml(body, max_bytes)
        except XmlRejected as exc:
            return f"the XML body is refused: {exc}"
        return ""
    return "send application/xml, application/json or application/x-www-form-urlencoded"


@dataclass
class Edge:
    js: JetStreamContext
    namespace: Namespace
    secrets: Sequence[str]
    max_body_bytes: int
    publish_timeout: float
    metrics: ServiceMetrics
    ready: Callable[[], bool]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/intacct/{account_id}/signed", self.intacct_signed)
        app.router.add_post("/v1/intacct/{account_id}/{token}", self.intacct_token)
        app.router.add_post("/v1/cards/{account_id}/{token}", self.cards)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def livez(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ready" if self.ready() else "not ready"},
            status=200 if self.ready() else 503,
        )

    async def _body(self, request: web.Request) -> bytes | web.Response:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return _problem(413, f"the body is over {self.max_body_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _problem(413, f"the body is over {self.max_body_bytes} bytes")
        problem = check_body(body, request.content_type, self.max_body_bytes)
        if problem:
            return _problem(400, problem)
        return body

    def _account(self, request: web.Request) -> str | web.Response:
        account_id = request.match_info["account_id"]
        if not _ACCOUNT.match(account_id):
            return _problem(404, "unknown endpoint")
        return account_id

    async def intacct_token(self, request: web.Request) -> web.Response:
        account_id = self._account(request)
        if isinstance(account_id, web.Response):
            return account_id
        if not webhooks.token_ok(self.secrets, account_id, request.match_info["token"]):
            self.metrics.rpc_rejected.labels(method="webhook", reason="bad_token").inc()
            return _problem(401, "the URL token is not valid for this account")
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        delivery_id = hashlib.sha256(account_id.encode() + b"|" + body).hexdigest()
        return await self._publish_intacct(
            account_id, body, request.content_type, delivery_id, door="gateway"
        )

    async def intacct_signed(self, request: web.Request) -> web.Response:
        account_id = self._account(request)
        if isinstance(account_id, web.Response):
            return account_id
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        problem = webhooks.signature_problem(
            self.secrets,
            account_id,
            body,
            request.headers.get("X-Arbridge-Timestamp", ""),
            request.headers.get("X-Arbridge-Signature", ""),
        )
        if problem:
            self.metrics.rpc_rejected.labels(method="webhook", reason="bad_signature").inc()
            return _problem(401, f"signature refused: {problem}")
        delivery_id = request.headers.get("X-Arbridge-Delivery", "")
        if not _DELIVERY.match(delivery_id):
            return _problem(400, "X-Arbridge-Delivery (1-200 of A-Z a-z 0-9 . _ : -) is required")
        return await self._publish_intacct(
            account_id,
            body,
            request.content_type,
            f"{account_id}:{delivery_id}",
            door="gateway-signed",
        )

    async def _publish_intacct(
        self, account_id: str, body: bytes, content_type: str, delivery_id: str, door: str
    ) -> web.Response:
        event_id = hashlib.sha256(delivery_id.encode()).hexdigest()[:32]
        event = events_pb2.IntacctEventReceived(
            event_id=event_id,
            account_id=account_id,
            body=body,
            content_type=content_type or "application/xml",
            door=door,
            delivery_id=delivery_id,
        )
        event.received_at.GetCurrentTime()
        return await self._publish(f"intacct.events.{account_id}", event, event_id)

    async def cards(self, request: web.Request) -> web.Response:
        account_id = self._account(request)
        if isinstance(account_id, web.Response):
            return account_id
        if not webhooks.token_ok(self.secrets, account_id, request.match_info["token"]):
            return _problem(401, "the URL token is not valid for this account")
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        event_id = hashlib.sha256(b"cards|" + account_id.encode() + b"|" + body).hexdigest()[:32]
        event = events_pb2.CardGatewayNotificationReceived(
            event_id=event_id,
            account_id=account_id,
            body=body,
            content_type=request.content_type or "application/json",
        )
        event.received_at.GetCurrentTime()
        return await self._publish(f"cards.notifications.{account_id}", event, event_id)

    async def _publish(self, subject: str, event: Message, event_id: str) -> web.Response:
        try:
            ack = await asyncio.wait_for(
                self.js.publish(
                    self.namespace.subject(subject),
                    event.SerializeToString(),
                    headers={MSG_ID: event_id},
                    timeout=self.publish_timeout,
                ),
                self.publish_timeout + 1,
            )
        except Exception as exc:
            log.warning("webhook_not_stored", subject=subject, error=type(exc).__name__)
            return _problem(503, "the event could not be stored; retry later")
        if ack.duplicate:
            return web.json_response({"status": "duplicate", "event_id": event_id}, status=200)
        return web.json_response({"status": "accepted", "event_id": event_id}, status=202)
