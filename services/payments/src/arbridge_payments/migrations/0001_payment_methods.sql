-- Stored payment methods. Only gateway references live here: the vaulted
-- shopper, brand, last four digits, expiry and the gateway's fingerprint.
-- Card numbers, CVVs and bank account numbers never reach this database.

-- One vaulted shopper at the card gateway per AR customer.
CREATE TABLE gateway_shoppers (
    account_id   text NOT NULL,
    customer_id  text NOT NULL,
    shopper_id   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, customer_id)
);

CREATE TABLE payment_methods (
    payment_method_id  text PRIMARY KEY,
    account_id         text NOT NULL,
    customer_id        text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('card', 'ach')),
    shopper_id         text NOT NULL,
    brand              text NOT NULL DEFAULT '',
    last4              text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month          integer NOT NULL DEFAULT 0 CHECK (exp_month BETWEEN 0 AND 12),
    exp_year           integer NOT NULL DEFAULT 0,
    fingerprint        text NOT NULL,
    bank_account_type  text NOT NULL DEFAULT '',
    is_default         boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    removed_at         timestamptz
);
-- The same card or bank account is on file once per customer.
CREATE UNIQUE INDEX payment_methods_fingerprint
    ON payment_methods (account_id, customer_id, fingerprint) WHERE removed_at IS NULL;
-- At most one default per customer, enforced by the database.
CREATE UNIQUE INDEX payment_methods_one_default
    ON payment_methods (account_id, customer_id) WHERE is_default AND removed_at IS NULL;
CREATE INDEX payment_methods_customer
    ON payment_methods (account_id, customer_id, created_at) WHERE removed_at IS NULL;

-- Answers to AddPaymentMethod by idempotency key (or, without one, by the
-- hash of the single-use gateway token), so a retry after a lost answer gets
-- the method it created instead of "token already used".
CREATE TABLE payment_method_requests (
    account_id         text NOT NULL,
    request_key        text NOT NULL,
    request_hash       text NOT NULL,
    payment_method_id  text NOT NULL REFERENCES payment_methods (payment_method_id),
    already_on_file    boolean NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, request_key)
);
