-- Values waiting to be written back to Intacct custom fields. One row per
-- record and field: a newer value replaces an older one before it is sent,
-- which is how many changes coalesce into few API calls.
CREATE TABLE writeback_pending (
    account_id  text NOT NULL,
    object      text NOT NULL CHECK (object IN ('CUSTOMER', 'ARINVOICE')),
    record_no   text NOT NULL,
    field       text NOT NULL,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (account_id, object, record_no, field)
);
