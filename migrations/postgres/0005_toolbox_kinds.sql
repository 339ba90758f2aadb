-- PostgreSQL twin of ../0005_toolbox_kinds.sql: the Midjourney toolbox's job kinds. PostgreSQL
-- changes a CHECK constraint in place, so no table is rebuilt here.

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('imagine', 'upscale', 'variation', 'reroll', 'vary_subtle', 'vary_strong',
                    'zoom_out', 'pan', 'upscale_subtle', 'upscale_creative', 'vary_region'));

-- A reaction on a result (✉️) finds its job by message.
CREATE INDEX jobs_message ON jobs (message_id) WHERE message_id IS NOT NULL;
