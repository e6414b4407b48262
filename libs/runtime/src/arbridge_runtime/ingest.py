"""One code path for taking in Intacct events, whichever door they come through.

The HTTP gateway and the sync service's gRPC ingest both hand each inbound
event to :class:`Ingestor`, which authenticates it (the account's URL token,
or an HMAC signature with a fresh timestamp), bounds and safely parses its
body, and stores it in JetStream. An event is reported ``accepted`` only once
JetStream acknowledged it; the message id is a hash of the account and body,
so the same event arriving through both doors, or again from a retrying
sender, is stored once (``duplicate``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from arbridge.events.v1 import events_pb2
from arbridge_runtime import tracing, webhooks
from arbridge_runtime.errors import Unavailable
from arbridge_runtime.jetstream import MSG_ID, Namespace
from arbridge_runtime.xml import XmlRejected, parse_xml

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$")
ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"


@dataclass(frozen=True)
class Inbound:
    """An Intacct event as a door received it."""

    account_id: str
    body: bytes
    content_type: str
    url_token: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    delivery_id: str = ""


@dataclass(frozen=True)
class Outcome:
    status: str  # accepted | duplicate | rejected
    reason: str = ""
    event_id: str = ""
    # For HTTP: 401 for credentials, 413 for size, 400 for a body, 404 for an account.
    http_status: int = 202


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


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


@dataclass
class Ingestor:
    js: JetStreamContext
    namespace: Namespace
    secrets: Sequence[str]
    max_body_bytes: int
    publish_timeout: float

    def refuse(self, inbound: Inbound) -> Outcome | None:
        """The reason an event is refused before anything is stored, or None."""
        if not ACCOUNT_ID.match(inbound.account_id):
            return Outcome(REJECTED, "unknown account", http_status=404)
        if inbound.url_token:
            if not webhooks.token_ok(self.secrets, inbound.account_id, inbound.url_token):
                return Outcome(
                    REJECTED, "the URL token is not valid for this account", http_status=401
                )
        else:
            problem = webhooks.signature_problem(
                self.secrets,
                inbound.account_id,
                inbound.body,
                _header(inbound.headers, "X-Arbridge-Timestamp"),
                _header(inbound.headers, "X-Arbridge-Signature"),
            )
            if problem:
                return Outcome(REJECTED, f"signature refused: {problem}", http_status=401)
        if len(inbound.body) > self.max_body_bytes:
            return Outcome(
                REJECTED, f"the body is over {self.max_body_bytes} bytes", http_status=413
            )
        problem = check_body(inbound.body, inbound.content_type, self.max_body_bytes)
        if problem:
            return Outcome(REJECTED, problem, http_status=400)
        return None

    async def take(self, inbound: Inbound, door: str) -> Outcome:
        """Authenticates, checks and stores one event; raises Unavailable when it cannot store."""
        refused = self.refuse(inbound)
        if refused is not None:
            return refused
        event_id = hashlib.sha256(inbound.account_id.encode() + b"|" + inbound.body).hexdigest()[
            :32
        ]
        event = events_pb2.IntacctEventReceived(
            event_id=event_id,
            account_id=inbound.account_id,
            body=inbound.body,
            content_type=inbound.content_type or "application/xml",
            door=door,
            delivery_id=inbound.delivery_id,
        )
        event.received_at.GetCurrentTime()
        headers = {MSG_ID: event_id}
        tracing.inject(headers)  # sync's span for this event joins the request's trace
        try:
            ack = await asyncio.wait_for(
                self.js.publish(
                    self.namespace.subject(f"intacct.events.{inbound.account_id}"),
                    event.SerializeToString(),
                    headers=headers,
                    timeout=self.publish_timeout,
                ),
                self.publish_timeout + 1,
            )
        except Exception as exc:
            raise Unavailable(
                "the event could not be stored (event storage unavailable); retry it later"
            ) from exc
        if ack.duplicate:
            return Outcome(DUPLICATE, event_id=event_id, http_status=200)
        return Outcome(ACCEPTED, event_id=event_id, http_status=202)
