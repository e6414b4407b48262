"""Settings are validated at start-up and every problem is reported at once."""

from __future__ import annotations

import pytest

from arbridge_rules.settings import Settings
from arbridge_runtime.settings import EnvReader, RuntimeSettings, SettingsError

GOOD = {"ARBRIDGE_SERVICE_TOKEN": "a" * 32}


def test_defaults_with_only_the_token() -> None:
    settings = Settings.from_env(GOOD).runtime
    assert settings.service == "rules"
    assert settings.database_schema == "rules"
    assert settings.grpc_port == 0
    assert settings.service_token == "a" * 32
    assert settings.reflection is True


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "ARBRIDGE_GRPC_PORT": "seventy",
        "ARBRIDGE_HTTP_PORT": "70000",
        "ARBRIDGE_GRPC_REFLECTION": "maybe",
        "ARBRIDGE_DB_SCHEMA": "Bad-Schema",
        "DATABASE_URL": "mysql://x",
        "ARBRIDGE_LOG_LEVEL": "loud",
    }
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    problems = caught.value.problems
    names = [p.split("=")[0].split(" ")[0] for p in problems]
    assert sorted(names) == sorted(
        [
            "ARBRIDGE_SERVICE_TOKEN",
            "ARBRIDGE_GRPC_PORT",
            "ARBRIDGE_HTTP_PORT",
            "ARBRIDGE_GRPC_REFLECTION",
            "ARBRIDGE_DB_SCHEMA",
            "DATABASE_URL",
            "ARBRIDGE_LOG_LEVEL",
        ]
    )
    assert "7 problem(s)" in str(caught.value)


def test_secret_values_never_appear_in_problems() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ARBRIDGE_SERVICE_TOKEN": "short-secret"})
    assert "short-secret" not in str(caught.value)
    assert "at least 16" in str(caught.value)


def test_rotation_accepts_several_tokens_and_sends_the_first() -> None:
    env = EnvReader({"ARBRIDGE_SERVICE_TOKEN": f"{'n' * 20}, {'o' * 20}"})
    settings = RuntimeSettings.read(env, "sync")
    env.check()
    assert settings.service_tokens == ("n" * 20, "o" * 20)
    assert settings.service_token == "n" * 20
