"""Sync's domain: accounts, applying Intacct events, re-syncs, preferences, set-up documents."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import grpc
import grpc.aio
import structlog
from prometheus_client import Histogram

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.events.v1 import events_pb2
from arbridge.sync.v1 import sync_pb2
from arbridge_runtime import custom_objects, webhooks
from arbridge_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from arbridge_runtime.jetstream import Delivery, Outbox, PoisonMessage, RetryableError
from arbridge_sync import store, writeback
from arbridge_sync.intacct_events import BadEvent, IntacctEvent, parse
from arbridge_sync.jobs import NO_CONTEXT, JobRunner, ReadContext, next_daily, read_context
from arbridge_sync.mapping import Unmappable
from arbridge_sync.objects import BY_NAME, SYNCED, Synced, read_fields
from arbridge_sync.unsynced import record_failure, resolve, resolve_deleted

# The charge-queue custom object's events go to payments; the rule object's to rules.
CHARGE_QUEUE_OBJECT = custom_objects.QUEUE_OBJECT
RULE_OBJECT = custom_objects.RULE_OBJECT
log = structlog.get_logger(__name__)

TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass
class SyncCore:
    pool: asyncpg.Pool
    outbox: Outbox
    connector: connector_pb2_grpc.ConnectorServiceAsyncStub
    jobs: JobRunner
    webhook_secrets: tuple[str, ...]
    # arbridge_sync_lag_seconds{object}: an Intacct event's arrival to its record in the store.
    lag: Histogram | None = None

    # Accounts ------------------------------------------------------------------------

    async def on_account_connection(self, conn: asyncpg.Connection, delivery: Delivery) -> None:
        event = events_pb2.AccountConnectionChanged.FromString(delivery.data)
        if not event.connected:
            await conn.execute(
                "UPDATE accounts SET connected = false WHERE account_id = $1", event.account_id
            )
            return
        time_zone = event.time_zone or "UTC"
        await conn.execute(
            """INSERT INTO accounts (account_id, connected, company_id, time_zone)
               VALUES ($1, true, $2, $3)
               ON CONFLICT (account_id) DO UPDATE SET connected = true, company_id = $2,
                 time_zone = $3""",
            event.account_id,
            event.company_id,
            time_zone,
        )
        await conn.execute(
            "INSERT INTO preferences (account_id, time_zone) VALUES ($1, $2)"
            " ON CONFLICT (account_id) DO NOTHING",
            event.account_id,
            time_zone,
        )
        prefs = await conn.fetchrow(
            "SELECT daily_sync_time, time_zone FROM preferences WHERE account_id = $1",
            event.account_id,
        )
        await conn.execute(
            "UPDATE accounts SET next_daily_sync_at = $2 WHERE account_id = $1"
            " AND next_daily_sync_at IS NULL",
            event.account_id,
            next_daily(datetime.now(UTC), prefs["daily_sync_time"], prefs["time_zone"]),
        )
        synced = await conn.fetchval(
            "SELECT initial_synced_at FROM accounts WHERE account_id = $1", event.account_id
        )
        if synced is None:
            await self.jobs.create(conn, event.account_id, "initial")

    async def require_account(self, conn: asyncpg.Connection, account_id: str) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT * FROM accounts WHERE account_id = $1", account_id)
        if row is None:
            raise NotFound(f"no account {account_id!r} in sync; connect it through the connector")
        return row

    # Intacct events ------------------------------------------------------------------

    async def on_intacct_event(self, conn: asyncpg.Connection, delivery: Delivery) -> None:
        received = events_pb2.IntacctEventReceived.FromString(delivery.data)
        account_id = received.account_id
        if not await conn.fetchval(
            "SELECT connected FROM accounts WHERE account_id = $1", account_id
        ):
            raise PoisonMessage(f"event for account {account_id!r}, which is not connected")
        try:
            event = parse(received.body, received.content_type)
        except BadEvent as exc:
            raise PoisonMessage(str(exc)) from None
        synced = BY_NAME.get(event.object)
        if synced is None and event.object.lower() == RULE_OBJECT:
            # An auto-payment rule managed in Intacct: the rules service reads it now.
            rule_changed = events_pb2.IntacctRuleChanged(
                account_id=account_id,
                record_no=event.record_no,
                deleted=event.action == "delete",
            )
            rule_changed.occurred_at.GetCurrentTime()
            await self.outbox.add(conn, "sync.intacct_rule.changed", rule_changed)
            return
        if synced is None and event.object.lower() == CHARGE_QUEUE_OBJECT:
            # Not AR data: payments owns the charge queue; tell it to read the queue now.
            changed = events_pb2.ChargeQueueChanged(
                account_id=account_id,
                record_no=event.record_no or event.fields.get("id", ""),
            )
            changed.occurred_at.GetCurrentTime()
            await self.outbox.add(conn, "sync.charge_queue.changed", changed)
            return
        if synced is None:
            log.info("intacct_event_ignored", object=event.object, account_id=account_id)
            return
        await self.apply_event(conn, account_id, synced, event)
        if self.lag is not None and received.HasField("received_at"):
            waited = time.time() - received.received_at.ToMilliseconds() / 1000
            self.lag.labels(object=synced.name).observe(max(0.0, waited))

    async def apply_event(
        self, conn: asyncpg.Connection, account_id: str, synced: Synced, event: IntacctEvent
    ) -> None:
        context = await read_context(conn, account_id) or NO_CONTEXT
        if event.action == "delete":
            await self._delete(conn, account_id, synced, event.record_no, context)
            return
        fields = event.fields
        if event.carries_data:
            missing = [f for f in read_fields(synced, context.tax_field) if f not in fields]
            if not missing:
                counts = await self._apply_fields(
                    conn, account_id, synced, fields, context, from_event=True
                )
                if counts is None or not counts.ambiguous:
                    return
                # Same WHENMODIFIED second as the stored version, other data: which one
                # is newer cannot be told from the event, so Intacct's record decides.
            else:
                # A template made before the mapping read these fields (an earlier
                # release, or before the Level 2 tax field was named): applying what it
                # carries would store the record without them, so Intacct's is read.
                log.warning(
                    "intacct_event_template_outdated",
                    account_id=account_id,
                    object=synced.name,
                    missing=missing[:10],
                    fix="install the smart events that GetSmartEventSetup gives now",
                )
        fetched = await self._fetch(conn, account_id, synced, event.record_no, context)
        if fetched is None:
            return
        await self._apply_fields(conn, account_id, synced, fetched, context)

    async def _apply_fields(
        self,
        conn: asyncpg.Connection,
        account_id: str,
        synced: Synced,
        fields: dict[str, str],
        context: ReadContext,
        *,
        from_event: bool = False,
    ) -> store.Counts | None:
        try:
            row = synced.map(account_id, fields, context.tax_field)
        except Unmappable as exc:
            await record_failure(
                conn, account_id, synced.name, fields.get("RECORDNO", ""), "from_intacct", str(exc)
            )
            return None
        return await store.apply(
            conn,
            self.outbox,
            synced.table,
            [row],
            time_zone=context.time_zone,
            exact_order=from_event,
        )

    async def _fetch(
        self,
        conn: asyncpg.Connection,
        account_id: str,
        synced: Synced,
        record_no: str,
        context: ReadContext,
    ) -> dict[str, str] | None:
        """Reads one record through the connector; a refusal lands in the unsynced registry."""
        try:
            reply = await self.connector.GetRecords(
                connector_pb2.GetRecordsRequest(
                    account_id=account_id,
                    object_type=synced.object_type,
                    record_nos=[record_no],
                    fields=read_fields(synced, context.tax_field),
                ),
                timeout=60,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                raise RetryableError(f"connector {exc.code().name}: {exc.details()}") from None
            await record_failure(
                conn,
                account_id,
                synced.name,
                record_no,
                "from_intacct",
                exc.details() or exc.code().name,
            )
            return None
        if not reply.records:
            # Gone from Intacct (or out of this connection's reach): treat as deleted.
            await self._delete(conn, account_id, synced, record_no, context)
            return None
        return dict(reply.records[0].fields)

    async def _delete(
        self,
        conn: asyncpg.Connection,
        account_id: str,
        synced: Synced,
        record_no: str,
        context: ReadContext,
    ) -> None:
        """Tombstones a record deleted in Intacct; its unsynced entries are resolved."""
        await store.delete(
            conn, self.outbox, synced.table, account_id, [record_no], time_zone=context.time_zone
        )
        await resolve_deleted(conn, account_id, synced.name, [record_no])

    # Unsynced registry ----------------------------------------------------------------

    async def resync(self, account_id: str, unsynced_id: str) -> tuple[asyncpg.Record, bool]:
        async with self.pool.acquire() as conn, conn.transaction():
            entry = await self._entry(conn, account_id, unsynced_id)
            if entry["state"] != "open":
                raise FailedPrecondition(
                    f"unsynced record {unsynced_id} is already {entry['state']}; nothing to re-sync"
                )
            if entry["kind"] == "reversal_needed":
                raise FailedPrecondition(
                    "arbridge cannot reverse a payment posted to Intacct: reverse it in "
                    "Intacct (or record the refund there) as the reason says, then mark "
                    "this record synced"
                )
            if entry["direction"] == "to_intacct" and entry["object_type"] == "ARPYMT":
                # A payment Intacct refused: payments posts it again, and the entry is
                # resolved when Intacct has it (payments.payment.posted).
                requested = events_pb2.PaymentResyncRequested(
                    account_id=account_id, charge_id=entry["record_no"]
                )
                requested.occurred_at.GetCurrentTime()
                await self.outbox.add(conn, "sync.payment.resync_requested", requested)
                return entry, False
            if entry["direction"] == "to_intacct":
                # Custom-field values Intacct refused: queued again for the write-back,
                # which resolves the entry once Intacct has them.
                if not await writeback.resend_refused(
                    conn, account_id, entry["object_type"], entry["record_no"]
                ):
                    raise FailedPrecondition(
                        "the values Intacct refused for this record are not kept (refused "
                        "before this release); they are sent again when they next change, "
                        "or mark this record synced"
                    )
                return entry, False
            synced = BY_NAME.get(entry["object_type"])
            if synced is None:
                raise InvalidArgument(f"{entry['object_type']} records cannot be re-synced")
            context = await read_context(conn, account_id) or NO_CONTEXT
            try:
                fields = await self._fetch(conn, account_id, synced, entry["record_no"], context)
            except RetryableError as exc:
                raise Unavailable(
                    f"the record could not be read from Intacct just now ({exc}); "
                    "retry the re-sync in a minute"
                ) from None
            ok = (
                fields is not None
                and await self._apply_fields(conn, account_id, synced, fields, context) is not None
            )
            if ok:
                await resolve(
                    conn, account_id, synced.name, entry["record_no"], "from_intacct", "resynced"
                )
            entry = await self._entry(conn, account_id, unsynced_id)
            # A record gone from Intacct is resolved by its deletion.
            return entry, ok or entry["state"] != "open"

    async def mark_synced(
        self, account_id: str, unsynced_id: str, actor: str, reason: str
    ) -> asyncpg.Record:
        if not actor.strip() or not reason.strip():
            raise InvalidArgument("actor and reason are required: say who marks it and why")
        async with self.pool.acquire() as conn, conn.transaction():
            entry = await self._entry(conn, account_id, unsynced_id)
            await resolve(
                conn,
                account_id,
                entry["object_type"],
                entry["record_no"],
                entry["direction"],
                "marked_synced",
                actor.strip(),
                reason.strip(),
            )
            return await self._entry(conn, account_id, unsynced_id)

    async def _entry(
        self, conn: asyncpg.Connection, account_id: str, unsynced_id: str
    ) -> asyncpg.Record:
        try:
            row = await conn.fetchrow(
                "SELECT * FROM unsynced WHERE account_id = $1 AND unsynced_id = $2::uuid",
                account_id,
                unsynced_id,
            )
        except asyncpg.DataError:
            row = None
        if row is None:
            raise NotFound(f"no unsynced record {unsynced_id!r} for account {account_id!r}")
        return row

    # Smart events set-up ---------------------------------------------------------------

    async def smart_event_setup(
        self, account_id: str, base_url: str
    ) -> sync_pb2.GetSmartEventSetupResponse:
        async with self.pool.acquire() as conn:
            await self.require_account(conn, account_id)
            tax_field = (await read_context(conn, account_id) or NO_CONTEXT).tax_field
        if not base_url.startswith(("https://", "http://")):
            raise InvalidArgument("gateway_base_url must be the gateway's public http(s) URL")
        if not self.webhook_secrets:
            raise InvalidArgument("ARBRIDGE_WEBHOOK_SECRET is not configured")
        token = webhooks.url_token(self.webhook_secrets[0], account_id)
        url = f"{base_url.rstrip('/')}/v1/intacct/{account_id}/{token}"
        specs = []
        lines = [
            f"# Smart events for account {account_id}",
            "",
            "In Intacct: Platform Services > Smart Events > Add. Create one smart event per "
            "row below: action type **HTTP post**, the object and event shown, the URL "
            "(keep it secret: it carries the account's token), content type "
            "`application/xml`, and the body template exactly as given.",
            "",
        ]
        for synced in SYNCED:
            for action in ("add", "set", "delete"):
                fields = ["RECORDNO"] if action == "delete" else read_fields(synced, tax_field)
                record = "".join(f"<{f}>{{!{synced.name}.{f}!}}</{f}>" for f in fields)
                template = (
                    f"<intacct-event><object>{synced.name}</object><action>{action}"
                    f"</action><record>{record}</record></intacct-event>"
                )
                spec = sync_pb2.SmartEventSpec(
                    name=f"arbridge-{synced.name.lower()}-{action}",
                    object=synced.name,
                    actions=[action],
                    url=url,
                    content_type="application/xml",
                    body_template=template,
                )
                specs.append(spec)
                lines += [
                    f"## {spec.name}",
                    f"- object: {synced.name}",
                    f"- event: {action}",
                    f"- URL: {url}",
                    "- body:",
                    "",
                    f"    {template}",
                    "",
                ]
        lines += [
            "## Charge queue and rules (only with Platform Services and the arbridge application)",
            "",
            "Charges requested and auto-payment rules managed inside Intacct are read at once "
            "when these four exist; without them they are read every few minutes. Skip them "
            "in a company without Platform Services.",
            "",
        ]
        # What changed goes in too: the gateway stores identical bodies once, and Intacct's
        # times are whole seconds, so a body naming only the time would take two edits
        # of one second (a user's just after arbridge wrote a status) for one, and the
        # second would wait for the next periodic read. Every field a user edits differs.
        changing = {
            CHARGE_QUEUE_OBJECT: (*custom_objects.QUEUE_REQUEST_FIELDS, "status"),
            RULE_OBJECT: (*custom_objects.RULE_FIELDS, "syncstatus"),
        }
        # A deleted rule record must take its rule with it; a queue record's deletion
        # changes nothing (its charge, if any, stands).
        actions = {CHARGE_QUEUE_OBJECT: ("add", "set"), RULE_OBJECT: ("add", "set", "delete")}
        for obj, action in [(o, a) for o in changing for a in actions[o]]:
            template = (
                f"<intacct-event><object>{obj}</object><action>{action}"
                f"</action><record><RECORDNO>{{!{obj}.id!}}</RECORDNO>"
                + "".join(f"<{f}>{{!{obj}.{f}!}}</{f}>" for f in changing[obj])
                + f"<whenmodified>{{!{obj}.whenmodified!}}</whenmodified>"
                "</record></intacct-event>"
            )
            spec = sync_pb2.SmartEventSpec(
                name=f"arbridge-{obj}-{action}",
                object=obj,
                actions=[action],
                url=url,
                content_type="application/xml",
                body_template=template,
            )
            specs.append(spec)
            lines += [
                f"### {spec.name}",
                f"- object: {obj}",
                f"- event: {action}",
                f"- URL: {url}",
                "- body:",
                "",
                f"    {template}",
                "",
            ]
        return sync_pb2.GetSmartEventSetupResponse(events=specs, document="\n".join(lines))
