"""Settings of the webhook gateway, read from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from arbridge_runtime.settings import EnvReader, RuntimeSettings


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with.

    Attributes:
        runtime: The settings every service shares.
        public_host: Address of the public webhook port (``ARBRIDGE_GATEWAY_HOST``).
        public_port: The public webhook port (``ARBRIDGE_GATEWAY_PORT``; 0 for any).
        webhook_secrets: Master secrets of URL tokens and signatures
            (``ARBRIDGE_WEBHOOK_SECRET``, several comma separated during rotation).
        max_body_bytes: Largest body accepted (``ARBRIDGE_WEBHOOK_MAX_BYTES``).
        publish_timeout: Seconds to wait for JetStream's acknowledgement before
            answering 503 (``ARBRIDGE_GATEWAY_PUBLISH_TIMEOUT``).
    """

    runtime: RuntimeSettings
    public_host: str
    public_port: int
    webhook_secrets: tuple[str, ...]
    max_body_bytes: int
    publish_timeout: float

    def __repr__(self) -> str:
        return f"Settings(public={self.public_host}:{self.public_port}, webhook_secrets=***)"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings; raises SettingsError listing every problem."""
        env = EnvReader(environ)
        runtime = RuntimeSettings.read(env, "gateway")
        host = env.string("ARBRIDGE_GATEWAY_HOST", "127.0.0.1")
        port = env.integer("ARBRIDGE_GATEWAY_PORT", 8080, minimum=0, maximum=65535)
        raw = env.secret(
            "ARBRIDGE_WEBHOOK_SECRET",
            "the master secret webhook URL tokens and signatures derive from",
        )
        max_bytes = env.integer(
            "ARBRIDGE_WEBHOOK_MAX_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024
        )
        timeout = env.number("ARBRIDGE_GATEWAY_PUBLISH_TIMEOUT", 5.0, minimum=0.1)
        env.check()
        return cls(
            runtime=runtime,
            public_host=host,
            public_port=port,
            webhook_secrets=tuple(s.strip() for s in raw.split(",") if s.strip()),
            max_body_bytes=max_bytes,
            publish_timeout=timeout,
        )
