-- The AR store: customers, invoices and payments mirrored from Intacct, per account.
-- intacct_modified_at orders versions: an older version never overwrites a newer one.

CREATE TABLE accounts (
    account_id          text PRIMARY KEY,
    connected           boolean NOT NULL DEFAULT true,
    company_id          text NOT NULL DEFAULT '',
    time_zone           text NOT NULL DEFAULT '',
    initial_synced_at   timestamptz,
    last_full_sync_at   timestamptz,
    next_daily_sync_at  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_daily_due ON accounts (next_daily_sync_at) WHERE connected;

CREATE TABLE preferences (
    account_id              text PRIMARY KEY REFERENCES accounts (account_id),
    invoice_source          text NOT NULL DEFAULT 'ar_invoice'
                            CHECK (invoice_source IN ('ar_invoice', 'sales_invoice')),
    level2_tax_field        text NOT NULL DEFAULT '',
    daily_sync_time         text NOT NULL DEFAULT '02:00',
    time_zone               text NOT NULL DEFAULT 'UTC',
    write_back_links        boolean NOT NULL DEFAULT false,
    payment_link_field      text NOT NULL DEFAULT 'PAYMENT_LINK',
    pay_balance_link_field  text NOT NULL DEFAULT 'PAY_BALANCE_LINK',
    next_auto_charge_field  text NOT NULL DEFAULT 'NEXT_AUTO_CHARGE',
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    account_id          text NOT NULL,
    record_no           text NOT NULL,
    customer_id         text NOT NULL,
    name                text NOT NULL,
    active              boolean NOT NULL,
    currency            text NOT NULL,
    term_name           text NOT NULL,
    entity_id           text NOT NULL,
    groups              text[] NOT NULL DEFAULT '{}',
    contact             jsonb NOT NULL DEFAULT '{}'::jsonb,
    custom_fields       jsonb NOT NULL DEFAULT '{}'::jsonb,
    intacct_modified    timestamp,
    deleted             boolean NOT NULL DEFAULT false,
    data_hash           text NOT NULL,
    version             bigint NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, record_no)
);
CREATE INDEX customers_by_id ON customers (account_id, customer_id);

CREATE TABLE invoices (
    account_id          text NOT NULL,
    record_no           text NOT NULL,
    source              text NOT NULL CHECK (source IN ('ar_invoice', 'sales_invoice')),
    invoice_number      text NOT NULL,
    customer_id         text NOT NULL,
    entity_id           text NOT NULL,
    state               text NOT NULL,
    currency            text NOT NULL,
    total_minor         bigint NOT NULL,
    paid_minor          bigint NOT NULL,
    due_minor           bigint NOT NULL,
    tax_minor           bigint,
    term_name           text NOT NULL,
    invoice_date        date,
    due_date            date,
    po_number           text NOT NULL,
    custom_fields       jsonb NOT NULL DEFAULT '{}'::jsonb,
    intacct_modified    timestamp,
    deleted             boolean NOT NULL DEFAULT false,
    data_hash           text NOT NULL,
    version             bigint NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, record_no)
);
CREATE INDEX invoices_by_customer ON invoices (account_id, customer_id) WHERE NOT deleted;
CREATE INDEX invoices_open ON invoices (account_id, due_date) WHERE NOT deleted AND due_minor > 0;

CREATE TABLE payments (
    account_id          text NOT NULL,
    record_no           text NOT NULL,
    customer_id         text NOT NULL,
    amount_minor        bigint NOT NULL,
    currency            text NOT NULL,
    payment_method      text NOT NULL,
    received_date       date,
    reference           text NOT NULL,
    bank_account_id     text NOT NULL,
    intacct_modified    timestamp,
    deleted             boolean NOT NULL DEFAULT false,
    data_hash           text NOT NULL,
    version             bigint NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, record_no)
);

CREATE TABLE bank_accounts (
    account_id          text NOT NULL,
    kind                text NOT NULL,
    record_no           text NOT NULL,
    bank_account_id     text NOT NULL,
    name                text NOT NULL,
    currency            text NOT NULL,
    entity_id           text NOT NULL,
    gl_account_no       text NOT NULL,
    intacct_modified    timestamp,
    deleted             boolean NOT NULL DEFAULT false,
    data_hash           text NOT NULL,
    version             bigint NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, kind, record_no)
);

CREATE TABLE account_labels (
    account_id          text NOT NULL,
    record_no           text NOT NULL,
    label               text NOT NULL,
    description         text NOT NULL,
    gl_account_no       text NOT NULL,
    intacct_modified    timestamp,
    deleted             boolean NOT NULL DEFAULT false,
    data_hash           text NOT NULL,
    version             bigint NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, record_no)
);

-- Sync jobs: at most one pending or running per account, whatever the replicas.
CREATE TABLE sync_jobs (
    sync_id             uuid PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (account_id),
    kind                text NOT NULL CHECK (kind IN ('initial', 'daily', 'manual')),
    state               text NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    window_start        timestamptz,
    window_end          timestamptz,
    progress            jsonb NOT NULL DEFAULT '{}'::jsonb,
    api_calls           bigint NOT NULL DEFAULT 0,
    estimated_api_calls bigint NOT NULL DEFAULT 0,
    error               text NOT NULL DEFAULT '',
    lease_owner         text,
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);
CREATE UNIQUE INDEX sync_jobs_one_live ON sync_jobs (account_id) WHERE state IN ('pending', 'running');
CREATE INDEX sync_jobs_by_account ON sync_jobs (account_id, created_at DESC);

CREATE TABLE sync_confirmations (
    token               text PRIMARY KEY,
    account_id          text NOT NULL,
    estimated_api_calls bigint NOT NULL,
    expires_at          timestamptz NOT NULL
);

-- Records that failed to sync. Never retried automatically.
CREATE TABLE unsynced (
    unsynced_id     uuid PRIMARY KEY,
    account_id      text NOT NULL,
    object_type     text NOT NULL,
    record_no       text NOT NULL,
    direction       text NOT NULL CHECK (direction IN ('from_intacct', 'to_intacct')),
    reason          text NOT NULL,
    errors          jsonb NOT NULL DEFAULT '[]'::jsonb,
    attempts        integer NOT NULL DEFAULT 1,
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resynced', 'marked_synced')),
    failed_at       timestamptz NOT NULL DEFAULT now(),
    resolved_by     text NOT NULL DEFAULT '',
    resolution_note text NOT NULL DEFAULT '',
    resolved_at     timestamptz
);
CREATE UNIQUE INDEX unsynced_one_open ON unsynced (account_id, object_type, record_no, direction)
    WHERE state = 'open';
CREATE INDEX unsynced_by_account ON unsynced (account_id, failed_at DESC);

-- Deletions seen, even of records the store never held: Intacct never reuses a
-- RECORDNO, so a late (reordered) add or set event for one must change nothing.
CREATE TABLE deleted_records (
    account_id  text NOT NULL,
    table_name  text NOT NULL,
    record_no   text NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, table_name, record_no)
);
