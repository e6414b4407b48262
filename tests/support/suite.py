"""The suite as processes for end-to-end tests: the Intacct sandbox, connector, sync, gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arbridge_devinfra.suite import drop_streams
from tests.conftest import TOKEN
from tests.support.runtime_env import (
    ROOT,
    ServiceProcess,
    cpu_seconds,
    service_env,
    start_process,
)

WEBHOOK_SECRET = "test-webhook-master-secret-0123456789"


@dataclass
class Suite:
    sandbox: dict[str, Any]
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    # The card gateway sandbox's ready info (base_url, username, password) when payments runs.
    cards: dict[str, Any] = field(default_factory=dict)
    sandbox_pid: int = 0

    def target(self, name: str) -> str:
        return self.processes[name].grpc_target

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time each process (the Intacct sandbox included) has used so far, in seconds."""
        used = {name: process.cpu_seconds() for name, process in self.processes.items()}
        if self.sandbox_pid:
            used["intacct sandbox"] = cpu_seconds(self.sandbox_pid)
        return used

    def peak_memory(self) -> dict[str, float]:
        """Each arbridge process's peak resident memory so far, in MiB (benchmarks report it)."""
        return {
            name: process.peak_rss_mib()
            for name, process in self.processes.items()
            if name != "cards"
        }

    @property
    def gateway_base(self) -> str:
        return f"http://127.0.0.1:{self.processes['gateway'].info['public_port']}"

    @property
    def sandbox_admin(self) -> str:
        return str(self.sandbox["admin"]).rstrip("/")


@contextmanager
def running_suite(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    namespace: str,
    *,
    customers: int,
    invoices: int,
    services: tuple[str, ...] = ("connector", "sync", "gateway"),
    seed: int = 3,
    service_extra: dict[str, str] | None = None,
    sandbox_args: tuple[str, ...] = (),
) -> Iterator[Suite]:
    ready = tmp_path / "sandbox.ready"
    log = (tmp_path / "sandbox.log").open("ab")
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arbridge_intacct_sandbox",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--customers",
            str(customers),
            "--invoices",
            str(invoices),
            "--ready-file",
            str(ready),
            *sandbox_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    log.close()
    suite = Suite(sandbox={}, sandbox_pid=sandbox.pid)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            if sandbox.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the Intacct sandbox did not start:\n"
                    + (tmp_path / "sandbox.log").read_text()[-3000:]
                )
            time.sleep(0.1)
        suite.sandbox = json.loads(ready.read_text())
        if "payments" in services:
            cards_ready = tmp_path / "cards.ready"
            cards = start_process(
                ["-m", "arbridge_cards_sandbox", "--port", "0", "--ready-file", str(cards_ready)],
                {**os.environ},
                cards_ready,
                tmp_path / "cards.log",
            )
            suite.processes["cards"] = cards
            suite.cards = cards.info
        for name in services:
            extra = {
                "ARBRIDGE_INTACCT_ENDPOINT": suite.sandbox["endpoint"],
                "ARBRIDGE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "ARBRIDGE_SYNC_DAILY_CHECK_SECONDS": "1",
                **(service_extra or {}),
            }
            if "connector" in suite.processes:
                extra["ARBRIDGE_CONNECTOR_TARGET"] = suite.target("connector")
            if "sync" in suite.processes:
                extra["ARBRIDGE_SYNC_TARGET"] = suite.target("sync")
            if "payments" in suite.processes:
                extra["ARBRIDGE_PAYMENTS_TARGET"] = suite.target("payments")
            if suite.cards:
                extra["ARBRIDGE_CARD_GATEWAY_URL"] = suite.cards["base_url"]
                extra["ARBRIDGE_CARD_GATEWAY_USERNAME"] = suite.cards["username"]
                extra["ARBRIDGE_CARD_GATEWAY_PASSWORD"] = suite.cards["password"]
            ready_file = tmp_path / f"{name}.ready"
            env = service_env(
                database_url=database_url,
                nats_url=nats_url,
                namespace=namespace,
                schema=f"{namespace}_{name}",
                token=TOKEN,
                ready_file=ready_file,
                **extra,
            )
            suite.processes[name] = start_process(
                ["-m", f"arbridge_{name}"], env, ready_file, tmp_path / f"{name}.log"
            )
        yield suite
    finally:
        for process in suite.processes.values():
            process.terminate()
        # The namespace's streams go too: a shared NATS would otherwise keep every run's
        # events (a big sync's are a hundred thousand) and slow down with them.
        with ThreadPoolExecutor(1) as thread, contextlib.suppress(Exception):
            # (In a thread: the caller may be inside an event loop.)
            thread.submit(asyncio.run, drop_streams(nats_url, namespace)).result()
        sandbox.terminate()
        try:
            sandbox.wait(30)
        except subprocess.TimeoutExpired:
            sandbox.kill()


