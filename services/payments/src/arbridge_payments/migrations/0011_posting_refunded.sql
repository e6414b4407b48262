-- posting_state refunded: the charge was refunded in full before it was posted, so
-- Intacct gets no payment for it (its invoices stay open there).
ALTER TABLE charges DROP CONSTRAINT charges_posting_state;
ALTER TABLE charges
    ADD CONSTRAINT charges_posting_state
    CHECK (posting_state IN ('pending', 'posted', 'refused', 'refunded'));
