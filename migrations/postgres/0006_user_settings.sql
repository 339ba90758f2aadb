-- PostgreSQL twin of ../0006_user_settings.sql: per-user defaults from /settings and
-- /prefer suffix. Remix is a BOOLEAN here (0/1 in SQLite): both read as a Rust bool.

CREATE TABLE user_settings (
    user_id    TEXT    PRIMARY KEY,
    model      TEXT,
    stylize    TEXT,
    remix      BOOLEAN NOT NULL DEFAULT FALSE,
    variation  TEXT,
    suffix     TEXT,
    updated_at BIGINT  NOT NULL
);
