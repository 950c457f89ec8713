-- Usage analytics (controlplane/usage_queries.py, docs/analytics.md): GET /v1/usage filtered by
-- model reads the daily roll-up through this index instead of scanning every roll-up row of the
-- parent (measured with bench/seed_usage.py on 1,000,000 ledger rows: a seq scan of the whole
-- table before). Filters by parent and day, sub-account and day, and tag (GIN) already have
-- theirs in 002_usage.sql; GET /v1/requests walks usage_ledger_by_parent newest first.
CREATE INDEX usage_daily_by_parent_model_day ON usage_daily (parent_id, model, day);
