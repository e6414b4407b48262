"""``arbridge sandbox cards``: serve the card gateway sandbox."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from aiohttp import web

from arbridge_cards_sandbox.gateway import TEST_CARDS, Gateway
from arbridge_cards_sandbox.server import build_app
from arbridge_runtime.logs import configure_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8420, help="port (default 8420; 0 for any)")
    parser.add_argument(
        "--merchant-id", default="arbridge-sandbox", help="merchant id (default arbridge-sandbox)"
    )
    parser.add_argument("--username", default="sandbox-api", help="API user (default sandbox-api)")
    parser.add_argument(
        "--password",
        default="sandbox-api-password",
        help="API password (default sandbox-api-password)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for fault draws (default 0)")
    parser.add_argument(
        "--ready-file",
        default=os.environ.get("ARBRIDGE_READY_FILE", ""),
        help="write the base URL as JSON here once listening",
    )


def _write_ready(path: str, info: dict[str, object]) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(info, handle)
    os.replace(path + ".tmp", path)


async def serve(args: argparse.Namespace) -> int:
    gateway = Gateway(args.merchant_id, args.username, args.password)
    runner = web.AppRunner(build_app(gateway, args.seed), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else args.port
    base = f"http://{args.host}:{port}"
    info = {
        "base_url": base,
        "port": port,
        "merchant_id": args.merchant_id,
        "username": args.username,
        "password": args.password,
        "pid": os.getpid(),
    }
    approve = ", ".join(n for n, (_, o) in TEST_CARDS.items() if o == "approve")
    print(
        f"card gateway sandbox listening: {base}/services/2/ (hosted fields {base}/hosted-fields)\n"
        f"  API user {args.username} / {args.password}; merchant {args.merchant_id}\n"
        f"  approving test cards: {approve}; 4000000000000002 is declined",
        flush=True,
    )
    if args.ready_file:
        _write_ready(args.ready_file, info)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="arbridge sandbox cards", description="A BlueSnap-style card gateway sandbox"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("cards-sandbox", "warning", stream=sys.stderr)
    sys.exit(asyncio.run(serve(args)))
