"""Settings from the environment, validated at start-up.

Every service builds one frozen dataclass with ``from_env``. Reading goes
through :class:`EnvReader`, which collects every problem instead of stopping
at the first, so an operator fixes a bad deployment in one round:
``SettingsError`` lists every missing or invalid variable at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


class SettingsError(Exception):
    """One or more environment variables are missing or invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


class EnvReader:
    """Reads typed values from an environment mapping and collects problems."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(self, name: str, default: T, parse: Callable[[str], T], what: str) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}={raw!r} is not {what}: {exc}")
            return default

    def required(self, name: str, hint: str) -> str:
        raw = self._raw(name)
        if raw is None:
            self.problems.append(f"{name} is required: {hint}")
            return ""
        return raw

    def secret(self, name: str, hint: str, *, min_length: int = 16) -> str:
        """A required secret. Its value never appears in a problem message."""
        raw = self._raw(name)
        if raw is None:
            self.problems.append(f"{name} is required: {hint}")
            return ""
        if len(raw) < min_length:
            self.problems.append(f"{name} is too short: use at least {min_length} characters")
        return raw

    def string(self, name: str, default: str) -> str:
        raw = self._raw(name)
        return default if raw is None else raw

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        def parse(raw: str) -> int:
            value = int(raw)
            if minimum is not None and value < minimum:
                raise ValueError(f"must be at least {minimum}")
            if maximum is not None and value > maximum:
                raise ValueError(f"must be at most {maximum}")
            return value

        return self._parse(name, default, parse, "an integer")

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        def parse(raw: str) -> float:
            value = float(raw)
            if value < minimum:
                raise ValueError(f"must be at least {minimum}")
            return value

        return self._parse(name, default, parse, "a number")

    def boolean(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError("use true or false")

        return self._parse(name, default, parse, "a boolean")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            if raw.lower() not in choices:
                raise ValueError(f"use one of {', '.join(choices)}")
            return raw.lower()

        return self._parse(name, default, parse, "a valid choice")

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
            if scheme not in schemes:
                raise ValueError(f"the scheme must be one of {', '.join(schemes)}")
            return raw

        return self._parse(name, default, parse, "a URL")

    def check(self) -> None:
        if self.problems:
            raise SettingsError(list(self.problems))


@dataclass(frozen=True)
class RuntimeSettings:
    """Settings every service shares.

    Attributes:
        service: The service's name, used in logs, metrics and the schema name.
        database_url: PostgreSQL DSN (``DATABASE_URL``).
        database_schema: Schema the service owns (``ARBRIDGE_DB_SCHEMA``).
        database_pool_size: Maximum pooled connections (``ARBRIDGE_DB_POOL_SIZE``).
        nats_url: NATS server URL(s), comma separated (``NATS_URL``).
        namespace: Prefix of every JetStream stream and subject
            (``ARBRIDGE_NAMESPACE``); lets several suites share one NATS.
        grpc_host: Address the gRPC server binds (``ARBRIDGE_GRPC_HOST``).
        grpc_port: gRPC port, 0 for any free port (``ARBRIDGE_GRPC_PORT``).
        http_port: Side port for /livez, /readyz, /metrics (``ARBRIDGE_HTTP_PORT``).
        service_tokens: Bearer tokens accepted from other services
            (``ARBRIDGE_SERVICE_TOKEN``; several comma separated during rotation;
            the first is the one this service sends).
        reflection: Serve gRPC reflection (``ARBRIDGE_GRPC_REFLECTION``).
        shutdown_grace_seconds: How long in-flight calls and messages may take
            to finish after SIGTERM (``ARBRIDGE_SHUTDOWN_GRACE_SECONDS``).
        drain_delay_seconds: How long health reports NOT_SERVING before intake
            stops, so load balancers see it (``ARBRIDGE_DRAIN_DELAY_SECONDS``).
        log_level: ``debug``, ``info``, ``warning`` or ``error`` (``ARBRIDGE_LOG_LEVEL``).
        migrate_on_start: Apply pending migrations at start-up
            (``ARBRIDGE_MIGRATE_ON_START``, default true); when false the service
            refuses to start on a schema that is behind, and the migration job
            (``python -m arbridge_<service> migrate``) applies them.
        trace_file: Append finished spans as JSON lines to this file
            (``ARBRIDGE_TRACE_FILE``); OTLP export is configured by the standard
            ``OTEL_EXPORTER_OTLP_ENDPOINT``.
    """

    service: str
    database_url: str
    database_schema: str
    database_pool_size: int
    nats_url: str
    namespace: str
    grpc_host: str
    grpc_port: int
    http_port: int
    service_tokens: tuple[str, ...]
    reflection: bool
    shutdown_grace_seconds: float
    drain_delay_seconds: float
    log_level: str
    trace_file: str = ""
    migrate_on_start: bool = True

    @property
    def service_token(self) -> str:
        return self.service_tokens[0]

    @classmethod
    def read(cls, env: EnvReader, service: str) -> RuntimeSettings:
        """Reads the shared settings; problems are collected in ``env``."""
        schema = env.string("ARBRIDGE_DB_SCHEMA", service)
        if not _NAMESPACE_RE.match(schema):
            env.problems.append(
                f"ARBRIDGE_DB_SCHEMA={schema!r} is not a valid schema name: use lower-case "
                "letters, digits and underscores, starting with a letter"
            )
        namespace = env.string("ARBRIDGE_NAMESPACE", "")
        if namespace and not _NAMESPACE_RE.match(namespace):
            env.problems.append(
                f"ARBRIDGE_NAMESPACE={namespace!r} is not valid: use lower-case letters, digits "
                "and underscores, starting with a letter"
            )
        raw_tokens = env.secret(
            "ARBRIDGE_SERVICE_TOKEN",
            "the bearer token services use to call each other (at least 16 characters)",
        )
        tokens = tuple(t.strip() for t in raw_tokens.split(",") if t.strip())
        if raw_tokens and any(len(t) < 16 for t in tokens):
            env.problems.append(
                "ARBRIDGE_SERVICE_TOKEN: every token must be at least 16 characters"
            )
        return cls(
            service=service,
            database_url=env.url(
                "DATABASE_URL",
                "postgresql://postgres@127.0.0.1:5432/arbridge",
                ("postgres", "postgresql"),
            ),
            database_schema=schema,
            database_pool_size=env.integer("ARBRIDGE_DB_POOL_SIZE", 10, minimum=1, maximum=200),
            nats_url=env.string("NATS_URL", "nats://127.0.0.1:4222"),
            namespace=namespace,
            grpc_host=env.string("ARBRIDGE_GRPC_HOST", "127.0.0.1"),
            grpc_port=env.integer("ARBRIDGE_GRPC_PORT", 0, minimum=0, maximum=65535),
            http_port=env.integer("ARBRIDGE_HTTP_PORT", 0, minimum=0, maximum=65535),
            service_tokens=tokens or ("",),
            reflection=env.boolean("ARBRIDGE_GRPC_REFLECTION", True),
            shutdown_grace_seconds=env.number("ARBRIDGE_SHUTDOWN_GRACE_SECONDS", 20.0),
            drain_delay_seconds=env.number("ARBRIDGE_DRAIN_DELAY_SECONDS", 0.5),
            log_level=env.choice(
                "ARBRIDGE_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            trace_file=env.string("ARBRIDGE_TRACE_FILE", ""),
            migrate_on_start=env.boolean("ARBRIDGE_MIGRATE_ON_START", True),
        )
