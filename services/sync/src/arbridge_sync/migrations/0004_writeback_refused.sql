-- Values Intacct refused to take, kept per record and field so that re-syncing the
-- record's unsynced entry sends them again (a value written since replaces them).
CREATE TABLE writeback_refused (
    account_id  text NOT NULL,
    object      text NOT NULL CHECK (object IN ('CUSTOMER', 'ARINVOICE')),
    record_no   text NOT NULL,
    field       text NOT NULL,
    value       text NOT NULL,
    refused_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, object, record_no, field)
);
