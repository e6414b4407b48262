"""Operator commands over the services' gRPC APIs: accounts, syncs, unsynced records, rules,
links, charges and refunds.

Every command prints a table for people, or the API's answer as JSON with
``--json`` (proto3 JSON names), and exits 0 on success, 1 when the service
refused (the gRPC code and the service's own words on stderr) and 2 on a
usage problem. Where each service is comes from ``--target`` or
``ARBRIDGE_<SERVICE>_TARGET``; the token from ``--token`` or
``ARBRIDGE_SERVICE_TOKEN``. Intacct passwords are never taken as arguments
(they would stay in shell history and process lists): they come from
``ARBRIDGE_INTACCT_USER_PASSWORD`` / ``ARBRIDGE_INTACCT_SENDER_PASSWORD`` or a
prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format
from google.protobuf.message import Message

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge.sync.v1 import sync_pb2, sync_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import from_minor, to_minor

SERVICES = {
    "connector": (
        "ARBRIDGE_CONNECTOR_TARGET",
        "127.0.0.1:50051",
        connector_pb2_grpc.ConnectorServiceStub,
    ),
    "sync": ("ARBRIDGE_SYNC_TARGET", "127.0.0.1:50052", sync_pb2_grpc.SyncServiceStub),
    "payments": (
        "ARBRIDGE_PAYMENTS_TARGET",
        "127.0.0.1:50053",
        payments_pb2_grpc.PaymentsServiceStub,
    ),
    "rules": ("ARBRIDGE_RULES_TARGET", "127.0.0.1:50054", rules_pb2_grpc.RulesServiceStub),
}
LINK_KINDS = {
    "payment": payments_pb2.LINK_KIND_PAYMENT,
    "balance": payments_pb2.LINK_KIND_PAY_BALANCE,
    "method": payments_pb2.LINK_KIND_PAYMENT_METHOD,
}


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit 2)."""


# Plumbing --------------------------------------------------------------------------


def _run(args: argparse.Namespace, service: str, work: Callable[[Any], Awaitable[int]]) -> int:
    env, default, stub_type = SERVICES[service]
    target = args.target or os.environ.get(env, default)
    token = args.token or os.environ.get("ARBRIDGE_SERVICE_TOKEN", "")
    if not token:
        print("arbridge: give --token or set ARBRIDGE_SERVICE_TOKEN", file=sys.stderr)
        return 2

    async def go() -> int:
        channel = service_channel(target, token, deadline=args.timeout)
        try:
            return await work(stub_type(channel))
        except grpc.aio.AioRpcError as err:
            print(
                f"arbridge: {service} at {target}: {err.code().name}: {err.details()}",
                file=sys.stderr,
            )
            return 1
        except UsageError as err:
            print(f"arbridge: {err}", file=sys.stderr)
            return 2
        finally:
            await channel.close(None)

    return asyncio.run(go())


def _json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print(
    args: argparse.Namespace, message: Message, rows: Sequence[Sequence[Any]], header: Sequence[str]
) -> int:
    if args.json:
        print(json.dumps(_json(message), indent=2, sort_keys=True))
        return 0
    _table(header, rows)
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    if not rows:
        print("(none)")


def _money(money: common_pb2.Money) -> str:
    return (
        f"{from_minor(money.amount_minor, money.currency)} {money.currency}"
        if money.currency
        else ""
    )


def _enum(value: int, enum: Any, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def _secret(env: str, prompt: str) -> str:
    value = os.environ.get(env, "")
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"set {env} (secrets are not taken as arguments)")
    return getpass.getpass(prompt)


def _rule_from(path: str, account: str) -> rules_pb2.Rule:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        rule = json_format.Parse(text, rules_pb2.Rule())
    except (OSError, json_format.ParseError) as err:
        raise UsageError(f"{path}: not a rule in JSON ({err})") from None
    rule.account_id = rule.account_id or account
    return rule


