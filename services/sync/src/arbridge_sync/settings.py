"""Settings of the sync service, read from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from arbridge_runtime.settings import EnvReader, RuntimeSettings


@dataclass(frozen=True)
class Settings:
    """Everything the sync service is configured with.

    Attributes:
        runtime: The settings every service shares.
        connector_target: host:port of the connector (``ARBRIDGE_CONNECTOR_TARGET``).
        webhook_secrets: Master secrets the webhook URL tokens and signing
            secrets derive from (``ARBRIDGE_WEBHOOK_SECRET``; several comma
            separated during rotation, the first is current).
        daily_check_seconds: How often the daily-sync scheduler looks for due
            accounts (``ARBRIDGE_SYNC_DAILY_CHECK_SECONDS``).
        max_event_bytes: Largest event body the gRPC ingest accepts
            (``ARBRIDGE_WEBHOOK_MAX_BYTES``, as the gateway).
        publish_timeout: Seconds to wait for JetStream to store an ingested event
            (``ARBRIDGE_INGEST_PUBLISH_TIMEOUT``).
    """

    runtime: RuntimeSettings
    connector_target: str
    webhook_secrets: tuple[str, ...]
    daily_check_seconds: float
    max_event_bytes: int = 1024 * 1024
    publish_timeout: float = 5.0

    def __repr__(self) -> str:
        return f"Settings(connector_target={self.connector_target!r}, webhook_secrets=***)"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings; raises SettingsError listing every problem."""
        env = EnvReader(environ)
        runtime = RuntimeSettings.read(env, "sync")
        target = env.string("ARBRIDGE_CONNECTOR_TARGET", "127.0.0.1:50051")
        raw = env.secret(
            "ARBRIDGE_WEBHOOK_SECRET",
            "the master secret webhook URL tokens and signatures derive from",
        )
        daily = env.number("ARBRIDGE_SYNC_DAILY_CHECK_SECONDS", 15.0, minimum=0.1)
        max_bytes = env.integer(
            "ARBRIDGE_WEBHOOK_MAX_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024
        )
        timeout = env.number("ARBRIDGE_INGEST_PUBLISH_TIMEOUT", 5.0, minimum=0.1)
        env.check()
        return cls(
            runtime=runtime,
            connector_target=target,
            webhook_secrets=tuple(s.strip() for s in raw.split(",") if s.strip()),
            daily_check_seconds=daily,
            max_event_bytes=max_bytes,
            publish_timeout=timeout,
        )
