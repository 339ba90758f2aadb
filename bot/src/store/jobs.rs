//! Jobs: insert, move through their statuses, read back; images written with their job.

use super::types::{
    Compute, Delivery, ImageRecord, Job, JobId, JobKind, JobStatus, NewJob, Parent, StoreError,
};
use super::{now_ms, Store};

/// Moves `job` to `to` if its current status allows it (see [`JobStatus::allowed_sources`]),
/// in one conditional `UPDATE`; otherwise reports why not. Stamps `started_at` on
/// `running`, clears it on `queued`, stamps `finished_at` on the final statuses. `$conn` is a
/// connection or transaction of either back-end (hence a macro: the body compiles per one).
macro_rules! transition {
    ($conn:expr, $job:expr, $to:expr, $error:expr) => {{
        let (conn, job, to, error): (_, JobId, JobStatus, Option<&str>) =
            ($conn, $job, $to, $error);
        // At most two sources; a single one is bound twice.
        let sources = to.allowed_sources();
        let first = sources[0].as_str();
        let second = sources.get(1).unwrap_or(&sources[0]).as_str();
        let updated = sqlx::query(
            "UPDATE jobs SET
                 status = $1,
                 started_at = CASE $1 WHEN 'running' THEN $2 WHEN 'queued' THEN NULL
                                      ELSE started_at END,
                 finished_at = CASE WHEN $1 IN ('done', 'failed', 'cancelled') THEN $2 END,
                 error = $3
             WHERE id = $4 AND status IN ($5, $6)",
        )
        .bind(to.as_str())
        .bind(now_ms())
        .bind(error.map(str::to_string))
        .bind(job.0)
        .bind(first)
        .bind(second)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if updated == 1 {
            Ok(())
        } else {
            let current: Option<String> =
                sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
                    .bind(job.0)
                    .fetch_optional(&mut *conn)
                    .await?;
            match current {
                None => Err(StoreError::NotFound(job)),
                Some(status) => Err(StoreError::IllegalTransition {
                    job,
                    from: parse_column(job, "status", &status)?,
                    to,
                }),
            }
        }
    }};
}

impl Store {
    /// Records a new job, `queued` and admitted, created now.
    pub async fn insert_job(&self, job: &NewJob) -> Result<JobId, StoreError> {
        self.insert(job, true, None).await
    }

    /// Records a new job whose first reply is not confirmed yet (see
    /// [`Store::confirm_admission`]): it never runs, nor is it resumed, until then. `image_url`
    /// is its image prompt, kept so that a restart can download it again.
    pub async fn insert_admitting(
        &self,
        job: &NewJob,
        image_url: Option<&str>,
    ) -> Result<JobId, StoreError> {
        self.insert(job, false, image_url).await
    }

