-- Per-user defaults from /settings and /prefer suffix: the model, the stylize preset, Remix
-- mode, the strength of V1-V4, and a suffix appended to every prompt. One row per user who
-- changed something; a missing row (or a NULL column) means the bot's own default.
-- Portable DDL (SQLite and PostgreSQL): TEXT and BIGINT only; remix is 0 or 1.

CREATE TABLE user_settings (
    user_id    TEXT   PRIMARY KEY,
    model      TEXT,
    stylize    TEXT,
    remix      BIGINT NOT NULL DEFAULT 0 CHECK (remix IN (0, 1)),
    variation  TEXT,
    suffix     TEXT,
    updated_at BIGINT NOT NULL
);
