"""Helpers for talking to the Intacct sandbox in tests: envelopes and a live server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp.test_utils import TestServer
from lxml import etree

from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company
from arbridge_intacct_sandbox.sandbox import Sandbox
from arbridge_intacct_sandbox.server import GATEWAY_PATH, build_app

SENDER, SENDER_PW = "Pscore", "sender-secret-pw"
COMPANY, USER, USER_PW = "acme-test", "xmlgw-armatic", "user-secret-pw"


def envelope(
    functions: str,
    *,
    session: str | None = None,
    company: str = COMPANY,
    user: str = USER,
    password: str = USER_PW,
    sender: str = SENDER,
    sender_password: str = SENDER_PW,
    entity: str | None = None,
    transaction: bool = False,
    unique: bool = False,
) -> bytes:
    if session is not None:
        auth = f"<sessionid>{session}</sessionid>"
    else:
        location = f"<locationid>{entity}</locationid>" if entity is not None else ""
        auth = (
            f"<login><userid>{user}</userid><companyid>{company}</companyid>"
            f"<password>{password}</password>{location}</login>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><request><control>'
        f"<senderid>{sender}</senderid><password>{sender_password}</password>"
        f"<controlid>test</controlid><uniqueid>{str(unique).lower()}</uniqueid>"
        "<dtdversion>3.0</dtdversion><includewhitespace>false</includewhitespace></control>"
        f'<operation transaction="{str(transaction).lower()}"><authentication>{auth}'
        f"</authentication><content>{functions}</content></operation></request>"
    ).encode()


@dataclass
class LiveSandbox:
    sandbox: Sandbox
    base: str
    http: aiohttp.ClientSession

    @property
    def endpoint(self) -> str:
        return self.base + GATEWAY_PATH

    async def post(self, body: bytes) -> tuple[int, etree._Element | None, bytes]:
        async with self.http.post(
            self.endpoint, data=body, headers={"Content-Type": "application/xml"}
        ) as reply:
            raw = await reply.read()
            root = etree.fromstring(raw) if raw.startswith(b"<?xml") else None
            return reply.status, root, raw

    async def call(self, functions: str, **kw: object) -> etree._Element:
        status, root, raw = await self.post(envelope(functions, **kw))  # type: ignore[arg-type]
        assert status == 200, raw[:500]
        assert root is not None
        return root

    async def session(self, entity: str | None = None) -> str:
        location = f"<locationid>{entity}</locationid>" if entity is not None else ""
        root = await self.call(
            f'<function controlid="s"><getAPISession>{location}</getAPISession></function>'
        )
        session_id = root.findtext(".//api/sessionid")
        assert session_id, etree.tostring(root)
        return str(session_id)

    async def admin(self, method: str, path: str, **kw: object) -> tuple[int, dict[str, object]]:
        async with self.http.request(method, self.base + path, **kw) as reply:  # type: ignore[arg-type]
            return reply.status, await reply.json()


@asynccontextmanager
async def live_sandbox(
    *,
    customers: int = 40,
    invoices: int = 120,
    seed: int = 7,
    entities: tuple[str, ...] = (),
    platform_services: bool = True,
) -> AsyncIterator[LiveSandbox]:
    sandbox = Sandbox(seed=seed)
    sandbox.add_sender(SENDER, SENDER_PW)
    sandbox.add_company(
        make_company(
            company_id=COMPANY,
            user_id=USER,
            user_password=USER_PW,
            sender_id=SENDER,
            spec=GeneratorSpec(
                seed=seed, customers=customers, invoices=invoices, entities=entities
            ),
            platform_services=platform_services,
        )
    )
    server = TestServer(build_app(sandbox), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield LiveSandbox(sandbox, f"http://127.0.0.1:{server.port}", http)
    finally:
        await server.close()
