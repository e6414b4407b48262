"""The rule engine: which rule (if any) charges an invoice, when, and how much, and why not.

Pure functions over plain facts, so that matching and timing are tested by
properties (time zones, daylight-saving changes, month ends, leap days) and
measured without a database. The service feeds them from its mirrors of the
AR store and the customers' payment methods.

Rules are tried in priority order (lower first, then by id); the first
enabled rule whose conditions all hold decides. Timing is computed on the
account's local calendar: "3 days after the invoice date at 09:00" is 09:00
on that local date, turned into UTC with the account's time zone. A local
time that does not exist (the hour skipped when clocks go forward) moves
forward by the gap; one that happens twice (clocks go back) is the first.
A rule never charges for a time that had passed before the rule existed, so
a new rule does not sweep up every old invoice at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from arbridge_runtime.money import from_minor

ON_CREATE_OR_UPDATE = "on_create_or_update"
DAYS_AFTER_INVOICE_DATE = "days_after_invoice_date"
DAYS_BEFORE_DUE_DATE = "days_before_due_date"
DAYS_AFTER_DUE_DATE = "days_after_due_date"
ON_DUE_DATE = "on_due_date"
TRIGGERS = (
    ON_CREATE_OR_UPDATE,
    DAYS_AFTER_INVOICE_DATE,
    DAYS_BEFORE_DUE_DATE,
    DAYS_AFTER_DUE_DATE,
    ON_DUE_DATE,
)
OPEN_BALANCE = "open_balance"
UP_TO_MAXIMUM = "up_to_maximum"
OPEN_STATES = frozenset({"open", "partially_paid"})


@dataclass(frozen=True)
class InvoiceFacts:
    """What the engine needs to know of an invoice."""

    record_no: str
    customer_id: str
    currency: str
    total_minor: int
    due_minor: int
    state: str  # open | partially_paid | paid | void
    term_name: str = ""
    entity_id: str = ""
    source: str = "ar_invoice"  # ar_invoice | sales_invoice
    invoice_date: date | None = None
    due_date: date | None = None
    number: str = ""
    excluded: bool = False


@dataclass(frozen=True)
class CustomerFacts:
    customer_id: str
    groups: frozenset[str] = frozenset()
    auto_pay: bool = True
    method_types: frozenset[str] = frozenset()  # card | ach


@dataclass(frozen=True)
class RuleSpec:
    """A rule as the engine reads it (amounts in minor units of ``amount_currency``)."""

    rule_id: str
    name: str
    priority: int
    created_at: datetime
    enabled: bool = True
    customer_ids: frozenset[str] = frozenset()
    customer_groups: frozenset[str] = frozenset()
    min_amount: int | None = None
    max_amount: int | None = None
    amount_currency: str = ""
    currencies: frozenset[str] = frozenset()
    payment_terms: frozenset[str] = frozenset()
    entity_ids: frozenset[str] = frozenset()
    invoice_sources: frozenset[str] = frozenset()
    method_types: frozenset[str] = frozenset()
    trigger: str = ON_CREATE_OR_UPDATE
    days: int = 0
    time_of_day: time | None = None
    amount_mode: str = OPEN_BALANCE
    maximum_minor: int | None = None
    retry_after_days: tuple[int, ...] = ()


@dataclass(frozen=True)
class Verdict:
    rule_id: str
    rule_name: str
    matched: bool
    failed_condition: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    """The engine's answer for one invoice."""

    rule: RuleSpec | None = None
    charge_at: datetime | None = None
    amount_minor: int = 0
    verdicts: tuple[Verdict, ...] = ()
    blockers: tuple[str, ...] = ()

    @property
    def charges(self) -> bool:
        return self.rule is not None and self.charge_at is not None and self.amount_minor > 0

    @property
    def summary(self) -> str:
        if self.charges:
            assert self.rule is not None
            assert self.charge_at is not None
            return (
                f"rule {self.rule.name!r} will charge it at "
                f"{self.charge_at.isoformat(timespec='minutes')}"
            )
        if self.blockers:
            return f"it will not be charged: {self.blockers[0]}"
        if not self.verdicts:
            return "it will not be charged: the account has no enabled auto-payment rule"
        return "it will not be charged: no rule matches it"


