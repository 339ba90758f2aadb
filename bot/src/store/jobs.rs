//! Jobs: insert, move through their statuses, read back; images written with their job.

use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::Row;

use super::types::{
    Compute, Delivery, ImageRecord, Job, JobId, JobKind, JobStatus, NewJob, Parent, StoreError,
};
use super::{now_ms, Store};

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
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (user_id, channel_id, guild_id, is_dm, interaction_token,
                               application_id, kind, parent_job, parent_index, prompt,
                               negative_prompt, params_json, model, seeds, status, created_at,
                               bot_in_place, admitted, image_url)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)
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
        .fetch_one(&self.pool)
        .await?;
        Ok(JobId(id))
    }

    /// Remembers the bot's message that shows `job`, so progress and results edit it.
    pub async fn set_message(&self, job: JobId, message_id: u64) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE jobs SET message_id = ? WHERE id = ?")
            .bind(message_id.to_string())
            .bind(job.0)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(job));
        }
        Ok(())
    }

    /// `queued -> running`, stamping `started_at`.
    pub async fn mark_running(&self, job: JobId) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        transition(&mut conn, job, JobStatus::Running, None).await
    }

    /// The job whose message is `message` (its result, once shown), if any.
    pub async fn job_by_message(&self, message: u64) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(select_jobs!(
            "WHERE message_id = ? ORDER BY id DESC LIMIT 1"
        ))
        .bind(message.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
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
        let mut tx = self.pool.begin().await?;
        transition(&mut tx, job, JobStatus::Done, None).await?;
        if let Some(c) = compute {
            sqlx::query("UPDATE jobs SET precision = ?, device = ? WHERE id = ?")
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
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
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
    }

    /// `queued | running -> failed`, keeping `error` for the user and the logs.
    pub async fn fail_job(&self, job: JobId, error: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        transition(&mut conn, job, JobStatus::Failed, Some(error)).await
    }

    /// `queued | running -> cancelled`.
    pub async fn cancel_job(&self, job: JobId) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        transition(&mut conn, job, JobStatus::Cancelled, None).await
    }

    /// `running -> queued`: a job stopped between steps by a graceful stop, to run again at
    /// the next start.
    pub async fn requeue_job(&self, job: JobId) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        transition(&mut conn, job, JobStatus::Queued, None).await
    }

    /// At startup: every `running` job was interrupted by the restart, so it goes back to
    /// `queued` (keeping its place: the queue is ordered by creation). Returns how many.
    pub async fn requeue_running(&self) -> Result<u64, StoreError> {
        let requeued = sqlx::query(
            "UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running'",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(requeued)
    }

    /// The job, if it exists.
    pub async fn job(&self, job: JobId) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(select_jobs!("WHERE id = ?"))
            .bind(job.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// The images of a job, by index; empty until it is done.
    pub async fn images(&self, job: JobId) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, seed, path, sha256, width, height FROM images
             WHERE job_id = ? ORDER BY idx",
        )
        .bind(job.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| image_from_row(job, row)).collect()
    }

    /// Admitted queued and running jobs, oldest first: what to resume after a restart.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(select_jobs!(
            "WHERE status IN ('queued', 'running') AND admitted = 1 ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// `user_id`'s queued and running jobs, oldest first.
    pub async fn active_jobs_of(&self, user_id: u64) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(select_jobs!(
            "WHERE user_id = ? AND status IN ('queued', 'running') AND admitted = 1
             ORDER BY created_at, id"
        ))
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Each model's mean job time in seconds, over the last 200 jobs that finished well.
    pub async fn typical_job_seconds(&self) -> Result<Vec<(String, f64)>, StoreError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT model, AVG(finished_at - started_at) / 1000.0 FROM (
                 SELECT model, started_at, finished_at FROM jobs
                 WHERE status = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL
                 ORDER BY id DESC LIMIT 200)
             GROUP BY model ORDER BY model",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// How many of `user_id`'s jobs are queued or running, for per-user caps.
    pub async fn active_jobs_for_user(&self, user_id: u64) -> Result<i64, StoreError> {
        let count = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN ('queued', 'running')",
        )
        .bind(user_id.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }
}

