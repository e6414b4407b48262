"""Settings of the rules service, read from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from arbridge_runtime.settings import EnvReader, RuntimeSettings


@dataclass(frozen=True)
class Settings:
    """Everything the rules service is configured with.

    Attributes:
        runtime: The settings every service shares (database, NATS, ports, token).
        sync_target: host:port of sync, which the invoice is read again from before a
            charge (``ARBRIDGE_SYNC_TARGET``).
        payments_target: host:port of payments, which makes the charges
            (``ARBRIDGE_PAYMENTS_TARGET``).
        connector_target: host:port of the connector, through which rules managed in
            Intacct are read and written (``ARBRIDGE_CONNECTOR_TARGET``).
        intacct_poll_seconds: How often rules managed in Intacct are read besides the
            reads their smart events trigger (``ARBRIDGE_RULES_INTACCT_POLL_SECONDS``).
        lease_seconds: How long a claimed charge belongs to its worker before another
            replica may take it (``ARBRIDGE_RULES_LEASE_SECONDS``); above a charge's
            longest time at payments.
        tick_seconds: How often due charges are looked for (``ARBRIDGE_RULES_TICK_SECONDS``).
        in_progress_retry_seconds: How long a charge payments refused because another
            payment of the invoice is in progress waits before it is looked at again
            (``ARBRIDGE_RULES_IN_PROGRESS_RETRY_SECONDS``).
    """

    runtime: RuntimeSettings
    sync_target: str = "127.0.0.1:50052"
    payments_target: str = "127.0.0.1:50053"
    connector_target: str = "127.0.0.1:50051"
    intacct_poll_seconds: float = 300.0
    lease_seconds: float = 150.0
    tick_seconds: float = 1.0
    in_progress_retry_seconds: float = 120.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings; raises SettingsError listing every problem."""
        env = EnvReader(environ)
        runtime = RuntimeSettings.read(env, "rules")
        sync_target = env.string("ARBRIDGE_SYNC_TARGET", "127.0.0.1:50052")
        payments_target = env.string("ARBRIDGE_PAYMENTS_TARGET", "127.0.0.1:50053")
        connector_target = env.string("ARBRIDGE_CONNECTOR_TARGET", "127.0.0.1:50051")
        intacct_poll = env.number("ARBRIDGE_RULES_INTACCT_POLL_SECONDS", 300.0, minimum=0.5)
        lease = env.number("ARBRIDGE_RULES_LEASE_SECONDS", 150.0, minimum=1.0)
        tick = env.number("ARBRIDGE_RULES_TICK_SECONDS", 1.0, minimum=0.05)
        in_progress_retry = env.number(
            "ARBRIDGE_RULES_IN_PROGRESS_RETRY_SECONDS", 120.0, minimum=0.1
        )
        env.check()
        return cls(
            runtime=runtime,
            sync_target=sync_target,
            payments_target=payments_target,
            connector_target=connector_target,
            intacct_poll_seconds=intacct_poll,
            lease_seconds=lease,
            tick_seconds=tick,
            in_progress_retry_seconds=in_progress_retry,
        )
