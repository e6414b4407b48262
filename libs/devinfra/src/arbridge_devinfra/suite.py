"""Run the whole suite on one machine: what ``make run`` does.

Finds or starts PostgreSQL and NATS (see :mod:`arbridge_devinfra.infra`),
makes the ``arbridge`` database, starts every service as its own process on
fixed ports, prints one line per service saying where it listens, and stops
everything cleanly on Ctrl-C or SIGTERM (services first, then whatever
infrastructure it started). A service that dies stops the run, with its log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.js.errors

from arbridge_devinfra.infra import Infra, ensure_infra, port_open, with_database
from arbridge_runtime.jetstream import Namespace

INTACCT_SANDBOX_PORT = 8410
CARDS_SANDBOX_PORT = 8420
GATEWAY_PUBLIC_PORT = 8080

# (name, gRPC port, side HTTP port): fixed so that other tools find them.
SERVICES: tuple[tuple[str, int, int], ...] = (
    ("connector", 50051, 9101),
    ("sync", 50052, 9102),
    ("payments", 50053, 9103),
    ("rules", 50054, 9104),
    ("gateway", 50055, 9105),
)


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_file: Path
    argv: list[str]
    env: dict[str, str] | None


async def _ensure_database(server_url: str, name: str, *, fresh: bool = False) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        if fresh:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_streams(nats_url: str, *namespaces: str, timeout: float = 30.0) -> int:
    """Deletes every JetStream stream of these namespaces (their consumers go with them),
    the suite's and any other; returns how many there were. Bounded by ``timeout``
    (TimeoutError): a NATS client keeps trying a server that is gone."""
    prefixes = tuple(Namespace(n).stream("") for n in namespaces if n)  # "<NS>_"
    if not prefixes:
        return 0  # no namespace: the streams are nobody's own to drop
    return await asyncio.wait_for(_drop_prefixed(nats_url, prefixes), timeout)


async def _drop_prefixed(nats_url: str, prefixes: tuple[str, ...]) -> int:
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        names: list[str] = []  # the server lists its streams a page at a time
        while fresh := [
            info.config.name
            for info in await js.streams_info(offset=len(names))
            if info.config.name and info.config.name not in names
        ]:
            names += fresh
        dropped = 0
        for name in names:
            if name.startswith(prefixes):
                with contextlib.suppress(nats.js.errors.NotFoundError):  # gone meanwhile
                    await js.delete_stream(name)
                    dropped += 1
        return dropped
    finally:
        await nc.close()


def _service_env(
    name: str,
    grpc_port: int,
    http_port: int,
    database_url: str,
    nats_url: str,
    token: str,
    ready_file: Path,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "NATS_URL": nats_url,
            "ARBRIDGE_SERVICE_TOKEN": token,
            "ARBRIDGE_GRPC_PORT": str(grpc_port),
            "ARBRIDGE_HTTP_PORT": str(http_port),
            "ARBRIDGE_DB_SCHEMA": name,
            "ARBRIDGE_READY_FILE": str(ready_file),
        }
    )
    return env


def dev_secret(state: Path, name: str) -> str:
    """A random secret for local runs, made once and kept under .infra/."""
    path = state / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def dev_connector_keys(state: Path) -> str:
    """The connector's credential keys for local runs, made once and kept under .infra/."""
    if os.environ.get("ARBRIDGE_CONNECTOR_KEYS"):
        return os.environ["ARBRIDGE_CONNECTOR_KEYS"]
    path = state / "connector.keys"
    if not path.exists():
        key = "dev1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        path.write_text(key)
        path.chmod(0o600)
    return path.read_text().strip()


def _start(
    state: Path,
    logs: Path,
    name: str,
    module: str,
    args: list[str],
    env: dict[str, str] | None = None,
) -> Running:
    """Starts ``python -m module`` in its own session, logging under .infra/logs."""
    ready = state / f"{name}.ready"
    ready.unlink(missing_ok=True)
    log_path = logs / f"{name}.log"
    argv = [sys.executable, "-m", module, *args, *([] if env else ["--ready-file", str(ready)])]
    return Running(name, _launch(argv, env, log_path), log_path, ready, argv, env)


def _launch(argv: list[str], env: dict[str, str] | None, log_path: Path) -> subprocess.Popen[bytes]:
    out = log_path.open("ab")
    try:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()


