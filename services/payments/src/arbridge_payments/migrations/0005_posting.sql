-- Where succeeded payments are deposited in Intacct, per entity and currency,
-- and the posting of each succeeded charge as an applied AR payment.
CREATE TABLE deposit_accounts (
    account_id                    text NOT NULL,
    entity_id                     text NOT NULL DEFAULT '',
    currency                      text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    bank_account_id               text NOT NULL DEFAULT '',
    undeposited_funds_gl_account  text NOT NULL DEFAULT '',
    updated_at                    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, entity_id, currency),
    CHECK ((bank_account_id = '') <> (undeposited_funds_gl_account = ''))
);

-- posting_state: pending (until Intacct has it; retried with backoff),
-- posted, or refused (Intacct said no; posting_error says why).
ALTER TABLE charges
    ADD COLUMN entity_id                 text NOT NULL DEFAULT '',
    ADD COLUMN posting_error             text NOT NULL DEFAULT '',
    ADD COLUMN posting_attempts          integer NOT NULL DEFAULT 0,
    ADD COLUMN posting_next_at           timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN intacct_payment_record_no text NOT NULL DEFAULT '',
    ADD CONSTRAINT charges_posting_state CHECK (posting_state IN ('pending', 'posted', 'refused'));
CREATE INDEX charges_to_post ON charges (posting_next_at)
    WHERE phase = 'succeeded' AND posting_state = 'pending';

-- When the posting that succeeded was sent: an AR store invoice last modified
-- in Intacct after this shows the payment already.
ALTER TABLE charges ADD COLUMN posting_started_at timestamptz;
