"""Running a process that is not a service (the sandboxes): listen, announce, stop on a signal."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web


def write_ready_file(path: str, info: Mapping[str, Any]) -> None:
    """Writes ``info`` as JSON to ``path`` atomically, so a reader never sees half of it."""
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(info)))
    tmp.replace(target)


async def serve_until_signalled(
    app: web.Application, host: str, port: int, announce: Callable[[int], None]
) -> None:
    """Serves ``app`` on host:port (0: any free port), calls ``announce`` with the bound port,
    and returns after SIGTERM or SIGINT with the app cleaned up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        announce(sockets[0].getsockname()[1] if sockets else port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