/// Moves `job` to `to` if its current status allows it (see [`JobStatus::allowed_sources`]),
/// in one conditional `UPDATE`; otherwise reports why not. Stamps `started_at` on
/// `running`, clears it on `queued`, stamps `finished_at` on the final statuses.
async fn transition(
    conn: &mut SqliteConnection,
    job: JobId,
    to: JobStatus,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let sources: Vec<&str> = to.allowed_sources().iter().map(|s| s.as_str()).collect();
    let updated = sqlx::query(
        "UPDATE jobs SET
             status = ?1,
             started_at = CASE ?1 WHEN 'running' THEN ?2 WHEN 'queued' THEN NULL
                                  ELSE started_at END,
             finished_at = CASE WHEN ?1 IN ('done', 'failed', 'cancelled') THEN ?2 END,
             error = ?3
         WHERE id = ?4 AND status IN (SELECT value FROM json_each(?5))",
    )
    .bind(to.as_str())
    .bind(now_ms())
    .bind(error.map(str::to_string))
    .bind(job.0)
    .bind(serde_json::to_string(&sources)?)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 1 {
        return Ok(());
    }
    let current: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?")
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

pub(super) fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let id = JobId(row.try_get("id")?);
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let snowflake = |column: &'static str| -> Result<Option<u64>, StoreError> {
        let value: Option<String> = row.try_get(column)?;
        value
            .map(|text| parse_column(id, column, &text))
            .transpose()
    };
    let required = |column: &'static str| -> Result<u64, StoreError> {
        snowflake(column)?.ok_or_else(|| corrupt(id, column, "missing"))
    };
    let parent_job: Option<i64> = row.try_get("parent_job")?;
    let parent_index: Option<i64> = row.try_get("parent_index")?;
    let parent_index = parent_index
        .map(|i| u8::try_from(i).map_err(|e| corrupt(id, "parent_index", e)))
        .transpose()?;
    let request = NewJob {
        user_id: required("user_id")?,
        channel_id: required("channel_id")?,
        guild_id: snowflake("guild_id")?,
        is_dm: row.try_get("is_dm")?,
        interaction_token: row.try_get("interaction_token")?,
        application_id: snowflake("application_id")?,
        bot_in_place: row.try_get("bot_in_place")?,
        kind: parse_column::<JobKind>(id, "kind", &text("kind")?)?,
        parent: parent_job.map(|job| Parent {
            job: JobId(job),
            index: parent_index,
        }),
        prompt: text("prompt")?,
        negative_prompt: text("negative_prompt")?,
        params: serde_json::from_str(&text("params_json")?)
            .map_err(|e| corrupt(id, "params_json", e))?,
        model: text("model")?,
        seeds: serde_json::from_str(&text("seeds")?).map_err(|e| corrupt(id, "seeds", e))?,
    };
    Ok(Job {
        id,
        message_id: snowflake("message_id")?,
        status: parse_column(id, "status", &text("status")?)?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        compute: match (
            row.try_get::<Option<String>, _>("precision")?,
            row.try_get::<Option<String>, _>("device")?,
        ) {
            (Some(precision), Some(device)) => Some(Compute { precision, device }),
            _ => None,
        },
        delivery: Delivery {
            admitted: row.try_get("admitted")?,
            delivered_at: row.try_get("delivered_at")?,
            attempts: u32::try_from(row.try_get::<i64, _>("delivery_attempts")?)
                .map_err(|e| corrupt(id, "delivery_attempts", e))?,
            dm_notice_at: row.try_get("dm_notice_at")?,
            image_url: row.try_get("image_url")?,
        },
        request,
    })
}

fn image_from_row(job: JobId, row: &SqliteRow) -> Result<ImageRecord, StoreError> {
    let int = |column: &'static str| -> Result<i64, StoreError> { Ok(row.try_get(column)?) };
    let narrow = |column: &'static str| -> Result<u32, StoreError> {
        u32::try_from(int(column)?).map_err(|e| corrupt(job, column, e))
    };
    let path: String = row.try_get("path")?;
    Ok(ImageRecord {
        idx: u8::try_from(int("idx")?).map_err(|e| corrupt(job, "idx", e))?,
        seed: narrow("seed")?,
        path: path.into(),
        sha256: row.try_get("sha256")?,
        width: narrow("width")?,
        height: narrow("height")?,
    })
}
