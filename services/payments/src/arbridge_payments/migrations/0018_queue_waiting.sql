-- Why a charge-queue request is not charged yet (another charge of its invoice in
-- progress or being posted, the AR store unreachable), and what of that was last
-- written onto the Intacct record: a user sees why it waits, not a bare Pending.
ALTER TABLE queue_requests
    ADD COLUMN waiting text NOT NULL DEFAULT '',
    ADD COLUMN written_waiting text NOT NULL DEFAULT '';
