-- Webhooks (API.md §6): the endpoints of each parent, one delivery per event and matching
-- endpoint, and the log of every attempt. Read docs/webhooks.md for the behaviour.
--
-- The source of events is the outbox `events` (002_usage.sql), written in the same transaction
-- as the fact that caused each event (the usage ingester; sub-account creation). The trigger
-- below fans every new event out to the parent's subscribed endpoints *in that same
-- transaction*, so an event and its deliveries commit or vanish together, and wakes the
-- dispatchers with NOTIFY (delivered after the commit). `ON CONFLICT (dedupe_key) DO NOTHING`
-- inserts fire no trigger, so a duplicate fact makes no second delivery.

-- An endpoint is deleted softly: its row stays (deliveries and their log refer to it), its
-- secret is wiped and its pending deliveries are cancelled. `secret` is sealed by
-- controlplane/webhook_secrets.py (AES-GCM under the configured `secrets_key` when there is
-- one); the plaintext is shown once, on create, and never stored in the clear when a key is set.
CREATE TABLE webhook_endpoints (
    id           text PRIMARY KEY,
    parent_id    text NOT NULL REFERENCES parent_accounts (id),
    url          text NOT NULL,
    events       text[] NOT NULL,          -- event types, or '{*}' for every type
    description  text,
    secret       text NOT NULL,
    created_at   timestamptz NOT NULL,
    deleted_at   timestamptz
);

CREATE INDEX webhook_endpoints_by_parent ON webhook_endpoints (parent_id, created_at, id)
    WHERE deleted_at IS NULL;

-- One row per (event, endpoint): the unit of retry. `attempts` counts attempts started (it is
-- raised when a dispatcher claims the row, so a crash mid-send still counts); `next_attempt_at`
-- is when the row is due, and while a dispatcher holds it, when its lease ends (a dispatcher
-- that died mid-send leaves the row to be taken again after that). `lease` names the claim so
-- that only its holder records the outcome. The `webhook-id` header is `event_id`, the same for
-- every attempt and every dispatcher.
CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints (id),
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease            text,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    CONSTRAINT webhook_deliveries_once UNIQUE (endpoint_id, event_id)
);

-- The claim walks each endpoint's due rows in order (controlplane/dispatcher.py).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

-- One row per attempt that got an outcome: GET /v1/webhooks/{id}/deliveries, newest first.
-- `status_code` is NULL when no response came (timeout, connection error); `outcome` is what
-- the attempt led to: `delivered`, `retrying` (another attempt is scheduled) or `failed`.
CREATE TABLE webhook_attempts (
    id           text PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id),
    endpoint_id  text NOT NULL,
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    attempt      integer NOT NULL,
    status_code  integer,
    error        text,
    outcome      text NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed')),
    duration_ms  integer NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, created_at, id);

-- Fan-out: deliveries for every live endpoint of the event's parent that subscribed to its type.
-- `webhook.test` events are addressed to one endpoint by the test route itself.
CREATE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    fanned integer;
BEGIN
    IF NEW.type = 'webhook.test' THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, next_attempt_at, created_at)
    SELECT w.id, NEW.id, NEW.type, now(), now()
    FROM webhook_endpoints w
    WHERE w.parent_id = NEW.parent_id
      AND w.deleted_at IS NULL
      AND (NEW.type = ANY (w.events) OR '*' = ANY (w.events))
    ON CONFLICT ON CONSTRAINT webhook_deliveries_once DO NOTHING;
    GET DIAGNOSTICS fanned = ROW_COUNT;
    IF fanned > 0 THEN
        PERFORM pg_notify('aigw_webhooks', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_fan_out AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION webhook_fan_out();
