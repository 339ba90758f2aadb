-- PostgreSQL twin of ../0003_retention.sql: when retention deleted a finished job's images.

ALTER TABLE jobs ADD COLUMN images_purged_at BIGINT;

CREATE INDEX jobs_retained ON jobs (finished_at, id)
    WHERE images_purged_at IS NULL AND status IN ('done', 'failed', 'cancelled');
