"""The container image: deploy/Dockerfile and its build context, checked without a Docker engine.

No engine runs here, so the image is proven in parts: hadolint lints the
Dockerfile; its shape is read (stages, non-root user, exec-form entry point,
every COPY source inside the context that .dockerignore leaves); and the build
stages' own commands run on a copy of exactly that context: the protos
generated from it, then each service installed from uv.lock the way the build
stage does (non-editable, no dev group, that service only) into a fresh
environment whose entry point must import and run its ``migrate`` command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runtime_env import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SERVICES = ("connector", "sync", "payments", "rules", "gateway")
UV = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        found.append((word.upper(), rest.strip()))
    return found


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` any folders, ``*`` and ``?`` within one."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or a folder above it) decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.removeprefix("!").rstrip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def _context(target: Path) -> Path:
    """Copies the files the build context holds (git's files, filtered by .dockerignore)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for relative in listed:
        if _ignored(relative, patterns) or not (ROOT / relative).is_file():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target / relative)
    return target


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_builds_slim_non_root_images_with_exec_form_entry_points(
    tmp_path: Path,
) -> None:
    steps = _instructions()
    stages = [args.split()[-1] for word, args in steps if word == "FROM"]
    assert stages == ["uv", "protos", "build", "runtime"]
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    user = [args for word, args in runtime if word == "USER"]
    assert user, "the runtime stage sets no USER"
    assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", user[-1]), user
    entry = [args for word, args in runtime if word == "ENTRYPOINT"]
    assert entry, "the runtime stage sets no ENTRYPOINT"
    assert json.loads(entry[-1]) == ["/app/service"]
    # The runtime stage takes only the built environment: no compiler, no sources.
    copies = [args for word, args in runtime if word == "COPY"]
    assert copies == ["--from=build /app/.venv /app/.venv"]
    assert not any("apt-get" in args for word, args in runtime if word == "RUN")
    # Every file the stages copy from the context is in it.
    context = _context(tmp_path / "context")
    for word, args in steps:
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: not in the build context"
    # ... and nothing that is generated or local.
    assert not (context / "libs/protos/src/arbridge").exists()
    assert not (context / ".venv").exists()
    assert not list(context.rglob("*.so"))
    assert not (context / "tests").exists()


@pytest.mark.timeout(900)
def test_each_service_installs_from_the_lock_alone_and_its_entry_point_runs(
    tmp_path: Path,
) -> None:
    context = _context(tmp_path / "context")
    # The protos stage: the generator from the lock's "gen" group, then the script.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))},
        "UV_FROZEN": "1",
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    subprocess.run(
        [UV, "sync", "--only-group", "gen", "--no-install-workspace"],
        cwd=context,
        env={**env, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "gen")},
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(tmp_path / "gen" / "bin" / "python"), "scripts/gen_protos.py"],
        cwd=context,
        check=True,
        capture_output=True,
    )
    assert (context / "libs/protos/src/arbridge/payments/v1/payments_pb2.py").exists()
    for service in SERVICES:
        venv = tmp_path / f"venv-{service}"
        result = subprocess.run(
            [UV, "sync", "--no-dev", "--no-editable", "--package", f"arbridge-{service}"],
            cwd=context,
            env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)},
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        installed = {p.name.split("-")[0].lower() for p in venv.glob("lib/python*/site-packages/*")}
        # The service's own code, no test tools, no sandboxes, no other service.
        assert f"arbridge_{service}" in installed
        for absent in ("pytest", "playwright", "mypy", "hypothesis", "arbridge_intacct_sandbox"):
            assert absent not in installed, f"{absent} in the {service} image"
        for other in set(SERVICES) - {service}:
            assert f"arbridge_{other}" not in installed, f"{other} in the {service} image"
        # The entry point imports the whole service, reads its settings and says what is
        # missing; its migrate command knows the service's migrations.
        entry = venv / "bin" / f"arbridge-{service}"
        bare = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
        ran = subprocess.run([str(entry)], env=bare, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 2, ran.stdout + ran.stderr
        assert "ARBRIDGE_SERVICE_TOKEN is required" in ran.stderr
        imported = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                f"from arbridge_{service}.app import definition; "
                "from arbridge_runtime.db import load_migrations; "
                f"print(len(load_migrations('arbridge_{service}', '{service}')))",
            ],
            env=bare,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert imported.returncode == 0, imported.stderr
        shipped = list(
            (ROOT / "services" / service).glob(f"src/arbridge_{service}/migrations/*.sql")
        )
        assert int(imported.stdout) == len(shipped)  # the migrations are in the wheel
