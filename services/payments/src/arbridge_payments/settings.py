"""Settings of the payments service, read from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from arbridge_payments.gateway import GatewayConfig
from arbridge_runtime.settings import EnvReader, RuntimeSettings


@dataclass(frozen=True)
class Settings:
    """Everything the payments service is configured with.

    Attributes:
        runtime: The settings every service shares (database, NATS, ports, token).
        sync_target: host:port of the sync service, which owns the AR store
            (``ARBRIDGE_SYNC_TARGET``).
        gateway: The card gateway: ``ARBRIDGE_CARD_GATEWAY_URL`` (its
            ``/services/2`` API lives under it), ``ARBRIDGE_CARD_GATEWAY_USERNAME``,
            ``ARBRIDGE_CARD_GATEWAY_PASSWORD`` (a secret) and
            ``ARBRIDGE_CARD_GATEWAY_TIMEOUT`` seconds.
    """

    runtime: RuntimeSettings
    sync_target: str
    gateway: GatewayConfig

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings; raises SettingsError listing every problem."""
        env = EnvReader(environ)
        runtime = RuntimeSettings.read(env, "payments")
        sync_target = env.string("ARBRIDGE_SYNC_TARGET", "127.0.0.1:50052")
        url = env.url("ARBRIDGE_CARD_GATEWAY_URL", "http://127.0.0.1:8420", ("http", "https"))
        username = env.string("ARBRIDGE_CARD_GATEWAY_USERNAME", "sandbox-api")
        password = env.secret(
            "ARBRIDGE_CARD_GATEWAY_PASSWORD", "the card gateway API user's password", min_length=8
        )
        timeout = env.number("ARBRIDGE_CARD_GATEWAY_TIMEOUT", 30.0, minimum=0.1)
        env.check()
        return cls(
            runtime=runtime,
            sync_target=sync_target,
            gateway=GatewayConfig(url, username, password, timeout),
        )