    async fn insert(
        &self,
        job: &NewJob,
        admitted: bool,
        image_url: Option<&str>,
    ) -> Result<JobId, StoreError> {
        let params = serde_json::to_string(&job.params)?;
        let seeds = serde_json::to_string(&job.seeds)?;
        let id: i64 = on_pool!(self, |pool, _d| sqlx::query_scalar(
            "INSERT INTO jobs (user_id, channel_id, guild_id, is_dm, interaction_token,
                               application_id, kind, parent_job, parent_index, prompt,
                               negative_prompt, params_json, model, seeds, status, created_at,
                               bot_in_place, admitted, image_url)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'queued', $15,
                     $16, $17, $18)
             RETURNING id",
        )
        .bind(job.user_id.to_string())
        .bind(job.channel_id.to_string())
        .bind(job.guild_id.map(|id| id.to_string()))
        .bind(job.is_dm)
        .bind(job.interaction_token.clone())
        .bind(job.application_id.map(|id| id.to_string()))
        .bind(job.kind.as_str())
        .bind(job.parent.map(|p| p.job.0))
        .bind(job.parent.and_then(|p| p.index).map(i64::from))
        .bind(job.prompt.clone())
        .bind(job.negative_prompt.clone())
        .bind(params)
        .bind(job.model.clone())
        .bind(seeds)
        .bind(now_ms())
        .bind(job.bot_in_place)
        .bind(admitted)
        .bind(image_url.map(str::to_string))
        .fetch_one(pool)
        .await?);
        Ok(JobId(id))
    }

    /// Remembers the bot's message that shows `job`, so progress and results edit it.
    pub async fn set_message(&self, job: JobId, message_id: u64) -> Result<(), StoreError> {
        let updated = on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET message_id = $1 WHERE id = $2"
        )
        .bind(message_id.to_string())
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected());
        if updated == 0 {
            return Err(StoreError::NotFound(job));
        }
        Ok(())
    }

    /// `queued -> running`, stamping `started_at`.
    pub async fn mark_running(&self, job: JobId) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| {
            let mut conn = pool.acquire().await?;
            transition!(&mut *conn, job, JobStatus::Running, None)
        })
    }

    /// The job whose message is `message` (its result, once shown), if any.
    pub async fn job_by_message(&self, message: u64) -> Result<Option<Job>, StoreError> {
        let row: Option<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE message_id = $1 ORDER BY id DESC LIMIT 1"
        ))
        .bind(message.to_string())
        .fetch_optional(pool)
        .await?);
        row.map(JobRow::into_job).transpose()
    }

    /// `running -> done`, with its images, in one transaction: either both are stored or
    /// neither is. At least one image; indices must be distinct.
    pub async fn finish_job(&self, job: JobId, images: &[ImageRecord]) -> Result<(), StoreError> {
        self.finish_job_on(job, images, None).await
    }

    /// [`Store::finish_job`], recording what the job computed in and on.
    pub async fn finish_job_on(
        &self,
        job: JobId,
        images: &[ImageRecord],
        compute: Option<&Compute>,
    ) -> Result<(), StoreError> {
        if images.is_empty() {
            return Err(StoreError::NoImages(job));
        }
        on_pool!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            transition!(&mut *tx, job, JobStatus::Done, None)?;
            if let Some(c) = compute {
                sqlx::query("UPDATE jobs SET precision = $1, device = $2 WHERE id = $3")
                    .bind(&c.precision)
                    .bind(&c.device)
                    .bind(job.0)
                    .execute(&mut *tx)
                    .await?;
            }
            for image in images {
                let path = image
                    .path
                    .to_str()
                    .ok_or_else(|| StoreError::NonUtf8Path(image.path.clone()))?;
                sqlx::query(
                    "INSERT INTO images (job_id, idx, seed, path, sha256, width, height)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(job.0)
                .bind(i64::from(image.idx))
                .bind(i64::from(image.seed))
                .bind(path.to_string())
                .bind(image.sha256.clone())
                .bind(i64::from(image.width))
                .bind(i64::from(image.height))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// `queued | running -> failed`, keeping `error` for the user and the logs.
    pub async fn fail_job(&self, job: JobId, error: &str) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| {
            let mut conn = pool.acquire().await?;
            transition!(&mut *conn, job, JobStatus::Failed, Some(error))
        })
    }

    /// `queued | running -> cancelled`.
    pub async fn cancel_job(&self, job: JobId) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| {
            let mut conn = pool.acquire().await?;
            transition!(&mut *conn, job, JobStatus::Cancelled, None)
        })
    }

    /// `running -> queued`: a job stopped between steps by a graceful stop, to run again at
    /// the next start.
    pub async fn requeue_job(&self, job: JobId) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| {
            let mut conn = pool.acquire().await?;
            transition!(&mut *conn, job, JobStatus::Queued, None)
        })
    }

    /// At startup: every `running` job was interrupted by the restart, so it goes back to
    /// `queued` (keeping its place: the queue is ordered by creation). Returns how many.
    pub async fn requeue_running(&self) -> Result<u64, StoreError> {
        let requeued = on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running'",
        )
        .execute(pool)
        .await?
        .rows_affected());
        Ok(requeued)
    }

    /// Jobs recorded as running, oldest first (a gateway sharing the store picks its own).
    pub async fn running_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE status = 'running' ORDER BY id"
        ))
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// The admitted jobs waiting in line (at any gateway sharing the store), in admission
    /// order.
    pub async fn queued_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<i64> = on_pool!(self, |pool, _d| sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status = 'queued' AND admitted ORDER BY id"
        )
        .fetch_all(pool)
        .await?);
        Ok(ids.into_iter().map(JobId).collect())
    }

    /// The job, if it exists.
    pub async fn job(&self, job: JobId) -> Result<Option<Job>, StoreError> {
        let row: Option<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE id = $1"
        ))
        .bind(job.0)
        .fetch_optional(pool)
        .await?);
        row.map(JobRow::into_job).transpose()
    }

    /// The images of a job, by index; empty until it is done.
    pub async fn images(&self, job: JobId) -> Result<Vec<ImageRecord>, StoreError> {
        let rows: Vec<ImageRow> = on_pool!(self, |pool, _d| sqlx::query_as(
            "SELECT idx, seed, path, sha256, width, height FROM images
             WHERE job_id = $1 ORDER BY idx",
        )
        .bind(job.0)
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(|row| row.into_image(job)).collect()
    }

    /// Admitted queued and running jobs, oldest first: what to resume after a restart.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE status IN ('queued', 'running') AND admitted ORDER BY created_at, id"
        ))
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// `user_id`'s queued and running jobs, oldest first.
    pub async fn active_jobs_of(&self, user_id: u64) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE user_id = $1 AND status IN ('queued', 'running') AND admitted
             ORDER BY created_at, id"
        ))
        .bind(user_id.to_string())
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// Each model's mean job time in seconds, over the last 200 jobs that finished well.
    pub async fn typical_job_seconds(&self) -> Result<Vec<(String, f64)>, StoreError> {
        // The cast: PostgreSQL's AVG of integers is NUMERIC, which does not read as f64.
        let rows: Vec<(String, f64)> = on_pool!(self, |pool, _d| sqlx::query_as(
            "SELECT model, CAST(AVG(finished_at - started_at) / 1000.0 AS DOUBLE PRECISION)
             FROM (
                 SELECT model, started_at, finished_at FROM jobs
                 WHERE status = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL
                 ORDER BY id DESC LIMIT 200) AS recent
             GROUP BY model ORDER BY model",
        )
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// How many of `user_id`'s jobs are queued or running, for per-user caps.
    pub async fn active_jobs_for_user(&self, user_id: u64) -> Result<i64, StoreError> {
        let count = on_pool!(self, |pool, _d| sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND status IN ('queued', 'running')",
        )
        .bind(user_id.to_string())
        .fetch_one(pool)
        .await?);
        Ok(count)
    }
}

