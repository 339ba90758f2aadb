//! The outbox: every job that ended (done, failed or cancelled) is delivered until Discord
//! confirms its final message, then marked delivered. The end is recorded in the store first,
//! so a crash, a kill -9 or a 5xx between the end and the message loses nothing: the next
//! attempt, or the next start, delivers it.
//!
//! Never twice: the interaction's own message is edited (an edit is idempotent); a new channel
//! or DM message carries a nonce derived from the job id with `enforce_nonce`, so Discord
//! answers a retried post with the message it already made.
//!
//! Never by two at once: gateways sharing the store (a sharded bot) each run an outbox, and
//! any of them may have recorded a job's end. The gateway whose shards the job came from (its
//! owner) delivers it: it also runs the job's live edits, and settles them first. Another
//! gateway takes a job over only once it has waited past [`takeover_after`] (its owner is
//! gone: no live edit of it can still be in flight). Either way the outbox claims the job in
//! the store before sending ([`Store::claim_delivery`]), so exactly one sends it. A claim
//! outlives the longest attempt; one left by a gateway killed mid-delivery expires, and another
//! outbox (or the same gateway restarted) delivers the job then, once, by the same idempotent
//! edit or nonce.
//!
//! Where to deliver, in order: the interaction's message while its token lives (14 minutes);
//! a plain-DM job's own message; then a new message in the channel when the bot can post
//! there; else (user-installed contexts, group DMs) a DM to the requester, announced on the
//! interaction's message shortly before its token dies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use super::courier::{fresh_token, now_ms, result_file};
use super::dispatcher::resolve_images;
use super::messages;
use super::rest::{Rest, RestError, Upload};
use super::updates::LiveUpdates;
use crate::jetstream::shared_images::SharedImages;
use crate::shards::ShardRange;
use crate::store::{Job, JobId, JobStatus, Store};

/// The first retry comes after this; each failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Discord refusing a message outright (not a 429 or 5xx) is retried this many times, in case
/// the refusal was passing, then given up with an error in the log.
const MAX_REFUSED_ATTEMPTS: u32 = 8;
/// When the "the result will come by DM" notice is shown, after the interaction.
const DM_NOTICE_AFTER_MS: i64 = 13 * 60 * 1000;
/// Interaction tokens are dead after 15 minutes; forgotten then.
const TOKEN_DEAD_AFTER_MS: i64 = 15 * 60 * 1000;
/// How often the outbox looks again without being woken.
const POLL: Duration = Duration::from_secs(1);
/// How often dead tokens are looked for.
const TOKEN_SWEEP: Duration = Duration::from_secs(60);

/// A job's final message.
struct FinalMessage {
    body: Value,
    file: Option<Upload>,
}

#[derive(Clone)]
pub struct Outbox {
    store: Store,
    rest: Rest,
    updates: LiveUpdates,
    wake: Arc<Notify>,
    data_dir: PathBuf,
    /// A sharded bot's images recorded by other gateways, fetched when this one delivers.
    shared: Option<SharedImages>,
    /// How long a claim on a job's delivery lasts: longer than any one attempt.
    claim: Duration,
    /// This gateway's shards: their jobs are its to deliver at once.
    shards: ShardRange,
    /// How long an ended job of another gateway's shards waits before this one takes it.
    takeover: Duration,
}

impl Outbox {
    /// `http_timeout` bounds each request of an attempt, and so the claims; `shards` are the
    /// ones this gateway runs.
    pub fn new(
        store: Store,
        rest: Rest,
        updates: LiveUpdates,
        data_dir: PathBuf,
        shared: Option<SharedImages>,
        http_timeout: Duration,
        shards: ShardRange,
    ) -> Outbox {
        Outbox {
            store,
            rest,
            updates,
            wake: Arc::new(Notify::new()),
            data_dir,
            shared,
            claim: claim_length(http_timeout),
            shards,
            takeover: takeover_after(http_timeout),
        }
    }

