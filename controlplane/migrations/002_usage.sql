-- Metering: the usage ledger (one row per request), its daily roll-up, the event outbox of the
-- webhook dispatcher and the dead letters of the usage stream. Written by the usage ingester
-- (controlplane/ingester.py) from the Redis stream `aigw:usage`; see docs/internals.md.
--
-- Money is integer micro-cents (1e-6 cent), tokens are counts, times are timestamptz (UTC).
-- No foreign keys on purpose: a ledger row is a fact the gateway already billed, and an entry
-- naming an unknown owner must never make a whole batch fail; history outlives its owners.

-- One row per request that reached a provider. `request_id` is Envoy's x-request-id, unique:
-- a re-delivered stream entry (at-least-once) is dropped by ON CONFLICT (request_id) DO NOTHING.
-- `sub_account_id` is NULL for a parent's own traffic. `period` is the id of the budget period
-- the gateway settled the request into (`2026-11`, `2026-W48`, `2026-11-27`, `total`), so the
-- spend of a period can be summed back exactly as Redis counted it.
CREATE TABLE usage_ledger (
    request_id          text PRIMARY KEY,
    parent_id           text NOT NULL,
    sub_account_id      text,
    tags                text[] NOT NULL DEFAULT '{}',
    model               text NOT NULL,
    provider            text NOT NULL,
    endpoint            text NOT NULL DEFAULT '',
    status              integer NOT NULL,
    input_tokens        bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cost_microcents     bigint NOT NULL DEFAULT 0,
    fee_microcents      bigint NOT NULL DEFAULT 0,
    byok                boolean NOT NULL DEFAULT false,
    stream              boolean NOT NULL DEFAULT false,
    aborted             boolean NOT NULL DEFAULT false,
    latency_ms          integer,
    started_at          timestamptz,
    finished_at         timestamptz NOT NULL,
    period              text,
    ingested_at         timestamptz NOT NULL DEFAULT now()
);

-- GET /v1/requests (newest first, per parent or per sub-account, cursor on finished_at + id),
-- GET /v1/usage on raw rows, and the spend rebuild (one sub-account, one period).
CREATE INDEX usage_ledger_by_parent ON usage_ledger (parent_id, finished_at DESC, request_id);
CREATE INDEX usage_ledger_by_sub_account ON usage_ledger (sub_account_id, finished_at DESC, request_id)
    WHERE sub_account_id IS NOT NULL;
CREATE INDEX usage_ledger_spend ON usage_ledger (sub_account_id, period)
    INCLUDE (cost_microcents, fee_microcents) WHERE sub_account_id IS NOT NULL;
CREATE INDEX usage_ledger_tags ON usage_ledger USING gin (tags);

-- Daily roll-up, maintained by the ingester in the same transaction as the ledger rows, and
-- only from rows it actually inserted (a re-delivery adds nothing).
--
-- Tags: the dimension is the request's *tag set* (`tags`, distinct and sorted), not one tag.
-- A request is counted in exactly one roll-up row, so totals without a tag dimension are plain
-- sums (never double counted). Grouping by tag unnests the set: a request tagged {a,b} counts
-- once under `a` and once under `b` (that is what "usage of tag a" means), and an untagged
-- request under tag NULL:
--     SELECT tag, sum(requests) ... FROM usage_daily
--     CROSS JOIN LATERAL unnest(CASE WHEN tags = '{}' THEN '{NULL}'::text[] ELSE tags END) tag
-- A tag filter is `tags @> ARRAY[$tag]` (GIN index).
-- `sub_account_id` is NULL for a parent's own traffic (NULLS NOT DISTINCT makes it one key).
-- BYOK share: `byok_requests` and `byok_cost_microcents` of the day's totals (fee is 0 there).
-- `failed_requests`: status >= 400 or no status (0); `day` is the UTC day of `finished_at`.
CREATE TABLE usage_daily (
    day                  date NOT NULL,
    parent_id            text NOT NULL,
    sub_account_id       text,
    model                text NOT NULL,
    tags                 text[] NOT NULL DEFAULT '{}',
    requests             bigint NOT NULL DEFAULT 0,
    failed_requests      bigint NOT NULL DEFAULT 0,
    input_tokens         bigint NOT NULL DEFAULT 0,
    cached_input_tokens  bigint NOT NULL DEFAULT 0,
    cache_write_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens        bigint NOT NULL DEFAULT 0,
    cost_microcents      bigint NOT NULL DEFAULT 0,
    fee_microcents       bigint NOT NULL DEFAULT 0,
    byok_requests        bigint NOT NULL DEFAULT 0,
    byok_cost_microcents bigint NOT NULL DEFAULT 0,
    CONSTRAINT usage_daily_key UNIQUE NULLS NOT DISTINCT
        (parent_id, sub_account_id, day, model, tags)
);

CREATE INDEX usage_daily_by_parent_day ON usage_daily (parent_id, day);
CREATE INDEX usage_daily_by_sub_account_day ON usage_daily (sub_account_id, day)
    WHERE sub_account_id IS NOT NULL;
CREATE INDEX usage_daily_tags ON usage_daily USING gin (tags);

-- The event outbox: what the webhook dispatcher fans out to endpoints (API.md §6, Webhooks).
-- `dedupe_key` makes every fact one event, however often its stream entry is delivered:
--   sub_account.budget.warning / .exhausted   budget:<80|100>:<sub_account_id>:<period>
--   sub_account.rate_limited                  rate_limited:<sub_account_id>:<minute since epoch>
--   sub_account.request.failed                request.failed:<request_id>
-- `payload` is the webhook body's `data`; `created_at` is when the fact happened.
CREATE TABLE events (
    id              text PRIMARY KEY,
    type            text NOT NULL,
    parent_id       text NOT NULL,
    sub_account_id  text,
    dedupe_key      text NOT NULL UNIQUE,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL
);

CREATE INDEX events_by_parent ON events (parent_id, created_at, id);

-- Usage stream entries that could not be read (bad JSON, missing or ill-typed fields). They
-- are acknowledged (never block the stream) and kept here for inspection. `raw` is the entry as
-- received, cut to 8 KiB; entries carry no secrets (no keys, no prompts).
CREATE TABLE usage_dead_letters (
    stream_id    text PRIMARY KEY,
    reason       text NOT NULL,
    raw          text NOT NULL,
    received_at  timestamptz NOT NULL
);