fn corrupt(job: JobId, column: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        job,
        column,
        detail: detail.to_string(),
    }
}

/// A TEXT column holding a `FromStr` value (snowflake, kind, status).
fn parse_column<T: std::str::FromStr>(
    job: JobId,
    column: &'static str,
    text: &str,
) -> Result<T, StoreError>
where
    T::Err: ToString,
{
    text.parse().map_err(|e: T::Err| corrupt(job, column, e))
}

/// A `jobs` row as the database returns it, on either back-end; [`JobRow::into_job`] checks
/// it into a [`Job`].
#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    id: i64,
    user_id: String,
    channel_id: String,
    guild_id: Option<String>,
    is_dm: bool,
    interaction_token: Option<String>,
    application_id: Option<String>,
    message_id: Option<String>,
    kind: String,
    parent_job: Option<i64>,
    parent_index: Option<i64>,
    prompt: String,
    negative_prompt: String,
    params_json: String,
    model: String,
    seeds: String,
    status: String,
    error: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    bot_in_place: bool,
    admitted: bool,
    delivered_at: Option<i64>,
    delivery_attempts: i64,
    dm_notice_at: Option<i64>,
    image_url: Option<String>,
    precision: Option<String>,
    device: Option<String>,
}

impl JobRow {
    pub(super) fn into_job(self) -> Result<Job, StoreError> {
        let id = JobId(self.id);
        let snowflake =
            |column: &'static str, value: Option<String>| -> Result<Option<u64>, StoreError> {
                value
                    .map(|text| parse_column(id, column, &text))
                    .transpose()
            };
        let required = |column: &'static str, value: String| -> Result<u64, StoreError> {
            parse_column(id, column, &value)
        };
        let parent_index = self
            .parent_index
            .map(|i| u8::try_from(i).map_err(|e| corrupt(id, "parent_index", e)))
            .transpose()?;
        let request = NewJob {
            user_id: required("user_id", self.user_id)?,
            channel_id: required("channel_id", self.channel_id)?,
            guild_id: snowflake("guild_id", self.guild_id)?,
            is_dm: self.is_dm,
            interaction_token: self.interaction_token,
            application_id: snowflake("application_id", self.application_id)?,
            bot_in_place: self.bot_in_place,
            kind: parse_column::<JobKind>(id, "kind", &self.kind)?,
            parent: self.parent_job.map(|job| Parent {
                job: JobId(job),
                index: parent_index,
            }),
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            params: serde_json::from_str(&self.params_json)
                .map_err(|e| corrupt(id, "params_json", e))?,
            model: self.model,
            seeds: serde_json::from_str(&self.seeds).map_err(|e| corrupt(id, "seeds", e))?,
        };
        Ok(Job {
            id,
            message_id: snowflake("message_id", self.message_id)?,
            status: parse_column(id, "status", &self.status)?,
            error: self.error,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            compute: match (self.precision, self.device) {
                (Some(precision), Some(device)) => Some(Compute { precision, device }),
                _ => None,
            },
            delivery: Delivery {
                admitted: self.admitted,
                delivered_at: self.delivered_at,
                attempts: u32::try_from(self.delivery_attempts)
                    .map_err(|e| corrupt(id, "delivery_attempts", e))?,
                dm_notice_at: self.dm_notice_at,
                image_url: self.image_url,
            },
            request,
        })
    }
}

/// An `images` row as the database returns it.
#[derive(sqlx::FromRow)]
struct ImageRow {
    idx: i64,
    seed: i64,
    path: String,
    sha256: String,
    width: i64,
    height: i64,
}

impl ImageRow {
    fn into_image(self, job: JobId) -> Result<ImageRecord, StoreError> {
        let narrow = |column: &'static str, value: i64| -> Result<u32, StoreError> {
            u32::try_from(value).map_err(|e| corrupt(job, column, e))
        };
        Ok(ImageRecord {
            idx: u8::try_from(self.idx).map_err(|e| corrupt(job, "idx", e))?,
            seed: narrow("seed", self.seed)?,
            path: self.path.into(),
            sha256: self.sha256,
            width: narrow("width", self.width)?,
            height: narrow("height", self.height)?,
        })
    }
}
