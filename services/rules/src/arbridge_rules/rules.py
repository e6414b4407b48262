"""Rules as stored: validation of the v1 `Rule` message, CRUD, and reading them as RuleSpec.

The parts of a rule (conditions, timing, amount, retry) are stored as their
protobuf JSON, so the stored form is the API's own; `spec()` turns a row into
the engine's `RuleSpec`. Every change bumps `revision` (optimistic
concurrency for `UpdateRule`) and asks for the account's open invoices to be
evaluated again.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import time
from typing import Any

import asyncpg
from google.protobuf import field_mask_pb2, json_format

from arbridge.common.v1 import common_pb2
from arbridge.rules.v1 import rules_pb2
from arbridge_rules import engine
from arbridge_runtime.errors import Conflict, InvalidArgument, NotFound

TRIGGERS = {
    rules_pb2.TIMING_TRIGGER_ON_CREATE_OR_UPDATE: engine.ON_CREATE_OR_UPDATE,
    rules_pb2.TIMING_TRIGGER_DAYS_AFTER_INVOICE_DATE: engine.DAYS_AFTER_INVOICE_DATE,
    rules_pb2.TIMING_TRIGGER_DAYS_BEFORE_DUE_DATE: engine.DAYS_BEFORE_DUE_DATE,
    rules_pb2.TIMING_TRIGGER_DAYS_AFTER_DUE_DATE: engine.DAYS_AFTER_DUE_DATE,
    rules_pb2.TIMING_TRIGGER_ON_DUE_DATE: engine.ON_DUE_DATE,
}
SOURCES = {
    common_pb2.INVOICE_SOURCE_AR_INVOICE: "ar_invoice",
    common_pb2.INVOICE_SOURCE_SALES_INVOICE: "sales_invoice",
}
METHOD_TYPES = {
    common_pb2.PAYMENT_METHOD_TYPE_CARD: "card",
    common_pb2.PAYMENT_METHOD_TYPE_ACH: "ach",
}
ORIGINS = {rules_pb2.RULE_ORIGIN_ARBRIDGE: "arbridge", rules_pb2.RULE_ORIGIN_INTACCT: "intacct"}
ORIGIN_ENUMS = {name: value for value, name in ORIGINS.items()}
HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
MUTABLE = ("name", "enabled", "priority", "conditions", "timing", "amount", "retry")
MAX_RULES_PER_ACCOUNT = 200
# Parsed rules by (rule id, revision); a revision never changes content, so entries
# never go stale. Bounded: cleared whole when full.
_SPECS: dict[tuple[str, int], engine.RuleSpec] = {}
_SPECS_MAX = 10_000


def _dict(value: Any) -> dict[str, Any]:
    """A jsonb column as asyncpg hands it over (text) or as a dict already."""
    loaded = json.loads(value) if isinstance(value, str | bytes) else value
    return loaded if isinstance(loaded, dict) else {}


def stored_parts(rule: rules_pb2.Rule) -> tuple[Any, ...]:
    """The stored columns of a rule, in order: name, enabled, priority, and the JSON of
    conditions, timing, amount and retry."""
    return (
        rule.name.strip(),
        rule.enabled,
        rule.priority,
        part_json(rule.conditions),
        part_json(rule.timing),
        part_json(rule.amount),
        part_json(rule.retry),
    )


def part_json(message: Any) -> str:
    """A rule part (a v1 message) as the JSON text the rules table stores."""
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True))


def validate(rule: rules_pb2.Rule) -> None:
    """Every problem of a rule at once, as one INVALID_ARGUMENT that says how to fix each."""
    problems = []
    if not rule.account_id:
        problems.append("account_id must be set")
    if not rule.name.strip() or len(rule.name) > 200:
        problems.append("name must be 1 to 200 characters")
    if rule.priority < 0 or rule.priority > 1_000_000:
        problems.append("priority must be between 0 and 1000000 (lower runs first)")
    timing = rule.timing
    if timing.trigger not in TRIGGERS:
        problems.append("timing.trigger must be set (for example TIMING_TRIGGER_ON_DUE_DATE)")
    if timing.days < 0 or timing.days > 3650:
        problems.append("timing.days must be between 0 and 3650")
    if timing.time_of_day and not HH_MM.match(timing.time_of_day):
        problems.append('timing.time_of_day must be "HH:MM" (24-hour, the account\'s time zone)')
    conditions = rule.conditions
    currencies = {
        m.currency
        for m in (conditions.min_amount, conditions.max_amount)
        if m.amount_minor or m.currency
    }
    if len(currencies) > 1:
        problems.append("conditions.min_amount and max_amount must be in one currency")
    for name, money in (
        ("min_amount", conditions.min_amount),
        ("max_amount", conditions.max_amount),
    ):
        if (money.amount_minor or money.currency) and (
            not CURRENCY.match(money.currency) or money.amount_minor < 0
        ):
            problems.append(f"conditions.{name} needs a currency code and a non-negative amount")
    if (
        conditions.HasField("min_amount")
        and conditions.HasField("max_amount")
        and conditions.min_amount.amount_minor > conditions.max_amount.amount_minor
    ):
        problems.append("conditions.min_amount is above max_amount")
    bad = [c for c in conditions.currencies if not CURRENCY.match(c)]
    if bad:
        problems.append(f"conditions.currencies must be ISO codes like USD (not {', '.join(bad)})")
    if any(s not in SOURCES for s in conditions.invoice_sources):
        problems.append(
            "conditions.invoice_sources takes INVOICE_SOURCE_AR_INVOICE or _SALES_INVOICE"
        )
    if any(t not in METHOD_TYPES for t in conditions.payment_method_types):
        problems.append("conditions.payment_method_types takes PAYMENT_METHOD_TYPE_CARD or _ACH")
    amount = rule.amount
    if amount.mode == rules_pb2.AMOUNT_MODE_UP_TO_MAXIMUM and (
        amount.maximum.amount_minor <= 0 or not CURRENCY.match(amount.maximum.currency)
    ):
        problems.append("amount.maximum (positive, with its currency) is needed for UP_TO_MAXIMUM")
    retries = list(rule.retry.retry_after_days)
    if len(retries) > 10 or any(d < 1 or d > 365 for d in retries):
        problems.append("retry.retry_after_days takes up to 10 entries of 1 to 365 days")
    if problems:
        raise InvalidArgument("; ".join(problems))


def spec(row: asyncpg.Record | dict[str, Any]) -> engine.RuleSpec:
    """The engine's view of a stored rule."""
    conditions = json_format.ParseDict(_dict(row["conditions"]), rules_pb2.Conditions())
    timing = json_format.ParseDict(_dict(row["timing"]), rules_pb2.Timing())
    amount = json_format.ParseDict(_dict(row["amount"]), rules_pb2.AmountPolicy())
    retry = json_format.ParseDict(_dict(row["retry"]), rules_pb2.RetryPolicy())
    at = None
    if timing.time_of_day:
        hours, minutes = timing.time_of_day.split(":")
        at = time(int(hours), int(minutes))
    low = conditions.min_amount if conditions.HasField("min_amount") else None
    high = conditions.max_amount if conditions.HasField("max_amount") else None
    return engine.RuleSpec(
        rule_id=row["rule_id"],
        name=row["name"],
        priority=row["priority"],
        created_at=row["created_at"],
        enabled=row["enabled"],
        customer_ids=frozenset(conditions.customer_ids),
        customer_groups=frozenset(conditions.customer_groups),
        min_amount=low.amount_minor if low is not None else None,
        max_amount=high.amount_minor if high is not None else None,
        amount_currency=low.currency
        if low is not None
        else (high.currency if high is not None else ""),
        currencies=frozenset(conditions.currencies),
        payment_terms=frozenset(conditions.payment_terms),
        entity_ids=frozenset(conditions.entity_ids),
        invoice_sources=frozenset(SOURCES[s] for s in conditions.invoice_sources),
        method_types=frozenset(METHOD_TYPES[t] for t in conditions.payment_method_types),
        trigger=TRIGGERS.get(timing.trigger, engine.ON_CREATE_OR_UPDATE),
        days=timing.days,
        time_of_day=at,
        amount_mode=(
            engine.UP_TO_MAXIMUM
            if amount.mode == rules_pb2.AMOUNT_MODE_UP_TO_MAXIMUM
            else engine.OPEN_BALANCE
        ),
        maximum_minor=amount.maximum.amount_minor if amount.HasField("maximum") else None,
        retry_after_days=tuple(retry.retry_after_days),
    )