    /// Whether this outbox delivers `job` now: its own shards' jobs at once, another
    /// gateway's once that one has had its chance.
    fn delivers(&self, job: &Job, now: i64) -> bool {
        self.shards.covers(job.request.guild_id)
            || job
                .finished_at
                .is_some_and(|ended| ended + self.takeover.as_millis() as i64 <= now)
    }

    /// Claims `job` for this outbox; false if another one holds it (or it was delivered).
    async fn claim(&self, job: JobId) -> bool {
        let now = now_ms();
        let until = now + self.claim.as_millis() as i64;
        match self.store.claim_delivery(job, now, until).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!("cannot claim the delivery: {e}");
                false
            }
        }
    }

    /// A job ended: deliver it now rather than at the next poll.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Runs forever: delivers due jobs, shows DM notices, forgets dead tokens.
    pub fn start(&self) {
        let outbox = self.clone();
        tokio::spawn(async move {
            let mut last_sweep: Option<Instant> = None;
            loop {
                outbox.deliver_due().await;
                outbox.dm_notices().await;
                if last_sweep.is_none_or(|t| t.elapsed() >= TOKEN_SWEEP) {
                    last_sweep = Some(Instant::now());
                    let dead_before = now_ms() - TOKEN_DEAD_AFTER_MS;
                    if let Err(e) = outbox.store.forget_dead_tokens(dead_before).await {
                        tracing::warn!("cannot forget dead interaction tokens: {e}");
                    }
                    if let Err(e) = outbox.store.compact_wal().await {
                        tracing::warn!("cannot compact the database's log: {e}");
                    }
                }
                let _ = tokio::time::timeout(POLL, outbox.wake.notified()).await;
            }
        });
    }

    /// At a graceful stop: delivers until nothing is left or `deadline`.
    pub async fn flush(&self, deadline: Instant) {
        while Instant::now() < deadline {
            match self.left_to_deliver().await {
                Ok(0) => return,
                Ok(left) => tracing::info!(left, "delivering before stopping"),
                Err(e) => {
                    tracing::warn!("cannot count undelivered jobs: {e}");
                    return;
                }
            }
            let _ = tokio::time::timeout_at(deadline, self.deliver_due()).await;
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(200)))
                .await;
        }
    }

    /// Ended jobs not yet delivered that are this gateway's (all of them when it is the only
    /// one): what a graceful stop waits for.
    async fn left_to_deliver(&self) -> Result<i64, crate::store::StoreError> {
        if self.shards.is_whole() {
            return self.store.undelivered().await;
        }
        let pending = self.store.outbox(i64::MAX, 4096).await?;
        let own = pending
            .iter()
            .filter(|j| self.shards.covers(j.request.guild_id))
            .count();
        Ok(own as i64)
    }

    async fn deliver_due(&self) {
        // Other gateways' jobs in the batch are skipped (their owners deliver them): read
        // more rows per gateway, so they cannot crowd this one's out.
        let batch = 32 * self.shards.total().min(16);
        let due = match self.store.outbox(now_ms(), batch).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!("cannot read the outbox: {e}");
                return;
            }
        };
        let now = now_ms();
        for job in due.into_iter().filter(|j| self.delivers(j, now)) {
            let span = tracing::info_span!("job", id = job.id.0);
            async {
                if !self.shards.covers(job.request.guild_id) {
                    tracing::info!("taking over the delivery of another gateway's job");
                }
                if self.claim(job.id).await {
                    self.deliver(job).await;
                } else {
                    tracing::debug!("another gateway is delivering it");
                }
            }
            .instrument(span)
            .await;
        }
    }

    async fn deliver(&self, job: Job) {
        self.updates.settle(job.id).await;
        let message = match self.final_message(&job).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("cannot build the final message: {e:#}");
                FinalMessage {
                    body: body(
                        &job,
                        messages::failed(&job, "the finished images could not be read"),
                        vec![],
                        None,
                    ),
                    file: None,
                }
            }
        };
        let outcome = self.send(&job, &message).await;
        let store = &self.store;
        let result = match outcome {
            Ok(how) => {
                tracing::info!(via = how, status = job.status.as_str(), "delivered");
                crate::metrics::delivered(job.request.kind);
                store.mark_delivered(job.id).await.map(drop)
            }
            Err(e) if !e.is_transient() && job.delivery.attempts + 1 >= MAX_REFUSED_ATTEMPTS => {
                tracing::error!(
                    "Discord refused the final message {} times ({e}); giving up",
                    job.delivery.attempts + 1
                );
                crate::metrics::job_failed(crate::metrics::FailureCause::Delivery);
                store.mark_delivered(job.id).await.map(drop)
            }
            Err(e) => {
                let wait = backoff(job.delivery.attempts, e.retry_after);
                crate::metrics::delivery_retry();
                tracing::warn!(retry_in_s = wait.as_secs_f64(), "delivery failed: {e}");
                store
                    .delivery_failed(job.id, now_ms() + wait.as_millis() as i64)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!("cannot record the delivery: {e}");
        }
    }

    async fn final_message(&self, job: &Job) -> anyhow::Result<FinalMessage> {
        let content = messages::ended(job);
        if job.status != JobStatus::Done {
            return Ok(FinalMessage {
                body: body(job, content, vec![], None),
                file: None,
            });
        }
        let images = resolve_images(
            &self.data_dir,
            self.shared.as_ref(),
            self.store.images(job.id).await?,
        )
        .await;
        let owned = job.clone();
        // Reading, assembling and encoding the grid is blocking work.
        let (name, bytes) =
            tokio::task::spawn_blocking(move || result_file(&owned, &images)).await??;
        let buttons = messages::buttons(job.id, job.request.kind);
        Ok(FinalMessage {
            body: body(job, content, buttons, Some(&name)),
            file: Some(Upload { name, bytes }),
        })
    }

    /// Sends the final message where it can go; returns which way it went.
    async fn send(&self, job: &Job, m: &FinalMessage) -> Result<&'static str, RestError> {
        let file = m.file.as_ref();
        let req = &job.request;
        if let (Some(app), Some(token)) = (req.application_id, fresh_token(job)) {
            match self.rest.edit_original(app, token, &m.body, file).await {
                Ok(_) => return Ok("interaction"),
                Err(e) if e.token_dead() => {
                    tracing::info!("the interaction token no longer works; posting instead")
                }
                Err(e) => return Err(e),
            }
        }
        if req.application_id.is_none() {
            if let Some(message) = job.message_id {
                match self
                    .rest
                    .edit_message(req.channel_id, message, &m.body, file)
                    .await
                {
                    Ok(_) => return Ok("message edit"),
                    Err(e) if e.status == Some(404) => {}
                    Err(e) => return Err(e),
                }
            }
            return self.post(req.channel_id, job, m).await.map(|()| "channel");
        }
        if req.bot_in_place {
            match self.post(req.channel_id, job, m).await {
                Ok(()) => return Ok("channel"),
                Err(e) if e.no_access() || e.status == Some(404) => {
                    tracing::info!("cannot post in the channel ({e}); sending by DM")
                }
                Err(e) => return Err(e),
            }
        }
        let dm = self.rest.open_dm(req.user_id).await?;
        self.post(dm, job, m).await.map(|()| "DM")
    }

    async fn post(&self, channel: u64, job: &Job, m: &FinalMessage) -> Result<(), RestError> {
        let mut body = m.body.clone();
        body["nonce"] = json!(nonce(job.id));
        body["enforce_nonce"] = json!(true);
        self.rest
            .create_message(channel, &body, m.file.as_ref())
            .await
            .map(drop)
    }

    /// In places the bot cannot post to, says before the token dies that the result will come
    /// by DM.
    async fn dm_notices(&self) {
        let due = match self
            .store
            .dm_notices_due(now_ms() - DM_NOTICE_AFTER_MS)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!("cannot read the jobs waiting for a DM notice: {e}");
                return;
            }
        };
        // The notice replaces the live edits, which only the job's own gateway runs.
        let own = due
            .into_iter()
            .filter(|j| self.shards.covers(j.request.guild_id));
        for job in own {
            let span = tracing::info_span!("job", id = job.id.0);
            async {
                let (Some(app), Some(token)) = (job.request.application_id, fresh_token(&job))
                else {
                    return;
                };
                if !self.claim(job.id).await {
                    return;
                }
                self.updates.settle(job.id).await;
                let cancel = messages::cancel_row(job.id);
                let body = body(&job, messages::coming_by_dm(&job), cancel, None);
                match self.rest.edit_original(app, token, &body, None).await {
                    Ok(_) => {
                        if let Err(e) = self.store.mark_dm_notice(job.id).await {
                            tracing::warn!("cannot record the DM notice: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("cannot say the result will come by DM: {e}"),
                }
                if let Err(e) = self.store.release_delivery(job.id).await {
                    tracing::warn!("cannot release the claim on the job: {e}");
                }
            }
            .instrument(span)
            .await;
        }
    }
}

/// A message body: content, buttons, one attachment (or none, which removes a preview), and
/// mentions limited to the requester.
fn body(
    job: &Job,
    content: String,
    buttons: Vec<poise::serenity_prelude::CreateActionRow>,
    file: Option<&str>,
) -> Value {
    let attachments = match file {
        Some(name) => json!([{ "id": 0, "filename": name }]),
        None => json!([]),
    };
    json!({
        "content": content,
        "components": serde_json::to_value(buttons).unwrap_or_else(|_| json!([])),
        "attachments": attachments,
        "allowed_mentions": messages::mentions_json(job),
    })
}

/// Another gateway's live edit of a job that ended was sent before the end was recorded and
/// lasts at most `http_timeout`: past this, none can land after the final message.
fn takeover_after(http_timeout: Duration) -> Duration {
    http_timeout + Duration::from_secs(5)
}

/// A claim covers an attempt's requests (an edit, a post, opening a DM and posting there),
/// each bounded by `http_timeout`, plus reading the images and the grid's encoding.
fn claim_length(http_timeout: Duration) -> Duration {
    http_timeout * 4 + Duration::from_secs(10)
}

/// The nonce of a job's final message: the same on every attempt, at most 25 characters.
fn nonce(job: JobId) -> String {
    format!("im{}", job.0)
}

/// How long to wait before the next attempt: Discord's `retry_after` when it said, else
/// exponential from [`FIRST_BACKOFF`], capped at [`MAX_BACKOFF`].
fn backoff(attempts: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.clamp(Duration::from_millis(50), MAX_BACKOFF);
    }
    FIRST_BACKOFF
        .saturating_mul(1 << attempts.min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_as_discord_says_else_back_off_exponentially() {
        assert_eq!(
            backoff(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(backoff(0, None), Duration::from_secs(1));
        assert_eq!(backoff(3, None), Duration::from_secs(8));
        assert_eq!(backoff(40, None), MAX_BACKOFF);
    }

    #[test]
    fn a_claim_outlasts_every_request_of_an_attempt() {
        assert_eq!(
            claim_length(Duration::from_secs(30)),
            Duration::from_secs(130)
        );
        assert!(claim_length(Duration::from_secs(1)) > Duration::from_secs(4));
        // Another gateway waits out the owner's last live edit before taking a job over.
        assert!(takeover_after(Duration::from_secs(30)) > Duration::from_secs(30));
    }

    #[test]
    fn nonces_fit_discords_limit() {
        assert_eq!(nonce(JobId(42)), "im42");
        assert!(nonce(JobId(i64::MAX)).len() <= 25);
    }
}
