-- A succeeded charge the card gateway notified about (a REFUND notification, say):
-- its refunded total is looked up at the gateway by the recovery pass, and a refund
-- made there outside arbridge (the merchant's console, another tool) is recorded.
ALTER TABLE charges ADD COLUMN refund_check_at timestamptz;
CREATE INDEX charges_refund_check ON charges (refund_check_at) WHERE refund_check_at IS NOT NULL;
