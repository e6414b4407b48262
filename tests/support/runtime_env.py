"""Environment for starting services (or test apps) as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def service_env(
    *,
    database_url: str,
    nats_url: str,
    namespace: str,
    schema: str,
    token: str,
    ready_file: Path,
    **extra: str,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBRIDGE_")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "NATS_URL": nats_url,
            "ARBRIDGE_NAMESPACE": namespace,
            "ARBRIDGE_DB_SCHEMA": schema,
            "ARBRIDGE_SERVICE_TOKEN": token,
            "ARBRIDGE_READY_FILE": str(ready_file),
            "ARBRIDGE_GRPC_PORT": "0",
            "ARBRIDGE_HTTP_PORT": "0",
            "ARBRIDGE_LOG_LEVEL": "info",
            # Each service ignores the variables of the others.
            "ARBRIDGE_CONNECTOR_KEYS": "test:" + "A" * 43,
            "ARBRIDGE_WEBHOOK_SECRET": "test-webhook-master-secret-0123456789",
            "ARBRIDGE_GATEWAY_PORT": "0",
            "ARBRIDGE_CARD_GATEWAY_PASSWORD": "sandbox-api-password",
            "ARBRIDGE_LINK_SECRET": "test-link-secret-0123456789abcdef0123",
            # Pay pages on a free port; tests that open them set a port and base URL.
            "ARBRIDGE_PAY_PORT": "0",
        }
    )
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path
    info: dict[str, Any]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.info['grpc_port']}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.info['http_port']}"

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (the kernel's VmHWM), in MiB."""
        return peak_rss_mib(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far, in seconds."""
        return cpu_seconds(self.process.pid)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds; 0 when gone."""
    try:
        return _stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0


def _stat_cpu(stat: str) -> float:
    """User + system seconds from the text of a /proc/<pid>/stat file."""
    # The fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_command(commands: tuple[str, ...]) -> dict[str, float]:
    """CPU time used so far by the live processes with each of these command names
    (all of PostgreSQL's backends, say), in seconds."""
    used = dict.fromkeys(commands, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        if command in used:
            used[command] += _stat_cpu(stat)
    return used


def machine_cpu() -> tuple[float, float]:
    """The machine's CPU time so far as (busy, total) seconds over all cores."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    rate = os.sysconf("SC_CLK_TCK")
    return (total - idle) / rate, total / rate


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory so far (the kernel's VmHWM), in MiB; 0 when gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def start_process(
    argv: list[str], env: dict[str, str], ready_file: Path, log_file: Path, timeout: float = 60.0
) -> ServiceProcess:
    """Starts ``python <argv>`` and waits until it has written its ready file."""
    ready_file.unlink(missing_ok=True)
    out = log_file.open("ab")
    process = subprocess.Popen(
        [sys.executable, *argv], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
    )
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            return ServiceProcess(process, ready_file, log_file, json.loads(ready_file.read_text()))
        if process.poll() is not None:
            raise RuntimeError(
                f"{argv} exited with {process.returncode}:\n"
                f"{log_file.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(
        f"{argv} was not ready within {timeout}s:\n{log_file.read_text(errors='replace')[-4000:]}"
    )
