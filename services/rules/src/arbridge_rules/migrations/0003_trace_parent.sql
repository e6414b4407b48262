-- The trace context of the evaluation that scheduled a charge, so the charge
-- (made later by whichever replica claims it) continues that trace.
ALTER TABLE schedule ADD COLUMN trace_parent text NOT NULL DEFAULT '';
