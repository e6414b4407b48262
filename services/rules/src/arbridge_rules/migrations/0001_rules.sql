-- Auto-payment rules, the facts they are evaluated against, and the durable
-- schedule of auto charges.

-- Rules per account. The parts are stored as the v1 messages' JSON (proto3
-- JSON names), read back into RuleSpec by rules.py.
CREATE TABLE rules (
    rule_id      text PRIMARY KEY,
    account_id   text NOT NULL,
    name         text NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    priority     integer NOT NULL DEFAULT 100,
    conditions   jsonb NOT NULL DEFAULT '{}',
    timing       jsonb NOT NULL DEFAULT '{}',
    amount       jsonb NOT NULL DEFAULT '{}',
    retry        jsonb NOT NULL DEFAULT '{}',
    origin       text NOT NULL DEFAULT 'arbridge',
    revision     bigint NOT NULL DEFAULT 1,
    deleted      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rules_account ON rules (account_id, priority) WHERE NOT deleted;

-- Connected accounts and their time zone (from connector.account.*); a rule
-- change asks for the account's open invoices to be evaluated again.
CREATE TABLE accounts (
    account_id              text PRIMARY KEY,
    time_zone               text NOT NULL DEFAULT 'UTC',
    connected               boolean NOT NULL DEFAULT true,
    reevaluate_requested_at timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- Mirrors of what rules are evaluated against: customers and invoices (from
-- ar.*), the payment method types on file (from payments.method.changed),
-- and the auto-pay choices made here (opt-outs and exclusions).
CREATE TABLE customers (
    account_id     text NOT NULL,
    customer_id    text NOT NULL,
    groups         text[] NOT NULL DEFAULT '{}',
    version        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, customer_id)
);
CREATE TABLE customer_methods (
    account_id     text NOT NULL,
    customer_id    text NOT NULL,
    types          text[] NOT NULL DEFAULT '{}',
    version        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, customer_id)
);
CREATE TABLE autopay_opt_outs (
    account_id     text NOT NULL,
    customer_id    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, customer_id)
);
CREATE TABLE invoices (
    account_id     text NOT NULL,
    record_no      text NOT NULL,
    invoice_number text NOT NULL DEFAULT '',
    customer_id    text NOT NULL,
    currency       text NOT NULL,
    total_minor    bigint NOT NULL,
    due_minor      bigint NOT NULL,
    state          text NOT NULL,
    term_name      text NOT NULL DEFAULT '',
    entity_id      text NOT NULL DEFAULT '',
    source         text NOT NULL DEFAULT 'ar_invoice',
    invoice_date   date,
    due_date       date,
    version        bigint NOT NULL DEFAULT 0,
    excluded       boolean NOT NULL DEFAULT false,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, record_no)
);
CREATE INDEX invoices_customer ON invoices (account_id, customer_id);
CREATE INDEX invoices_open ON invoices (account_id, record_no)
    WHERE state IN ('open', 'partially_paid') AND due_minor > 0;

-- The schedule: one row per invoice with an auto charge ahead (or behind).
--   scheduled  due at charge_at
--   charging   claimed by a worker until lease_until (a lapsed lease is claimed again,
--              and the same attempt is replayed under the same idempotency key)
--   done       a charge succeeded (a rule charges an invoice once)
--   stopped    the retry schedule ran out
--   cleared    no rule charges it now (paid, excluded, no longer matching ...)
-- scheduled_for is the local date the attempt was scheduled for; with the
-- account, invoice, rule and attempt it makes the charge's idempotency key.
CREATE TABLE schedule (
    account_id        text NOT NULL,
    invoice_record_no text NOT NULL,
    customer_id       text NOT NULL,
    rule_id           text NOT NULL,
    state             text NOT NULL CHECK (state IN ('scheduled', 'charging', 'done', 'stopped', 'cleared')),
    charge_at         timestamptz,
    scheduled_for     date,
    amount_minor      bigint NOT NULL DEFAULT 0,
    currency          text NOT NULL DEFAULT '',
    attempt           integer NOT NULL DEFAULT 1,
    lease_until       timestamptz,
    note              text NOT NULL DEFAULT '',
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, invoice_record_no)
);
CREATE INDEX schedule_due ON schedule (charge_at) WHERE state = 'scheduled';
CREATE INDEX schedule_lapsed ON schedule (lease_until) WHERE state = 'charging';
CREATE INDEX schedule_customer ON schedule (account_id, customer_id, charge_at)
    WHERE state = 'scheduled';

-- Every attempt, for ExplainInvoice and the retry schedule. The row is written
-- before payments is called, with the idempotency key used.
CREATE TABLE attempts (
    account_id        text NOT NULL,
    invoice_record_no text NOT NULL,
    attempt           integer NOT NULL,
    rule_id           text NOT NULL,
    idempotency_key   text NOT NULL,
    amount_minor      bigint NOT NULL,
    currency          text NOT NULL,
    charge_id         text NOT NULL DEFAULT '',
    outcome           text NOT NULL DEFAULT 'pending'
                      CHECK (outcome IN ('pending', 'succeeded', 'failed')),
    failure_reason    text NOT NULL DEFAULT '',
    attempted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, invoice_record_no, attempt, rule_id)
);
