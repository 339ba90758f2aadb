//! Admission and delivery, the two ends of a job that talk to Discord.
//!
//! A job is written before its first reply and is only *admitted* once Discord confirmed that
//! reply, so a reply that failed never leaves a job to run days later. A job that ended is in
//! the *outbox* until Discord confirmed its final message: the delivery task reads it from here,
//! so a crash between the end and the message loses nothing. Interaction tokens are forgotten
//! once delivered or dead (15 minutes), so the database keeps no live credential.

use super::jobs::JobRow;
use super::types::{Job, JobId, StoreError};
use super::{now_ms, Store};

impl Store {
    /// The job's first reply was confirmed: it may now run (and be resumed after a restart).
    pub async fn confirm_admission(&self, job: JobId) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET admitted = TRUE WHERE id = $1"
        )
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Gives up a job whose first reply never reached the user: cancelled, with nothing to
    /// deliver. Returns false if the job was admitted meanwhile (then it is left alone).
    pub async fn abandon(&self, job: JobId) -> Result<bool, StoreError> {
        let now = now_ms();
        let updated = on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET status = 'cancelled', finished_at = $1, delivered_at = $1,
                             interaction_token = NULL
             WHERE id = $2 AND NOT admitted AND status = 'queued'",
        )
        .bind(now)
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(updated == 1)
    }

    /// Jobs written whose first reply was never confirmed (the bot stopped meanwhile).
    pub async fn unadmitted_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE NOT admitted AND status = 'queued' ORDER BY id"
        ))
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// The image prompt is on disk: its URL is no longer needed.
    pub async fn image_downloaded(&self, job: JobId) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET image_url = NULL WHERE id = $1"
        )
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Ended jobs not yet delivered whose next attempt is due at `now` and that no outbox
    /// holds a live claim on, oldest first.
    pub async fn outbox(&self, now: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE delivered_at IS NULL AND admitted
               AND status IN ('done', 'failed', 'cancelled')
               AND (next_delivery_at IS NULL OR next_delivery_at <= $1)
               AND (delivery_claimed_until IS NULL OR delivery_claimed_until <= $1)
             ORDER BY id LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// Claims the job's delivery (or its "comes by DM" notice) for this outbox until `until`
    /// (unix ms). False if it is delivered already or another outbox holds a claim that is
    /// still live at `now`: then that one delivers it. One conditional `UPDATE`, so of two
    /// gateways racing for a job exactly one wins.
    pub async fn claim_delivery(
        &self,
        job: JobId,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let updated = on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET delivery_claimed_until = $1
             WHERE id = $2 AND delivered_at IS NULL
               AND (delivery_claimed_until IS NULL OR delivery_claimed_until <= $3)",
        )
        .bind(until)
        .bind(job.0)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(updated == 1)
    }

    /// Gives up a claim without delivering (a DM notice shown, a stop).
    pub async fn release_delivery(&self, job: JobId) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET delivery_claimed_until = NULL WHERE id = $1"
        )
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// How many ended jobs still wait for delivery.
    pub async fn undelivered(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool, _d| sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE delivered_at IS NULL AND admitted
               AND status IN ('done', 'failed', 'cancelled')",
        )
        .fetch_one(pool)
        .await?))
    }

    /// Discord confirmed the job's final message. Forgets its interaction token. Returns false
    /// if it was already delivered.
    pub async fn mark_delivered(&self, job: JobId) -> Result<bool, StoreError> {
        let updated = on_pool!(self, |pool, _d| {
            sqlx::query(
            "UPDATE jobs SET delivered_at = $1, next_delivery_at = NULL, interaction_token = NULL,
                             delivery_claimed_until = NULL
             WHERE id = $2 AND delivered_at IS NULL
               AND status IN ('done', 'failed', 'cancelled')",
        )
        .bind(now_ms())
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected()
        });
        Ok(updated == 1)
    }

    /// A delivery attempt failed; the next one is due at `retry_at` (unix ms).
    pub async fn delivery_failed(&self, job: JobId, retry_at: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET delivery_attempts = delivery_attempts + 1, next_delivery_at = $1,
                             delivery_claimed_until = NULL
             WHERE id = $2 AND delivered_at IS NULL",
        )
        .bind(retry_at)
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Undelivered interaction jobs in places the bot cannot post to, created before
    /// `created_before`, whose "the result will come by DM" notice is not shown yet.
    pub async fn dm_notices_due(&self, created_before: i64) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = on_pool!(self, |pool, _d| sqlx::query_as(select_jobs!(
            "WHERE NOT bot_in_place AND admitted AND delivered_at IS NULL
               AND dm_notice_at IS NULL AND interaction_token IS NOT NULL
               AND created_at <= $1
             ORDER BY id"
        ))
        .bind(created_before)
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// The "the result will come by DM" notice was shown.
    pub async fn mark_dm_notice(&self, job: JobId) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET dm_notice_at = $1 WHERE id = $2"
        )
        .bind(now_ms())
        .bind(job.0)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Forgets the interaction tokens of jobs created before `created_before` (dead tokens,
    /// 15 minutes after their interaction). Returns how many.
    pub async fn forget_dead_tokens(&self, created_before: i64) -> Result<u64, StoreError> {
        Ok(on_pool!(self, |pool, _d| sqlx::query(
            "UPDATE jobs SET interaction_token = NULL
             WHERE interaction_token IS NOT NULL AND created_at < $1",
        )
        .bind(created_before)
        .execute(pool)
        .await?
        .rows_affected()))
    }
}
