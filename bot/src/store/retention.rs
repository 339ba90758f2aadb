//! What retention may delete: finished jobs whose images are still on disk, oldest first, and
//! the choice among them under an age and a size limit. The files themselves are deleted by
//! [`crate::retention`]; here the store says which, and remembers it (`images_purged_at`).
//!
//! Safety rules, all decided here so they are tested in one place:
//! - queued and running jobs are never candidates;
//! - a finished job with an image that a live job starts from (a U or V pressed but not yet
//!   run) is kept whole, and that is checked again when the purge is recorded;
//! - a saved image prompt (`inputs/...`) is shared by the `/imagine` job that downloaded it and
//!   its rerolls: it goes only with the last job that refers to it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::types::{JobId, StoreError};
use super::{now_ms, Store};

/// How much of the stored images to keep. Both `None`: keep everything (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetentionLimits {
    /// Images of jobs that finished longer ago than this are deleted.
    pub max_age: Option<Duration>,
    /// The images of finished jobs may take at most this many bytes; the oldest go first.
    pub max_bytes: Option<u64>,
}

impl RetentionLimits {
    pub fn is_off(&self) -> bool {
        self.max_age.is_none() && self.max_bytes.is_none()
    }
}

/// A finished job whose files are still on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct RetainedJob {
    pub job: JobId,
    /// Unix milliseconds.
    pub finished_at: i64,
    /// Its images (grid cells or the single U image), as stored.
    pub images: Vec<PathBuf>,
    /// The saved image prompt it started from, if it owns one (shared with its rerolls).
    pub input: Option<PathBuf>,
    /// A queued or running job starts from one of its images: not to be touched.
    pub needed_by_live_job: bool,
}

/// Everything a retention pass weighs, read in one go.
#[derive(Debug, Clone, Default)]
pub struct RetentionInventory {
    /// Oldest first (by `finished_at`, then id).
    pub jobs: Vec<RetainedJob>,
    /// Saved image prompts, with how many jobs not yet purged (live ones included) refer to
    /// each.
    pub input_refs: HashMap<PathBuf, usize>,
}

/// One job's images to delete, and the files that go with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Purge {
    pub job: JobId,
    /// Its images, then its saved image prompt if no other remaining job uses it.
    pub files: Vec<PathBuf>,
}

impl RetentionInventory {
    /// The jobs whose images go, oldest first: every job past `max_age` at `now_ms`, then
    /// the oldest others until what remains fits `max_bytes`. `size` measures a file on disk
    /// (0 if it is gone). Jobs a live job needs are kept, even if that leaves the total over
    /// the limit.
    pub fn select(
        &self,
        limits: &RetentionLimits,
        now_ms: i64,
        size: impl Fn(&Path) -> u64,
    ) -> Vec<Purge> {
        let cutoff = limits
            .max_age
            .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        let mut refs = self.input_refs.clone();
        let mut total: u64 = self
            .jobs
            .iter()
            .flat_map(|j| &j.images)
            .chain(refs.keys())
            .map(|p| size(p))
            .sum();
        let mut purges = Vec::new();
        for job in &self.jobs {
            if job.needed_by_live_job {
                continue;
            }
            let too_old = cutoff.is_some_and(|c| job.finished_at <= c);
            let too_big = limits.max_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                continue;
            }
            let mut files = job.images.clone();
            if let Some(input) = &job.input {
                if let Some(n) = refs.get_mut(input) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        files.push(input.clone());
                    }
                }
            }
            total = total.saturating_sub(files.iter().map(|p| size(p)).sum());
            purges.push(Purge {
                job: job.job,
                files,
            });
        }
        purges
    }
}

/// The image a job starts from (`params_json`'s `init_image`), in each dialect's JSON access.
/// Statements that need it are written twice, SQLite first.
const LIVE_INPUTS: [&str; 2] = [
    "SELECT input FROM (
         SELECT json_extract(params_json, '$.init_image') AS input FROM jobs
         WHERE status IN ('queued', 'running')) AS live
     WHERE input IS NOT NULL",
    "SELECT input FROM (
         SELECT CAST(params_json AS JSONB) ->> 'init_image' AS input FROM jobs
         WHERE status IN ('queued', 'running')) AS live
     WHERE input IS NOT NULL",
];

const FINISHED_JOBS: [&str; 2] = [
    "SELECT id, finished_at, input,
            input IN (SELECT path FROM images) AS input_is_an_image
     FROM (SELECT id, finished_at, json_extract(params_json, '$.init_image') AS input
           FROM jobs
           WHERE status IN ('done', 'failed', 'cancelled') AND images_purged_at IS NULL
             AND delivered_at IS NOT NULL) AS finished
     ORDER BY finished_at, id",
    "SELECT id, finished_at, input,
            input IN (SELECT path FROM images) AS input_is_an_image
     FROM (SELECT id, finished_at, CAST(params_json AS JSONB) ->> 'init_image' AS input
           FROM jobs
           WHERE status IN ('done', 'failed', 'cancelled') AND images_purged_at IS NULL
             AND delivered_at IS NOT NULL) AS finished
     ORDER BY finished_at, id",
];

