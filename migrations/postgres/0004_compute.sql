-- PostgreSQL twin of ../0004_compute.sql: what a finished job computed in and on.

ALTER TABLE jobs ADD COLUMN precision TEXT;
ALTER TABLE jobs ADD COLUMN device TEXT;
