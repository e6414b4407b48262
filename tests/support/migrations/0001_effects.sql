-- Effects of the drain test app: one row per handled message.
CREATE TABLE effects (
    message_id    text PRIMARY KEY,
    applied       integer NOT NULL,
    num_delivered integer NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now()
);
