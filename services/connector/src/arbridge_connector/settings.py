"""Settings of the connector service, read from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from arbridge_connector.crypto import CredentialKeyError, parse_keys
from arbridge_runtime.settings import EnvReader, RuntimeSettings


@dataclass(frozen=True)
class Settings:
    """Everything the connector is configured with.

    Attributes:
        runtime: The settings every service shares.
        keys: AES-256 keys for credentials at rest (``ARBRIDGE_CONNECTOR_KEYS``,
            ``kid:base64url`` items, newest first).
        intacct_endpoint: Default XML gateway URL (``ARBRIDGE_INTACCT_ENDPOINT``).
        concurrency: Concurrent Intacct requests per company, across every
            replica (``ARBRIDGE_INTACCT_CONCURRENCY``).
        rate_per_second: Intacct requests per second per company, across every
            replica (``ARBRIDGE_INTACCT_RATE_PER_SECOND``).
    """

    runtime: RuntimeSettings
    keys: tuple[tuple[str, bytes], ...]
    intacct_endpoint: str
    concurrency: int
    rate_per_second: float

    def __repr__(self) -> str:
        return (
            f"Settings(endpoint={self.intacct_endpoint!r}, concurrency={self.concurrency}, "
            f"rate={self.rate_per_second}, keys=[{', '.join(k for k, _ in self.keys)}])"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings; raises SettingsError listing every problem."""
        env = EnvReader(environ)
        runtime = RuntimeSettings.read(env, "connector")
        raw_keys = env.secret(
            "ARBRIDGE_CONNECTOR_KEYS",
            "AES-256 keys for Intacct credentials at rest, as "
            "kid:base64url(32 bytes), newest first",
            min_length=10,
        )
        keys: list[tuple[str, bytes]] = []
        if raw_keys:
            try:
                keys = parse_keys(raw_keys)
            except CredentialKeyError as exc:
                env.problems.append(f"ARBRIDGE_CONNECTOR_KEYS is invalid: {exc}")
        endpoint = env.url(
            "ARBRIDGE_INTACCT_ENDPOINT",
            "https://api.intacct.com/ia/xml/xmlgw.phtml",
            ("http", "https"),
        )
        concurrency = env.integer("ARBRIDGE_INTACCT_CONCURRENCY", 2, minimum=1, maximum=64)
        rate = env.number("ARBRIDGE_INTACCT_RATE_PER_SECOND", 10.0, minimum=0.1)
        env.check()
        return cls(
            runtime=runtime,
            keys=tuple(keys),
            intacct_endpoint=endpoint,
            concurrency=concurrency,
            rate_per_second=rate,
        )
