"""The sandboxes as a person or a browser uses them: the sandbox Intacct's admin screens
(smart events, the UI, records) and the card gateway's hosted fields.

``make demo`` and the chaos scenarios drive the suite through these, the way an
Intacct user and a payer would.
"""

from __future__ import annotations

import base64
import re
from datetime import date, timedelta
from typing import Any, Protocol

import aiohttp


class Sandboxes(Protocol):
    """What a running suite knows of its sandboxes (their ready files' facts)."""

    sandbox: dict[str, Any]
    cards: dict[str, Any]


class SandboxRefused(Exception):
    """A sandbox refused what was asked; the message says what and why."""


class Sandbox:
    """The sandbox Intacct's admin screens and the card gateway's hosted fields."""

    def __init__(self, http: aiohttp.ClientSession, suite: Sandboxes) -> None:
        self.http = http
        self.admin = (
            str(suite.sandbox["admin"]).rstrip("/")
            + "/companies/"
            + str(suite.sandbox["company_id"])
        )
        self.cards = suite.cards

    async def add_smart_event(self, spec: Any) -> None:
        async with self.http.post(
            f"{self.admin}/smart-events",
            json={
                "object": spec.object,
                "actions": list(spec.actions),
                "url": spec.url,
                "body_template": spec.body_template,
                "content_type": spec.content_type,
            },
        ) as reply:
            if reply.status not in (200, 201):
                raise SandboxRefused(f"smart event {spec.name} refused: {await reply.text()}")

    async def create_invoice(self, customer: str, amount: str, number: str) -> str:
        """An AR invoice entered in the Intacct UI; returns its RECORDNO."""
        due = date.today() + timedelta(days=30)
        body = (
            f"<create_invoice><customerid>{customer}</customerid>"
            f"<datedue><year>{due.year}</year><month>{due.month}</month><day>{due.day}</day>"
            f"</datedue><invoiceno>{number}</invoiceno><invoiceitems><lineitem>"
            f"<glaccountno>4000</glaccountno><amount>{amount}</amount></lineitem>"
            "</invoiceitems></create_invoice>"
        )
        async with self.http.post(
            f"{self.admin}/ui", data=body, headers={"Content-Type": "application/xml"}
        ) as reply:
            text = await reply.text()
            if reply.status != 200:
                raise SandboxRefused(f"the sandbox refused the invoice: {text}")
        match = re.search(r"<key>(\d+)</key>", text)
        if not match:
            raise SandboxRefused(f"the sandbox did not say the invoice's key: {text[:300]}")
        return match.group(1)

    async def invoice_due(self, record_no: str) -> str:
        return str((await self.records("ARINVOICE"))[record_no]["TRX_TOTALDUE"])

    async def card_token(self, number: str) -> str:
        """A hosted-fields token holding a card, as the payer's browser makes one."""
        credentials = base64.b64encode(
            f"{self.cards['username']}:{self.cards['password']}".encode()
        ).decode()
        base = str(self.cards["base_url"]) + "/services/2/payment-fields-tokens"
        async with self.http.post(base, headers={"Authorization": f"Basic {credentials}"}) as r:
            token = r.headers["Location"].rsplit("/", 1)[1]
        async with self.http.put(
            f"{base}/{token}", json={"ccNumber": number, "expDate": "11/31", "cvv": "737"}
        ) as reply:
            if reply.status != 200:
                raise SandboxRefused(f"the hosted fields refused the card: {await reply.text()}")
        return token

    async def records(self, obj: str) -> dict[str, dict[str, Any]]:
        """Every record of ``obj`` in the company: {RECORDNO: field values}."""
        async with self.http.get(f"{self.admin}/records/{obj}") as reply:
            rows = (await reply.json())["records"]
        return {str(r["recordno"]): r["values"] for r in rows}

    async def update_record(self, obj: str, record_no: str, values: dict[str, str]) -> None:
        """Edits a record as a user would in the UI (its smart events fire)."""
        async with self.http.put(
            f"{self.admin}/records/{obj}/{record_no}", json={"values": values}
        ) as reply:
            if reply.status != 200:
                raise SandboxRefused(f"the sandbox refused the edit: {await reply.text()}")

    async def smart_event_log(self) -> list[dict[str, Any]]:
        """Every smart-event delivery the sandbox attempted, with its status."""
        async with self.http.get(f"{self.admin}/smart-event-log?limit=100000") as reply:
            return list((await reply.json())["entries"])

    async def set_faults(self, **faults: Any) -> dict[str, Any]:
        async with self.http.put(f"{self.admin}/faults", json=faults) as reply:
            if reply.status != 200:
                raise SandboxRefused(f"faults refused: {await reply.text()}")
            return dict(await reply.json())

    async def set_card_faults(self, **faults: Any) -> dict[str, Any]:
        """The card gateway's misbehaviour (latency, 5xx, answers lost after charging)."""
        async with self.http.put(
            str(self.cards["base_url"]) + "/sandbox/faults", json=faults
        ) as reply:
            if reply.status != 200:
                raise SandboxRefused(f"card faults refused: {await reply.text()}")
            return dict(await reply.json())

    async def intacct_stats(self) -> dict[str, Any]:
        """What the sandbox Intacct counted for the company: calls by function, faults."""
        company = self.admin.rsplit("/", 1)[1]
        base = self.admin.rsplit("/companies/", 1)[0]
        async with self.http.get(f"{base}/stats?company={company}") as reply:
            return dict((await reply.json())["companies"][company])

    async def gateway_transactions(self) -> list[dict[str, Any]]:
        """Every transaction the card gateway sandbox made."""
        async with self.http.get(str(self.cards["base_url"]) + "/sandbox/transactions") as reply:
            return list((await reply.json())["transactions"])
