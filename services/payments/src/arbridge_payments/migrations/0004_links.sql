-- Payment links, pay-balance links and payment-method links. No secret is
-- stored: the URL's signature is recomputed from these columns and the
-- link secret, and a link is honoured only while not revoked and not expired.
CREATE TABLE links (
    link_id            text PRIMARY KEY,
    account_id         text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('payment', 'pay_balance', 'payment_method')),
    customer_id        text NOT NULL,
    invoice_record_no  text NOT NULL DEFAULT '',
    expires_at         timestamptz NOT NULL,
    revoked_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'payment') = (invoice_record_no <> ''))
);
CREATE INDEX links_target ON links (account_id, kind, customer_id, invoice_record_no, created_at DESC);
