"""The unsynced registry: records that failed to sync, with why. Never retried automatically."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from arbridge.events.v1 import events_pb2
from arbridge_runtime.money import from_minor


async def record_failure(
    conn: asyncpg.Connection,
    account_id: str,
    object_name: str,
    record_no: str,
    direction: str,
    reason: str,
    errors: Sequence[dict[str, str]] = (),
) -> uuid.UUID:
    """Opens (or refreshes) the registry entry of a record that failed to sync."""
    identifier = await conn.fetchval(
        """INSERT INTO unsynced (unsynced_id, account_id, object_type, record_no, direction, reason,
                                 errors)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
           ON CONFLICT (account_id, object_type, record_no, direction) WHERE state = 'open'
           DO UPDATE SET reason = EXCLUDED.reason, errors = EXCLUDED.errors,
                         attempts = unsynced.attempts + 1, failed_at = now()
           RETURNING unsynced_id""",
        uuid.uuid4(),
        account_id,
        object_name,
        record_no,
        direction,
        reason,
        json.dumps(list(errors)),
    )
    return identifier  # type: ignore[no-any-return]


async def resolve(
    conn: asyncpg.Connection,
    account_id: str,
    object_name: str,
    record_no: str,
    direction: str,
    state: str,
    actor: str = "",
    note: str = "",
) -> None:
    await conn.execute(
        "UPDATE unsynced SET state = $5, resolved_by = $6, resolution_note = $7,"
        " resolved_at = now() WHERE account_id = $1 AND object_type = $2 AND record_no = $3"
        " AND direction = $4 AND state = 'open'",
        account_id,
        object_name,
        record_no,
        direction,
        state,
        actor,
        note,
    )


async def resolve_deleted(
    conn: asyncpg.Connection, account_id: str, object_name: str, record_nos: Sequence[str]
) -> None:
    """Records deleted in Intacct are unsynced no more (the AR store marks them deleted,
    and nothing can be written to them): their open entries are resolved, with why."""
    if not record_nos:
        return
    await conn.execute(
        "UPDATE unsynced SET state = 'resynced', resolution_note = $4, resolved_at = now()"
        " WHERE account_id = $1 AND object_type = $2 AND record_no = ANY($3::text[])"
        " AND state = 'open'",
        account_id,
        object_name,
        list(record_nos),
        "deleted in Intacct: the AR store marks it deleted",
    )


async def on_payment_posted(conn: asyncpg.Connection, delivery: Any) -> None:
    """Intacct took a payment (``payments.payment.posted``): an entry it had in the
    registry (refused before, then re-synced) is resolved."""
    event = events_pb2.ChargeChanged.FromString(delivery.data)
    await resolve(conn, event.account_id, "ARPYMT", event.charge_id, "to_intacct", "resynced")


async def on_payment_refused(conn: asyncpg.Connection, delivery: Any) -> None:
    """A payment Intacct refused to take (``payments.payment.refused``) joins the registry.

    The entry is keyed by the charge id (Intacct has no record of the payment)
    and goes to Intacct; an operator fixes the cause and re-syncs it (payments posts
    it again) or, having entered it in Intacct by hand, marks it synced.
    """
    event = events_pb2.ChargeChanged.FromString(delivery.data)
    amount = from_minor(event.amount.amount_minor, event.amount.currency)
    await record_failure(
        conn,
        event.account_id,
        "ARPYMT",
        event.charge_id,
        "to_intacct",
        f"Intacct refused the payment of charge {event.charge_id} ({amount} "
        f"{event.amount.currency} from customer {event.customer_id} for invoices "
        f"{', '.join(event.invoice_record_nos)}): {event.failure_reason}",
    )


async def on_reversal_needed(conn: asyncpg.Connection, delivery: Any) -> None:
    """A refund made after its payment was posted (``payments.payment.reversal_needed``)
    joins the registry: Intacct still shows the whole payment as received, and only a
    user can reverse it there. One entry per refund, keyed by its id, going to Intacct;
    whoever reverses the payment (or records the refund) in Intacct marks it synced."""
    event = events_pb2.ChargeChanged.FromString(delivery.data)
    currency = event.amount.currency
    amount = from_minor(event.amount.amount_minor, currency)
    await conn.execute(
        """INSERT INTO unsynced (unsynced_id, account_id, object_type, record_no, direction,
                                 reason, kind)
           VALUES ($1, $2, 'ARPYMT', $3, 'to_intacct', $4, 'reversal_needed')
           ON CONFLICT DO NOTHING""",
        uuid.uuid4(),
        event.account_id,
        event.refund_id,
        f"Refund {event.refund_id} gave back {amount} {currency} of charge {event.charge_id}"
        f" after its payment was posted to Intacct as AR payment"
        f" {event.intacct_payment_record_no} (customer {event.customer_id}, invoices"
        f" {', '.join(event.invoice_record_nos)}), which Intacct still shows as received in"
        " full. arbridge cannot reverse a posted payment: reverse it in Intacct and enter"
        " what was kept, or record the refund there, then mark this record synced.",
    )
