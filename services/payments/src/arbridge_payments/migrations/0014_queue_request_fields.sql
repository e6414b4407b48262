-- The request as last read from its queue record (customer, invoice, amount,
-- currency), so a request that was recorded but not charged (a crash in between, or
-- another charge of the invoice in progress) is charged later without a new read.
ALTER TABLE queue_requests ADD COLUMN fields jsonb NOT NULL DEFAULT '{}'::jsonb;
