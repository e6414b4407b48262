-- Charges requested from inside Intacct through the charge-queue custom object.
--
-- queue_accounts: the connected accounts whose queue is read, where the last
-- read got to (Intacct WHENMODIFIED, UTC) and whether the queue exists there
-- ('unavailable': no Platform Services or no permission; last_error says).
CREATE TABLE queue_accounts (
    account_id    text PRIMARY KEY,
    enabled       boolean NOT NULL DEFAULT true,
    state         text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'unavailable')),
    cursor        timestamptz,
    next_poll_at  timestamptz NOT NULL DEFAULT now(),
    last_error    text NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_accounts_due ON queue_accounts (next_poll_at) WHERE enabled;

-- queue_requests: one row per queue record; attempt grows when a user sets a
-- finished request back to Pending. charge_id is the attempt's charge (its
-- idempotency key is intacct-queue:{record}:{attempt}); outcome_* is set
-- instead when the request was refused before charging. written_* is what
-- Intacct shows; done once a final outcome is written. A write Intacct or the
-- connector did not take waits until write_after (backing off).
CREATE TABLE queue_requests (
    account_id           text NOT NULL,
    queue_record_no      text NOT NULL,
    attempt              integer NOT NULL DEFAULT 1,
    request_name         text NOT NULL DEFAULT '',
    charge_id            text NOT NULL DEFAULT '',
    outcome_status       text NOT NULL DEFAULT '',
    outcome_message      text NOT NULL DEFAULT '',
    written_status       text NOT NULL DEFAULT '',
    written_payment_key  text NOT NULL DEFAULT '',
    done                 boolean NOT NULL DEFAULT false,
    write_failures       integer NOT NULL DEFAULT 0,
    write_after          timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, queue_record_no)
);
CREATE INDEX queue_requests_open ON queue_requests (updated_at) WHERE NOT done;
