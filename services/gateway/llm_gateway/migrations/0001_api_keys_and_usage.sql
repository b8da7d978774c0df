-- API keys and per-request usage. Applied by `python -m llm_gateway.admin migrate` (llm_gateway/db.py).
-- Never edit an applied migration: add 0002_... instead.

CREATE TABLE api_keys (
    id             text PRIMARY KEY,                 -- public part of "sk-<id>-<secret>"
    secret_hash    bytea NOT NULL,                   -- SHA-256 of the secret; the secret itself is never stored
    name           text NOT NULL CHECK (name <> ''),
    tier           text NOT NULL CHECK (tier <> ''),
    models         text[] NOT NULL DEFAULT '{}',     -- empty = every served model, adapters included
    rpm            integer CHECK (rpm > 0),          -- NULL = unlimited
    tpm            bigint CHECK (tpm > 0),
    max_concurrent integer CHECK (max_concurrent > 0),
    max_tokens     integer CHECK (max_tokens > 0),
    expires_at     timestamptz,
    revoked_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE usage_records (
    id                bigserial PRIMARY KEY,
    request_id        text NOT NULL,
    key_id            text NOT NULL REFERENCES api_keys (id),
    tier              text NOT NULL,
    model             text NOT NULL,
    prompt_tokens     integer NOT NULL,
    completion_tokens integer NOT NULL,
    status            smallint NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- `admin usage --key-id K --since T` and per-key billing queries.
CREATE INDEX usage_records_key_id_created_at_idx ON usage_records (key_id, created_at);
