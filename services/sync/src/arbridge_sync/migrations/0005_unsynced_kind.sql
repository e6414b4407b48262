-- What an unsynced entry asks of someone: a failure to fix and re-sync, or a
-- refund made after its payment was posted, which only a user can reverse in
-- Intacct (arbridge has no permission to reverse payments): re-syncing cannot
-- settle it, marking it synced once done there does.
ALTER TABLE unsynced ADD COLUMN kind text NOT NULL DEFAULT 'failure'
    CHECK (kind IN ('failure', 'reversal_needed'));
