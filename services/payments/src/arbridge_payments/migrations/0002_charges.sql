-- Charges: one row per idempotency key, moving through recorded phases.
--
--   pending     recorded, not sent to the gateway yet
--   processing  sent (or about to be); the outcome is not known yet. Resolved
--               by looking up our charge id at the gateway and, when the
--               gateway has none, by re-sending the same charge under the
--               same id and idempotency key: never under a new id.
--   succeeded | declined | failed   final
--
-- lease_until marks a charge someone is driving; the recovery worker and
-- retries with the same key take over a charge only when its lease lapsed.
CREATE TABLE charges (
    charge_id               text PRIMARY KEY,
    account_id              text NOT NULL,
    idempotency_key         text NOT NULL,
    request_hash            text NOT NULL,
    customer_id             text NOT NULL,
    source                  text NOT NULL,
    rule_id                 text NOT NULL DEFAULT '',
    payment_method_id       text NOT NULL REFERENCES payment_methods (payment_method_id),
    kind                    text NOT NULL CHECK (kind IN ('card', 'ach')),
    shopper_id              text NOT NULL,
    last4                   text NOT NULL,
    amount_minor            bigint NOT NULL CHECK (amount_minor > 0),
    currency                text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    tax_minor               bigint NOT NULL DEFAULT 0 CHECK (tax_minor >= 0),
    customer_reference      text NOT NULL DEFAULT '',
    phase                   text NOT NULL DEFAULT 'pending'
                            CHECK (phase IN ('pending', 'processing', 'succeeded', 'declined', 'failed')),
    gateway_transaction_id  text NOT NULL DEFAULT '',
    failure_code            text NOT NULL DEFAULT '',
    failure_reason          text NOT NULL DEFAULT '',
    refunded_minor          bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    posting_state           text NOT NULL DEFAULT 'pending',
    attempts                integer NOT NULL DEFAULT 0,
    lease_until             timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX charges_unfinished ON charges (lease_until) WHERE phase IN ('pending', 'processing');
CREATE INDEX charges_customer ON charges (account_id, customer_id, created_at DESC);

-- The invoices a charge pays. live is true while the charge is unfinished:
-- the partial unique index allows one live charge per invoice.
CREATE TABLE charge_invoices (
    charge_id          text NOT NULL REFERENCES charges (charge_id),
    account_id         text NOT NULL,
    invoice_record_no  text NOT NULL,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    live               boolean NOT NULL DEFAULT true,
    PRIMARY KEY (charge_id, invoice_record_no)
);
CREATE UNIQUE INDEX charge_invoices_one_live
    ON charge_invoices (account_id, invoice_record_no) WHERE live;
CREATE INDEX charge_invoices_invoice ON charge_invoices (account_id, invoice_record_no);