# Commands --------------------------------------------------------------------------


def accounts_connect(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.ConnectAccount(
            connector_pb2.ConnectAccountRequest(
                account_id=args.account,
                company_id=args.company,
                user_id=args.user,
                user_password=_secret("ARBRIDGE_INTACCT_USER_PASSWORD", "Intacct user password: "),
                sender_id=args.sender,
                sender_password=_secret(
                    "ARBRIDGE_INTACCT_SENDER_PASSWORD", "Web services sender password: "
                ),
                entity_id=args.entity,
                time_zone=args.time_zone,
            )
        )
        account = reply.account
        return _print(
            args,
            reply,
            [
                [
                    account.account_id,
                    account.company_id,
                    account.entity_id or "-",
                    account.multi_entity,
                    account.platform_services,
                ]
            ],
            ["account", "company", "entity", "multi-entity", "platform services"],
        )

    return _run(args, "connector", work)


def accounts_permissions(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.CheckPermissions(
            connector_pb2.CheckPermissionsRequest(account_id=args.account)
        )
        rows = [
            [
                c.module,
                c.object,
                _enum(c.status, connector_pb2.PermissionStatus, "PERMISSION_STATUS_"),
                c.fix or "",
            ]
            for c in reply.checks
        ]
        code = _print(args, reply, rows, ["module", "object", "status", "where to fix"])
        return code if reply.all_granted else 1

    return _run(args, "connector", work)


def accounts_usage(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.GetApiUsage(
            connector_pb2.GetApiUsageRequest(
                account_id=args.account, from_date=args.since or "", to_date=args.until or ""
            )
        )
        rows = [[r.date, r.function, r.calls] for r in reply.rows]
        code = _print(args, reply, rows, ["date", "function", "calls"])
        if not args.json:
            print(f"total API calls: {reply.total_calls}")
        return code

    return _run(args, "connector", work)


def sync_start(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        kinds = {"manual": sync_pb2.SYNC_KIND_MANUAL, "initial": sync_pb2.SYNC_KIND_INITIAL}
        request = sync_pb2.StartSyncRequest(account_id=args.account, kind=kinds[args.kind])
        if args.kind == "manual":
            estimate = await stub.EstimateSync(
                sync_pb2.EstimateSyncRequest(account_id=args.account)
            )
            print(
                f"a full sync of {args.account} costs about {estimate.estimated_api_calls} "
                "Intacct API calls",
                file=sys.stderr,
            )
            if not args.yes:
                raise UsageError("add --yes to start it (it is charged in API calls)")
            request.confirmation_token = estimate.confirmation_token
        started = (await stub.StartSync(request)).sync
        if not args.watch:
            return _print(args, started, [[started.sync_id, _state(started)]], ["sync", "state"])
        last: Any = started
        async for update in stub.WatchSync(
            sync_pb2.WatchSyncRequest(account_id=args.account, sync_id=started.sync_id),
            timeout=None,
        ):
            last = update.sync
            if not args.json:
                _progress(last)
        if not args.json:
            print(file=sys.stderr)
        code = _print(
            args,
            last,
            [
                [
                    p.object_type and _enum(p.object_type, common_pb2.ObjectType, "OBJECT_TYPE_"),
                    p.done,
                    p.total,
                    p.created,
                    p.updated,
                    p.deleted,
                    p.failed,
                ]
                for p in last.objects
            ],
            ["object", "done", "total", "created", "updated", "deleted", "failed"],
        )
        if not args.json:
            print(f"{_state(last)}: {last.api_calls} API calls in {last.elapsed_seconds:.1f}s")
        return code if last.state == sync_pb2.SYNC_STATE_SUCCEEDED else 1

    return _run(args, "sync", work)


def _state(sync: Any) -> str:
    return _enum(sync.state, sync_pb2.SyncState, "SYNC_STATE_")


def _progress(sync: Any) -> None:
    done = sum(p.done for p in sync.objects)
    total = sum(p.total for p in sync.objects) or 1
    filled = int(30 * min(done, total) / total)
    print(
        f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} records, "
        f"{sync.api_calls} API calls, {_state(sync)}   ",
        end="",
        file=sys.stderr,
        flush=True,
    )


def unsynced_list(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.ListUnsynced(
            sync_pb2.ListUnsyncedRequest(account_id=args.account, include_resolved=args.all)
        )
        rows = [
            [
                r.unsynced_id,
                _enum(r.object_type, common_pb2.ObjectType, "OBJECT_TYPE_"),
                r.record_no,
                _enum(r.direction, sync_pb2.SyncDirection, "SYNC_DIRECTION_"),
                _enum(r.kind, sync_pb2.UnsyncedKind, "UNSYNCED_KIND_"),
                r.reason[:80],
            ]
            for r in reply.records
        ]
        return _print(args, reply, rows, ["id", "object", "record", "direction", "kind", "reason"])

    return _run(args, "sync", work)


def unsynced_resync(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.ResyncRecord(
            sync_pb2.ResyncRecordRequest(account_id=args.account, unsynced_id=args.id)
        )
        code = _print(
            args,
            reply,
            [[args.id, "synced" if reply.synced else "still failing", reply.record.reason[:80]]],
            ["id", "outcome", "reason"],
        )
        return code if reply.synced else 1

    return _run(args, "sync", work)


def unsynced_mark(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.MarkSynced(
            sync_pb2.MarkSyncedRequest(
                account_id=args.account, unsynced_id=args.id, actor=args.actor, reason=args.reason
            )
        )
        return _print(
            args, reply, [[args.id, "marked synced", args.reason]], ["id", "outcome", "reason"]
        )

    return _run(args, "sync", work)


def _rule_rows(rules: Sequence[Any]) -> list[list[Any]]:
    return [
        [
            r.rule_id,
            r.name,
            r.priority,
            "yes" if r.enabled else "no",
            _enum(r.timing.trigger, rules_pb2.TimingTrigger, "TIMING_TRIGGER_"),
            r.revision,
        ]
        for r in rules
    ]


RULE_HEADER = ["rule", "name", "priority", "enabled", "when", "revision"]


def rules_list(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.ListRules(rules_pb2.ListRulesRequest(account_id=args.account))
        return _print(args, reply, _rule_rows(reply.rules), RULE_HEADER)

    return _run(args, "rules", work)


def rules_create(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.CreateRule(
            rules_pb2.CreateRuleRequest(rule=_rule_from(args.file, args.account))
        )
        return _print(args, reply, _rule_rows([reply.rule]), RULE_HEADER)

    return _run(args, "rules", work)


def rules_delete(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.DeleteRule(
            rules_pb2.DeleteRuleRequest(account_id=args.account, rule_id=args.rule)
        )
        return _print(args, reply, [[args.rule, "deleted"]], ["rule", "outcome"])

    return _run(args, "rules", work)


def rules_preview(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        if bool(args.rule) == bool(args.draft):
            raise UsageError("give --rule ID or --draft FILE")
        request = rules_pb2.PreviewRuleRequest(
            account_id=args.account, rule_id=args.rule or "", limit=args.limit
        )
        if args.draft:
            request.draft.CopyFrom(_rule_from(args.draft, args.account))
        reply = await stub.PreviewRule(request)
        rows = [
            [i.invoice_record_no, i.customer_id, i.charge_at.ToJsonString(), _money(i.amount)]
            for i in reply.items
        ]
        code = _print(args, reply, rows, ["invoice", "customer", "charge at (UTC)", "amount"])
        if not args.json:
            print(f"{reply.matching_invoices} open invoice(s) would be charged")
        return code

    return _run(args, "rules", work)


def rules_explain(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.ExplainInvoice(
            rules_pb2.ExplainInvoiceRequest(account_id=args.account, invoice_record_no=args.invoice)
        )
        if args.json:
            print(json.dumps(_json(reply), indent=2, sort_keys=True))
            return 0
        print(f"invoice {args.invoice}: {reply.summary}")
        for blocker in reply.blockers:
            print(f"  blocked: {blocker}")
        for verdict in reply.verdicts:
            mark = (
                "matches"
                if verdict.matched
                else f"no ({verdict.failed_condition}: {verdict.detail})"
            )
            print(f"  rule {verdict.rule_name!r} [{verdict.rule_id}]: {mark}")
        for attempt in reply.attempts:
            outcome = "succeeded" if attempt.succeeded else f"failed: {attempt.failure_reason}"
            when = attempt.attempted_at.ToJsonString()
            print(f"  attempt {attempt.attempt} at {when}: {outcome} {attempt.charge_id}")
        return 0

    return _run(args, "rules", work)


def links_create(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.CreateLink(
            payments_pb2.CreateLinkRequest(
                account_id=args.account,
                kind=LINK_KINDS[args.kind],
                customer_id=args.customer,
                invoice_record_no=args.invoice or "",
                ttl_seconds=args.ttl,
            )
        )
        link = reply.link
        return _print(
            args,
            reply,
            [[link.link_id, args.kind, link.expires_at.ToJsonString(), link.url]],
            ["link", "kind", "expires", "url"],
        )

    return _run(args, "payments", work)


def _charge_rows(charge: Any) -> list[list[Any]]:
    return [
        [
            charge.charge_id,
            _enum(charge.state, payments_pb2.ChargeState, "CHARGE_STATE_"),
            _money(charge.amount),
            ",".join(i.invoice_record_no for i in charge.invoices),
            _enum(charge.posting_state, payments_pb2.PostingState, "POSTING_STATE_")
            if charge.posting_state
            else "-",
            charge.failure_reason or "",
        ]
    ]


CHARGE_HEADER = ["charge", "state", "amount", "invoices", "posting", "reason"]


def charges_create(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        parts = []
        for item in args.invoice:
            record_no, _, amount = item.partition(":")
            money = None
            if amount:
                if not args.currency:
                    raise UsageError("an amount (INVOICE:AMOUNT) needs --currency")
                try:
                    money = common_pb2.Money(
                        amount_minor=to_minor(amount, args.currency), currency=args.currency.upper()
                    )
                except ValueError as err:
                    raise UsageError(str(err)) from None
            parts.append(payments_pb2.InvoiceAmount(invoice_record_no=record_no, amount=money))
        reply = await stub.ChargeInvoices(
            payments_pb2.ChargeInvoicesRequest(
                account_id=args.account,
                idempotency_key=args.key,
                customer_id=args.customer,
                invoices=parts,
                payment_method_id=args.method or "",
                source=payments_pb2.CHARGE_SOURCE_API,
            )
        )
        code = _print(args, reply, _charge_rows(reply.charge), CHARGE_HEADER)
        if reply.replayed and not args.json:
            print("(the answer of an earlier request with this key)")
        ok = reply.charge.state in (
            payments_pb2.CHARGE_STATE_SUCCEEDED,
            payments_pb2.CHARGE_STATE_SETTLING,
            payments_pb2.CHARGE_STATE_PROCESSING,
        )
        return code if ok else 1

    return _run(args, "payments", work)


def charges_get(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.GetCharge(
            payments_pb2.GetChargeRequest(account_id=args.account, charge_id=args.charge)
        )
        return _print(args, reply, _charge_rows(reply.charge), CHARGE_HEADER)

    return _run(args, "payments", work)


def charges_refund(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        request = payments_pb2.RefundChargeRequest(
            account_id=args.account, charge_id=args.charge, idempotency_key=args.key
        )
        if args.amount:
            charge = (
                await stub.GetCharge(
                    payments_pb2.GetChargeRequest(account_id=args.account, charge_id=args.charge)
                )
            ).charge
            try:
                request.amount.CopyFrom(
                    common_pb2.Money(
                        amount_minor=to_minor(args.amount, charge.amount.currency),
                        currency=charge.amount.currency,
                    )
                )
            except ValueError as err:
                raise UsageError(str(err)) from None
        reply = await stub.RefundCharge(request)
        return _print(args, reply, _charge_rows(reply.charge), CHARGE_HEADER)

    return _run(args, "payments", work)


def charges_resolve_refund(args: argparse.Namespace) -> int:
    async def work(stub: Any) -> int:
        reply = await stub.ResolveRefund(
            payments_pb2.ResolveRefundRequest(
                account_id=args.account,
                refund_id=args.refund,
                resolution=payments_pb2.REFUND_RESOLUTION_SENT
                if args.sent
                else payments_pb2.REFUND_RESOLUTION_NOT_SENT,
            )
        )
        refund = reply.refund
        rows = [[refund.refund_id, refund.state, _money(refund.amount), refund.charge_id]]
        return _print(args, reply, rows, ["refund", "state", "amount", "charge"])

    return _run(args, "payments", work)


# The parser ------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, service: str) -> None:
    env, default, _ = SERVICES[service]
    parser.add_argument(
        "--target", default="", help=f"host:port of {service} (env {env}; {default})"
    )
    parser.add_argument("--token", default="", help="service token (env ARBRIDGE_SERVICE_TOKEN)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="print the API's answer as JSON")


def add_commands(sub: Any) -> None:
    """Adds the operator commands to the ``arbridge`` parser."""

    def command(
        group: Any,
        name: str,
        func: Callable[[argparse.Namespace], int],
        service: str,
        help_text: str,
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, help=help_text)
        _common(parser, service)
        parser.set_defaults(func=func)
        return parser

    accounts = sub.add_parser(
        "accounts", help="connect Intacct companies, check permissions, API usage"
    ).add_subparsers(dest="accounts_command", required=True)
    p = command(
        accounts,
        "connect",
        accounts_connect,
        "connector",
        "connect an account (passwords from the environment or a prompt)",
    )
    p.add_argument("account")
    p.add_argument("--company", required=True, help="Intacct company id")
    p.add_argument("--user", required=True, help="web services user id")
    p.add_argument("--sender", required=True, help="web services sender id")
    p.add_argument(
        "--entity", default="", help="entity (location) id for an entity-level connection"
    )
    p.add_argument(
        "--time-zone", default="UTC", help="the company's time zone, e.g. America/Los_Angeles"
    )
    p = command(
        accounts,
        "permissions",
        accounts_permissions,
        "connector",
        "check every permission the guide lists (exit 1 when one is missing)",
    )
    p.add_argument("account")
    p = command(
        accounts, "usage", accounts_usage, "connector", "Intacct API calls by day and function"
    )
    p.add_argument("account")
    p.add_argument("--since", help="first day, YYYY-MM-DD")
    p.add_argument("--until", help="last day, YYYY-MM-DD")

    syncs = sub.add_parser("sync", help="start and watch syncs").add_subparsers(
        dest="sync_command", required=True
    )
    p = command(
        syncs,
        "start",
        sync_start,
        "sync",
        "start a sync (manual: Sync Account, which costs API calls)",
    )
    p.add_argument("account")
    p.add_argument("--kind", choices=("manual", "initial"), default="manual")
    p.add_argument(
        "--yes", action="store_true", help="confirm the estimated API calls of a manual sync"
    )
    p.add_argument("--watch", action="store_true", help="show progress until it ends")

    unsynced = sub.add_parser("unsynced", help="records that did not sync").add_subparsers(
        dest="unsynced_command", required=True
    )
    p = command(unsynced, "list", unsynced_list, "sync", "list unsynced records")
    p.add_argument("account")
    p.add_argument("--all", action="store_true", help="include resolved ones")
    p = command(
        unsynced,
        "resync",
        unsynced_resync,
        "sync",
        "try one record again (exit 1 if it still fails)",
    )
    p.add_argument("account")
    p.add_argument("id")
    p = command(unsynced, "mark", unsynced_mark, "sync", "mark a record synced by hand")
    p.add_argument("account")
    p.add_argument("id")
    p.add_argument("--actor", required=True, help="who marks it")
    p.add_argument("--reason", required=True, help="why")

    rules = sub.add_parser("rules", help="auto-payment rules").add_subparsers(
        dest="rules_command", required=True
    )
    p = command(rules, "list", rules_list, "rules", "list an account's rules")
    p.add_argument("account")
    p = command(
        rules,
        "create",
        rules_create,
        "rules",
        "create a rule from JSON (the v1 Rule message; - for stdin)",
    )
    p.add_argument("account")
    p.add_argument("file")
    p = command(rules, "delete", rules_delete, "rules", "delete a rule")
    p.add_argument("account")
    p.add_argument("rule")
    p = command(
        rules,
        "preview",
        rules_preview,
        "rules",
        "which open invoices a rule would charge, when and how much",
    )
    p.add_argument("account")
    p.add_argument("--rule", help="an existing rule's id")
    p.add_argument("--draft", help="a draft rule in JSON (- for stdin)")
    p.add_argument("--limit", type=int, default=50)
    p = command(
        rules,
        "explain",
        rules_explain,
        "rules",
        "why an invoice will, will not, or did get charged",
    )
    p.add_argument("account")
    p.add_argument("invoice", help="the invoice's RECORDNO")

    links = sub.add_parser("links", help="payer links").add_subparsers(
        dest="links_command", required=True
    )
    p = command(
        links,
        "create",
        links_create,
        "payments",
        "create a payment, pay-balance or payment-method link",
    )
    p.add_argument("account")
    p.add_argument("customer")
    p.add_argument("--kind", choices=tuple(LINK_KINDS), default="payment")
    p.add_argument("--invoice", help="the invoice's RECORDNO (payment links)")
    p.add_argument("--ttl", type=int, default=0, help="seconds until it expires (0: the default)")

    charges = sub.add_parser("charges", help="charge invoices and refund").add_subparsers(
        dest="charges_command", required=True
    )
    p = command(
        charges,
        "create",
        charges_create,
        "payments",
        "charge invoices of a customer once per --key",
    )
    p.add_argument("account")
    p.add_argument("customer")
    p.add_argument(
        "--invoice", action="append", required=True, help="RECORDNO, or RECORDNO:AMOUNT (repeat)"
    )
    p.add_argument("--currency", default="", help="the currency of the amounts")
    p.add_argument("--method", help="payment method id (default: the customer's default)")
    p.add_argument("--key", required=True, help="idempotency key: the same key never charges twice")
    p = command(charges, "get", charges_get, "payments", "show a charge")
    p.add_argument("account")
    p.add_argument("charge")
    p = command(charges, "refund", charges_refund, "payments", "refund a charge (all, or --amount)")
    p.add_argument("account")
    p.add_argument("charge")
    p.add_argument("--amount", help="decimal amount in the charge's currency")
    p.add_argument("--key", required=True, help="idempotency key of the refund")
    p = command(
        charges,
        "resolve-refund",
        charges_resolve_refund,
        "payments",
        "say whether the gateway's console shows a held refund (its id is the reason there)",
    )
    p.add_argument("account")
    p.add_argument("refund")
    shown = p.add_mutually_exclusive_group(required=True)
    shown.add_argument("--sent", action="store_true", help="the gateway shows it: record it")
    shown.add_argument(
        "--not-sent", action="store_true", help="the gateway does not show it: never send it"
    )
