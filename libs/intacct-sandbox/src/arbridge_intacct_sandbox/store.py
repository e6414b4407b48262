"""In-memory companies: records, entities, users, senders, sessions.

Records are immutable mappings replaced on every write, so a ``readByQuery``
result set that holds references keeps serving the versions it selected
(paging by ``resultId`` never skips or repeats a record while others change
them). Each record carries a modification sequence, a UTC modification time
and its owning entity.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from arbridge_intacct_sandbox.schema import (
    ALL_GRANTS,
    DEFAULT_CUSTOM_FIELDS,
    OBJECTS,
    FieldDef,
    ObjectDef,
)

DATE_FMT = "%m/%d/%Y"
DATETIME_FMT = "%m/%d/%Y %H:%M:%S"


def fmt_date(value: date) -> str:
    return value.strftime(DATE_FMT)


def fmt_money(value: Decimal | int | float) -> str:
    return f"{Decimal(value).quantize(Decimal('0.01'))}"


@dataclass(frozen=True)
class Row:
    """One version of a record."""

    recordno: int
    values: Mapping[str, str]
    entity: str
    seq: int
    modified_utc: datetime


@dataclass
class Table:
    obj: ObjectDef
    rows: dict[int, Row] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)
    version: int = 0
    # ``rows`` as a list at ``version`` (queries' typed columns follow its order).
    listed: tuple[int, list[Row]] | None = field(default=None, repr=False)


@dataclass
class User:
    user_id: str
    password: str
    grants: dict[str, frozenset[str]] = field(default_factory=lambda: dict(ALL_GRANTS))
    # Restricts the user to one entity (an entity-level user); None for top level.
    entity: str | None = None


@dataclass
class Session:
    session_id: str
    company_id: str
    user_id: str
    entity: str
    duration: timedelta
    expires_at: datetime
    calls: int = 0


@dataclass
class Faults:
    """Misbehaviour configured per company (admin API)."""

    latency_ms: int = 0
    concurrency_limit: int = 0
    error_5xx_rate: float = 0.0
    error_524_rate: float = 0.0
    # The next N requests are executed and then answered 524 (deterministic).
    error_524_next: int = 0
    throttle_rate: float = 0.0
    session_expiry_calls: int = 0
    # (object, key) pairs whose writes fail validation until cleared.
    failing_records: set[tuple[str, str]] = field(default_factory=set)
    drop_smart_events: bool = False
    # Smart-event deliveries: retries after these delays (Intacct's are limited).
    smart_event_retry_delays: tuple[float, ...] = (1.0, 3.0, 9.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "concurrency_limit": self.concurrency_limit,
            "error_5xx_rate": self.error_5xx_rate,
            "error_524_rate": self.error_524_rate,
            "error_524_next": self.error_524_next,
            "throttle_rate": self.throttle_rate,
            "session_expiry_calls": self.session_expiry_calls,
            "failing_records": sorted(f"{o}:{k}" for o, k in self.failing_records),
            "drop_smart_events": self.drop_smart_events,
            "smart_event_retry_delays": list(self.smart_event_retry_delays),
        }


@dataclass
class SmartEvent:
    """A smart event subscription: an HTTP POST when an object is added, set or deleted."""

    event_id: str
    object: str
    actions: tuple[str, ...]
    url: str
    body_template: str
    content_type: str = "application/xml"
    headers: dict[str, str] = field(default_factory=dict)
    active: bool = True


@dataclass
class Company:
    company_id: str
    name: str
    time_zone: str = "America/Los_Angeles"
    base_currency: str = "USD"
    multi_entity: bool = False
    platform_services: bool = True
    authorized_senders: set[str] = field(default_factory=set)
    users: dict[str, User] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    custom_fields: dict[str, tuple[FieldDef, ...]] = field(
        default_factory=lambda: dict(DEFAULT_CUSTOM_FIELDS)
    )
    faults: Faults = field(default_factory=Faults)
    smart_events: dict[str, SmartEvent] = field(default_factory=dict)
    executed_controlids: set[str] = field(default_factory=set)
    # Selections of recent queries, keyed with the table version they were made at.
    query_cache: dict[tuple[object, ...], tuple[list[Row], list[int]]] = field(
        default_factory=dict, repr=False
    )
    # Typed columns by (object, field), each at the table version it was built at.
    columns: dict[tuple[str, str], tuple[int, list[Any]]] = field(default_factory=dict, repr=False)
    next_recordno: int = 1
    seq: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        for name, obj in OBJECTS.items():
            self.tables.setdefault(name, Table(obj))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def now_local(self, now: datetime | None = None) -> datetime:
        return (now or datetime.now(UTC)).astimezone(self.tz)

    def fmt_timestamp(self, moment: datetime) -> str:
        """A UTC moment as Intacct writes WHENMODIFIED: company-local MM/DD/YYYY HH:MM:SS."""
        return moment.astimezone(self.tz).strftime(DATETIME_FMT)

    def fields_of(self, obj: ObjectDef) -> dict[str, FieldDef]:
        fields = dict(obj.field_map)
        for custom in self.custom_fields.get(obj.name, ()):
            fields[custom.name] = custom
        return fields

    def entities(self) -> list[Row]:
        return sorted(self.tables["LOCATIONENTITY"].rows.values(), key=lambda r: r.recordno)

    def entity_ids(self) -> set[str]:
        return {r.values["LOCATIONID"] for r in self.entities()}

    def entity_row(self, entity_id: str) -> Row | None:
        table = self.tables["LOCATIONENTITY"]
        key = table.by_id.get(entity_id)
        return table.rows.get(key) if key is not None else None

    # Writes -------------------------------------------------------------------

    def put(
        self,
        obj: ObjectDef,
        values: dict[str, str],
        *,
        entity: str = "",
        recordno: int | None = None,
        now: datetime | None = None,
        keep_modified: bool = False,
    ) -> Row:
        """Inserts or replaces a record, maintaining the audit fields."""
        moment = now or datetime.now(UTC)
        table = self.tables[obj.name]
        key_field = "id" if obj.custom_object else "RECORDNO"
        modified_field = "whenmodified" if obj.custom_object else "WHENMODIFIED"
        created_field = "whencreated" if obj.custom_object else "WHENCREATED"
        with self.lock:
            if recordno is None:
                recordno = self.next_recordno
                self.next_recordno += 1
            else:
                self.next_recordno = max(self.next_recordno, recordno + 1)
            previous = table.rows.get(recordno)
            merged = dict(previous.values) if previous else {}
            merged.update(values)
            merged[key_field] = str(recordno)
            stamp = self.fmt_timestamp(moment)
            if not keep_modified or modified_field not in merged:
                merged[modified_field] = stamp
            if previous is None and created_field not in merged:
                merged[created_field] = stamp
            if obj.name == "ARINVOICE" and previous is None:
                merged.setdefault("AUWHENCREATED", stamp)
            entity_row = self.entity_row(entity) if entity else None
            merged["MEGAENTITYID"] = entity
            if not obj.custom_object:
                merged["MEGAENTITYKEY"] = str(entity_row.recordno) if entity_row else ""
                merged["MEGAENTITYNAME"] = entity_row.values.get("NAME", "") if entity_row else ""
            self.seq += 1
            modified_utc = moment
            if keep_modified and previous is not None:
                modified_utc = previous.modified_utc
            row = Row(recordno, merged, entity, self.seq, modified_utc)
            if previous is not None and obj.id_field:
                old_id = previous.values.get(obj.id_field)
                if old_id and table.by_id.get(old_id) == recordno:
                    del table.by_id[old_id]
            table.rows[recordno] = row
            if obj.id_field and merged.get(obj.id_field):
                table.by_id[merged[obj.id_field]] = recordno
            table.version += 1
            return row

    def delete(self, obj: ObjectDef, recordno: int) -> Row | None:
        table = self.tables[obj.name]
        with self.lock:
            row = table.rows.pop(recordno, None)
            if row is not None and obj.id_field:
                table.by_id.pop(row.values.get(obj.id_field, ""), None)
            table.version += 1
            self.seq += 1
            return row

    def find(self, obj: ObjectDef, key: str) -> Row | None:
        """By RECORDNO (digits) or by the object's ID field."""
        table = self.tables[obj.name]
        if key.isdigit() and int(key) in table.rows:
            return table.rows[int(key)]
        if obj.id_field and key in table.by_id:
            return table.rows.get(table.by_id[key])
        return None

    def rows(self, obj: ObjectDef) -> Iterator[Row]:
        return iter(list(self.tables[obj.name].rows.values()))


class SessionStore:
    """Sessions with Intacct's sliding timeout."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(
        self, company: Company, user_id: str, entity: str, duration: timedelta = timedelta(hours=1)
    ) -> Session:
        session = Session(
            session_id=secrets.token_urlsafe(24) + "..",
            company_id=company.company_id,
            user_id=user_id,
            entity=entity,
            duration=duration,
            expires_at=datetime.now(UTC) + duration,
        )
        with self._lock:
            self._sessions[session.session_id] = session
        return session

    def touch(self, session_id: str) -> Session | None:
        """The live session, its timeout slid forward; None when unknown or expired."""
        now = datetime.now(UTC)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= now:
                del self._sessions[session_id]
                return None
            session.expires_at = now + session.duration
            session.calls += 1
            return session

    def expire(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def expire_company(self, company_id: str) -> None:
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.company_id == company_id]:
                del self._sessions[key]
