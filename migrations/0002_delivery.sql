-- Exactly-once delivery, orphan-free admission, late delivery where the bot is not a member.
--
-- admitted: 0 while the job's first reply is not yet confirmed by Discord. Such a row never
--   runs; at start it is resolved (kept if the reply exists, else abandoned without delivery).
-- delivered_at: when Discord confirmed the job's final message (done, failed or cancelled).
--   An ended job with delivered_at NULL is in the outbox and is delivered until confirmed.
-- delivery_attempts / next_delivery_at: the outbox's backoff (unix ms).
-- bot_in_place: 1 when the bot itself can post where the job was asked (a server that installed
--   it, or its own DM); 0 for user-installed contexts (group DMs, servers without the bot),
--   which are answered by DM once the interaction token is dead.
-- dm_notice_at: when the "the result will come by DM" edit was made in such a context.
-- image_url: the attachment of an image prompt, kept until it is downloaded, so a restart can
--   fetch it again.

ALTER TABLE jobs ADD COLUMN admitted          INTEGER NOT NULL DEFAULT 1 CHECK (admitted IN (0, 1));
ALTER TABLE jobs ADD COLUMN delivered_at      INTEGER;
ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN next_delivery_at  INTEGER;
ALTER TABLE jobs ADD COLUMN bot_in_place      INTEGER NOT NULL DEFAULT 1 CHECK (bot_in_place IN (0, 1));
ALTER TABLE jobs ADD COLUMN dm_notice_at      INTEGER;
ALTER TABLE jobs ADD COLUMN image_url         TEXT;

-- Jobs that ended before this version were shown by it already (or never will be): not the
-- outbox's business.
UPDATE jobs SET delivered_at = finished_at WHERE status IN ('done', 'failed', 'cancelled');
UPDATE jobs SET interaction_token = NULL WHERE status IN ('done', 'failed', 'cancelled');

-- The outbox: ended, not yet delivered.
CREATE INDEX jobs_outbox ON jobs (next_delivery_at, id)
    WHERE delivered_at IS NULL AND status IN ('done', 'failed', 'cancelled');

-- Live interaction tokens: the DM notices and the forgetting of dead tokens look here.
CREATE INDEX jobs_live_tokens ON jobs (created_at) WHERE interaction_token IS NOT NULL;
