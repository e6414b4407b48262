-- An outbox row may hold a bundle: the events one transaction wrote together
-- (a sync's batch of records), in arrays, instead of a row each. A sync's
-- hundreds of thousands of events cost PostgreSQL a row, two index entries
-- and an update each; a bundle costs that once. Each event of a bundle keeps
-- its own subject and is published with Nats-Msg-Id = "<id>.<position>"
-- (positions from 1), stable across re-publishes; the row is marked
-- published once every one of its events is acknowledged.
ALTER TABLE outbox
    ALTER COLUMN subject DROP NOT NULL,
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN subjects text[],
    ADD COLUMN payloads bytea[],
    ADD CONSTRAINT outbox_one_event_or_a_bundle CHECK (
        (subject IS NOT NULL AND payload IS NOT NULL AND subjects IS NULL AND payloads IS NULL)
        OR (subject IS NULL AND payload IS NULL AND cardinality(subjects) > 0
            AND cardinality(subjects) = cardinality(payloads))
    );

-- A bundle's arrays are large, written once and read once: stored out of line
-- and uncompressed, so no sync batch pays for compressing bytes the reaper drops.
ALTER TABLE outbox
    ALTER COLUMN subjects SET STORAGE EXTERNAL,
    ALTER COLUMN payloads SET STORAGE EXTERNAL;

-- Every event, one row each, whichever way it was stored: for operators and tests.
CREATE VIEW outbox_events AS
    SELECT seq, 1::bigint AS position, id::text AS message_id, subject, payload, headers,
           created_at, published_at
    FROM outbox WHERE subjects IS NULL
    UNION ALL
    SELECT o.seq, e.position, o.id::text || '.' || e.position, e.subject, e.payload, o.headers,
           o.created_at, o.published_at
    FROM outbox o
    CROSS JOIN LATERAL unnest(o.subjects, o.payloads) WITH ORDINALITY AS e(subject, payload, position)
    WHERE o.subjects IS NOT NULL;
