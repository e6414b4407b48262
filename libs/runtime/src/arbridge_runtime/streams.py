"""The suite's JetStream streams: one per domain, subjects ``<domain>.<entity>.<verb>``.

Declared once here so that a publisher and its consumers always agree; each
service ensures the streams it publishes to and consumes from at start-up.
"""

from __future__ import annotations

from arbridge_runtime.jetstream import StreamSpec

INTACCT_EVENTS = StreamSpec(
    "INTACCT_EVENTS",
    ("intacct.events.>",),
    description="Intacct smart events as received by the gateway or the ingest RPC",
)
CARD_EVENTS = StreamSpec(
    "CARD_EVENTS",
    ("cards.notifications.>",),
    description="Card-gateway notifications as received by the gateway",
)
CONNECTOR = StreamSpec("CONNECTOR", ("connector.>",), description="Account connection changes")
AR = StreamSpec("AR", ("ar.>",), description="Changes of customers, invoices and payments")
SYNC = StreamSpec("SYNC", ("sync.>",), description="Sync job outcomes")
PAYMENTS = StreamSpec("PAYMENTS", ("payments.>",), description="Charges, refunds and links")
RULES = StreamSpec("RULES", ("rules.>",), description="Auto-charge schedule changes")

ALL = (INTACCT_EVENTS, CARD_EVENTS, CONNECTOR, AR, SYNC, PAYMENTS, RULES)
