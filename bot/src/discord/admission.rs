//! Admitting a job, the same for `/imagine`, a plain DM and a button: take a queue slot, write
//! the job (not yet admitted), post its first message (saying its place in line), and only once
//! Discord confirmed that message mark it admitted, fetch any image prompt, and put it in line.
//! A first reply that fails leaves no job behind to run later; the worker never starts a job
//! whose message or input is missing.

use std::future::Future;

use anyhow::Context as _;
use poise::serenity_prelude::{CreateActionRow, CreateAllowedMentions};
use tracing::Instrument;

use super::image_prompt::download_image;
use super::shutdown::RESTARTING;
use super::{messages, orphans, positions, Data, Error};
use crate::queue::QueueError;
use crate::store::{JobId, JobStatus, NewJob};

/// What became of a request.
pub enum Admission {
    /// Queued (or failed visibly after its message was posted).
    Accepted,
    /// Refused before anything was written: the private reply to give.
    Refused(String),
}

/// A job's first message.
pub struct FirstReply {
    pub content: String,
    pub components: Vec<CreateActionRow>,
    pub mentions: CreateAllowedMentions,
}

/// Admits `new_job`. `announce` posts the first message and returns its id, if any.
/// `image_url` is the image prompt to download into `new_job.params.init_image`.
pub async fn admit<A, F>(
    data: &Data,
    new_job: &NewJob,
    image_url: Option<&str>,
    announce: A,
) -> Result<Admission, Error>
where
    A: FnOnce(FirstReply) -> F,
    F: Future<Output = Result<Option<u64>, Error>>,
{
    if data.shutdown.is_stopping() {
        return Ok(Admission::Refused(RESTARTING.into()));
    }
    let reservation = match data.queue.reserve(new_job.user_id) {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::job_refused((&e).into());
            return Ok(Admission::Refused(e.to_string()));
        }
    };
    if let Err(e) = cap_across_gateways(data, new_job.user_id).await? {
        crate::metrics::job_refused((&e).into());
        return Ok(Admission::Refused(e.to_string()));
    }
    let id = data.store.insert_admitting(new_job, image_url).await?;
    let span = tracing::info_span!("job", id = id.0);
    async move {
        let expected = positions::expected(data, &reservation).await?;
        let job = data
            .store
            .job(id)
            .await?
            .context("the job just written is missing")?;
        let first = FirstReply {
            content: messages::queued(&job, expected, data.queue.wait_for(expected)),
            components: messages::cancel_row(id),
            mentions: messages::mentions(&job),
        };
        match announce(first).await {
            Ok(message) => {
                if let Some(message) = message {
                    data.store.set_message(id, message).await?;
                }
                data.store.confirm_admission(id).await?;
            }
            Err(e) => {
                abandon(data, id).await;
                return Err(e);
            }
        }
        tracing::info!(
            kind = job.request.kind.as_str(),
            model = job.request.model,
            "job admitted"
        );
        if let (Some(url), Some(path)) = (image_url, &new_job.params.init_image) {
            if let Err(why) = download_image(data, url, path).await {
                crate::metrics::job_failed(crate::metrics::FailureCause::ImagePrompt);
                data.store.fail_job(id, &why).await?;
                data.outbox.notify();
                return Ok(Admission::Accepted);
            }
            data.store.image_downloaded(id).await?;
        }
        if data.store.job(id).await?.map(|j| j.status) != Some(JobStatus::Queued) {
            // Cancelled (❌) while it was being admitted: it never enters the line.
            return Ok(Admission::Accepted);
        }
        let position = reservation.commit(id);
        crate::metrics::job_admitted(new_job.kind);
        positions::entered(data, id, position, expected);
        Ok(Admission::Accepted)
    }
    .instrument(span)
    .await
}

/// A sharded bot's user may have jobs at the other gateways too (a server on another shard,
/// DMs on shard 0), which this gateway's queue does not see: the per-user cap counts them
/// all, in the shared store. Two gateways admitting the same user's jobs in the same instant
/// may each let one through.
async fn cap_across_gateways(data: &Data, user: u64) -> Result<Result<(), QueueError>, Error> {
    if data.config.shards.is_whole() {
        return Ok(Ok(()));
    }
    let cap = data.config.user_cap;
    let active = data.store.active_jobs_for_user(user).await?;
    if active >= i64::try_from(cap).unwrap_or(i64::MAX) {
        return Ok(Err(QueueError::UserCap(cap)));
    }
    Ok(Ok(()))
}

/// The first reply failed: the job must never run. If the reply did reach Discord after all
/// (it answered late), say so on it, best effort.
async fn abandon(data: &Data, id: JobId) {
    tracing::warn!("the first reply failed; the job is abandoned");
    let job = data.store.job(id).await.ok().flatten();
    if let Err(e) = data.store.abandon(id).await {
        tracing::error!("cannot abandon the job: {e}");
    }
    if let Some(job) = job {
        orphans::say_not_queued(&data.rest, &job).await;
    }
}