const INPUT_REFS: [&str; 2] = [
    "SELECT input, COUNT(*) AS n FROM (
         SELECT json_extract(params_json, '$.init_image') AS input FROM jobs
         WHERE images_purged_at IS NULL) AS kept
     WHERE input IS NOT NULL AND input NOT IN (SELECT path FROM images)
     GROUP BY input",
    "SELECT input, COUNT(*) AS n FROM (
         SELECT CAST(params_json AS JSONB) ->> 'init_image' AS input FROM jobs
         WHERE images_purged_at IS NULL) AS kept
     WHERE input IS NOT NULL AND input NOT IN (SELECT path FROM images)
     GROUP BY input",
];

const MARK_PURGED: [&str; 2] = [
    "UPDATE jobs SET images_purged_at = $1
     WHERE id = $2 AND images_purged_at IS NULL
       AND status IN ('done', 'failed', 'cancelled')
       -- the outbox still needs the images of a result not yet delivered
       AND delivered_at IS NOT NULL
       AND NOT EXISTS (
           SELECT 1 FROM images i
           JOIN jobs live ON live.status IN ('queued', 'running')
           WHERE i.job_id = $2
             AND json_extract(live.params_json, '$.init_image') = i.path)",
    "UPDATE jobs SET images_purged_at = $1
     WHERE id = $2 AND images_purged_at IS NULL
       AND status IN ('done', 'failed', 'cancelled')
       -- the outbox still needs the images of a result not yet delivered
       AND delivered_at IS NOT NULL
       AND NOT EXISTS (
           SELECT 1 FROM images i
           JOIN jobs live ON live.status IN ('queued', 'running')
           WHERE i.job_id = $2
             AND CAST(live.params_json AS JSONB) ->> 'init_image' = i.path)",
];

/// A finished job with its images on disk, as [`FINISHED_JOBS`] returns it.
#[derive(sqlx::FromRow)]
struct FinishedRow {
    id: i64,
    finished_at: Option<i64>,
    input: Option<String>,
    /// NULL when the job has no input.
    input_is_an_image: Option<bool>,
}

