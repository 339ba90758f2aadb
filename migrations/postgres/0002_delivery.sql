-- PostgreSQL twin of ../0002_delivery.sql (exactly-once delivery, orphan-free admission, late
-- delivery where the bot is not a member); the column meanings are written there.

ALTER TABLE jobs ADD COLUMN admitted          BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE jobs ADD COLUMN delivered_at      BIGINT;
ALTER TABLE jobs ADD COLUMN delivery_attempts BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN next_delivery_at  BIGINT;
ALTER TABLE jobs ADD COLUMN bot_in_place      BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE jobs ADD COLUMN dm_notice_at      BIGINT;
ALTER TABLE jobs ADD COLUMN image_url         TEXT;

UPDATE jobs SET delivered_at = finished_at WHERE status IN ('done', 'failed', 'cancelled');
UPDATE jobs SET interaction_token = NULL WHERE status IN ('done', 'failed', 'cancelled');

-- The outbox: ended, not yet delivered.
CREATE INDEX jobs_outbox ON jobs (next_delivery_at, id)
    WHERE delivered_at IS NULL AND status IN ('done', 'failed', 'cancelled');

-- Live interaction tokens: the DM notices and the forgetting of dead tokens look here.
CREATE INDEX jobs_live_tokens ON jobs (created_at) WHERE interaction_token IS NOT NULL;
