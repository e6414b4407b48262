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
        charge_lease_seconds: How long a charge belongs to the request driving it
            before the recovery worker or a retry may take it over
            (``ARBRIDGE_PAYMENTS_CHARGE_LEASE_SECONDS``); above the gateway timeout.
        recovery_interval_seconds: How often the recovery worker looks for
            charges left unfinished (``ARBRIDGE_PAYMENTS_RECOVERY_SECONDS``).
    """

    runtime: RuntimeSettings
    sync_target: str
    gateway: GatewayConfig
    charge_lease_seconds: float = 45.0
    recovery_interval_seconds: float = 5.0

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
        lease = env.number("ARBRIDGE_PAYMENTS_CHARGE_LEASE_SECONDS", 45.0, minimum=0.5)
        recovery = env.number("ARBRIDGE_PAYMENTS_RECOVERY_SECONDS", 5.0, minimum=0.1)
        env.check()
        return cls(
            runtime=runtime,
            sync_target=sync_target,
            gateway=GatewayConfig(url, username, password, timeout),
            charge_lease_seconds=lease,
            recovery_interval_seconds=recovery,
        )
