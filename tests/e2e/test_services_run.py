"""The five services start as processes, serve health and reflection, and stop cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import TOKEN
from tests.support.runtime_env import ServiceProcess, service_env, start_process

SERVICES = {
    "connector": "arbridge.connector.v1.ConnectorService",
    "sync": "arbridge.sync.v1.SyncService",
    "payments": "arbridge.payments.v1.PaymentsService",
    "rules": "arbridge.rules.v1.RulesService",
    "gateway": None,
}


async def _reflected_services(target: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> object:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for reply in stub.ServerReflectionInfo(ask()):
            return {s.name for s in reply.list_services_response.service}
    return set()


@pytest.mark.timeout(120)
async def test_each_service_starts_serves_and_stops(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    procs: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            ready = tmp_path / f"{name}.ready"
            env = service_env(
                database_url=database_url,
                nats_url=nats_url,
                namespace=unique,
                schema=f"{unique}_{name}",
                token=TOKEN,
                ready_file=ready,
            )
            procs[name] = await asyncio.to_thread(
                start_process, ["-m", f"arbridge_{name}"], env, ready, tmp_path / f"{name}.log"
            )
        async with aiohttp.ClientSession() as http:
            for name, full_name in SERVICES.items():
                proc = procs[name]
                async with grpc.aio.insecure_channel(proc.grpc_target) as channel:
                    health = health_pb2_grpc.HealthStub(channel)
                    overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
                    assert overall.status == health_pb2.HealthCheckResponse.SERVING
                    if full_name:
                        own = await health.Check(health_pb2.HealthCheckRequest(service=full_name))
                        assert own.status == health_pb2.HealthCheckResponse.SERVING
                reflected = await _reflected_services(proc.grpc_target)
                assert "grpc.health.v1.Health" in reflected
                if full_name:
                    assert full_name in reflected
                for path, status in (("/livez", 200), ("/readyz", 200)):
                    async with http.get(proc.http_base + path) as reply:
                        assert reply.status == status, (name, path)
                async with http.get(proc.http_base + "/metrics") as reply:
                    assert "arbridge_outbox_depth" in await reply.text()
        codes = {name: await asyncio.to_thread(proc.terminate) for name, proc in procs.items()}
        assert codes == dict.fromkeys(SERVICES, 0), {n: p.logs()[-2000:] for n, p in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()


async def test_bad_configuration_exits_2_listing_every_problem(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ARBRIDGE_GRPC_PORT": "x", "ARBRIDGE_SERVICE_TOKEN": ""}
    import subprocess
    import sys

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "arbridge_payments"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ARBRIDGE_GRPC_PORT" in result.stderr
    assert "ARBRIDGE_SERVICE_TOKEN" in result.stderr
