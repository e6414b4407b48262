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
        connector_target: host:port of the connector, which posts payments to Intacct
            (``ARBRIDGE_CONNECTOR_TARGET``).
        link_secrets: Secrets that sign payer links (``ARBRIDGE_LINK_SECRET``; several
            comma separated during rotation, the first signs, all verify).
        pay_base_url: Where payers open links (``ARBRIDGE_PAY_BASE_URL``): the public
            address of the hosted pay pages.
        pay_host, pay_port: Where the pay pages listen (``ARBRIDGE_PAY_HOST``,
            ``ARBRIDGE_PAY_PORT``; 0 picks a free port).
        gateway_public_url: Where payers' browsers reach the gateway's hosted fields
            (``ARBRIDGE_CARD_GATEWAY_PUBLIC_URL``; the gateway URL when unset).
        link_ttl_seconds: Lifetime of a link created without one
            (``ARBRIDGE_LINK_TTL_SECONDS``).
        charge_lease_seconds: How long a charge belongs to the request driving it
            before the recovery worker or a retry may take it over
            (``ARBRIDGE_PAYMENTS_CHARGE_LEASE_SECONDS``); above the gateway timeout.
        recovery_interval_seconds: How often the recovery worker looks for
            charges left unfinished (``ARBRIDGE_PAYMENTS_RECOVERY_SECONDS``).
        queue_poll_seconds: How often each account's Intacct charge queue is read
            besides the reads Intacct events trigger (``ARBRIDGE_PAYMENTS_QUEUE_POLL_SECONDS``).
        settle_poll_seconds: How often a settling ACH debit is looked up at the gateway
            when no notification says it ended (``ARBRIDGE_PAYMENTS_ACH_POLL_SECONDS``).
        posting_lease_seconds: How long a payment being posted to Intacct belongs to the
            worker posting it before another may (``ARBRIDGE_PAYMENTS_POSTING_LEASE_SECONDS``);
            the call to the connector gets half of it.
        posting_backoff_seconds: The first wait before a failed posting is tried again,
            doubled each time up to 15 minutes (``ARBRIDGE_PAYMENTS_POSTING_BACKOFF_SECONDS``).
    """

    runtime: RuntimeSettings
    sync_target: str
    gateway: GatewayConfig
    connector_target: str = "127.0.0.1:50051"
    link_secrets: tuple[str, ...] = ()
    pay_base_url: str = "http://127.0.0.1:8430"
    pay_host: str = "127.0.0.1"
    pay_port: int = 8430
    gateway_public_url: str = ""
    link_ttl_seconds: int = 30 * 24 * 3600
    charge_lease_seconds: float = 45.0
    recovery_interval_seconds: float = 5.0
    settle_poll_seconds: float = 3600.0
    queue_poll_seconds: float = 300.0
    posting_lease_seconds: float = 60.0
    posting_backoff_seconds: float = 5.0

    def __repr__(self) -> str:
        return (
            f"Settings(sync_target={self.sync_target!r}, gateway={self.gateway!r}, "
            f"pay_base_url={self.pay_base_url!r}, link_secrets=***)"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings; raises SettingsError listing every problem."""
        env = EnvReader(environ)
        runtime = RuntimeSettings.read(env, "payments")
        sync_target = env.string("ARBRIDGE_SYNC_TARGET", "127.0.0.1:50052")
        connector_target = env.string("ARBRIDGE_CONNECTOR_TARGET", "127.0.0.1:50051")
        url = env.url("ARBRIDGE_CARD_GATEWAY_URL", "http://127.0.0.1:8420", ("http", "https"))
        username = env.string("ARBRIDGE_CARD_GATEWAY_USERNAME", "sandbox-api")
        password = env.secret(
            "ARBRIDGE_CARD_GATEWAY_PASSWORD", "the card gateway API user's password", min_length=8
        )
        timeout = env.number("ARBRIDGE_CARD_GATEWAY_TIMEOUT", 30.0, minimum=0.1)
        link_secret = env.secret(
            "ARBRIDGE_LINK_SECRET",
            "the secret payer links are signed with (32+ characters)",
            min_length=32,
        )
        pay_base = env.url("ARBRIDGE_PAY_BASE_URL", "http://127.0.0.1:8430", ("http", "https"))
        pay_host = env.string("ARBRIDGE_PAY_HOST", "127.0.0.1")
        pay_port = env.integer("ARBRIDGE_PAY_PORT", 8430, minimum=0, maximum=65535)
        gateway_public = env.url("ARBRIDGE_CARD_GATEWAY_PUBLIC_URL", url, ("http", "https"))
        link_ttl = env.integer(
            "ARBRIDGE_LINK_TTL_SECONDS", 30 * 24 * 3600, minimum=60, maximum=366 * 24 * 3600
        )
        lease = env.number("ARBRIDGE_PAYMENTS_CHARGE_LEASE_SECONDS", 45.0, minimum=0.5)
        recovery = env.number("ARBRIDGE_PAYMENTS_RECOVERY_SECONDS", 5.0, minimum=0.1)
        settle_poll = env.number("ARBRIDGE_PAYMENTS_ACH_POLL_SECONDS", 3600.0, minimum=0.5)
        queue_poll = env.number("ARBRIDGE_PAYMENTS_QUEUE_POLL_SECONDS", 300.0, minimum=0.5)
        posting_lease = env.number("ARBRIDGE_PAYMENTS_POSTING_LEASE_SECONDS", 60.0, minimum=2.0)
        posting_backoff = env.number("ARBRIDGE_PAYMENTS_POSTING_BACKOFF_SECONDS", 5.0, minimum=0.1)
        env.check()
        return cls(
            runtime=runtime,
            sync_target=sync_target,
            connector_target=connector_target,
            gateway=GatewayConfig(url, username, password, timeout),
            link_secrets=tuple(x.strip() for x in link_secret.split(",") if x.strip()),
            pay_base_url=pay_base,
            pay_host=pay_host,
            pay_port=pay_port,
            gateway_public_url=gateway_public,
            link_ttl_seconds=link_ttl,
            charge_lease_seconds=lease,
            recovery_interval_seconds=recovery,
            settle_poll_seconds=settle_poll,
            queue_poll_seconds=queue_poll,
            posting_lease_seconds=posting_lease,
            posting_backoff_seconds=posting_backoff,
        )