def message(row: asyncpg.Record) -> rules_pb2.Rule:
    rule = rules_pb2.Rule(
        rule_id=row["rule_id"],
        account_id=row["account_id"],
        name=row["name"],
        enabled=row["enabled"],
        priority=row["priority"],
        conditions=json_format.ParseDict(_dict(row["conditions"]), rules_pb2.Conditions()),
        timing=json_format.ParseDict(_dict(row["timing"]), rules_pb2.Timing()),
        amount=json_format.ParseDict(_dict(row["amount"]), rules_pb2.AmountPolicy()),
        retry=json_format.ParseDict(_dict(row["retry"]), rules_pb2.RetryPolicy()),
        origin=ORIGIN_ENUMS.get(row["origin"], rules_pb2.RULE_ORIGIN_ARBRIDGE),
        revision=row["revision"],
        intacct_record_no=row["intacct_record_no"],
        sync_note=row["sync_note"],
    )
    rule.created_at.FromDatetime(row["created_at"])
    rule.updated_at.FromDatetime(row["updated_at"])
    return rule


class RuleStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, rule: rules_pb2.Rule) -> asyncpg.Record:
        validate(rule)
        async with self._pool.acquire() as conn, conn.transaction():
            count = await conn.fetchval(
                "SELECT count(*) FROM rules WHERE account_id = $1 AND NOT deleted", rule.account_id
            )
            if count >= MAX_RULES_PER_ACCOUNT:
                raise InvalidArgument(
                    f"an account has at most {MAX_RULES_PER_ACCOUNT} rules; delete unused ones"
                )
            row = await conn.fetchrow(
                "INSERT INTO rules (rule_id, account_id, name, enabled, priority, conditions,"
                " timing, amount, retry, origin) VALUES ($1, $2, $3, $4, $5, $6::jsonb,"
                " $7::jsonb, $8::jsonb, $9::jsonb, $10) RETURNING *",
                "rl_" + secrets.token_hex(10),
                rule.account_id,
                *stored_parts(rule),
                ORIGINS.get(rule.origin, "arbridge"),
            )
            await request_reevaluation(conn, rule.account_id)
        return row

    async def get(self, account_id: str, rule_id: str, conn: Any = None) -> asyncpg.Record:
        if not account_id or not rule_id:
            raise InvalidArgument("account_id and rule_id must be set")
        row = await (conn or self._pool).fetchrow(
            "SELECT * FROM rules WHERE account_id = $1 AND rule_id = $2 AND NOT deleted",
            account_id,
            rule_id,
        )
        if row is None:
            raise NotFound(f"rule {rule_id!r} does not exist in account {account_id!r}")
        return row

    async def all(self, account_id: str) -> list[asyncpg.Record]:
        if not account_id:
            raise InvalidArgument("account_id must be set")
        return list(
            await self._pool.fetch(
                "SELECT * FROM rules WHERE account_id = $1 AND NOT deleted"
                " ORDER BY priority, rule_id",
                account_id,
            )
        )

    async def update(
        self, rule: rules_pb2.Rule, mask: field_mask_pb2.FieldMask, expected_revision: int
    ) -> asyncpg.Record:
        paths = list(mask.paths) or list(MUTABLE)
        unknown = [p for p in paths if p not in MUTABLE]
        if unknown:
            raise InvalidArgument(
                f"update_mask paths {', '.join(unknown)} cannot be updated; "
                f"use {', '.join(MUTABLE)}"
            )
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM rules WHERE account_id = $1 AND rule_id = $2 AND NOT deleted"
                " FOR UPDATE",
                rule.account_id,
                rule.rule_id,
            )
            if row is None:
                raise NotFound(
                    f"rule {rule.rule_id!r} does not exist in account {rule.account_id!r}"
                )
            if expected_revision and row["revision"] != expected_revision:
                raise Conflict(
                    f"rule {rule.rule_id} is at revision {row['revision']}, not "
                    f"{expected_revision}; read it again and reapply the change"
                )
            merged = message(row)
            for path in paths:
                field = merged.DESCRIPTOR.fields_by_name[path]
                if field.message_type is not None:
                    getattr(merged, path).CopyFrom(getattr(rule, path))
                else:
                    setattr(merged, path, getattr(rule, path))
            validate(merged)
            row = await conn.fetchrow(
                "UPDATE rules SET name = $2, enabled = $3, priority = $4, conditions = $5::jsonb,"
                " timing = $6::jsonb, amount = $7::jsonb, retry = $8::jsonb,"
                " revision = revision + 1, updated_at = now() WHERE rule_id = $1 RETURNING *",
                rule.rule_id,
                *stored_parts(merged),
            )
            await request_reevaluation(conn, rule.account_id)
        return row

    async def delete(self, account_id: str, rule_id: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self.get(account_id, rule_id, conn)
            await conn.execute(
                "UPDATE rules SET deleted = true, enabled = false, revision = revision + 1,"
                " updated_at = now() WHERE rule_id = $1",
                rule_id,
            )
            await request_reevaluation(conn, account_id)

    @staticmethod
    async def specs(conn: Any, account_id: str) -> list[engine.RuleSpec]:
        """The account's enabled rules in priority order. Every invoice event asks for
        them: a rule's JSON is parsed once per revision (each change bumps it)."""
        rows = await conn.fetch(
            "SELECT rule_id, revision FROM rules WHERE account_id = $1 AND NOT deleted AND enabled",
            account_id,
        )
        found = {
            r["rule_id"]: _SPECS[(r["rule_id"], r["revision"])]
            for r in rows
            if (r["rule_id"], r["revision"]) in _SPECS
        }
        missing = [r["rule_id"] for r in rows if r["rule_id"] not in found]
        if missing:
            for row in await conn.fetch(
                "SELECT * FROM rules WHERE rule_id = ANY($1::text[]) AND NOT deleted AND enabled",
                missing,
            ):
                if len(_SPECS) >= _SPECS_MAX:
                    _SPECS.clear()
                found[row["rule_id"]] = _SPECS[(row["rule_id"], row["revision"])] = spec(row)
        return engine.ordered(found.values())


async def request_reevaluation(conn: Any, account_id: str) -> None:
    """A rule changed: evaluate the account's invoices again, and (with Platform Services)
    sync its rules with Intacct at once."""
    await conn.execute(
        "INSERT INTO accounts (account_id, reevaluate_requested_at) VALUES ($1, clock_timestamp())"
        " ON CONFLICT (account_id) DO UPDATE SET reevaluate_requested_at = clock_timestamp(),"
        " intacct_rules_next_at = now()",
        account_id,
    )
