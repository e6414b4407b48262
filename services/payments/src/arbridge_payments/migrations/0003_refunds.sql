-- Refunds of succeeded charges, one row per idempotency key.
--   pending    recorded; may have been sent. Resolved by comparing the
--              gateway's refunded total for the transaction with ours.
--   succeeded | failed   final
-- Refunds of one charge run one at a time (an advisory lock on the charge),
-- which is what makes the refunded total a reliable witness.
CREATE TABLE refunds (
    refund_id        text PRIMARY KEY,
    charge_id        text NOT NULL REFERENCES charges (charge_id),
    account_id       text NOT NULL,
    idempotency_key  text NOT NULL,
    request_hash     text NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    reason           text NOT NULL DEFAULT '',
    phase            text NOT NULL DEFAULT 'pending'
                     CHECK (phase IN ('pending', 'succeeded', 'failed')),
    failure_reason   text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX refunds_pending ON refunds (updated_at) WHERE phase = 'pending';
CREATE INDEX refunds_charge ON refunds (charge_id);
