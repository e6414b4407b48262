-- The trace context of the call that created a charge, so posting it to
-- Intacct (a background worker, later) continues that trace.
ALTER TABLE charges ADD COLUMN trace_parent text NOT NULL DEFAULT '';
