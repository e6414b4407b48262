-- When a link's expiry was announced (payments.link.changed with the URL that serves
-- its target now, or none), so Intacct never keeps showing an expired link. Links that
-- expired before this are announced by the first pass.
ALTER TABLE links ADD COLUMN expiry_announced_at timestamptz;
CREATE INDEX links_to_expire ON links (expires_at)
    WHERE revoked_at IS NULL AND expiry_announced_at IS NULL;
