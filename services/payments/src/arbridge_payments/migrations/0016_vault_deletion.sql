-- A removed method whose source the card gateway has not confirmed deleted from its
-- vault yet. Removal commits at once (a pay page discarding a card it only charged,
-- RemovePaymentMethod) and the deletion follows; a recovery pass retries it while the
-- gateway is unreachable. Methods removed before this release stay as they were.
ALTER TABLE payment_methods ADD COLUMN vault_delete_pending boolean NOT NULL DEFAULT false;
CREATE INDEX payment_methods_vault_delete_pending ON payment_methods (account_id)
    WHERE vault_delete_pending;
