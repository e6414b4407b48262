"""The migration job's mode: `arbridge-<service> migrate`, and services that do not migrate.

In Kubernetes the migration Job applies each schema's migrations with a role
that may change the schema; the services run with ARBRIDGE_MIGRATE_ON_START
false and refuse to start on a schema that is behind, saying what to run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.conftest import TOKEN
from tests.support.runtime_env import ROOT, service_env, start_process


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _done(stdout: str) -> dict[str, object]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return next(line for line in lines if line["msg"] == "migrations_done")


async def test_the_migrate_command_applies_once_and_a_service_waits_for_it(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    schema = f"{unique}_rules"
    env = service_env(
        database_url=database_url,
        nats_url=nats_url,
        namespace=unique,
        schema=schema,
        token=TOKEN,
        ready_file=tmp_path / "rules.ready",
        ARBRIDGE_MIGRATE_ON_START="false",
    )

    # A service that must not migrate refuses a schema that is behind, and says why.
    refused = _run(["-m", "arbridge_rules"], env)
    assert refused.returncode == 1
    assert f"schema {schema} is behind this release" in refused.stdout
    assert "python -m arbridge_rules migrate" in refused.stdout
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schedule") is None

        # The job applies every migration, then finds nothing to do. It needs the
        # database and the schema, not the service's secrets.
        job_env = {
            **{k: v for k, v in env.items() if not k.startswith("ARBRIDGE_")},
            "ARBRIDGE_DB_SCHEMA": schema,
        }
        first = _run(["-m", "arbridge_rules", "migrate"], job_env)
        assert first.returncode == 0, first.stdout + first.stderr
        applied = await conn.fetch(
            f'SELECT component, version FROM "{schema}".schema_migrations ORDER BY 1, 2'
        )
        components = {r["component"] for r in applied}
        assert components == {"runtime", "rules"}
        assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schedule") is not None
        assert _done(first.stdout)["applied"] == len(applied)
        again = _run(["-m", "arbridge_rules", "migrate"], job_env)
        assert again.returncode == 0
        assert _done(again.stdout)["applied"] == 0
    finally:
        await conn.close()

    # Now the service starts without touching the schema.
    process = start_process(
        ["-m", "arbridge_rules"], env, tmp_path / "rules.ready", tmp_path / "rules.log"
    )
    try:
        assert process.info["grpc_port"] > 0
    finally:
        assert process.terminate() == 0
    assert "migration_applied" not in process.logs()

    # An unknown command is a usage error, not a start.
    wrong = _run(["-m", "arbridge_rules", "migrat"], env)
    assert wrong.returncode == 2
    assert "unknown command 'migrat'" in wrong.stderr