async def connect_and_sync(suite: Suite, account_id: str, timeout: float = 3600.0) -> Any:
    """Connects the sandbox company as ``account_id`` and waits for its initial sync to end.

    Returns the finished sync (``arbridge.sync.v1.Sync``).
    """
    import asyncio

    from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
    from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
    from arbridge_runtime.grpc_client import service_channel

    connector_channel = service_channel(suite.target("connector"), TOKEN)
    sync_channel = service_channel(suite.target("sync"), TOKEN, deadline=600)
    try:
        await connector_pb2_grpc.ConnectorServiceStub(connector_channel).ConnectAccount(
            connector_pb2.ConnectAccountRequest(
                account_id=account_id,
                company_id=suite.sandbox["company_id"],
                user_id=suite.sandbox["user_id"],
                user_password=suite.sandbox["user_password"],
                sender_id=suite.sandbox["sender_id"],
                sender_password=suite.sandbox["sender_password"],
                time_zone="America/Los_Angeles",
            )
        )
        sync = sync_pb2_grpc.SyncServiceStub(sync_channel)
        deadline = time.monotonic() + timeout
        finished = (sync_pb2.SYNC_STATE_SUCCEEDED, sync_pb2.SYNC_STATE_FAILED)
        while time.monotonic() < deadline:
            syncs = (await sync.ListSyncs(sync_pb2.ListSyncsRequest(account_id=account_id))).syncs
            if syncs and syncs[0].state in finished:
                return syncs[0]
            await asyncio.sleep(0.2)
        raise AssertionError(f"the initial sync of {account_id} did not end in {timeout:.0f}s")
    finally:
        await connector_channel.close(None)
        await sync_channel.close(None)


async def install_smart_events(
    http: Any,
    suite: Suite,
    account_id: str = "acme",
    objects: set[str] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> int:
    """Creates in the sandbox company the smart events of sync's set-up document for the
    account (only those of ``objects`` when given, none of ``exclude``); returns how many."""
    from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
    from arbridge_devinfra.sandboxes import Sandbox
    from arbridge_runtime.grpc_client import service_channel

    channel = service_channel(suite.target("sync"), TOKEN)
    try:
        setup = await sync_pb2_grpc.SyncServiceStub(channel).GetSmartEventSetup(
            sync_pb2.GetSmartEventSetupRequest(
                account_id=account_id, gateway_base_url=suite.gateway_base
            )
        )
    finally:
        await channel.close(None)
    sandbox = Sandbox(http, suite)
    made = 0
    for spec in setup.events:
        if (objects is not None and spec.object not in objects) or spec.object in exclude:
            continue
        await sandbox.add_smart_event(spec)
        made += 1
    return made


async def sandbox_record(
    http: Any, suite: Suite, obj: str, values: dict[str, str], record_no: str = ""
) -> str:
    """Adds (or, with ``record_no``, edits) a record in the sandbox company as an Intacct
    user would in the UI (smart events fire); returns its record number."""
    path = f"{suite.sandbox_admin}/companies/{suite.sandbox['company_id']}/records/{obj}"
    call = (
        http.put(f"{path}/{record_no}", json={"values": values})
        if record_no
        else http.post(path, json={"values": values})
    )
    async with call as reply:
        if reply.status not in (200, 201):
            raise RuntimeError(f"the sandbox refused the {obj} record: {await reply.text()}")
        return str((await reply.json()).get("recordno") or record_no)
