-- Dashboard sessions (controlplane/dashboard/sessions.py): a parent signs in with its key and
-- gets a random session token in an HttpOnly cookie. Only the token's SHA-256 is stored, like
-- API keys; `key_hash` names the parent key that signed in, so revoking or rotating that key
-- ends the session. Rows are deleted on logout and swept once expired.
CREATE TABLE dashboard_sessions (
    token_hash  text PRIMARY KEY,
    parent_id   text NOT NULL REFERENCES parent_accounts (id),
    key_hash    text NOT NULL REFERENCES api_keys (key_hash),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);
