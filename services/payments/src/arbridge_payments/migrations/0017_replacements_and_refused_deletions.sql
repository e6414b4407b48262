-- The add that replaced a method, kept with the replaced method and with the add's
-- answer: a retry of that add (the same token or idempotency key) names the method it
-- replaced too, also when the first try stopped after retiring the old method and
-- before saving the new one. Earlier replacements keep no such record.
ALTER TABLE payment_methods ADD COLUMN replaced_by_request text;
ALTER TABLE payment_method_requests
    ADD COLUMN replaced_payment_method_id text NOT NULL DEFAULT '';

-- A vault deletion the card gateway refuses (not "gone", not unreachable) is tried
-- again later and later, not on every recovery pass: its refusals so far, the next
-- attempt, and the last failure (the gateway's refusal) for an operator.
ALTER TABLE payment_methods
    ADD COLUMN vault_delete_refusals integer NOT NULL DEFAULT 0,
    ADD COLUMN vault_delete_next_at timestamptz,
    ADD COLUMN vault_delete_error text NOT NULL DEFAULT '';
