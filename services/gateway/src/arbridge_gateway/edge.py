"""The public webhook edge: authenticate, bound, parse safely, publish durably, answer fast.

* ``POST /v1/intacct/{account_id}/{token}``: Intacct smart events (URL token).
* ``POST /v1/intacct/{account_id}/signed``: forwarders that sign (HMAC-SHA256
  over ``{timestamp}.{body}``, replay window).
* ``POST /v1/cards/{account_id}/{token}``: card-gateway notifications.

Intacct events go through the runtime's :class:`~arbridge_runtime.ingest.Ingestor`,
the same code path as the sync service's gRPC ingest. An event is answered
``202`` only after JetStream acknowledged it, ``200`` with ``duplicate`` when
JetStream already had it, ``503`` when it could not be stored (so the sender
retries), and ``4xx`` with a JSON body saying what was wrong. Nothing is
published for a refused request.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from arbridge.events.v1 import events_pb2
from arbridge_runtime import tracing, webhooks
from arbridge_runtime.errors import Unavailable
from arbridge_runtime.ingest import ACCOUNT_ID, Inbound, Ingestor, check_body
from arbridge_runtime.jetstream import MSG_ID
from arbridge_runtime.metrics import ServiceMetrics

log = structlog.get_logger(__name__)


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass
class Edge:
    ingestor: Ingestor
    metrics: ServiceMetrics
    ready: Callable[[], bool]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.ingestor.max_body_bytes)
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

    async def _read(self, request: web.Request) -> bytes | web.Response:
        limit = self.ingestor.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _problem(413, f"the body is over {limit} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _problem(413, f"the body is over {limit} bytes")

    async def _intacct(self, request: web.Request, inbound: Inbound, door: str) -> web.Response:
        try:
            outcome = await self.ingestor.take(inbound, door)
        except Unavailable as exc:
            log.warning("webhook_not_stored", account_id=inbound.account_id)
            return _problem(503, exc.message)
        if outcome.status == "rejected":
            self.metrics.rpc_rejected.labels(
                method="webhook", reason=str(outcome.http_status)
            ).inc()
            return _problem(outcome.http_status, outcome.reason)
        return web.json_response(
            {"status": outcome.status, "event_id": outcome.event_id}, status=outcome.http_status
        )

    async def intacct_token(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        inbound = Inbound(
            account_id=request.match_info["account_id"],
            body=body,
            content_type=request.content_type,
            url_token=request.match_info["token"] or "-",
        )
        return await self._intacct(request, inbound, "gateway")

    async def intacct_signed(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        inbound = Inbound(
            account_id=request.match_info["account_id"],
            body=body,
            content_type=request.content_type,
            headers=dict(request.headers),
            delivery_id=request.headers.get("X-Arbridge-Delivery", ""),
        )
        return await self._intacct(request, inbound, "gateway-signed")

    async def cards(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        if not ACCOUNT_ID.match(account_id):
            return _problem(404, "unknown endpoint")
        if not webhooks.token_ok(self.ingestor.secrets, account_id, request.match_info["token"]):
            return _problem(401, "the URL token is not valid for this account")
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        problem = check_body(body, request.content_type, self.ingestor.max_body_bytes)
        if problem:
            return _problem(400, problem)
        event_id = hashlib.sha256(b"cards|" + account_id.encode() + b"|" + body).hexdigest()[:32]
        event = events_pb2.CardGatewayNotificationReceived(
            event_id=event_id,
            account_id=account_id,
            body=body,
            content_type=request.content_type or "application/json",
        )
        event.received_at.GetCurrentTime()
        return await self._publish(f"cards.notifications.{account_id}", event, event_id)

    async def _publish(
        self, subject: str, event: events_pb2.CardGatewayNotificationReceived, event_id: str
    ) -> web.Response:
        timeout = self.ingestor.publish_timeout
        headers = {MSG_ID: event_id}
        tracing.inject(headers)
        try:
            ack = await asyncio.wait_for(
                self.ingestor.js.publish(
                    self.ingestor.namespace.subject(subject),
                    event.SerializeToString(),
                    headers=headers,
                    timeout=timeout,
                ),
                timeout + 1,
            )
        except Exception as exc:
            log.warning("webhook_not_stored", subject=subject, error=type(exc).__name__)
            return _problem(503, "the event could not be stored; retry later")
        if ack.duplicate:
            return web.json_response({"status": "duplicate", "event_id": event_id}, status=200)
        return web.json_response({"status": "accepted", "event_id": event_id}, status=202)
