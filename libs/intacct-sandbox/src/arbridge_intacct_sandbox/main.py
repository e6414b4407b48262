"""``arbridge sandbox intacct``: serve one sandbox company (more through the admin API)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys

from aiohttp import web

from arbridge_intacct_sandbox.functions import warm
from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company
from arbridge_intacct_sandbox.sandbox import Sandbox
from arbridge_intacct_sandbox.server import GATEWAY_PATH, build_app
from arbridge_runtime.logs import configure_logging
from arbridge_runtime.standalone import serve_until_signalled, write_ready_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8410, help="port (default 8410; 0 for any)")
    parser.add_argument("--seed", type=int, default=1, help="data generator seed (default 1)")
    parser.add_argument("--customers", type=int, default=50, help="customers (default 50)")
    parser.add_argument(
        "--invoices", type=int, default=200, help="invoices over the last 18 months (default 200)"
    )
    parser.add_argument(
        "--entities",
        default="",
        help="comma-separated entity IDs for a multi-entity company (default none)",
    )
    parser.add_argument(
        "--time-zone",
        default="America/Los_Angeles",
        help="company time zone (default America/Los_Angeles)",
    )
    parser.add_argument(
        "--no-platform-services",
        action="store_true",
        help="a company without Platform Services (no charge-queue object)",
    )
    parser.add_argument(
        "--sender-id", default="Pscore", help="Web Services sender ID (default Pscore)"
    )
    parser.add_argument(
        "--sender-password",
        default="sandbox-sender-password",
        help="sender password (default sandbox-sender-password)",
    )
    parser.add_argument(
        "--company-id", default="arbridge-demo", help="company ID (default arbridge-demo)"
    )
    parser.add_argument(
        "--user-id", default="xmlgw-armatic", help="web services user (default xmlgw-armatic)"
    )
    parser.add_argument(
        "--user-password",
        default="sandbox-user-password",
        help="user password (default sandbox-user-password)",
    )
    parser.add_argument(
        "--ready-file",
        default=os.environ.get("ARBRIDGE_READY_FILE", ""),
        help="write the endpoint as JSON here once listening",
    )


def build(args: argparse.Namespace) -> tuple[Sandbox, web.Application]:
    sandbox = Sandbox(seed=args.seed)
    sandbox.add_sender(args.sender_id, args.sender_password)
    spec = GeneratorSpec(
        seed=args.seed,
        customers=args.customers,
        invoices=args.invoices,
        entities=tuple(e for e in args.entities.split(",") if e),
    )

    def default_company() -> None:
        gc.unfreeze()  # a reset: the company it replaces can be collected
        company = sandbox.add_company(
            make_company(
                company_id=args.company_id,
                user_id=args.user_id,
                user_password=args.user_password,
                sender_id=args.sender_id,
                spec=spec,
                time_zone=args.time_zone,
                platform_services=not args.no_platform_services,
            )
        )
        warm(company)
        # The company lives until a reset replaces it: frozen, the garbage collector
        # no longer walks it (a full collection of a 100,000-invoice company stalled
        # whichever call set it off for about a second).
        gc.collect()
        gc.freeze()

    default_company()
    return sandbox, build_app(sandbox, default_company)


async def serve(args: argparse.Namespace) -> int:
    _sandbox, app = build(args)

    def announce(port: int) -> None:
        endpoint = f"http://{args.host}:{port}{GATEWAY_PATH}"
        admin = f"http://{args.host}:{port}/sandbox/"
        print(
            f"intacct sandbox listening: {endpoint}\n"
            f"  sender {args.sender_id} / {args.sender_password}; company {args.company_id}; "
            f"user {args.user_id} / {args.user_password}\n"
            f"  admin API {admin} (companies, records, faults, smart-events, stats)",
            flush=True,
        )
        if args.ready_file:
            write_ready_file(
                args.ready_file,
                {
                    "endpoint": endpoint,
                    "admin": admin,
                    "port": port,
                    "sender_id": args.sender_id,
                    "sender_password": args.sender_password,
                    "company_id": args.company_id,
                    "user_id": args.user_id,
                    "user_password": args.user_password,
                    "pid": os.getpid(),
                },
            )

    await serve_until_signalled(app, args.host, args.port, announce)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="arbridge sandbox intacct", description="A wire-compatible Sage Intacct XML gateway"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("intacct-sandbox", "warning", stream=sys.stderr)
    sys.exit(asyncio.run(serve(args)))
