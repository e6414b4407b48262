-- What the AR payment posted to Intacct applied to each invoice of a charge (NULL: not
-- posted). Intacct keeps it whatever is refunded later, so until the AR store shows the
-- payment, this (not what the charge keeps after refunds) is what the invoice's open
-- balance lacks.
ALTER TABLE charge_invoices ADD COLUMN posted_minor bigint;
