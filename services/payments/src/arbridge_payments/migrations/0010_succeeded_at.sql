-- When a charge succeeded (a card: the gateway's approval; ACH: its settlement):
-- the moment its payment is dated by in Intacct, on the company's calendar.
-- updated_at moves with later changes (a refund, a posting), so it cannot say.
ALTER TABLE charges ADD COLUMN succeeded_at timestamptz;
UPDATE charges SET succeeded_at = updated_at WHERE phase = 'succeeded';