@dataclass
class Money:
    """Formats minor units for the words of a verdict."""

    currency: str
    minor: int = field(default=0)

    def __str__(self) -> str:
        return f"{from_minor(self.minor, self.currency)} {self.currency}"


def blockers(invoice: InvoiceFacts, customer: CustomerFacts | None) -> tuple[str, ...]:
    """Reasons not tied to a rule why the invoice cannot be auto-charged now."""
    found = []
    if invoice.state == "paid" or (invoice.state in OPEN_STATES and invoice.due_minor <= 0):
        found.append("the invoice is paid")
    elif invoice.state == "void":
        found.append("the invoice is void")
    if invoice.excluded:
        found.append("the invoice is excluded from auto-pay")
    if customer is None:
        found.append(f"customer {invoice.customer_id} is not known yet")
    else:
        if not customer.auto_pay:
            found.append(f"customer {invoice.customer_id} opted out of auto-pay")
        if not customer.method_types:
            found.append(f"customer {invoice.customer_id} has no payment method on file")
    return tuple(found)


def match(rule: RuleSpec, invoice: InvoiceFacts, customer: CustomerFacts) -> Verdict:
    """Whether every condition of the rule holds; the first that fails, in words, if not."""

    def fail(condition: str, detail: str) -> Verdict:
        return Verdict(rule.rule_id, rule.name, False, condition, detail)

    if not rule.enabled:
        return fail("enabled", "the rule is disabled")
    if rule.customer_ids and invoice.customer_id not in rule.customer_ids:
        return fail("customers", f"customer {invoice.customer_id} is not one of the rule's")
    if rule.customer_groups and not (rule.customer_groups & customer.groups):
        return fail(
            "customer groups",
            f"customer {invoice.customer_id} is in none of "
            f"{', '.join(sorted(rule.customer_groups))}",
        )
    if rule.min_amount is not None or rule.max_amount is not None:
        if rule.amount_currency and rule.amount_currency != invoice.currency:
            return fail(
                "amount",
                f"the rule's amount range is in {rule.amount_currency}; the invoice is in "
                f"{invoice.currency}",
            )
        amount = Money(invoice.currency, invoice.total_minor)
        if rule.min_amount is not None and invoice.total_minor < rule.min_amount:
            return fail(
                "amount",
                f"amount {amount} is below the minimum {Money(invoice.currency, rule.min_amount)}",
            )
        if rule.max_amount is not None and invoice.total_minor > rule.max_amount:
            return fail(
                "amount",
                f"amount {amount} is above the maximum {Money(invoice.currency, rule.max_amount)}",
            )
    if rule.currencies and invoice.currency not in rule.currencies:
        return fail("currency", f"currency {invoice.currency} is not one of the rule's")
    if rule.payment_terms and invoice.term_name not in rule.payment_terms:
        return fail(
            "payment terms", f"payment terms {invoice.term_name or '(none)'} are not the rule's"
        )
    if rule.entity_ids and invoice.entity_id not in rule.entity_ids:
        return fail("entity", f"entity {invoice.entity_id or '(top level)'} is not the rule's")
    if rule.invoice_sources and invoice.source not in rule.invoice_sources:
        kind = "a Sales Invoice" if invoice.source == "sales_invoice" else "an AR invoice"
        return fail("invoice source", f"it is {kind}")
    if rule.method_types and not (rule.method_types & customer.method_types):
        wanted = " or ".join(sorted(t.upper() for t in rule.method_types))
        return fail("payment method", f"the customer has no {wanted} method on file")
    return Verdict(rule.rule_id, rule.name, True)


