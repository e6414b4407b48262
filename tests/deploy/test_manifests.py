"""The Kubernetes manifests: rendered by kustomize, validated against the Kubernetes
schemas, and read for what the platform needs of them.

* Both overlays render, and every object passes strict schema validation for
  the oldest and newest Kubernetes versions supported (an unknown field fails).
* Every service's Deployment has gRPC start-up and readiness probes, an HTTP
  liveness probe, requests and limits, a hardened security context, a grace
  period longer than its drain delay plus shutdown grace, a Service with named
  ports, a PodDisruptionBudget and an autoscaler; secrets come only by reference.
* The environment each pod gets (ConfigMap, env, the dev overlay's Secrets) is
  read by the service's own settings parser, which must accept it.
* The network policies, evaluated pod to pod, allow exactly the gRPC calls of
  the architecture and nothing else between services.
* The migration Job runs every service's image with ``migrate``.
"""

from __future__ import annotations

import base64
import copy
import importlib
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.runtime_env import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
SERVICES = ("connector", "sync", "payments", "rules", "gateway")
# Oldest and newest Kubernetes the manifests are written for.
VERSIONS = ("1.30.0", "1.35.0")
# Who calls whom over gRPC (docs/architecture.md; each caller's *_TARGET settings).
CALLS = {
    ("sync", "connector"),
    ("payments", "sync"),
    ("payments", "connector"),
    ("rules", "sync"),
    ("rules", "payments"),
    ("rules", "connector"),
}


def _kustomize() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.fail(
        "rendering the manifests needs kustomize or kubectl (which embeds it) on PATH; "
        "install either (https://kubectl.docs.kubernetes.io/installation/kustomize/)"
    )


@cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [*_kustomize(), str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def _of(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items()) and not selector.get(
        "matchExpressions"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_strict_schema_validation(overlay: str) -> None:
    docs = _render(overlay)
    assert len(docs) > 30
    for version in VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)
    # The validation is real: an unknown field or a wrong type is refused.
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    wrong = copy.deepcopy(next(d for d in docs if d["kind"] == "Service"))
    wrong["spec"]["ports"][0]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, VERSIONS[-1], strict=True)


def _config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return dict(_of(docs, "ConfigMap")["arbridge-config"]["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_is_deployed_the_way_the_platform_expects(overlay: str) -> None:
    docs = _render(overlay)
    deployments = _of(docs, "Deployment")
    services = _of(docs, "Service")
    pdbs = _of(docs, "PodDisruptionBudget")
    hpas = _of(docs, "HorizontalPodAutoscaler")
    config = _config(docs)
    assert set(deployments) == {f"arbridge-{s}" for s in SERVICES}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert _matches(deployment["spec"]["selector"], labels)
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True
        assert pod_security["runAsUser"] >= 10000
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == int(config["ARBRIDGE_GRPC_PORT"])
        assert ports["http"] == int(config["ARBRIDGE_HTTP_PORT"])
        # gRPC health for start-up and readiness, the side port's /livez for liveness.
        assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]
        assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]
        assert not container["image"].endswith(":latest")
        # The grace covers the drain delay and the in-flight calls' time.
        env = {e["name"]: e for e in container["env"]}
        drain = float(config["ARBRIDGE_DRAIN_DELAY_SECONDS"])
        shutdown = float(env["ARBRIDGE_SHUTDOWN_GRACE_SECONDS"]["value"])
        assert spec["terminationGracePeriodSeconds"] > drain + shutdown, name
        # Secrets only by reference; nothing secret in the ConfigMap.
        for variable in ("DATABASE_URL", "ARBRIDGE_SERVICE_TOKEN"):
            assert "secretKeyRef" in env[variable]["valueFrom"], (name, variable)
        for key in env:
            if any(word in key for word in ("SECRET", "PASSWORD", "KEYS", "TOKEN")):
                assert "valueFrom" in env[key], (name, key)
        assert not any(
            word in key for key in config for word in ("SECRET", "PASSWORD", "TOKEN", "KEYS")
        )
        # A Service with named ports that reach the pod's named ports.
        service = services[name]
        assert _matches({"matchLabels": service["spec"]["selector"]}, labels)
        for port in service["spec"]["ports"]:
            assert port["name"], (name, port)
            assert port["targetPort"] in ports, (name, port)
        assert pdbs[name]["spec"]["maxUnavailable"] == 1
        assert _matches(pdbs[name]["spec"]["selector"], labels)
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    # Every target a service is given is a Service with a gRPC port.
    for key, value in config.items():
        if key.endswith("_TARGET"):
            host, port = value.rsplit(":", 1)
            grpc = {p["name"]: p["port"] for p in services[host]["spec"]["ports"]}["grpc"]
            assert int(port) == grpc, key