def _wait_ready(running: Running, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.ready_file.exists():
            info: dict[str, Any] = json.loads(running.ready_file.read_text())
            return info
        if running.process.poll() is not None:
            tail = running.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{running.name} exited with {running.process.returncode}:\n{tail}")
        time.sleep(0.05)
    raise RuntimeError(
        f"{running.name} was not ready within {timeout:.0f}s; see {running.log_path}"
    )


def _stop_all(running: list[Running], grace: float = 30.0) -> None:
    for item in running:
        if item.process.poll() is None:
            item.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for item in running:
        try:
            item.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            item.process.kill()
            item.process.wait()


@dataclass(frozen=True)
class Ports:
    """Where the sandboxes and services listen."""

    intacct: int
    cards: int
    webhooks: int
    pay: int
    services: dict[str, tuple[int, int]]  # name -> (gRPC, side HTTP)

    def all(self) -> list[int]:
        return [
            self.intacct,
            self.cards,
            self.webhooks,
            self.pay,
            *(p for pair in self.services.values() for p in pair),
        ]


# `make run`'s ports: fixed, so that other tools and people find them.
FIXED_PORTS = Ports(
    INTACCT_SANDBOX_PORT,
    CARDS_SANDBOX_PORT,
    GATEWAY_PUBLIC_PORT,
    8430,
    {name: (grpc, http) for name, grpc, http in SERVICES},
)


def free_ports() -> Ports:
    """Ports free right now, for a run beside another (the demo, beside `make run`)."""
    sockets = [socket.socket() for _ in range(4 + 2 * len(SERVICES))]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        found = [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    pairs = iter(found[4:])
    return Ports(
        found[0],
        found[1],
        found[2],
        found[3],
        {name: (next(pairs), next(pairs)) for name, _, _ in SERVICES},
    )


@dataclass
class StartedSuite:
    """A running suite: the sandboxes' facts, the services' ready files, the token."""

    root: Path
    infra: Infra
    ports: Ports
    token: str
    sandbox: dict[str, Any]
    cards: dict[str, Any]
    running: list[Running]
    ready: dict[str, dict[str, Any]]
    # Services started again after they exited on their own (see supervise()).
    restarts: dict[str, int] = field(default_factory=dict)

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports.services[name][0]}"

    @property
    def webhooks_base(self) -> str:
        return f"http://127.0.0.1:{self.ports.webhooks}"

    @property
    def pay_base(self) -> str:
        return f"http://127.0.0.1:{self.ports.pay}"

    def dead(self) -> Running | None:
        """A process that exited, if any."""
        return next((r for r in self.running if r.process.poll() is not None), None)

    def process(self, name: str) -> Running:
        return next(r for r in self.running if r.name == name)

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Sends ``signum`` to a service (SIGKILL: no drain, no clean-up, as a crash) and
        waits for it to exit."""
        process = self.process(name).process
        if process.poll() is None:
            process.send_signal(signum)
        process.wait(60)

    def supervise(self, stop: threading.Event, services: Sequence[str]) -> None:
        """What an orchestrator does: starts again every service that exited, until
        ``stop``. Runs in a thread of its own."""
        while not stop.wait(0.2):
            for running in self.running:
                if running.name in services and running.process.poll() is not None:
                    self.restarts[running.name] = self.restarts.get(running.name, 0) + 1
                    with contextlib.suppress(RuntimeError, SuiteError):
                        self.restart(running.name)

    def restart(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Starts a stopped service again, on its ports, and waits until it is SERVING."""
        running = self.process(name)
        if running.process.poll() is None:
            raise SuiteError(f"{name} is still running")
        running.ready_file.unlink(missing_ok=True)
        running.process = _launch(running.argv, running.env, running.log_path)
        info = _wait_ready(running, timeout)
        self.ready[name] = info
        return info


@contextmanager
def started_suite(
    root: Path,
    *,
    ports: Ports = FIXED_PORTS,
    database: str = "arbridge",
    namespace: str = "",
    sandbox_args: Sequence[str] = (),
    service_env: dict[str, str] | None = None,
    fresh: bool = False,
    infra: Infra | None = None,
    services: Sequence[str] = tuple(name for name, _, _ in SERVICES),
    say: Callable[[str], None] = print,
) -> Iterator[StartedSuite]:
    """Starts PostgreSQL and NATS (unless given), both sandboxes and every service; stops
    them all (services first) when the block ends. ``fresh``: drop ``database`` and the
    streams of ``namespace`` first (a run that starts from nothing, like the demo).
    ``infra``: PostgreSQL and NATS to use (the caller's, e.g. private servers a chaos
    scenario stops); found or started here when not given. ``services``: which to run."""
    state = root / ".infra"
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    busy = [p for p in ports.all() if port_open("127.0.0.1", p, 0.2)]
    if busy:
        raise SuiteError(f"ports already in use: {busy}; is another `make run` going?")
    owned = infra is None
    found: Infra = infra if infra is not None else ensure_infra(state)
    running: list[Running] = []
    token = os.environ.get("ARBRIDGE_SERVICE_TOKEN") or secrets.token_urlsafe(24)
    try:
        if fresh and namespace:
            asyncio.run(drop_streams(found.nats_url, namespace))
        database_url = asyncio.run(_ensure_database(found.database_url, database, fresh=fresh))
        say(f"infrastructure: {found.describe()}")
        intacct_run = _start(
            state,
            logs,
            "intacct-sandbox",
            "arbridge_intacct_sandbox",
            ["--port", str(ports.intacct), *sandbox_args],
        )
        running.append(intacct_run)
        sandbox_info = _wait_ready(intacct_run, timeout=300)
        say(
            f"{'intacct':<10} sandbox {sandbox_info['endpoint']}  admin {sandbox_info['admin']}  "
            f"(sender {sandbox_info['sender_id']}, company {sandbox_info['company_id']}, "
            f"user {sandbox_info['user_id']} / {sandbox_info['user_password']})"
        )
        cards_run = _start(
            state, logs, "cards-sandbox", "arbridge_cards_sandbox", ["--port", str(ports.cards)]
        )
        running.append(cards_run)
        cards_info = _wait_ready(cards_run)
        say(
            f"{'cards':<10} sandbox {cards_info['base_url']}/services/2/  hosted fields "
            f"{cards_info['base_url']}/hosted-fields  (API user {cards_info['username']} / "
            f"{cards_info['password']})"
        )
        extra = {
            "ARBRIDGE_CONNECTOR_KEYS": dev_connector_keys(state),
            "ARBRIDGE_INTACCT_ENDPOINT": str(sandbox_info["endpoint"]),
            "ARBRIDGE_CONNECTOR_TARGET": f"127.0.0.1:{ports.services['connector'][0]}",
            "ARBRIDGE_SYNC_TARGET": f"127.0.0.1:{ports.services['sync'][0]}",
            "ARBRIDGE_PAYMENTS_TARGET": f"127.0.0.1:{ports.services['payments'][0]}",
            "ARBRIDGE_WEBHOOK_SECRET": dev_secret(state, "webhook.secret"),
            "ARBRIDGE_GATEWAY_PORT": str(ports.webhooks),
            "ARBRIDGE_PAY_PORT": str(ports.pay),
            "ARBRIDGE_PAY_BASE_URL": f"http://127.0.0.1:{ports.pay}",
            "ARBRIDGE_CARD_GATEWAY_URL": str(cards_info["base_url"]),
            "ARBRIDGE_CARD_GATEWAY_USERNAME": str(cards_info["username"]),
            "ARBRIDGE_CARD_GATEWAY_PASSWORD": str(cards_info["password"]),
            "ARBRIDGE_LINK_SECRET": dev_secret(state, "link.secret"),
            **({"ARBRIDGE_NAMESPACE": namespace} if namespace else {}),
            **(service_env or {}),
        }
        for name, (grpc_port, http_port) in ports.services.items():
            if name not in services:
                continue
            ready = state / f"{name}.ready"
            env = {
                **_service_env(
                    name, grpc_port, http_port, database_url, found.nats_url, token, ready
                ),
                **extra,
            }
            running.append(_start(state, logs, name, f"arbridge_{name}", [], env))
        ready_info: dict[str, dict[str, Any]] = {}
        for item in running[2:]:
            info = _wait_ready(item)
            ready_info[item.name] = info
            say(
                f"{item.name:<10} grpc 127.0.0.1:{info['grpc_port']:<6} "
                f"http http://127.0.0.1:{info['http_port']} (livez, readyz, metrics)  "
                f"log {item.log_path.relative_to(root)}"
            )
            listen = info.get("listen")
            for line in listen if isinstance(listen, list) else []:
                say(f"{'':<10} {line}")
        yield StartedSuite(root, found, ports, token, sandbox_info, cards_info, running, ready_info)
    finally:
        _stop_all(running)
        if running:
            codes = {item.name: item.process.returncode for item in running}
            say(f"services stopped: {codes}")
        if owned:
            found.close()


class SuiteError(Exception):
    """The suite cannot start here (its ports are taken)."""


def run_suite(root: Path) -> int:
    """Starts everything and blocks until interrupted; returns the exit code."""
    stop = {"requested": False}

    def request_stop(_signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        with started_suite(root, say=say) as suite:
            print(
                "service token: "
                + (
                    "(from ARBRIDGE_SERVICE_TOKEN)"
                    if "ARBRIDGE_SERVICE_TOKEN" in os.environ
                    else suite.token
                )
            )
            print("all services up; Ctrl-C stops everything", flush=True)
            while not stop["requested"]:
                dead = suite.dead()
                if dead is not None:
                    tail = dead.log_path.read_text(errors="replace")[-3000:]
                    print(
                        f"{dead.name} exited with {dead.process.returncode}; stopping.\n{tail}",
                        file=sys.stderr,
                    )
                    return 1
                time.sleep(0.2)
            print("stopping...", flush=True)
            return 0
    except SuiteError as exc:
        print(str(exc), file=sys.stderr)
        return 1
