-- Rules managed inside Intacct (the BlueSnapARRule custom object, with Platform
-- Services), synced both ways.
--
-- accounts.platform_services says whether the object exists there at all;
-- intacct_rules_cursor is how far the last read of it got (WHENMODIFIED, UTC).
ALTER TABLE accounts
    ADD COLUMN platform_services     boolean NOT NULL DEFAULT false,
    ADD COLUMN intacct_rules_cursor  timestamptz,
    ADD COLUMN intacct_rules_next_at timestamptz NOT NULL DEFAULT now();

-- A rule's Intacct record, and what both sides last agreed on: synced_hash is
-- the hash of the record's rule fields then, synced_revision the arbridge
-- revision then. A record whose hash differs changed in Intacct; a rule whose
-- revision differs changed in arbridge; both at once is a conflict, settled by
-- the later change and reported in sync_note (and on the record).
ALTER TABLE rules
    ADD COLUMN intacct_record_no text NOT NULL DEFAULT '',
    ADD COLUMN synced_hash       text NOT NULL DEFAULT '',
    ADD COLUMN synced_revision   bigint NOT NULL DEFAULT 0,
    ADD COLUMN sync_note         text NOT NULL DEFAULT '';
CREATE UNIQUE INDEX rules_intacct_record ON rules (account_id, intacct_record_no)
    WHERE intacct_record_no <> '';

-- Intacct records arbridge could not take as rules, by the content refused, so a
-- refusal is written to the record once and not again until the record changes.
CREATE TABLE intacct_rule_refusals (
    account_id   text NOT NULL,
    record_no    text NOT NULL,
    content_hash text NOT NULL,
    message      text NOT NULL,
    PRIMARY KEY (account_id, record_no)
);
