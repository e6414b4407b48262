-- The payer link a charge was made through (empty for API, rule and queue
-- charges): pay pages count a link's recent declines to stop card testing.
ALTER TABLE charges ADD COLUMN link_id text NOT NULL DEFAULT '';
CREATE INDEX charges_by_link ON charges (link_id, created_at) WHERE link_id <> '';
