-- Parent accounts, their sub-accounts and every API key (only its SHA-256 hash).
-- Money is integer cents; times are timestamptz (UTC on the wire).

CREATE TABLE parent_accounts (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE sub_accounts (
    id              text PRIMARY KEY,
    parent_id       text NOT NULL REFERENCES parent_accounts (id),
    name            text NOT NULL,
    tier            text,
    spend_cap_cents bigint CHECK (spend_cap_cents >= 0),
    budget_period   text NOT NULL DEFAULT 'monthly'
                    CHECK (budget_period IN ('monthly', 'weekly', 'daily', 'total')),
    rate_limit_rpm  bigint CHECK (rate_limit_rpm >= 1),
    rate_limit_rpd  bigint CHECK (rate_limit_rpd >= 1),
    rate_limit_tpm  bigint CHECK (rate_limit_tpm >= 1),
    allowed_models  text[] NOT NULL DEFAULT '{*}',
    default_tag     text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    byok            boolean NOT NULL DEFAULT true,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- Cursor pagination walks (created_at, id) within one parent, optionally filtered.
CREATE INDEX sub_accounts_by_parent ON sub_accounts (parent_id, created_at, id);
CREATE INDEX sub_accounts_by_parent_tag ON sub_accounts (parent_id, default_tag, created_at, id);
CREATE INDEX sub_accounts_by_parent_status ON sub_accounts (parent_id, status, created_at, id);

-- A key belongs to a sub-account, or (sub_account_id NULL) to its parent itself.
-- expires_at is set when a key is rotated out (end of its grace); revoked_at when it is
-- revoked with its sub-account. Rows are never deleted: history stays.
CREATE TABLE api_keys (
    key_hash        text PRIMARY KEY,
    parent_id       text NOT NULL REFERENCES parent_accounts (id),
    sub_account_id  text REFERENCES sub_accounts (id),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz,
    revoked_at      timestamptz
);

CREATE INDEX api_keys_by_sub_account ON api_keys (sub_account_id, created_at)
    WHERE sub_account_id IS NOT NULL;
CREATE INDEX api_keys_by_parent_own ON api_keys (parent_id, created_at)
    WHERE sub_account_id IS NULL;