def local_to_utc(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time; a skipped time moves forward by the gap, a
    repeated one is its first occurrence."""
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    # A wall time in a gap does not survive the round trip; zoneinfo gives the instant
    # with the offset before the gap, which lands after the gap: that is "moved forward".
    return instant


def charge_time(
    rule: RuleSpec, invoice: InvoiceFacts, zone: ZoneInfo, event_time: datetime
) -> datetime | None:
    """When the rule would charge the invoice, or None when the invoice lacks the date."""
    at = rule.time_of_day
    if rule.trigger == ON_CREATE_OR_UPDATE:
        if at is None:
            return event_time
        local = event_time.astimezone(zone)
        candidate = local_to_utc(local.date(), at, zone)
        if candidate < event_time:
            candidate = local_to_utc(local.date() + timedelta(days=1), at, zone)
        return candidate
    if rule.trigger == DAYS_AFTER_INVOICE_DATE:
        if invoice.invoice_date is None:
            return None
        day = invoice.invoice_date + timedelta(days=rule.days)
    elif rule.trigger == DAYS_BEFORE_DUE_DATE:
        if invoice.due_date is None:
            return None
        day = invoice.due_date - timedelta(days=rule.days)
    elif rule.trigger == DAYS_AFTER_DUE_DATE:
        if invoice.due_date is None:
            return None
        day = invoice.due_date + timedelta(days=rule.days)
    elif rule.trigger == ON_DUE_DATE:
        if invoice.due_date is None:
            return None
        day = invoice.due_date
    else:
        raise ValueError(f"unknown trigger {rule.trigger!r}")
    return local_to_utc(day, at or time(0, 0), zone)


def amount_for(rule: RuleSpec, invoice: InvoiceFacts) -> int:
    if rule.amount_mode == UP_TO_MAXIMUM and rule.maximum_minor is not None:
        return max(0, min(invoice.due_minor, rule.maximum_minor))
    return max(0, invoice.due_minor)


def ordered(rules: Iterable[RuleSpec]) -> list[RuleSpec]:
    return sorted(rules, key=lambda r: (r.priority, r.rule_id))


def decide(
    rules: Sequence[RuleSpec],
    invoice: InvoiceFacts,
    customer: CustomerFacts | None,
    zone: ZoneInfo,
    event_time: datetime,
) -> Decision:
    """The first matching rule in priority order and its charge, or why none charges."""
    blocked = blockers(invoice, customer)
    verdicts: list[Verdict] = []
    chosen: RuleSpec | None = None
    when: datetime | None = None
    facts = customer or CustomerFacts(invoice.customer_id)
    for rule in ordered(rules):
        verdict = match(rule, invoice, facts)
        if verdict.matched:
            when = charge_time(rule, invoice, zone, event_time)
            if when is None:
                date_name = (
                    "invoice date" if rule.trigger == DAYS_AFTER_INVOICE_DATE else "due date"
                )
                verdict = Verdict(
                    rule.rule_id, rule.name, False, "schedule", f"the invoice has no {date_name}"
                )
            elif when < rule.created_at:
                verdict = Verdict(
                    rule.rule_id,
                    rule.name,
                    False,
                    "schedule",
                    f"its charge time {when.isoformat(timespec='minutes')} passed before the "
                    "rule was created",
                )
                when = None
        verdicts.append(verdict)
        if verdict.matched:
            chosen = rule
            break
    if chosen is None or blocked:
        return Decision(verdicts=tuple(verdicts), blockers=blocked)
    return Decision(
        rule=chosen,
        charge_at=when,
        amount_minor=amount_for(chosen, invoice),
        verdicts=tuple(verdicts),
    )


def retry_time(rule: RuleSpec, failed_at: datetime, failed_attempt: int) -> datetime | None:
    """When to try again after attempt ``failed_attempt`` (1-based) failed; None: stop."""
    if failed_attempt < 1 or failed_attempt > len(rule.retry_after_days):
        return None
    return failed_at + timedelta(days=rule.retry_after_days[failed_attempt - 1])
