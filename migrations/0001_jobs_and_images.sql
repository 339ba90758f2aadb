-- Jobs and their images: the single source of truth for everything the bot has been asked.
-- Times are unix milliseconds (INTEGER). Discord snowflakes are TEXT: they are u64 and SQLite
-- integers are i64.

CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id           TEXT    NOT NULL,
    channel_id        TEXT    NOT NULL,
    guild_id          TEXT,
    is_dm             INTEGER NOT NULL CHECK (is_dm IN (0, 1)),
    interaction_token TEXT,
    application_id    TEXT,
    message_id        TEXT,
    kind              TEXT    NOT NULL
        CHECK (kind IN ('imagine', 'upscale', 'variation', 'reroll', 'vary_subtle', 'vary_strong')),
    parent_job        INTEGER REFERENCES jobs (id),
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
    finished_at       INTEGER
);

-- Resuming after a restart: queued and running jobs, oldest first.
CREATE INDEX jobs_unfinished ON jobs (created_at, id) WHERE status IN ('queued', 'running');
-- Per-user caps on active jobs.
CREATE INDEX jobs_user_active ON jobs (user_id) WHERE status IN ('queued', 'running');
-- Children of a job (its U/V/reroll jobs).
CREATE INDEX jobs_parent ON jobs (parent_job) WHERE parent_job IS NOT NULL;

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
