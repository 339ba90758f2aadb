-- The Midjourney toolbox's job kinds (Zoom Out, Pan, the creative and subtle upscales, Vary
-- (Region)). SQLite cannot change a CHECK constraint in place, so the jobs table is rebuilt
-- as SQLite's documentation describes: a new table, the rows copied, the old one dropped, the
-- new one renamed, the indexes made again. The images table is set aside first and put back
-- after, so that dropping the old jobs table cascades to nothing.

PRAGMA defer_foreign_keys = ON;

CREATE TABLE images_kept AS SELECT job_id, idx, seed, path, sha256, width, height FROM images;
DROP TABLE images;

CREATE TABLE jobs_new (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id           TEXT    NOT NULL,
    channel_id        TEXT    NOT NULL,
    guild_id          TEXT,
    is_dm             INTEGER NOT NULL CHECK (is_dm IN (0, 1)),
    interaction_token TEXT,
    application_id    TEXT,
    message_id        TEXT,
    kind              TEXT    NOT NULL
        CHECK (kind IN ('imagine', 'upscale', 'variation', 'reroll', 'vary_subtle', 'vary_strong',
                        'zoom_out', 'pan', 'upscale_subtle', 'upscale_creative', 'vary_region')),
    parent_job        INTEGER REFERENCES jobs_new (id),
    parent_index      INTEGER CHECK (parent_index IS NULL OR parent_index >= 0),
    prompt            TEXT    NOT NULL,
    negative_prompt   TEXT    NOT NULL DEFAULT '',
    params_json       TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    seeds             TEXT    NOT NULL,
    status            TEXT    NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    error             TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    admitted          INTEGER NOT NULL DEFAULT 1 CHECK (admitted IN (0, 1)),
    delivered_at      INTEGER,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    next_delivery_at  INTEGER,
    bot_in_place      INTEGER NOT NULL DEFAULT 1 CHECK (bot_in_place IN (0, 1)),
    dm_notice_at      INTEGER,
    image_url         TEXT,
    images_purged_at  INTEGER,
    precision         TEXT,
    device            TEXT
);

INSERT INTO jobs_new (
    id, user_id, channel_id, guild_id, is_dm, interaction_token, application_id, message_id,
    kind, parent_job, parent_index, prompt, negative_prompt, params_json, model, seeds, status,
    error, created_at, started_at, finished_at, admitted, delivered_at, delivery_attempts,
    next_delivery_at, bot_in_place, dm_notice_at, image_url, images_purged_at, precision, device
)
SELECT
    id, user_id, channel_id, guild_id, is_dm, interaction_token, application_id, message_id,
    kind, parent_job, parent_index, prompt, negative_prompt, params_json, model, seeds, status,
    error, created_at, started_at, finished_at, admitted, delivered_at, delivery_attempts,
    next_delivery_at, bot_in_place, dm_notice_at, image_url, images_purged_at, precision, device
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE TABLE images (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx    INTEGER NOT NULL CHECK (idx >= 0),
    seed   INTEGER NOT NULL CHECK (seed BETWEEN 0 AND 4294967295),
    path   TEXT    NOT NULL,
    sha256 TEXT    NOT NULL,
    width  INTEGER NOT NULL CHECK (width > 0),
    height INTEGER NOT NULL CHECK (height > 0),
    PRIMARY KEY (job_id, idx)
);
INSERT INTO images (job_id, idx, seed, path, sha256, width, height)
    SELECT job_id, idx, seed, path, sha256, width, height FROM images_kept;
DROP TABLE images_kept;

-- The indexes of 0001-0003, unchanged.
CREATE INDEX jobs_unfinished ON jobs (created_at, id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_user_active ON jobs (user_id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_parent ON jobs (parent_job) WHERE parent_job IS NOT NULL;
CREATE INDEX jobs_outbox ON jobs (next_delivery_at, id)
    WHERE delivered_at IS NULL AND status IN ('done', 'failed', 'cancelled');
CREATE INDEX jobs_live_tokens ON jobs (created_at) WHERE interaction_token IS NOT NULL;
CREATE INDEX jobs_retained ON jobs (finished_at, id)
    WHERE images_purged_at IS NULL AND status IN ('done', 'failed', 'cancelled');

-- New: a reaction on a result (✉️) finds its job by message.
CREATE INDEX jobs_message ON jobs (message_id) WHERE message_id IS NOT NULL;
