-- The last PDF fetched of each invoice, with the Intacct modification time of
-- the invoice version it prints: asked again for the same version, the PDF
-- is answered from here without an API call.
CREATE TABLE invoice_pdfs (
    account_id    text NOT NULL,
    record_no     text NOT NULL,
    source        text NOT NULL,
    modified_at   timestamptz,
    pdf           bytea NOT NULL,
    fetched_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, record_no, source)
);
