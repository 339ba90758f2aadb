//! The queue between a gateway and its workers, on NATS JetStream.
//!
//! - Jobs: the gateway writes a job to the store, then publishes it on `imagine.jobs.<model>`
//!   to the work-queue stream `IMAGINE_JOBS`, with the job id as message id (a republish
//!   after a crash is dropped by the server's duplicate window). Each model has one durable
//!   pull consumer that all workers serving it share; a worker takes one job at a time, acks
//!   it explicitly, and sends in-progress acks while it runs, so only a dead worker's job is
//!   redelivered (after `job_ack_wait`). A job delivered more than `job_max_attempts` times
//!   fails visibly.
//! - Inputs and images: the object store bucket `imagine-files` (no shared disk). The
//!   gateways of a sharded bot also keep finished images in `imagine-images`
//!   ([`shared_images`]), so any of them can deliver a job or serve its buttons.
//! - Progress: plain NATS messages on `imagine.progress.<job>` (lossy by design).
//! - Results: the work-queue stream `IMAGINE_RESULTS`, consumed by the gateway, which writes
//!   them to the store; the outbox then delivers each job once.
//! - Stops: `imagine.stop.<job>` asks the worker running a job to stop it (a cancel).
//!
//! [`gateway`] is the gateway's side ([`gateway::Remote`], a
//! [`JobRunner`](crate::discord::runner::JobRunner)); [`worker`] is `imagine worker`; [`wire`]
//! the messages; [`settings`] the configuration.

pub mod gateway;
pub mod settings;
pub mod shared_images;
pub mod wire;
pub mod worker;

use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, object_store, stream};

pub use settings::QueueSettings;

pub const JOBS_STREAM: &str = "IMAGINE_JOBS";
pub const RESULTS_STREAM: &str = "IMAGINE_RESULTS";
pub const FILES_BUCKET: &str = "imagine-files";
/// The gateway's durable consumer of results (several gateways share it).
pub const RESULTS_CONSUMER: &str = "imagine-gateway";
/// A republished job with the same id is dropped within this window.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Files left behind (a job whose result never came) are dropped after this.
const FILES_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The subject jobs for `model` are published on.
pub fn job_subject(model: &str) -> String {
    format!("imagine.jobs.{}", subject_token(model))
}

/// The durable consumer the workers serving `model` share.
pub fn model_consumer(model: &str) -> String {
    format!("imagine-model-{}", subject_token(model))
}

pub fn progress_subject(job: i64) -> String {
    format!("imagine.progress.{job}")
}

pub fn result_subject(job: i64) -> String {
    format!("imagine.results.{job}")
}

pub fn stop_subject(job: i64) -> String {
    format!("imagine.stop.{job}")
}

/// A model name as one subject token (and consumer name part): letters, digits, `-` and `_`
/// kept, anything else `_`. Config checking refuses two models with the same token.
pub fn subject_token(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".into()
    } else {
        token
    }
}

/// The job id at the end of `prefix.<id>`.
pub fn job_of_subject(subject: &str) -> Option<i64> {
    subject
        .rsplit('.')
        .next()?
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
}

/// A connection to the queue, with its streams and bucket in place.
#[derive(Clone)]
pub struct Queue {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub files: object_store::ObjectStore,
}

impl Queue {
    /// Connects (retrying until the server answers: a worker may start before it) and creates
    /// the streams and the bucket if they do not exist yet.
    pub async fn connect(settings: &QueueSettings, name: &str) -> Result<Queue> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(settings.url.as_str())
            .await
            .with_context(|| {
                format!(
                    "cannot reach the NATS server at {} (queue_url): is nats-server running with -js?",
                    settings.url
                )
            })?;
        let js = jetstream::new(client.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let files = loop {
            match ensure(&js).await {
                Ok(files) => break files,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("the queue is not ready yet ({e:#}); retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.context("is JetStream on (nats-server -js)?")),
            }
        };
        Ok(Queue { client, js, files })
    }
}

async fn ensure(js: &jetstream::Context) -> Result<object_store::ObjectStore> {
    js.get_or_create_stream(stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec!["imagine.jobs.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .context("creating the jobs stream")?;
    js.get_or_create_stream(stream::Config {
        name: RESULTS_STREAM.into(),
        subjects: vec!["imagine.results.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .context("creating the results stream")?;
    match js.get_object_store(FILES_BUCKET).await {
        Ok(files) => Ok(files),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: FILES_BUCKET.into(),
                description: Some("Imagine: job inputs and finished images in transit".into()),
                max_age: FILES_MAX_AGE,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating the files bucket"),
    }
}

/// Retries `op` with a growing pause until it succeeds or `limit` passed (the server may be
/// restarting; the client reconnects by itself).
pub async fn retrying<T, F, Fut>(what: &str, limit: Duration, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!("{what} failed ({e:#}); retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.context(format!("{what} kept failing"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_become_single_subject_tokens() {
        assert_eq!(job_subject("tiny-sd15"), "imagine.jobs.tiny-sd15");
        assert_eq!(subject_token("sd.xl *>"), "sd_xl___");
        assert_eq!(subject_token(""), "_");
        assert_eq!(job_of_subject("imagine.progress.42"), Some(42));
        assert_eq!(job_of_subject("imagine.progress.x"), None);
        assert_eq!(job_of_subject("imagine.progress.-1"), None);
    }
}
