"""Runs every benchmark and writes bench/results.json and bench/report.md (with plots).

Benchmarks measure speed; tests check behaviour. Each benchmark module has
an async ``run()`` returning a dict of figures (and raw samples); this runner
adds the environment (versions, CPU, commit) so the numbers can be checked
against the machine, then renders the report from the results.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from bench import report
from tests.support.runtime_env import machine_cpu

BENCHMARKS = (
    "bench.sandbox_query",
    "bench.decode",
    "bench.stream_memory",
    "bench.outbox_relay",
    "bench.ingest",
    "bench.sync_e2e",
    "bench.charges",
    "bench.rules",
)


def _environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in (
        "grpcio",
        "asyncpg",
        "nats-py",
        "lxml",
        "aiohttp",
        "protobuf",
        "opentelemetry-sdk",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return {
        "commit": commit,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def reference_work() -> float:
    """Seconds this machine takes for a fixed piece of plain-Python work (the best of
    three): records as dicts, sorted JSON and SHA-256, the kind of work a sync does per
    record, with nothing of arbridge's in it, so that it stays the same as the code
    changes. The report gives it beside the figures: this VM's speed varies from day to
    day, and figures of two runs compare only after this one's ratio is taken out."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for n in range(60_000):
            record = {f"FIELD{i}": f"value {n} {i}" for i in range(12)}
            record["AMOUNT"] = str(n * 7)
            hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        best = min(best, time.perf_counter() - began)
    return round(best, 3)


async def _settle(quiet: float = 0.15, most: float = 30.0) -> float:
    """Waits until the machine is quiet (under ``quiet`` of its CPU busy over half a
    second), ``most`` seconds at the longest: what one benchmark left behind (a
    checkpoint, a vacuum, a stream being written out) is not measured in the next.
    Returns the seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < most:
        busy_before, total_before = machine_cpu()
        await asyncio.sleep(0.5)
        busy_after, total_after = machine_cpu()
        if (busy_after - busy_before) / max(total_after - total_before, 1e-9) < quiet:
            break
    return round(time.perf_counter() - began, 1)


async def main(only: list[str]) -> int:
    results = []
    await _settle()
    reference = {"before": reference_work()}
    for module_name in BENCHMARKS:
        if only and not any(o in module_name for o in only):
            continue
        module = import_module(module_name)
        settled = await _settle()
        began = time.perf_counter()
        figures = await module.run()
        figures["bench_seconds"] = round(time.perf_counter() - began, 1)
        figures["settled_seconds"] = settled
        results.append(figures)
        shown = {k: v for k, v in figures.items() if k not in ("samples",)}
        print(json.dumps(shown, indent=1), flush=True)
    await _settle()
    reference["after"] = reference_work()
    out = Path(__file__).parent / "results.json"
    if only and out.exists():
        # A partial run replaces its own figures and keeps the others.
        ran = {r["name"] for r in results}
        kept = [r for r in json.loads(out.read_text())["results"] if r["name"] not in ran]
        results = kept + results
    environment = {**_environment(), "reference_work_seconds": reference}
    text = json.dumps({"environment": environment, "results": results}, indent=1)
    # Raw samples one array to a line: readable structure, a short diff.
    text = re.sub(
        r"\[\s+([-0-9.,\s]+?)\s+\]", lambda m: "[" + "".join(m.group(1).split()) + "]", text
    )
    out.write_text(text + "\n")
    print(f"wrote {out} and {report.write(out)}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("only", nargs="*", help="substrings of benchmark names to run")
    sys.exit(asyncio.run(main(parser.parse_args().only)))
