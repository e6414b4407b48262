-- Where a payment stands in Intacct (its STATE): posted, draft, or reversed (reversed
-- or voided, or the entry reversing another: not money received). Rows stored before
-- this were read without it; the next full sync fills it in.
ALTER TABLE payments
    ADD COLUMN state text NOT NULL DEFAULT 'posted'
    CHECK (state IN ('posted', 'draft', 'reversed'));
