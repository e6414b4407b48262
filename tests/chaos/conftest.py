"""`make chaos`: the fault-injection scenarios, their ledger and the closing table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.harness import RESULTS, Ledger

_LEDGER = Ledger()


@pytest.fixture(scope="session")
def ledger() -> Iterator[Ledger]:
    yield _LEDGER
    _LEDGER.write()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _LEDGER.outcomes:
        return
    terminalreporter.section("chaos: every scenario")
    for line in _LEDGER.table():
        terminalreporter.write_line(line)
    for outcome in _LEDGER.outcomes:
        for note in outcome.notes:
            terminalreporter.write_line(f"  {outcome.scenario}: {note}")
    terminalreporter.write_line(f"results: {RESULTS}")
