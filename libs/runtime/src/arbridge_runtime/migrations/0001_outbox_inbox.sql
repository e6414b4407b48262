-- The runtime's tables, created in every service's schema.

-- Transactional outbox: events are written in the same transaction as the
-- state change they announce; the relay publishes them to JetStream with
-- Nats-Msg-Id = id and marks them only after the publish is acknowledged.
-- Published rows are kept (for re-drive and audit) until the retention
-- reaper removes them.
CREATE TABLE outbox (
    seq          bigserial PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wakes the relay as soon as a transaction that wrote events commits.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('arbridge_outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Inbox: the messages each consumer has handled, written in the same
-- transaction as the handler's effect, so a redelivery changes nothing.
CREATE TABLE inbox (
    consumer   text NOT NULL,
    message_id text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_handled_at ON inbox (handled_at);

-- Dead letters: messages a consumer gave up on, with why, kept for operators.
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    subject      text NOT NULL,
    stream_seq   bigint,
    deliveries   integer NOT NULL,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, message_id)
);
