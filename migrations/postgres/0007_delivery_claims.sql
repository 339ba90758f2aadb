-- PostgreSQL twin of ../0007_delivery_claims.sql (an outbox's claim on a job's delivery, so
-- gateways sharing the store never post one result twice); the column is described there.

ALTER TABLE jobs ADD COLUMN delivery_claimed_until BIGINT;
