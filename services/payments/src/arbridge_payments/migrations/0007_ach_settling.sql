-- ACH debits are accepted by the gateway and settle (or are returned) days
-- later: such a charge waits in phase 'settling', still holding its invoices'
-- live slots, until a gateway notification or a periodic look-up finds its
-- end. settle_check_at is when to look it up next (a notification makes it now).
ALTER TABLE charges DROP CONSTRAINT charges_phase_check;
ALTER TABLE charges ADD CONSTRAINT charges_phase_check
    CHECK (phase IN ('pending', 'processing', 'settling', 'succeeded', 'declined', 'failed'));
ALTER TABLE charges ADD COLUMN settle_check_at timestamptz;
CREATE INDEX charges_settling ON charges (settle_check_at) WHERE phase = 'settling';
