-- BYOK: a parent's own provider keys (API.md §6 "BYOK provider keys", docs/provider-keys.md).
-- `ciphertext` is the key sealed with AES-256-GCM under the master key (`secrets_key`):
-- `v1:<key id>:<base64url(nonce || ciphertext || tag)>`, bound to (parent_id, provider) as
-- associated data. The plaintext is never stored; `last4` is what GET shows. `key_id` names the
-- master key that sealed it, so start-up can tell which keys a rotation has still to re-seal.
CREATE TABLE provider_keys (
    parent_id   text NOT NULL REFERENCES parent_accounts (id),
    provider    text NOT NULL,
    ciphertext  text NOT NULL,
    key_id      text NOT NULL,
    last4       text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (parent_id, provider)
);

CREATE INDEX provider_keys_by_key_id ON provider_keys (key_id);
