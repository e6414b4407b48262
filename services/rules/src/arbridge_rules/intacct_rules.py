"""Auto-payment rules managed inside Intacct, synced both ways with the rules service.

With Platform Services and the arbridge (BlueSnap) application, Intacct users
keep rules as records of the BlueSnapARRule custom object. For each such
account a pass (every ``poll_seconds``, and at once when sync forwards an
Intacct event about a rule record):

* pulls records changed since the last read: a new record becomes a rule
  (origin INTACCT), a changed one changes its rule; the record gets the rule's
  id and "In force" (or why arbridge refused it) written back;
* pushes rules changed in arbridge: a new rule becomes a record, a changed one
  updates it, a deleted one disables it.

What both sides last agreed on is kept per rule (a hash of the record's rule
fields and the arbridge revision), so each side's own echo is not a change.
When both sides changed a rule since, the later change wins (Intacct's
WHENMODIFIED against arbridge's last update) and the conflict is reported on
the rule (``sync_note``) and on the record (``syncstatus``). A rule that uses
conditions the Intacct object has no fields for (customer groups, payment
terms, entities, invoice sources, payment method types) stays in arbridge
only, and says so; a record arbridge cannot read as a rule is refused on the
record with the reason, and nothing changes in arbridge (a rule it had stays
as last accepted; edited back to it, the record says "In force" again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.events.v1 import events_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge_rules.rules import message, request_reevaluation, stored_parts, validate
from arbridge_runtime.custom_objects import RULE_FIELDS
from arbridge_runtime.errors import DomainError, InvalidArgument
from arbridge_runtime.money import from_minor, to_minor
from arbridge_runtime.paging import streamed_records

log = structlog.get_logger(__name__)

RULE_OBJECT = common_pb2.OBJECT_TYPE_INTACCT_RULE
TRIGGER_WORDS = {
    rules_pb2.TIMING_TRIGGER_ON_CREATE_OR_UPDATE: "On creation or update",
    rules_pb2.TIMING_TRIGGER_DAYS_AFTER_INVOICE_DATE: "Days after invoice date",
    rules_pb2.TIMING_TRIGGER_DAYS_BEFORE_DUE_DATE: "Days before due date",
    rules_pb2.TIMING_TRIGGER_DAYS_AFTER_DUE_DATE: "Days after due date",
    rules_pb2.TIMING_TRIGGER_ON_DUE_DATE: "On due date",
}
TRIGGERS = {words.lower(): trigger for trigger, words in TRIGGER_WORDS.items()}
MODE_WORDS = {
    rules_pb2.AMOUNT_MODE_OPEN_BALANCE: "Open balance",
    rules_pb2.AMOUNT_MODE_UP_TO_MAXIMUM: "Up to maximum",
}
MODES = {words.lower(): mode for mode, words in MODE_WORDS.items()}
READ_OVERLAP_SECONDS = 2


class NotExpressible(Exception):
    """A rule the Intacct object cannot hold."""


def content_hash(fields: dict[str, str]) -> str:
    canonical = {k: _canonical(k, fields.get(k, "")) for k in RULE_FIELDS}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _canonical(name: str, value: str) -> str:
    value = (value or "").strip()
    if name in ("minamount", "maxamount", "maximum") and value:
        try:
            return str(Decimal(value).normalize())
        except InvalidOperation:
            return value
    if name in ("customerids", "currencies", "retrydays"):
        return ",".join(p.strip() for p in value.split(",") if p.strip())
    if name == "enabled":
        return value.lower()
    return value


def to_fields(rule: rules_pb2.Rule) -> dict[str, str]:
    """The record fields of a rule; NotExpressible when the object cannot hold it."""
    conditions = rule.conditions
    missing = [
        words
        for words, present in (
            ("customer groups", conditions.customer_groups),
            ("payment terms", conditions.payment_terms),
            ("entities", conditions.entity_ids),
            ("invoice sources", conditions.invoice_sources),
            ("payment method types", conditions.payment_method_types),
        )
        if present
    ]
    if missing:
        raise NotExpressible(
            f"the Intacct rule object has no fields for {', '.join(missing)}; "
            "the rule is kept in arbridge only"
        )
    amount_currency = (
        conditions.min_amount.currency
        or conditions.max_amount.currency
        or rule.amount.maximum.currency
    )

    def amount(money: common_pb2.Money, present: bool) -> str:
        return from_minor(money.amount_minor, money.currency) if present else ""

    return {
        "name": rule.name,
        "enabled": "true" if rule.enabled else "false",
        "priority": str(rule.priority),
        "customerids": ",".join(conditions.customer_ids),
        "currencies": ",".join(conditions.currencies),
        "minamount": amount(conditions.min_amount, conditions.HasField("min_amount")),
        "maxamount": amount(conditions.max_amount, conditions.HasField("max_amount")),
        "amountcurrency": amount_currency,
        "trigger": TRIGGER_WORDS.get(rule.timing.trigger, ""),
        "days": str(rule.timing.days),
        "timeofday": rule.timing.time_of_day,
        "amountmode": MODE_WORDS.get(rule.amount.mode, "Open balance"),
        "maximum": amount(rule.amount.maximum, rule.amount.HasField("maximum")),
        "retrydays": ",".join(str(d) for d in rule.retry.retry_after_days),
    }


def from_fields(account_id: str, fields: dict[str, str]) -> rules_pb2.Rule:
    """A rule from a record's fields; DomainError (InvalidArgument) saying what is wrong."""
    problems: list[str] = []

    def number(name: str, default: int = 0) -> int:
        text = fields.get(name, "").strip()
        if not text:
            return default
        try:
            return int(Decimal(text))
        except InvalidOperation:
            problems.append(f"{name} {text!r} is not a number")
            return default

    currency = fields.get("amountcurrency", "").strip().upper()

    def money(name: str) -> common_pb2.Money | None:
        text = fields.get(name, "").strip()
        if not text:
            return None
        if not currency:
            problems.append(f"{name} needs amountcurrency")
            return None
        try:
            return common_pb2.Money(amount_minor=to_minor(text, currency), currency=currency)
        except ValueError:
            problems.append(f"{name} {text!r} is not an amount in {currency}")
            return None

    trigger_text = fields.get("trigger", "").strip().lower()
    trigger = TRIGGERS.get(trigger_text)
    if trigger is None:
        problems.append(
            f"trigger must be one of: {', '.join(TRIGGER_WORDS.values())} "
            f"(not {fields.get('trigger', '')!r})"
        )
    mode_text = fields.get("amountmode", "").strip().lower() or "open balance"
    mode = MODES.get(mode_text)
    if mode is None:
        problems.append(f"amountmode must be Open balance or Up to maximum (not {mode_text!r})")
    retry: list[int] = []
    for part in fields.get("retrydays", "").split(","):
        if part.strip():
            try:
                retry.append(int(part))
            except ValueError:
                problems.append(f"retrydays must be whole days separated by commas ({part!r})")
    enabled_text = fields.get("enabled", "true").strip().lower() or "true"
    if enabled_text not in ("true", "false"):
        problems.append("enabled must be true or false")
    conditions = rules_pb2.Conditions(
        customer_ids=[c.strip() for c in fields.get("customerids", "").split(",") if c.strip()],
        currencies=[
            c.strip().upper() for c in fields.get("currencies", "").split(",") if c.strip()
        ],
    )
    low, high, maximum = money("minamount"), money("maxamount"), money("maximum")
    if low is not None:
        conditions.min_amount.CopyFrom(low)
    if high is not None:
        conditions.max_amount.CopyFrom(high)
    rule = rules_pb2.Rule(
        account_id=account_id,
        name=fields.get("name", "").strip(),
        enabled=enabled_text == "true",
        priority=number("priority", 100),
        conditions=conditions,
        timing=rules_pb2.Timing(
            trigger=trigger or rules_pb2.TIMING_TRIGGER_UNSPECIFIED,
            days=number("days"),
            time_of_day=fields.get("timeofday", "").strip(),
        ),
        amount=rules_pb2.AmountPolicy(mode=mode or rules_pb2.AMOUNT_MODE_UNSPECIFIED),
        retry=rules_pb2.RetryPolicy(retry_after_days=retry),
        origin=rules_pb2.RULE_ORIGIN_INTACCT,
    )
    if maximum is not None:
        rule.amount.maximum.CopyFrom(maximum)
    if problems:
        raise InvalidArgument("; ".join(problems))
    validate(rule)
    return rule


