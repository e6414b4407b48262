"""The ``arbridge`` command: operators' tools over the gRPC APIs, and dev tooling.

Subcommands grow with the services; each prints a table for people, takes
``--json`` for scripts where it returns data, and exits non-zero with a one-line
reason on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbridge_cards_sandbox.main import add_arguments as add_cards_arguments
from arbridge_cli.ops import add_commands
from arbridge_intacct_sandbox.main import add_arguments as add_intacct_arguments


def _health(args: argparse.Namespace) -> int:
    async def check() -> int:
        async with grpc.aio.insecure_channel(args.target) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
                )
            except grpc.aio.AioRpcError as err:
                print(
                    f"arbridge: {args.target}: {err.code().name}: {err.details()}", file=sys.stderr
                )
                return 1
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        if args.json:
            print(json.dumps({"target": args.target, "service": args.service, "status": status}))
        else:
            print(f"{args.target} {args.service or '(server)'}: {status}")
        return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1

    return asyncio.run(check())


def _dev_demo(args: argparse.Namespace) -> int:
    from arbridge_devinfra.demo import run_demo

    return run_demo(Path(os.environ.get("ARBRIDGE_ROOT", Path.cwd())), args.name)


def _demo_name(value: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", value):
        raise argparse.ArgumentTypeError("use lower-case letters, digits and _, from a letter")
    return value


def _dev_up(_args: argparse.Namespace) -> int:
    from arbridge_devinfra.suite import run_suite

    return run_suite(Path(os.environ.get("ARBRIDGE_ROOT", Path.cwd())))


def _sandbox_intacct(args: argparse.Namespace) -> int:
    from arbridge_intacct_sandbox.main import serve
    from arbridge_runtime.logs import configure_logging

    configure_logging("intacct-sandbox", "warning", stream=sys.stderr)
    return asyncio.run(serve(args))


def _intacct_decode(args: argparse.Namespace) -> int:
    from arbridge_intacct.decode import run

    return run(args.file)


def _smart_events(args: argparse.Namespace) -> int:
    from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
    from arbridge_runtime.grpc_client import service_channel

    token = args.token or os.environ.get("ARBRIDGE_SERVICE_TOKEN", "")
    if not token:
        print("arbridge: give --token or set ARBRIDGE_SERVICE_TOKEN", file=sys.stderr)
        return 2

    async def fetch() -> int:
        channel = service_channel(args.target, token, deadline=30)
        try:
            reply = await sync_pb2_grpc.SyncServiceStub(channel).GetSmartEventSetup(
                sync_pb2.GetSmartEventSetupRequest(
                    account_id=args.account, gateway_base_url=args.gateway_url
                )
            )
        except grpc.aio.AioRpcError as err:
            print(f"arbridge: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        finally:
            await channel.close(None)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "name": e.name,
                            "object": e.object,
                            "actions": list(e.actions),
                            "url": e.url,
                            "content_type": e.content_type,
                            "body_template": e.body_template,
                        }
                        for e in reply.events
                    ],
                    indent=2,
                )
            )
        else:
            print(reply.document)
        return 0

    return asyncio.run(fetch())


def _sandbox_cards(args: argparse.Namespace) -> int:
    from arbridge_cards_sandbox.main import serve
    from arbridge_runtime.logs import configure_logging

    configure_logging("cards-sandbox", "warning", stream=sys.stderr)
    return asyncio.run(serve(args))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="arbridge", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    health = sub.add_parser("health", help="check a service's gRPC health")
    health.add_argument(
        "--target",
        default=os.environ.get("ARBRIDGE_TARGET", "127.0.0.1:50051"),
        help="host:port of the service (env ARBRIDGE_TARGET)",
    )
    health.add_argument("--service", default="", help="service name; empty for the whole server")
    health.add_argument("--timeout", type=float, default=5.0)
    health.add_argument("--json", action="store_true", help="print JSON")
    health.set_defaults(func=_health)

    sandbox = sub.add_parser("sandbox", help="run a sandbox of an external system")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    intacct = sandbox_sub.add_parser("intacct", help="a wire-compatible Sage Intacct XML gateway")
    add_intacct_arguments(intacct)
    intacct.set_defaults(func=_sandbox_intacct)
    cards = sandbox_sub.add_parser("cards", help="a BlueSnap-style card gateway")
    add_cards_arguments(cards)
    cards.set_defaults(func=_sandbox_cards)

    intacct_tools = sub.add_parser("intacct", help="Intacct XML tools")
    intacct_sub = intacct_tools.add_subparsers(dest="intacct_command", required=True)
    decode = intacct_sub.add_parser(
        "decode", help="print an Intacct response document as JSON (exit 2 when malformed)"
    )
    decode.add_argument("file", help="response document, or - for standard input")
    decode.set_defaults(func=_intacct_decode)

    smart = sub.add_parser(
        "smart-events", help="print the smart events an Intacct admin creates for an account"
    )
    smart.add_argument("account", help="the account id")
    smart.add_argument(
        "--gateway-url",
        required=True,
        help="public base URL of the webhook gateway, e.g. https://hooks.example.com",
    )
    smart.add_argument(
        "--target",
        default=os.environ.get("ARBRIDGE_SYNC_TARGET", "127.0.0.1:50052"),
        help="host:port of the sync service (env ARBRIDGE_SYNC_TARGET)",
    )
    smart.add_argument("--token", default="", help="service token (env ARBRIDGE_SERVICE_TOKEN)")
    smart.add_argument("--json", action="store_true", help="print JSON for scripts")
    smart.set_defaults(func=_smart_events)

    add_commands(sub)

    dev = sub.add_parser("dev", help="development tooling")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="run the whole suite with embedded infrastructure")
    up.set_defaults(func=_dev_up)
    demo = dev_sub.add_parser(
        "demo", help="the whole story, no input: connect, sync, rule, charge, link, summary"
    )
    demo.add_argument(
        "--name",
        default="demo",
        type=_demo_name,
        help="database arbridge_<name> and NATS namespace <name>, started afresh (default demo)",
    )
    demo.set_defaults(func=_dev_demo)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(args.func(args))
