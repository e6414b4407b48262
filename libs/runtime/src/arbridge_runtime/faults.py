"""Named fault points for crash and chaos tests.

A test sets ``ARBRIDGE_FAULTS`` to a comma-separated list of
``point[:action[:nth]]`` items; when execution reaches a listed point the
action runs (``kill`` sends SIGKILL to this process, ``exit`` exits 3). With
``nth`` the fault fires on that hit only. With the variable unset (always, in
production) a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field


@dataclass
class _Fault:
    action: str
    nth: int
    hits: int = field(default=0)


def _parse(spec: str) -> dict[str, _Fault]:
    faults: dict[str, _Fault] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        action = parts[1] if len(parts) > 1 else "kill"
        nth = int(parts[2]) if len(parts) > 2 else 1
        faults[parts[0]] = _Fault(action=action, nth=nth)
    return faults


class FaultInjector:
    """Holds the configured faults of this process."""

    def __init__(self, spec: str | None = None) -> None:
        self._faults = _parse(spec if spec is not None else os.environ.get("ARBRIDGE_FAULTS", ""))

    def hit(self, point: str) -> None:
        fault = self._faults.get(point)
        if fault is None:
            return
        fault.hits += 1
        if fault.hits != fault.nth:
            return
        if fault.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault.action == "exit":
            os._exit(3)


NO_FAULTS = FaultInjector("")
