"""SQL of the AR store: versioned upserts, tombstones and the events that announce changes.

Every write checks versions in SQL (``WHERE stored.intacct_modified <=
new.intacct_modified``), so an older version never overwrites a newer one
whichever path (event consumer, sync job, re-sync) gets there first, and a
deleted record stays deleted. Each real change writes its domain event into
the outbox in the same transaction.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import asyncpg
import orjson
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from arbridge.events.v1 import events_pb2
from arbridge_runtime.dates import now_timestamp
from arbridge_runtime.jetstream import Outbox
from arbridge_sync import convert, mapping

Change: TypeAlias = events_pb2.ChangeType.ValueType

# A bundle's limits: a JetStream message must stay well under NATS's 1 MiB default.
BUNDLE_CHANGES = 500
BUNDLE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Announcer:
    """How one record kind's changes are announced: one ``single`` message (e.g.
    ``InvoiceChanged``, the row in its ``field``) per change, or ``bundle`` messages
    (``InvoiceChanges``) holding many.

    Messages are filled in place (a message handed to a constructor is copied),
    with the version written set on the message rather than copied into the row:
    a sync announces every record it writes. ``intacct_modified_at`` is the
    instant of the row's company-local WHENMODIFIED in the account's zone, as the
    API answers it."""

    single: type[Message]
    bundle: type[Message]
    field: str
    fill: Callable[[Any, Mapping[str, Any], str], None]

    def _fill(
        self,
        target: Any,
        row: Mapping[str, Any],
        change: Change,
        occurred_at: Timestamp,
        version: int,
        time_zone: str,
    ) -> None:
        target.change = change
        record = getattr(target, self.field)
        self.fill(record, row, time_zone)
        record.version = version
        target.occurred_at.CopyFrom(occurred_at)

    def event(
        self,
        row: Mapping[str, Any],
        change: Change,
        occurred_at: Timestamp,
        version: int,
        time_zone: str,
    ) -> Message:
        built = self.single()
        self._fill(built, row, change, occurred_at, version, time_zone)
        return built

    def bundles(
        self,
        changes: Sequence[tuple[Mapping[str, Any], Change, int]],
        occurred_at: Timestamp,
        time_zone: str,
    ) -> list[Message]:
        """``changes`` (row, change, version) as bundles within the limits, in order."""
        built: list[Message] = []
        for start in range(0, len(changes), BUNDLE_CHANGES):
            built.extend(
                self._bundled(changes[start : start + BUNDLE_CHANGES], occurred_at, time_zone)
            )
        return built

    def _bundled(
        self,
        changes: Sequence[tuple[Mapping[str, Any], Change, int]],
        occurred_at: Timestamp,
        time_zone: str,
    ) -> list[Message]:
        bundle: Any = self.bundle()
        add = bundle.changes.add
        for row, change, version in changes:
            self._fill(add(), row, change, occurred_at, version, time_zone)
        if len(changes) > 1 and bundle.ByteSize() > BUNDLE_BYTES:
            # Large records (many custom fields): halves, each within the limit.
            half = len(changes) // 2
            return [
                *self._bundled(changes[:half], occurred_at, time_zone),
                *self._bundled(changes[half:], occurred_at, time_zone),
            ]
        return [bundle]


_CUSTOMERS = Announcer(
    events_pb2.CustomerChanged, events_pb2.CustomerChanges, "customer", convert.fill_customer
)
_INVOICES = Announcer(
    events_pb2.InvoiceChanged, events_pb2.InvoiceChanges, "invoice", convert.fill_invoice
)
_PAYMENTS = Announcer(
    events_pb2.PaymentChanged, events_pb2.PaymentChanges, "payment", convert.fill_payment
)


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    subject: str = ""
    announcer: Announcer | None = None
    json_columns: tuple[str, ...] = ()


CUSTOMERS = Table(
    "customers",
    ("account_id", "record_no"),
    (
        "account_id",
        "record_no",
        "customer_id",
        "name",
        "active",
        "currency",
        "term_name",
        "entity_id",
        "groups",
        "contact",
        "custom_fields",
        "intacct_modified",
        "data_hash",
    ),
    "ar.customer",
    _CUSTOMERS,
    ("contact", "custom_fields"),
)
INVOICES = Table(
    "invoices",
    ("account_id", "record_no"),
    (
        "account_id",
        "record_no",
        "source",
        "invoice_number",
        "customer_id",
        "entity_id",
        "state",
        "currency",
        "total_minor",
        "paid_minor",
        "due_minor",
        "tax_minor",
        "term_name",
        "invoice_date",
        "due_date",
        "po_number",
        "custom_fields",
        "intacct_modified",
        "data_hash",
    ),
    "ar.invoice",
    _INVOICES,
    ("custom_fields",),
)
PAYMENTS = Table(
    "payments",
    ("account_id", "record_no"),
    (
        "account_id",
        "record_no",
        "customer_id",
        "amount_minor",
        "currency",
        "payment_method",
        "received_date",
        "reference",
        "bank_account_id",
        "state",
        "intacct_modified",
        "data_hash",
    ),
    "ar.payment",
    _PAYMENTS,
)
BANK_ACCOUNTS = Table(
    "bank_accounts",
    ("account_id", "kind", "record_no"),
    (
        "account_id",
        "kind",
        "record_no",
        "bank_account_id",
        "name",
        "currency",
        "entity_id",
        "gl_account_no",
        "intacct_modified",
        "data_hash",
    ),
)
LABELS = Table(
    "account_labels",
    ("account_id", "record_no"),
    (
        "account_id",
        "record_no",
        "label",
        "description",
        "gl_account_no",
        "intacct_modified",
        "data_hash",
    ),
)

CREATED, UPDATED, DELETED = (
    events_pb2.CHANGE_TYPE_CREATED,
    events_pb2.CHANGE_TYPE_UPDATED,
    events_pb2.CHANGE_TYPE_DELETED,
)
_VERB: dict[Change, str] = {CREATED: "created", UPDATED: "updated", DELETED: "deleted"}


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    deleted: int = 0
    seen: set[str] = field(default_factory=set)
    # Rows refused because their order cannot be told (see apply's ``exact_order``).
    ambiguous: list[str] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.stale += other.stale
        self.deleted += other.deleted


async def apply(
    conn: asyncpg.Connection,
    outbox: Outbox,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    time_zone: str,
    exact_order: bool = False,
    bundled: bool = False,
) -> Counts:
    """Upserts rows (newer versions only) and announces each real change.

    ``bundled``: the changes are announced in bundles (``ar.<kind>.bundle``), as a
    sync job's are, rather than one message each: a job writes tens of thousands,
    and one message per change would cost it, the outbox relay and NATS several
    times the writing itself.

    ``time_zone``: the account's (Intacct's WHENMODIFIED is company-local wall time;
    the events give it as an instant).

    ``exact_order``: the rows come from events, which can arrive out of order.
    Intacct's WHENMODIFIED has whole seconds, so an event whose time equals the
    stored one but whose data differs may be older or newer: such rows are not
    written but listed in ``Counts.ambiguous`` for the caller to read from
    Intacct. (Rows read by a query are Intacct's current state and are written.)
    """
    counts = Counts()
    if not rows:
        return counts
    account_id = rows[0]["account_id"]
    key_cols = [c for c in table.key if c != "account_id"]
    existing: dict[tuple[Any, ...], asyncpg.Record] = {}
    gone: set[str] = set()
    # The stored versions of these keys and their tombstones, in one round trip.
    keys = ", ".join(f"${i + 3}::text[]" for i in range(len(key_cols)))
    for record in await conn.fetch(
        f"SELECT {', '.join(key_cols)}, data_hash, intacct_modified, deleted,"
        f" NULL::text AS tombstone FROM {table.name}"
        f" WHERE account_id = $1 AND ({', '.join(key_cols)}) IN (SELECT * FROM unnest({keys}))"
        f" UNION ALL SELECT {', '.join('NULL::text' for _ in key_cols)}, NULL::text,"
        " NULL::timestamp, NULL::boolean, record_no FROM deleted_records"
        " WHERE account_id = $1 AND table_name = $2"
        f" AND record_no = ANY(${key_cols.index('record_no') + 3}::text[])",
        account_id,
        table.name,
        *[[str(r[c]) for r in rows] for c in key_cols],
    ):
        if record["tombstone"] is not None:
            gone.add(record["tombstone"])
        else:
            existing[tuple(str(record[c]) for c in key_cols)] = record
    to_write: dict[tuple[Any, ...], tuple[Mapping[str, Any], Change]] = {}
    rehashed: list[tuple[tuple[Any, ...], str, str]] = []  # (key, stored hash, current)
    for row in rows:
        key = tuple(str(row[c]) for c in key_cols)
        counts.seen.add("/".join(key))
        old = existing.get(key)
        if str(row["record_no"]) in gone:
            counts.stale += 1
            continue
        if old is not None:
            if old["deleted"]:
                counts.stale += 1
                continue
            if old["data_hash"] == row["data_hash"]:
                counts.unchanged += 1
                continue
            if mapping.is_legacy_hash(old["data_hash"]) and (
                old["data_hash"] == mapping.legacy_hash(row)
            ):
                # Stored under the hash's first definition, the same data: unchanged,
                # and the stored hash moves to the current one (no new version, no event).
                counts.unchanged += 1
                rehashed.append((key, old["data_hash"], row["data_hash"]))
                continue
            if (
                old["intacct_modified"]
                and row["intacct_modified"]
                and row["intacct_modified"] < old["intacct_modified"]
            ):
                counts.stale += 1
                continue
            if exact_order and old["intacct_modified"] == row["intacct_modified"]:
                counts.ambiguous.append(str(row["record_no"]))
                continue
        # A key twice in one batch: the later row stands (one statement cannot write twice).
        to_write[key] = (row, CREATED if old is None else UPDATED)
    if rehashed:
        await _rehash(conn, table, key_cols, account_id, rehashed)
    versions = await _upsert(
        conn,
        table,
        key_cols,
        [row for row, _ in to_write.values()],
        all_new=not existing and not gone,
    )
    written: list[tuple[Mapping[str, Any], Change, int]] = []
    for key, (row, change) in to_write.items():
        version = versions.get(key)
        if version is None:  # lost a race to a newer version
            counts.stale += 1
            continue
        counts.created += change == CREATED
        counts.updated += change == UPDATED
        written.append((row, change, version))
    await _announce(conn, outbox, table, written, time_zone=time_zone, bundled=bundled)
    return counts


async def _announce(
    conn: asyncpg.Connection,
    outbox: Outbox,
    table: Table,
    written: Sequence[tuple[Mapping[str, Any], Change, int]],
    *,
    time_zone: str,
    bundled: bool = False,
) -> None:
    """Records in the outbox the events of ``written`` changes (row, change, version)."""
    announcer = table.announcer
    if announcer is None or not written:
        return
    occurred_at = now_timestamp()
    events: list[tuple[str, Message]]
    if bundled:
        subject = f"{table.subject}.bundle"
        events = [(subject, b) for b in announcer.bundles(written, occurred_at, time_zone)]
    else:
        events = [
            (
                f"{table.subject}.{_VERB[change]}",
                announcer.event(row, change, occurred_at, v, time_zone),
            )
            for row, change, v in written
        ]
    await outbox.add_many(conn, events)


async def _upsert(
    conn: asyncpg.Connection,
    table: Table,
    key_cols: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    all_new: bool = False,
) -> dict[tuple[Any, ...], int]:
    """Writes rows (newer data only); the version of each row written.

    The rows go in by binary COPY: ``all_new`` rows (none of their keys stored)
    straight into the table; others into a session-local staging table and from
    there in one INSERT ... ON CONFLICT, which empties the staging table (as
    does every commit), so it never holds rows between batches.
    """
    if not rows:
        return {}
    if not conn.is_in_transaction():
        raise RuntimeError("store writes run inside the caller's transaction")
    values = operator.itemgetter(*table.columns)
    records: list[tuple[Any, ...]] = [values(row) for row in rows]
    if table.json_columns:
        at = [table.columns.index(c) for c in table.json_columns]
        for n, record in enumerate(records):
            listed = list(record)
            for i in at:
                listed[i] = orjson.dumps(listed[i]).decode()
            records[n] = tuple(listed)
    if all_new:
        # None of these keys was stored a moment ago (an initial sync's batches): straight
        # into the table. A key another writer stored since fails the copy as a whole,
        # and the rows go the general way below.
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(table.name, columns=table.columns, records=records)
            return {tuple(str(row[c]) for c in key_cols): 1 for row in rows}
        except asyncpg.UniqueViolationError:
            pass
    stage = f"stage_{table.name}"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table.name} INCLUDING DEFAULTS)"
        " ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(stage, columns=table.columns, records=records)
    columns = ", ".join(table.columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in table.columns if c not in table.key)
    written = await conn.fetch(
        f"WITH staged AS (DELETE FROM {stage} RETURNING *)"
        f" INSERT INTO {table.name} ({columns}) SELECT {columns} FROM staged"
        f" ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates},"
        f" version = {table.name}.version + 1, deleted = false, updated_at = now()"
        f" WHERE NOT {table.name}.deleted AND {table.name}.data_hash <> EXCLUDED.data_hash"
        f" AND ({table.name}.intacct_modified IS NULL OR EXCLUDED.intacct_modified IS NULL"
        f" OR {table.name}.intacct_modified <= EXCLUDED.intacct_modified)"
        f" RETURNING {', '.join(key_cols)}, version"
    )
    return {tuple(str(r[c]) for c in key_cols): int(r["version"]) for r in written}


async def _rehash(
    conn: asyncpg.Connection,
    table: Table,
    key_cols: Sequence[str],
    account_id: str,
    rehashed: Sequence[tuple[tuple[Any, ...], str, str]],
) -> None:
    """Sets the current definition's hash on rows stored with an older one for the same
    data, where the stored hash is still the one read (a newer write keeps its own)."""
    arrays = ", ".join(f"${i + 4}::text[]" for i in range(len(key_cols)))
    named = ", ".join(key_cols)
    await conn.execute(
        f"UPDATE {table.name} AS t SET data_hash = u.current"
        f" FROM unnest($2::text[], $3::text[], {arrays})"
        f" AS u(stored, current, {named})"
        f" WHERE t.account_id = $1 AND t.data_hash = u.stored"
        f" AND {' AND '.join(f't.{c} = u.{c}' for c in key_cols)}",
        account_id,
        [stored for _, stored, _ in rehashed],
        [current for _, _, current in rehashed],
        *[[str(key[i]) for key, _, _ in rehashed] for i in range(len(key_cols))],
    )


async def delete(
    conn: asyncpg.Connection,
    outbox: Outbox,
    table: Table,
    account_id: str,
    record_nos: Sequence[str],
    *,
    time_zone: str,
) -> int:
    """Tombstones records (Intacct never reuses a RECORDNO) and announces each
    (``time_zone``: the account's, as for :func:`apply`)."""
    if not record_nos:
        return 0
    await conn.execute(
        "INSERT INTO deleted_records (account_id, table_name, record_no)"
        " SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING",
        account_id,
        table.name,
        list(record_nos),
    )
    rows = await conn.fetch(
        f"UPDATE {table.name} SET deleted = true, version = version + 1, updated_at = now()"
        f" WHERE account_id = $1 AND record_no = ANY($2::text[]) AND NOT deleted RETURNING *",
        account_id,
        list(record_nos),
    )
    await _announce(
        conn, outbox, table, [(row, DELETED, row["version"]) for row in rows], time_zone=time_zone
    )
    return len(rows)
