-- Retention: when the images of a finished job were deleted to keep the data folder within its
-- configured age or size. The job and its image rows stay (history, seeds); only the files go,
-- and its buttons then answer that the images were cleaned up.

ALTER TABLE jobs ADD COLUMN images_purged_at INTEGER;

-- The retention pass walks finished jobs whose images are still on disk, oldest first.
CREATE INDEX jobs_retained ON jobs (finished_at, id)
    WHERE images_purged_at IS NULL AND status IN ('done', 'failed', 'cancelled');
