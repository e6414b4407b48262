"""The Intacct custom objects of the arbridge (BlueSnap) application, as every service
names them: the connector reads and writes them, sync sets up their smart events,
payments and rules read their records. Only companies with Platform Services have them."""

from __future__ import annotations

# The charge queue (BlueSnapARQueue): charges an Intacct user asks for.
QUEUE_OBJECT = "bluesnaparqueue"
# What the user fills in; arbridge writes status, message and paymentkey back.
QUEUE_REQUEST_FIELDS = ("name", "customerid", "invoicekey", "amount", "currency")
QUEUE_OUTCOME_FIELDS = ("status", "message", "paymentkey")

# Auto-payment rules kept in Intacct (BlueSnapARRule).
RULE_OBJECT = "bluesnaparrule"
# The record's rule fields; arbridge writes arbridgeid and syncstatus.
RULE_FIELDS = (
    "name",
    "enabled",
    "priority",
    "customerids",
    "currencies",
    "minamount",
    "maxamount",
    "amountcurrency",
    "trigger",
    "days",
    "timeofday",
    "amountmode",
    "maximum",
    "retrydays",
)
RULE_STATUS_FIELDS = ("arbridgeid", "syncstatus")