class IntacctRules:
    def __init__(
        self,
        pool: asyncpg.Pool,
        connector: connector_pb2_grpc.ConnectorServiceAsyncStub,
        *,
        poll_seconds: float = 300.0,
    ) -> None:
        self._pool = pool
        self._connector = connector
        self._poll = poll_seconds

    async def on_rule_event(self, conn: Any, delivery: Any) -> None:
        """``sync.intacct_rule.changed``: read the account's rule records now."""
        event = events_pb2.IntacctRuleChanged.FromString(delivery.data)
        if event.deleted and event.record_no:
            # Deleted in Intacct: the rule goes too (reads of records modified since
            # cannot see a deletion, so this event is how it is known).
            gone = await conn.fetchval(
                "UPDATE rules SET deleted = true, enabled = false, revision = revision + 1,"
                " synced_revision = revision + 1, sync_note = 'deleted in Intacct',"
                " updated_at = now() WHERE account_id = $1 AND intacct_record_no = $2"
                " AND NOT deleted RETURNING rule_id",
                event.account_id,
                event.record_no,
            )
            if gone:
                await request_reevaluation(conn, event.account_id)
                log.info("intacct_rules.deleted", rule_id=gone, record_no=event.record_no)
            return
        await conn.execute(
            "UPDATE accounts SET intacct_rules_next_at = now() WHERE account_id = $1",
            event.account_id,
        )

    async def sync_due(self, limit: int = 5) -> int:
        """One two-way pass for each account that is due; returns how many it did."""
        accounts = await self._pool.fetch(
            "UPDATE accounts SET intacct_rules_next_at = now() + make_interval(secs => $2)"
            " WHERE account_id IN (SELECT account_id FROM accounts WHERE connected"
            " AND platform_services AND intacct_rules_next_at <= now()"
            " ORDER BY intacct_rules_next_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " RETURNING account_id, intacct_rules_cursor",
            limit,
            self._poll,
        )
        for account in accounts:
            try:
                await self._pull(account["account_id"], account["intacct_rules_cursor"])
                await self._push(account["account_id"])
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "intacct_rules.later", account_id=account["account_id"], code=err.code().name
                )
            except Exception:
                # One account's trouble (a record Intacct refused to create, say) must not
                # stop the others; the account is tried again at its next pass.
                log.exception("intacct_rules.pass_failed", account_id=account["account_id"])
        return len(accounts)

    # Intacct -> arbridge --------------------------------------------------------------

    async def _pull(self, account_id: str, cursor: datetime | None) -> None:
        request = connector_pb2.StreamRecordsRequest(account_id=account_id, object_type=RULE_OBJECT)
        if cursor is not None:
            since = Timestamp()
            since.FromDatetime(cursor.replace(microsecond=0))
            since.seconds -= READ_OVERLAP_SECONDS
            request.modified_since.CopyFrom(since)
        newest = cursor
        async for item in self._connector.StreamRecords(request, timeout=300):
            for record in streamed_records(item):
                modified = (
                    record.when_modified.ToDatetime(tzinfo=UTC)
                    if record.HasField("when_modified")
                    else datetime.now(UTC)
                )
                await self._take(account_id, record.record_no, dict(record.fields), modified)
                newest = modified if newest is None else max(newest, modified)
        await self._pool.execute(
            "UPDATE accounts SET intacct_rules_cursor = $2 WHERE account_id = $1",
            account_id,
            newest,
        )

    async def _take(
        self, account_id: str, record_no: str, fields: dict[str, str], modified: datetime
    ) -> None:
        digest = content_hash(fields)
        row = await self._pool.fetchrow(
            "SELECT * FROM rules WHERE account_id = $1 AND intacct_record_no = $2",
            account_id,
            record_no,
        )
        if row is None and fields.get("arbridgeid"):
            # Our own record whose creation we did not see answered (a crash, or a repeat
            # refused as done): link it to its rule instead of taking it as a new one.
            row = await self._pool.fetchrow(
                "UPDATE rules SET intacct_record_no = $3 WHERE account_id = $1"
                " AND rule_id = $2 AND intacct_record_no = '' RETURNING *",
                account_id,
                fields["arbridgeid"],
                record_no,
            )
        if row is not None and row["synced_hash"] == digest:
            # Nothing changed in Intacct (or it is the echo of our own write); or the
            # record was refused since and is now back to the rule arbridge holds.
            await self._restored(account_id, record_no, row, modified)
            return
        try:
            rule = from_fields(account_id, fields)
        except DomainError as err:
            kept = row["rule_id"] if row is not None and not row["deleted"] else ""
            await self._refuse(account_id, record_no, digest, err.message, kept, modified)
            return
        if row is not None and row["revision"] != row["synced_revision"] and not row["deleted"]:
            # Changed on both sides since they last agreed: the later change wins.
            if row["updated_at"] > modified:
                note = (
                    f"conflict: changed in both arbridge and Intacct; arbridge's change "
                    f"({row['updated_at'].isoformat(timespec='seconds')}) was later and is kept"
                )
                await self._pool.execute(
                    "UPDATE rules SET sync_note = $2 WHERE rule_id = $1", row["rule_id"], note
                )
                log.info("intacct_rules.conflict", rule_id=row["rule_id"], kept="arbridge")
                return  # the push below writes arbridge's version over the record
            note = (
                f"conflict: changed in both arbridge and Intacct; Intacct's change "
                f"({modified.isoformat(timespec='seconds')}) was later and is kept"
            )
            log.info("intacct_rules.conflict", rule_id=row["rule_id"], kept="intacct")
        else:
            note = ""
        async with self._pool.acquire() as conn, conn.transaction():
            if row is None:
                saved = await conn.fetchrow(
                    "INSERT INTO rules (rule_id, account_id, name, enabled, priority, conditions,"
                    " timing, amount, retry, origin, intacct_record_no, synced_hash,"
                    " synced_revision, sync_note) VALUES ($1, $2, $3, $4, $5, $6::jsonb,"
                    " $7::jsonb, $8::jsonb, $9::jsonb, 'intacct', $10, $11, 1, $12) RETURNING *",
                    "rl_" + secrets.token_hex(10),
                    account_id,
                    *stored_parts(rule),
                    record_no,
                    digest,
                    note,
                )
            else:
                saved = await conn.fetchrow(
                    "UPDATE rules SET name = $2, enabled = $3, priority = $4,"
                    " conditions = $5::jsonb, timing = $6::jsonb, amount = $7::jsonb,"
                    " retry = $8::jsonb, deleted = false, revision = revision + 1,"
                    " synced_revision = revision + 1, synced_hash = $9, sync_note = $10,"
                    " updated_at = now() WHERE rule_id = $1 RETURNING *",
                    row["rule_id"],
                    *stored_parts(rule),
                    digest,
                    note,
                )
            await conn.execute(
                "DELETE FROM intacct_rule_refusals WHERE account_id = $1 AND record_no = $2",
                account_id,
                record_no,
            )
            await request_reevaluation(conn, account_id)
        status = f"In force in arbridge as {saved['rule_id']}" + (f" ({note})" if note else "")
        await self._write(
            account_id,
            record_no,
            {"arbridgeid": saved["rule_id"], "syncstatus": status[:1000]},
            f"status:{saved['rule_id']}:{saved['revision']}",
        )
        log.info("intacct_rules.pulled", rule_id=saved["rule_id"], record_no=record_no)

    async def _refuse(
        self,
        account_id: str,
        record_no: str,
        digest: str,
        reason: str,
        kept_rule_id: str,
        modified: datetime,
    ) -> None:
        """Says on the record why arbridge cannot read it (once per content). A rule the
        record had before stays as arbridge last accepted it (``kept_rule_id``)."""
        known = await self._pool.fetchval(
            "SELECT content_hash FROM intacct_rule_refusals WHERE account_id = $1"
            " AND record_no = $2",
            account_id,
            record_no,
        )
        if known == digest:
            return
        outcome = (
            f"arbridge keeps the rule as it last accepted it ({kept_rule_id})"
            if kept_rule_id
            else "the rule is not in force"
        )
        message_text = f"Refused by arbridge: {reason}. Fix the record; {outcome}."
        # Keyed by this version of the record too: the same content refused again after
        # an accepted edit is a new write, not a repeat for Intacct to skip.
        await self._write(
            account_id,
            record_no,
            {"syncstatus": message_text[:1000]},
            f"refused:{record_no}:{digest[:16]}:{int(modified.timestamp())}",
        )
        await self._pool.execute(
            "INSERT INTO intacct_rule_refusals (account_id, record_no, content_hash, message)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, record_no) DO UPDATE"
            " SET content_hash = EXCLUDED.content_hash, message = EXCLUDED.message",
            account_id,
            record_no,
            digest,
            reason,
        )

    async def _restored(
        self, account_id: str, record_no: str, row: asyncpg.Record, modified: datetime
    ) -> None:
        """A refused record edited back to the rule arbridge holds: the refusal goes, and
        the record says the rule is in force again."""
        refused = await self._pool.fetchval(
            "SELECT true FROM intacct_rule_refusals WHERE account_id = $1 AND record_no = $2",
            account_id,
            record_no,
        )
        if not refused or row["deleted"]:
            return
        await self._write(
            account_id,
            record_no,
            {"syncstatus": f"In force in arbridge as {row['rule_id']}"},
            f"restored:{row['rule_id']}:{row['revision']}:{int(modified.timestamp())}",
        )
        await self._pool.execute(
            "DELETE FROM intacct_rule_refusals WHERE account_id = $1 AND record_no = $2",
            account_id,
            record_no,
        )
        log.info("intacct_rules.restored", rule_id=row["rule_id"], record_no=record_no)

    # arbridge -> Intacct --------------------------------------------------------------

    async def _push(self, account_id: str) -> None:
        rows = await self._pool.fetch(
            "SELECT * FROM rules WHERE account_id = $1 AND revision <> synced_revision"
            " ORDER BY updated_at",
            account_id,
        )
        for row in rows:
            rule = message(row)
            if row["deleted"]:
                digest = row["synced_hash"]
                if row["intacct_record_no"]:
                    await self._write(
                        account_id,
                        row["intacct_record_no"],
                        {"enabled": "false", "syncstatus": "Deleted in arbridge"},
                        f"deleted:{row['rule_id']}:{row['revision']}",
                    )
                    # What the record holds now, so its echo is not taken for an edit (an
                    # edit made in Intacct afterwards brings the rule back, disabled).
                    with contextlib.suppress(NotExpressible):
                        digest = content_hash({**to_fields(rule), "enabled": "false"})
                await self._agreed(row, digest, "")
                continue
            try:
                fields = to_fields(rule)
            except NotExpressible as err:
                await self._agreed(row, row["synced_hash"], f"not in Intacct: {err}")
                continue
            note = row["sync_note"] if row["sync_note"].startswith("conflict") else ""
            status = f"In force in arbridge as {row['rule_id']}" + (f" ({note})" if note else "")
            values = {**fields, "arbridgeid": row["rule_id"], "syncstatus": status[:1000]}
            record_no = row["intacct_record_no"]
            if record_no:
                await self._write(
                    account_id, record_no, values, f"rule:{row['rule_id']}:{row['revision']}"
                )
            else:
                record_no = await self._create(account_id, values, row)
            await self._agreed(row, content_hash(fields), note, record_no)
            log.info("intacct_rules.pushed", rule_id=row["rule_id"], record_no=record_no)

    async def _agreed(
        self, row: asyncpg.Record, digest: str, note: str, record_no: str | None = None
    ) -> None:
        await self._pool.execute(
            "UPDATE rules SET synced_revision = $2, synced_hash = $3, sync_note = $4,"
            " intacct_record_no = COALESCE(NULLIF($5, ''), intacct_record_no)"
            " WHERE rule_id = $1 AND revision = $2",
            row["rule_id"],
            row["revision"],
            digest,
            note,
            record_no,
        )

    async def _send(self, account_id: str, write: connector_pb2.RecordWrite) -> Any:
        """One write of a rule record through the connector; its result."""
        reply = await self._connector.WriteRecords(
            connector_pb2.WriteRecordsRequest(
                account_id=account_id, object_type=RULE_OBJECT, writes=[write]
            ),
            timeout=120,
        )
        return reply.results[0] if reply.results else None

    async def _create(self, account_id: str, values: dict[str, str], row: asyncpg.Record) -> str:
        """Creates the record of a rule made in arbridge; its record number ("" when a
        repeated create was refused as done: the next pull links the record by its
        ``arbridgeid``)."""
        result = await self._send(
            account_id,
            connector_pb2.RecordWrite(
                operation=connector_pb2.WRITE_OPERATION_CREATE,
                fields=values,
                idempotency_key=f"rule-create:{row['rule_id']}",
            ),
        )
        if result is None or not (result.ok or result.already_applied):
            reason = (
                "; ".join(e.description2 or e.description for e in result.errors) if result else ""
            )
            raise RuntimeError(f"Intacct refused the rule record: {reason}")
        return str(result.record_no)

    async def _write(
        self, account_id: str, record_no: str, values: dict[str, str], key: str
    ) -> None:
        result = await self._send(
            account_id,
            connector_pb2.RecordWrite(
                operation=connector_pb2.WRITE_OPERATION_UPDATE,
                record_no=record_no,
                fields=values,
                idempotency_key=key[:100],
            ),
        )
        if result is None or not (result.ok or result.already_applied):
            reason = (
                "; ".join(e.description2 or e.description for e in result.errors) if result else ""
            )
            log.warning("intacct_rules.write_refused", record_no=record_no, reason=reason[:300])
