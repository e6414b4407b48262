"""Small runtime parts: fault points, namespaces, migration files, error mapping."""

from __future__ import annotations

import grpc
import pytest

from arbridge_runtime.db import load_migrations, quote_ident, runtime_migrations
from arbridge_runtime.errors import Conflict, InvalidArgument, status_for
from arbridge_runtime.faults import FaultInjector
from arbridge_runtime.jetstream import Namespace


def test_fault_fires_on_the_configured_hit_only(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr("os._exit", exits.append)
    faults = FaultInjector("a.point:exit:2, other")
    faults.hit("a.point")
    assert exits == []
    faults.hit("a.point")
    assert exits == [3]
    faults.hit("a.point")
    assert exits == [3]
    FaultInjector("").hit("a.point")


def test_namespace_prefixes_and_strips() -> None:
    ns = Namespace("t1")
    assert ns.stream("AR") == "T1_AR"
    assert ns.subject("ar.invoice.created") == "t1.ar.invoice.created"
    assert ns.unprefix("t1.ar.invoice.created") == "ar.invoice.created"
    assert Namespace().subject("ar.x") == "ar.x"


def test_runtime_migrations_are_ordered_and_named() -> None:
    migrations = runtime_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert migrations[0].component == "runtime"
    assert "CREATE TABLE outbox" in migrations[0].sql
    assert load_migrations("arbridge_runtime", "x", folder="no_such_folder") == []


def test_identifiers_are_checked_before_quoting() -> None:
    assert quote_ident("sync") == '"sync"'
    with pytest.raises(ValueError, match="not a valid identifier"):
        quote_ident('x"; DROP TABLE y; --')


def test_domain_errors_map_to_status_codes_in_one_place() -> None:
    assert status_for(InvalidArgument("amount must be positive")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "amount must be positive",
    )
    assert status_for(Conflict("in flight"))[0] is grpc.StatusCode.ABORTED
    code, message = status_for(RuntimeError("password=hunter2 leaked"))
    assert code is grpc.StatusCode.INTERNAL
    assert "hunter2" not in message
    assert status_for(NotImplementedError())[0] is grpc.StatusCode.UNIMPLEMENTED