impl Store {
    /// Reads what a retention pass needs: finished jobs with their images still on disk,
    /// which of them live jobs need, and who shares each saved image prompt.
    pub async fn retention_inventory(&self) -> Result<RetentionInventory, StoreError> {
        let (live_inputs, rows, image_rows, refs) = on_pool!(self, |pool, d| {
            let [live, finished, refs] = [LIVE_INPUTS, FINISHED_JOBS, INPUT_REFS]
                .map(|[sqlite, postgres]| d.pick(sqlite, postgres));
            let mut conn = pool.acquire().await?;
            let live_inputs: Vec<String> = sqlx::query_scalar(live).fetch_all(&mut *conn).await?;
            let rows: Vec<FinishedRow> = sqlx::query_as(finished).fetch_all(&mut *conn).await?;
            let image_rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT i.job_id, i.path FROM images i JOIN jobs j ON j.id = i.job_id
                 WHERE j.images_purged_at IS NULL ORDER BY i.job_id, i.idx",
            )
            .fetch_all(&mut *conn)
            .await?;
            let refs: Vec<(String, i64)> = sqlx::query_as(refs).fetch_all(&mut *conn).await?;
            (live_inputs, rows, image_rows, refs)
        });
        let live_inputs: HashSet<String> = live_inputs.into_iter().collect();
        let mut images: HashMap<i64, Vec<String>> = HashMap::new();
        for (job, path) in image_rows {
            images.entry(job).or_default().push(path);
        }
        let input_refs = refs
            .into_iter()
            .map(|(input, n)| {
                (
                    PathBuf::from(input),
                    usize::try_from(n).unwrap_or(usize::MAX),
                )
            })
            .collect();
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let paths = images.remove(&row.id).unwrap_or_default();
            jobs.push(RetainedJob {
                job: JobId(row.id),
                finished_at: row.finished_at.unwrap_or(0),
                needed_by_live_job: paths.iter().any(|p| live_inputs.contains(p)),
                images: paths.into_iter().map(PathBuf::from).collect(),
                input: row
                    .input
                    .filter(|_| row.input_is_an_image == Some(false))
                    .map(PathBuf::from),
            });
        }
        Ok(RetentionInventory { jobs, input_refs })
    }

    /// Records that the images of `jobs` are being deleted, so their buttons answer that
    /// they were cleaned up. Skips any job a live job has come to need since the inventory
    /// was read. Returns the jobs recorded: delete only their files.
    pub async fn mark_images_purged(&self, jobs: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let now = now_ms();
        let mut marked = Vec::with_capacity(jobs.len());
        on_pool!(self, |pool, d| {
            let [sqlite, postgres] = MARK_PURGED;
            let mut tx = pool.begin().await?;
            for job in jobs {
                let updated = sqlx::query(d.pick(sqlite, postgres))
                    .bind(now)
                    .bind(job.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 1 {
                    marked.push(*job);
                }
            }
            tx.commit().await?;
        });
        Ok(marked)
    }

    /// Whether retention deleted the images of `job` (false for a job that does not exist).
    pub async fn images_purged(&self, job: JobId) -> Result<bool, StoreError> {
        let at: Option<Option<i64>> = on_pool!(self, |pool, _d| sqlx::query_scalar(
            "SELECT images_purged_at FROM jobs WHERE id = $1"
        )
        .bind(job.0)
        .fetch_optional(pool)
        .await?);
        Ok(at.flatten().is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::params::Aspect;
    use crate::store::{ImageRecord, JobKind, JobParams, NewJob, Parent};

    const DAY_MS: i64 = 86_400_000;

    fn request(kind: JobKind, parent: Option<Parent>, init: Option<&Path>) -> NewJob {
        NewJob {
            user_id: 1,
            channel_id: 2,
            guild_id: Some(3),
            is_dm: false,
            interaction_token: None,
            bot_in_place: true,
            application_id: None,
            kind,
            parent,
            prompt: "a lighthouse".into(),
            negative_prompt: String::new(),
            params: JobParams {
                width: 64,
                height: 64,
                steps: 1,
                guidance: 0.0,
                scheduler: String::new(),
                aspect: Aspect::default(),
                chaos: 0,
                stylize: None,
                strength: None,
                init_image: init.map(|p| p.to_string_lossy().into_owned()),
                precision: None,
                zoom: None,
                pan: None,
                region: None,
                region_mask: None,
            },
            model: "tiny".into(),
            seeds: vec![1],
        }
    }

    /// A store and a data folder with real files, so sizes are measured as in the bot.
    struct Fixture {
        store: Store,
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(store: Store) -> Fixture {
            Fixture {
                store,
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn file(&self, name: &str, bytes: usize) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, vec![0u8; bytes]).unwrap();
            path
        }

        /// A finished job with one image of `bytes` bytes, finished `days_ago` before `NOW`.
        async fn done(&self, bytes: usize, days_ago: i64, init: Option<&Path>) -> JobId {
            let job = self
                .store
                .insert_job(&request(JobKind::Imagine, None, init))
                .await
                .unwrap();
            self.finish(job, bytes, days_ago).await;
            job
        }

        async fn finish(&self, job: JobId, bytes: usize, days_ago: i64) {
            let path = self.file(&format!("{}.png", job.0), bytes);
            self.store.mark_running(job).await.unwrap();
            let image = ImageRecord {
                idx: 0,
                seed: 1,
                path,
                sha256: String::new(),
                width: 64,
                height: 64,
            };
            self.store.finish_job(job, &[image]).await.unwrap();
            self.store.mark_delivered(job).await.unwrap();
            self.store
                .execute_for_test(
                    "UPDATE jobs SET finished_at = $1 WHERE id = $2",
                    &[NOW - days_ago * DAY_MS, job.0],
                )
                .await
                .unwrap();
        }

        async fn select(&self, limits: RetentionLimits) -> Vec<Purge> {
            let inventory = self.store.retention_inventory().await.unwrap();
            inventory.select(&limits, NOW, |p| {
                std::fs::metadata(p).map_or(0, |m| m.len())
            })
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    fn days(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n * 86_400))
    }

    fn ids(purges: &[Purge]) -> Vec<JobId> {
        purges.iter().map(|p| p.job).collect()
    }

    async fn jobs_older_than_the_age_limit_go_and_newer_ones_stay(store: Store) {
        let f = Fixture::new(store);
        let old = f.done(100, 40, None).await;
        let recent = f.done(100, 5, None).await;
        let limits = RetentionLimits {
            max_age: days(30),
            max_bytes: None,
        };
        let purges = f.select(limits).await;
        assert_eq!(ids(&purges), vec![old]);
        assert_eq!(
            purges[0].files,
            vec![f.dir.path().join(format!("{}.png", old.0))]
        );
        assert!(!ids(&purges).contains(&recent));
    }

    async fn a_result_not_yet_delivered_keeps_its_images(store: Store) {
        let f = Fixture::new(store);
        let old = f.done(100, 40, None).await;
        f.store
            .execute_for_test(
                "UPDATE jobs SET delivered_at = NULL WHERE id = $1",
                &[old.0],
            )
            .await
            .unwrap();
        let limits = RetentionLimits {
            max_age: days(30),
            max_bytes: Some(1),
        };
        assert!(
            f.select(limits).await.is_empty(),
            "the outbox still needs them"
        );
    }

    async fn over_the_size_limit_the_oldest_go_first_until_the_rest_fits(store: Store) {
        let f = Fixture::new(store);
        // Created in one order, finished in another: age is when a job finished.
        let middle = f.done(400, 2, None).await;
        let oldest = f.done(400, 3, None).await;
        let newest = f.done(400, 1, None).await;
        let limits = RetentionLimits {
            max_age: None,
            max_bytes: Some(900),
        };
        assert_eq!(ids(&f.select(limits).await), vec![oldest]);
        let limits = RetentionLimits {
            max_bytes: Some(400),
            ..limits
        };
        let purged = ids(&f.select(limits).await);
        assert_eq!(purged, vec![oldest, middle]);
        assert!(!purged.contains(&newest));
        assert!(
            f.select(RetentionLimits::default()).await.is_empty(),
            "off keeps all"
        );
    }

    async fn queued_and_running_jobs_and_the_images_they_start_from_are_never_touched(
        store: Store,
    ) {
        let f = Fixture::new(store);
        let parent = f.done(100, 50, None).await;
        let other = f.done(100, 50, None).await;
        let parent_image = f.dir.path().join(format!("{}.png", parent.0));
        // U1 pressed under `parent`, not yet run: it starts from parent's image.
        let upscale = request(
            JobKind::Upscale,
            Some(Parent {
                job: parent,
                index: Some(0),
            }),
            Some(&parent_image),
        );
        let queued = f.store.insert_job(&upscale).await.unwrap();
        let running = f
            .store
            .insert_job(&request(JobKind::Imagine, None, None))
            .await
            .unwrap();
        f.store.mark_running(running).await.unwrap();
        let limits = RetentionLimits {
            max_age: days(1),
            max_bytes: Some(1),
        };
        let purges = f.select(limits).await;
        assert_eq!(
            ids(&purges),
            vec![other],
            "live jobs and what they need stay"
        );
        // Recording the purge checks again: a parent needed since the inventory stays.
        let marked = f.store.mark_images_purged(&[parent, other]).await.unwrap();
        assert_eq!(marked, vec![other]);
        assert!(f.store.images_purged(other).await.unwrap());
        assert!(!f.store.images_purged(parent).await.unwrap());
        assert!(!f.store.images_purged(queued).await.unwrap());
        // Once the U job has run, its parent may go.
        f.finish(queued, 100, 0).await;
        let purges = f.select(limits).await;
        assert_eq!(ids(&purges), vec![parent, queued]);
        assert!(
            f.store
                .retention_inventory()
                .await
                .unwrap()
                .jobs
                .iter()
                .all(|j| j.job != other),
            "a purged job is not weighed again"
        );
    }

    async fn a_saved_image_prompt_goes_with_the_last_job_that_uses_it(store: Store) {
        let f = Fixture::new(store);
        let input = f.file("input.png", 300);
        let first = f.done(100, 10, Some(&input)).await;
        let reroll = request(
            JobKind::Reroll,
            Some(Parent {
                job: first,
                index: None,
            }),
            Some(&input),
        );
        let reroll = f.store.insert_job(&reroll).await.unwrap();
        f.finish(reroll, 100, 2).await;
        let limits = RetentionLimits {
            max_age: days(5),
            max_bytes: None,
        };
        let purges = f.select(limits).await;
        assert_eq!(ids(&purges), vec![first]);
        assert!(
            !purges[0].files.contains(&input),
            "the reroll still uses it"
        );
        f.store.mark_images_purged(&[first]).await.unwrap();
        let limits = RetentionLimits {
            max_age: days(1),
            max_bytes: None,
        };
        let purges = f.select(limits).await;
        assert_eq!(ids(&purges), vec![reroll]);
        assert!(
            purges[0].files.contains(&input),
            "the last user takes it along"
        );
    }

    on_both_backends! {
        jobs_older_than_the_age_limit_go_and_newer_ones_stay,
        a_result_not_yet_delivered_keeps_its_images,
        over_the_size_limit_the_oldest_go_first_until_the_rest_fits,
        queued_and_running_jobs_and_the_images_they_start_from_are_never_touched,
        a_saved_image_prompt_goes_with_the_last_job_that_uses_it,
    }
}
