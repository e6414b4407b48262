"""Answers to "why": PreviewRule, ExplainInvoice, and the auto-pay choices that feed them.

`explain` puts together what the engine decides now, what the schedule holds
and every attempt made, in the words a person reads; `preview` runs one rule
(stored or draft) over the account's open invoices without changing anything.
Opt-outs and exclusions are stored here and make the touched invoices be
evaluated again at once.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf import json_format

from arbridge.rules.v1 import rules_pb2
from arbridge_rules import engine
from arbridge_rules.rules import RuleStore, spec, validate
from arbridge_rules.scheduler import Scheduler, invoice_facts, zone_of
from arbridge_runtime.errors import InvalidArgument, NotFound

MAX_PREVIEW = 500
PREVIEW_SCAN = 100_000


@dataclass
class Explanation:
    outcome: int
    summary: str
    next_charge_at: datetime | None = None
    rule_id: str = ""
    verdicts: list[engine.Verdict] = field(default_factory=list)
    attempts: list[asyncpg.Record] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)


@dataclass
class Preview:
    items: list[tuple[str, str, datetime, int, str]]  # record no, customer, when, minor, cur
    matching: int


class Insight:
    def __init__(self, pool: asyncpg.Pool, scheduler: Scheduler, store: RuleStore) -> None:
        self._pool = pool
        self._scheduler = scheduler
        self._store = store

    async def explain(self, account_id: str, record_no: str) -> Explanation:
        if not account_id or not record_no:
            raise InvalidArgument("account_id and invoice_record_no must be set")
        async with self._pool.acquire() as conn:
            facts = await self._scheduler.facts(conn, account_id, record_no)
            if facts is None:
                raise NotFound(
                    f"invoice {record_no!r} is not known to the rules service of account "
                    f"{account_id!r} yet (it learns invoices from sync's events)"
                )
            rules = await RuleStore.specs(conn, account_id)
            schedule = await conn.fetchrow(
                "SELECT * FROM schedule WHERE account_id = $1 AND invoice_record_no = $2",
                account_id,
                record_no,
            )
            attempts = list(
                await conn.fetch(
                    "SELECT * FROM attempts WHERE account_id = $1 AND invoice_record_no = $2"
                    " ORDER BY attempted_at, attempt",
                    account_id,
                    record_no,
                )
            )
        decision = engine.decide(rules, facts.invoice, facts.customer, facts.zone, facts.changed_at)
        found = Explanation(
            outcome=rules_pb2.EXPLANATION_OUTCOME_WILL_NOT_CHARGE,
            summary=decision.summary,
            verdicts=list(decision.verdicts),
            attempts=attempts,
            blockers=list(decision.blockers),
        )
        state = schedule["state"] if schedule is not None else ""
        succeeded = [a for a in attempts if a["outcome"] == "succeeded"]
        failed = [a for a in attempts if a["outcome"] == "failed"]
        if state == "done" or succeeded:
            last = succeeded[-1] if succeeded else None
            found.outcome = rules_pb2.EXPLANATION_OUTCOME_CHARGED
            found.rule_id = schedule["rule_id"] if schedule else ""
            found.summary = (
                f"it was charged by a rule (charge {last['charge_id']}, "
                f"{last['attempted_at'].isoformat(timespec='minutes')})"
                if last
                else "it was charged by a rule"
            )
        elif state == "stopped":
            found.outcome = rules_pb2.EXPLANATION_OUTCOME_FAILED
            found.rule_id = schedule["rule_id"]
            reason = failed[-1]["failure_reason"] if failed else ""
            found.summary = (
                f"auto-charging stopped after {len(failed)} failed attempt(s); the last "
                f"failed because: {reason}"
            )
        elif state in ("scheduled", "charging") and decision.charges:
            found.outcome = rules_pb2.EXPLANATION_OUTCOME_WILL_CHARGE
            found.rule_id = schedule["rule_id"]
            found.next_charge_at = schedule["charge_at"]
            when = schedule["charge_at"]
            found.summary = (
                f"rule {decision.rule.name!r} will charge it"  # type: ignore[union-attr]
                + (f" at {when.isoformat(timespec='minutes')}" if when else " now")
            )
            if failed:
                found.summary += (
                    f" (attempt {schedule['attempt']}, after a failed attempt: "
                    f"{failed[-1]['failure_reason']})"
                )
        elif failed:
            found.summary = (
                f"{decision.summary}; an earlier attempt failed: " + (failed[-1]["failure_reason"])
            )
        return found

    async def preview(
        self, account_id: str, rule_id: str, draft: rules_pb2.Rule | None, limit: int
    ) -> Preview:
        if not account_id:
            raise InvalidArgument("account_id must be set")
        if limit < 0 or limit > MAX_PREVIEW:
            raise InvalidArgument(f"limit must be between 0 and {MAX_PREVIEW} (0 for 50)")
        limit = limit or 50
        if rule_id:
            rule = spec(await self._store.get(account_id, rule_id))
        elif draft is not None and draft.ByteSize():
            draft.account_id = draft.account_id or account_id
            if draft.account_id != account_id:
                raise InvalidArgument("draft.account_id must be the request's account_id")
            validate(draft)
            rule = spec(_draft_row(draft))
        else:
            raise InvalidArgument("give rule_id, or a draft rule in draft")
        rule = dataclasses.replace(rule, enabled=True)
        items: list[tuple[str, str, datetime, int, str]] = []
        matching = 0
        async with self._pool.acquire() as conn:
            zone = zone_of(
                await conn.fetchval(
                    "SELECT time_zone FROM accounts WHERE account_id = $1", account_id
                )
            )
            rows = await conn.fetch(
                "SELECT i.*, c.groups, m.types, o.customer_id IS NOT NULL AS opted_out"
                " FROM invoices i LEFT JOIN customers c ON c.account_id = i.account_id"
                " AND c.customer_id = i.customer_id LEFT JOIN customer_methods m"
                " ON m.account_id = i.account_id AND m.customer_id = i.customer_id"
                " LEFT JOIN autopay_opt_outs o ON o.account_id = i.account_id"
                " AND o.customer_id = i.customer_id WHERE i.account_id = $1"
                " AND i.state IN ('open', 'partially_paid') AND i.due_minor > 0"
                " ORDER BY i.due_date NULLS LAST, i.record_no LIMIT $2",
                account_id,
                PREVIEW_SCAN,
            )
        for row in rows:
            customer = engine.CustomerFacts(
                row["customer_id"],
                frozenset(row["groups"] or ()),
                not row["opted_out"],
                frozenset(row["types"] or ()),
            )
            decision = engine.decide([rule], invoice_facts(row), customer, zone, row["changed_at"])
            if not decision.charges:
                continue
            matching += 1
            if len(items) < limit:
                assert decision.charge_at is not None
                items.append(
                    (
                        row["record_no"],
                        row["customer_id"],
                        decision.charge_at,
                        decision.amount_minor,
                        row["currency"],
                    )
                )
        return Preview(items, matching)

    async def set_auto_pay(self, account_id: str, customer_id: str, enabled: bool) -> None:
        if not account_id or not customer_id:
            raise InvalidArgument("account_id and customer_id must be set")
        async with self._pool.acquire() as conn, conn.transaction():
            if enabled:
                await conn.execute(
                    "DELETE FROM autopay_opt_outs WHERE account_id = $1 AND customer_id = $2",
                    account_id,
                    customer_id,
                )
            else:
                await conn.execute(
                    "INSERT INTO autopay_opt_outs (account_id, customer_id) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING",
                    account_id,
                    customer_id,
                )
            await self._scheduler.evaluate_customer(conn, account_id, customer_id)

    async def set_excluded(self, account_id: str, record_no: str, excluded: bool) -> None:
        if not account_id or not record_no:
            raise InvalidArgument("account_id and invoice_record_no must be set")
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "UPDATE invoices SET excluded = $3 WHERE account_id = $1 AND record_no = $2"
                " RETURNING true",
                account_id,
                record_no,
                excluded,
            )
            if not found:
                raise NotFound(
                    f"invoice {record_no!r} is not known to the rules service of account "
                    f"{account_id!r} yet"
                )
            await self._scheduler.evaluate_invoice(conn, account_id, record_no)

    async def scheduled(self, account_id: str, size: int, after: str) -> list[asyncpg.Record]:
        """Scheduled charges soonest first, ``size + 1`` of them; ``after`` is a page token."""
        if not account_id:
            raise InvalidArgument("account_id must be set")
        when, _, record_no = after.partition("|")
        start: Any = datetime.fromisoformat(when) if when else datetime.min.replace(tzinfo=UTC)
        return list(
            await self._pool.fetch(
                "SELECT * FROM schedule WHERE account_id = $1 AND state = 'scheduled'"
                " AND (charge_at, invoice_record_no) > ($2, $3)"
                " ORDER BY charge_at, invoice_record_no LIMIT $4",
                account_id,
                start,
                record_no,
                size + 1,
            )
        )


def _draft_row(draft: rules_pb2.Rule) -> dict[str, Any]:
    def part(message: Any) -> dict[str, Any]:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    return {
        "rule_id": draft.rule_id or "draft-" + secrets.token_hex(4),
        "name": draft.name,
        "priority": draft.priority,
        "enabled": True,
        # A draft is judged as if created now: times already passed are not charged.
        "created_at": datetime.now(UTC),
        "conditions": part(draft.conditions),
        "timing": part(draft.timing),
        "amount": part(draft.amount),
        "retry": part(draft.retry),
    }
