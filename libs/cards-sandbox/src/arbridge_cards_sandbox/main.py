"""``arbridge sandbox cards``: serve the card gateway sandbox."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from arbridge_cards_sandbox.gateway import TEST_CARDS, Gateway
from arbridge_cards_sandbox.server import build_app
from arbridge_runtime.logs import configure_logging
from arbridge_runtime.standalone import serve_until_signalled, write_ready_file


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


async def serve(args: argparse.Namespace) -> int:
    gateway = Gateway(args.merchant_id, args.username, args.password)

    def announce(port: int) -> None:
        base = f"http://{args.host}:{port}"
        approve = ", ".join(n for n, (_, o) in TEST_CARDS.items() if o == "approve")
        print(
            f"card gateway sandbox listening: {base}/services/2/ "
            f"(hosted fields {base}/hosted-fields)\n"
            f"  API user {args.username} / {args.password}; merchant {args.merchant_id}\n"
            f"  approving test cards: {approve}; 4000000000000002 is declined",
            flush=True,
        )
        if args.ready_file:
            write_ready_file(
                args.ready_file,
                {
                    "base_url": base,
                    "port": port,
                    "merchant_id": args.merchant_id,
                    "username": args.username,
                    "password": args.password,
                    "pid": os.getpid(),
                },
            )

    await serve_until_signalled(build_app(gateway, args.seed), args.host, args.port, announce)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="arbridge sandbox cards", description="A BlueSnap-style card gateway sandbox"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("cards-sandbox", "warning", stream=sys.stderr)
    sys.exit(asyncio.run(serve(args)))
