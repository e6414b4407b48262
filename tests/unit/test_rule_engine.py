"""Properties of rule matching and timing: time zones, DST changes, month ends, leap days."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from arbridge_rules.engine import (
    DAYS_AFTER_DUE_DATE,
    DAYS_AFTER_INVOICE_DATE,
    DAYS_BEFORE_DUE_DATE,
    ON_CREATE_OR_UPDATE,
    ON_DUE_DATE,
    UP_TO_MAXIMUM,
    CustomerFacts,
    InvoiceFacts,
    RuleSpec,
    charge_time,
    decide,
    local_to_utc,
    match,
    retry_time,
)

# Zones with DST both ways, half- and quarter-hour offsets, a midnight DST change
# (Santiago) and the far ends of the offsets.
ZONES = [
    "UTC",
    "America/Los_Angeles",
    "America/New_York",
    "America/St_Johns",
    "America/Santiago",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
]
zones = st.sampled_from(ZONES).map(ZoneInfo)
# Dates around leap days, month ends and DST changes are all in this range.
days = st.dates(min_value=date(2023, 1, 1), max_value=date(2030, 12, 31))
times = st.times().map(lambda t: t.replace(second=0, microsecond=0, tzinfo=None))
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _invoice(**kw: object) -> InvoiceFacts:
    values: dict[str, object] = {
        "record_no": "1",
        "customer_id": "C1",
        "currency": "USD",
        "total_minor": 10_000,
        "due_minor": 10_000,
        "state": "open",
    }
    values.update(kw)
    return InvoiceFacts(**values)  # type: ignore[arg-type]


def _rule(**kw: object) -> RuleSpec:
    values: dict[str, object] = {
        "rule_id": "r1",
        "name": "rule",
        "priority": 1,
        "created_at": EPOCH,
    }
    values.update(kw)
    return RuleSpec(**values)  # type: ignore[arg-type]


CARD_CUSTOMER = CustomerFacts("C1", method_types=frozenset({"card"}))


@given(day=days, at=times, zone=zones)
@settings(max_examples=600)
def test_a_local_time_lands_on_its_date_and_moves_forward_only_through_a_gap(
    day: date, at: time, zone: ZoneInfo
) -> None:
    instant = local_to_utc(day, at, zone)
    assert instant.tzinfo is UTC
    local = instant.astimezone(zone)
    wanted = datetime.combine(day, at)
    got = local.replace(tzinfo=None)
    if got != wanted:
        # Only a wall time that does not exist moves, forward, by at most the gap (1 h).
        assert wanted < got <= wanted + timedelta(hours=1)
        roundtrip = wanted.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)
        assert roundtrip.replace(tzinfo=None) != wanted
    else:
        # A repeated wall time is its first occurrence.
        later = wanted.replace(tzinfo=zone, fold=1).astimezone(UTC)
        assert instant <= later


@given(invoice_date=days, n=st.integers(0, 400), at=times, zone=zones)
@settings(max_examples=400)
def test_days_after_the_invoice_date_is_that_many_local_calendar_days(
    invoice_date: date, n: int, at: time, zone: ZoneInfo
) -> None:
    rule = _rule(trigger=DAYS_AFTER_INVOICE_DATE, days=n, time_of_day=at)
    when = charge_time(rule, _invoice(invoice_date=invoice_date), zone, EPOCH)
    assert when is not None
    local = when.astimezone(zone)
    assert (local.date() - invoice_date).days == n or (
        # a skipped wall time just before midnight can only move into the next day
        (local.date() - invoice_date).days == n + 1 and local.time() < time(1, 0)
    )


@given(due=days, n=st.integers(0, 60), zone=zones)
def test_due_date_triggers_count_local_days_around_the_due_date(
    due: date, n: int, zone: ZoneInfo
) -> None:
    invoice = _invoice(due_date=due)
    on_due = charge_time(_rule(trigger=ON_DUE_DATE), invoice, zone, EPOCH)
    before = charge_time(_rule(trigger=DAYS_BEFORE_DUE_DATE, days=n), invoice, zone, EPOCH)
    after = charge_time(_rule(trigger=DAYS_AFTER_DUE_DATE, days=n), invoice, zone, EPOCH)
    assert on_due is not None
    assert before is not None
    assert after is not None
    assert on_due.astimezone(zone).date() == due
    assert before.astimezone(zone).date() == due - timedelta(days=n)
    assert after.astimezone(zone).date() == due + timedelta(days=n)
    assert before <= on_due <= after


def test_month_ends_and_leap_days() -> None:
    la = ZoneInfo("America/Los_Angeles")
    rule = _rule(trigger=DAYS_AFTER_INVOICE_DATE, days=1, time_of_day=time(9, 0))
    leap = charge_time(rule, _invoice(invoice_date=date(2028, 2, 28)), la, EPOCH)
    assert leap == datetime(2028, 2, 29, 17, 0, tzinfo=UTC)  # 09:00 PST
    year_end = charge_time(rule, _invoice(invoice_date=date(2026, 12, 31)), la, EPOCH)
    assert year_end == datetime(2027, 1, 1, 17, 0, tzinfo=UTC)
    # 02:30 on the spring-forward day does not exist in Los Angeles: 03:30 PDT.
    gap = _rule(trigger=ON_DUE_DATE, time_of_day=time(2, 30))
    assert charge_time(gap, _invoice(due_date=date(2026, 3, 8)), la, EPOCH) == datetime(
        2026, 3, 8, 10, 30, tzinfo=UTC
    )
    # 01:30 on the fall-back day happens twice: the first (PDT).
    twice = _rule(trigger=ON_DUE_DATE, time_of_day=time(1, 30))
    assert charge_time(twice, _invoice(due_date=date(2026, 11, 1)), la, EPOCH) == datetime(
        2026, 11, 1, 8, 30, tzinfo=UTC
    )


@given(
    now=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1)),
    at=times,
    zone=zones,
)
@settings(max_examples=400)
def test_on_creation_at_a_time_of_day_is_the_next_such_local_time(
    now: datetime, at: time, zone: ZoneInfo
) -> None:
    event = now.replace(tzinfo=UTC)
    when = charge_time(_rule(trigger=ON_CREATE_OR_UPDATE, time_of_day=at), _invoice(), zone, event)
    assert when is not None
    assert event <= when < event + timedelta(hours=26)
    assert charge_time(_rule(trigger=ON_CREATE_OR_UPDATE), _invoice(), zone, event) == event


amounts = st.integers(1, 10_000_000)


@given(total=amounts, low=st.one_of(st.none(), amounts), high=st.one_of(st.none(), amounts))
def test_the_amount_range_is_inclusive(total: int, low: int | None, high: int | None) -> None:
    verdict = match(
        _rule(min_amount=low, max_amount=high),
        _invoice(total_minor=total, due_minor=total),
        CARD_CUSTOMER,
    )
    inside = (low is None or total >= low) and (high is None or total <= high)
    assert verdict.matched == inside
    if not inside:
        assert verdict.failed_condition == "amount"
        assert "USD" in verdict.detail


rule_sets = st.lists(
    st.builds(
        lambda i, priority, enabled, currency: _rule(
            rule_id=f"r{i}",
            name=f"rule {i}",
            priority=priority,
            enabled=enabled,
            currencies=frozenset({currency}) if currency else frozenset(),
        ),
        st.integers(0, 1000),
        st.integers(0, 5),
        st.booleans(),
        st.sampled_from(["", "USD", "EUR"]),
    ),
    max_size=8,
    unique_by=lambda r: r.rule_id,
)


@given(rules=rule_sets, currency=st.sampled_from(["USD", "EUR", "CAD"]))
def test_the_first_matching_rule_in_priority_order_decides(
    rules: list[RuleSpec], currency: str
) -> None:
    invoice = _invoice(currency=currency)
    decision = decide(rules, invoice, CARD_CUSTOMER, ZoneInfo("UTC"), EPOCH)
    matching = sorted(
        (r for r in rules if match(r, invoice, CARD_CUSTOMER).matched),
        key=lambda r: (r.priority, r.rule_id),
    )
    if matching:
        assert decision.rule == matching[0]
        assert decision.charges
        assert decision.verdicts[-1].matched
        assert all(not v.matched for v in decision.verdicts[:-1])
    else:
        assert decision.rule is None
        assert not decision.charges


def test_blockers_and_words() -> None:
    rule = _rule(customer_groups=frozenset({"vip"}), max_amount=5_000)
    invoice = _invoice(total_minor=12_000)
    assert match(rule, invoice, CARD_CUSTOMER).detail == "customer C1 is in none of vip"
    vip = CustomerFacts("C1", groups=frozenset({"vip"}), method_types=frozenset({"card"}))
    verdict = match(rule, invoice, vip)
    assert verdict.detail == "amount 120.00 USD is above the maximum 50.00 USD"
    opted_out = CustomerFacts("C1", auto_pay=False, method_types=frozenset({"card"}))
    decision = decide([_rule()], invoice, opted_out, ZoneInfo("UTC"), EPOCH)
    assert not decision.charges
    assert decision.blockers == ("customer C1 opted out of auto-pay",)
    nothing = decide([_rule()], invoice, CustomerFacts("C1"), ZoneInfo("UTC"), EPOCH)
    assert nothing.blockers == ("customer C1 has no payment method on file",)
    ach_only = _rule(method_types=frozenset({"ach"}))
    assert (
        match(ach_only, invoice, CARD_CUSTOMER).detail == "the customer has no ACH method on file"
    )
    paid = decide(
        [_rule()], _invoice(state="paid", due_minor=0), CARD_CUSTOMER, ZoneInfo("UTC"), EPOCH
    )
    assert paid.blockers == ("the invoice is paid",)
    capped = decide(
        [_rule(amount_mode=UP_TO_MAXIMUM, maximum_minor=2_500)],
        invoice,
        CARD_CUSTOMER,
        ZoneInfo("UTC"),
        EPOCH,
    )
    assert capped.amount_minor == 2_500


def test_a_time_that_passed_before_the_rule_existed_is_not_charged() -> None:
    created = datetime(2026, 6, 1, tzinfo=UTC)
    rule = _rule(trigger=ON_DUE_DATE, created_at=created)
    old = decide(
        [rule], _invoice(due_date=date(2026, 5, 1)), CARD_CUSTOMER, ZoneInfo("UTC"), created
    )
    assert not old.charges
    assert old.verdicts[0].failed_condition == "schedule"
    assert "passed before the rule was created" in old.verdicts[0].detail
    new = decide(
        [rule], _invoice(due_date=date(2026, 7, 1)), CARD_CUSTOMER, ZoneInfo("UTC"), created
    )
    assert new.charge_at == datetime(2026, 7, 1, tzinfo=UTC)


@given(schedule=st.lists(st.integers(1, 30), max_size=5), attempt=st.integers(1, 8))
def test_retries_follow_the_schedule_and_stop_where_it_ends(
    schedule: list[int], attempt: int
) -> None:
    failed_at = datetime(2026, 1, 31, 12, tzinfo=UTC)
    when = retry_time(_rule(retry_after_days=tuple(schedule)), failed_at, attempt)
    if attempt <= len(schedule):
        assert when == failed_at + timedelta(days=schedule[attempt - 1])
    else:
        assert when is None
