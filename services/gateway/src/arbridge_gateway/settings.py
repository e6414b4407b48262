"""Settings of the gateway service, read from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from arbridge_runtime.settings import EnvReader, RuntimeSettings


@dataclass(frozen=True)
class Settings:
    """Everything the gateway service is configured with.

    Attributes:
        runtime: The settings every service shares (database, NATS, ports, token).
    """

    runtime: RuntimeSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings; raises SettingsError listing every problem."""
        env = EnvReader(environ)
        runtime = RuntimeSettings.read(env, "gateway")
        env.check()
        return cls(runtime=runtime)
