-- Connected Intacct companies. Secrets live in account_credentials, encrypted.
CREATE TABLE accounts (
    account_id        text PRIMARY KEY,
    company_id        text NOT NULL,
    user_id           text NOT NULL,
    sender_id         text NOT NULL,
    entity_id         text NOT NULL DEFAULT '',
    endpoint_url      text NOT NULL,
    time_zone         text NOT NULL DEFAULT '',
    multi_entity      boolean NOT NULL DEFAULT false,
    platform_services boolean NOT NULL DEFAULT false,
    state             text NOT NULL CHECK (state IN ('connected', 'disconnected', 'credentials_rejected')),
    connected_at      timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- AES-GCM ciphertext of the user and sender passwords, bound to its account
-- and key id by the associated data; destroyed on disconnect.
CREATE TABLE account_credentials (
    account_id  text PRIMARY KEY REFERENCES accounts (account_id) ON DELETE CASCADE,
    key_id      text NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- API calls per account, day (UTC) and function: what each customer pays for.
CREATE TABLE api_usage (
    account_id text NOT NULL,
    day        date NOT NULL,
    function   text NOT NULL,
    calls      bigint NOT NULL,
    PRIMARY KEY (account_id, day, function)
);

-- Per-company request rate, shared by every replica (token bucket with debt).
CREATE TABLE intacct_rate (
    company_id text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