def _environment(docs: tuple[dict[str, Any], ...], deployment: dict[str, Any]) -> dict[str, str]:
    """What the pod's process sees: the ConfigMap, then its env, secrets resolved."""
    secrets = _of(docs, "Secret")
    by_prefix = {name.rsplit("-", 1)[0]: s for name, s in secrets.items()}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    environ = dict(_config(docs))
    for entry in container["env"]:
        if "value" in entry:
            environ[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        secret = secrets.get(ref["name"]) or by_prefix[ref["name"].rsplit("-", 1)[0]]
        environ[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return environ


def test_each_service_accepts_the_environment_the_dev_overlay_gives_it() -> None:
    docs = _render("dev")
    for service in SERVICES:
        deployment = _of(docs, "Deployment")[f"arbridge-{service}"]
        environ = _environment(docs, deployment)
        settings_module = importlib.import_module(f"arbridge_{service}.settings")
        settings = settings_module.Settings.from_env(environ)  # raises naming every problem
        runtime = settings.runtime
        assert runtime.grpc_host == "0.0.0.0"  # noqa: S104 (pods listen on their own IP)
        assert runtime.migrate_on_start is False
        assert runtime.database_schema == service


def test_production_takes_secrets_by_reference_and_the_dev_overlay_has_them_all() -> None:
    production, dev = _render("production"), _render("dev")
    assert not _of(production, "Secret"), "production must not carry secret values"

    def referenced(docs: tuple[dict[str, Any], ...]) -> set[tuple[str, str]]:
        found = set()
        for doc in docs:
            if doc["kind"] not in ("Deployment", "Job", "StatefulSet"):
                continue
            spec = doc["spec"]["template"]["spec"]
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        found.add((ref["name"], ref["key"]))
        return found

    wanted = referenced(production)
    generated = {
        (name.rsplit("-", 1)[0], key)  # generated names end in a content hash
        for name, secret in _of(dev, "Secret").items()
        for key in secret["data"]
    }
    assert wanted <= generated, wanted - generated
    # Production's comment lists every Secret it expects.
    text = (KUBERNETES / "overlays" / "production" / "kustomization.yaml").read_text()
    for name in {name for name, _key in wanted}:
        assert f"#   {name} " in text, name


def _allows(
    policy: dict[str, Any], direction: str, pod: dict[str, str], peer: dict[str, str], port: Any
) -> bool:
    spec = policy["spec"]
    if direction.capitalize() not in spec["policyTypes"] or not _matches(spec["podSelector"], pod):
        return False
    for rule in spec.get(direction, []):
        peers = rule.get("from" if direction == "ingress" else "to", [])
        same_namespace = [p for p in peers if set(p) == {"podSelector"}]
        if not any(_matches(p["podSelector"], peer) for p in same_namespace):
            continue
        if any(p.get("port") in port for p in rule.get("ports", [{"port": None}])):
            return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_calls_of_the_architecture(overlay: str) -> None:
    docs = _render(overlay)
    policies = list(_of(docs, "NetworkPolicy").values())
    deny = _of(docs, "NetworkPolicy")["arbridge-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = {
        s: d["spec"]["template"]["metadata"]["labels"]
        for s in SERVICES
        for d in [_of(docs, "Deployment")[f"arbridge-{s}"]]
    }
    grpc = ("grpc", 50051)
    allowed = set()
    for source in SERVICES:
        for target in SERVICES:
            if source == target:
                continue
            out = any(_allows(p, "egress", pods[source], pods[target], grpc) for p in policies)
            into = any(_allows(p, "ingress", pods[target], pods[source], grpc) for p in policies)
            if out and into:
                allowed.add((source, target))
            # A one-sided allowance is a mistake waiting to happen: both or neither.
            assert out == into, (source, target, out, into)
    assert allowed == CALLS
    # Nothing else between services: no port of any kind.
    for source in SERVICES:
        for target in SERVICES:
            if source != target and (source, target) not in CALLS:
                for port in (("http", 9090), ("pay", 8430), ("webhooks", 8080)):
                    assert not any(
                        _allows(p, "ingress", pods[target], pods[source], port) for p in policies
                    ), (source, target, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migration_job_migrates_every_schema_with_its_own_image(overlay: str) -> None:
    docs = _render(overlay)
    job = _of(docs, "Job")["arbridge-migrate"]["spec"]["template"]["spec"]
    containers = [*job["initContainers"], *job["containers"]]
    images = {c["image"].rsplit("/", 1)[1].split(":")[0] for c in containers}
    assert images == set(SERVICES)
    deployments = _of(docs, "Deployment")
    for container in containers:
        service = container["name"].removeprefix("migrate-")
        assert container["args"] == ["migrate"]
        assert (
            container["image"]
            == (
                deployments[f"arbridge-{service}"]["spec"]["template"]["spec"]["containers"][0][
                    "image"
                ]
            )
        )
        env = {e["name"]: e for e in container["env"]}
        assert env["ARBRIDGE_DB_SCHEMA"]["value"] == service
        ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("arbridge-database-migrations")
        assert ref["key"] == service
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["restartPolicy"] == "Never"
    assert job["securityContext"]["runAsNonRoot"] is True


def test_the_dev_overlay_includes_postgres_and_nats_with_jetstream() -> None:
    docs = _render("dev")
    stateful = _of(docs, "StatefulSet")
    assert set(stateful) == {"postgres", "nats"}
    nats = stateful["nats"]["spec"]["template"]["spec"]["containers"][0]
    assert "--jetstream" in nats["args"]
    config = _config(docs)
    assert config["NATS_URL"] == "nats://nats:4222"
    dsn = _environment(docs, _of(docs, "Deployment")["arbridge-sync"])["DATABASE_URL"]
    assert "@postgres:5432/" in dsn
    assert "postgres" in _of(docs, "Service")
    production = _render("production")
    assert not _of(production, "StatefulSet")
    assert "nats.messaging.svc" in _config(production)["NATS_URL"]


def test_yaml_under_deploy_is_what_kustomize_renders() -> None:
    # Every manifest file is part of a kustomization (none left behind unused).
    listed: set[Path] = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        for entry in [
            *data.get("resources", []),
            *(p["path"] for p in data.get("patches", []) if "path" in p),
        ]:
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                listed.add(path)
    files = {p.resolve() for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files == listed, files ^ listed
