//! The gateway's side of the queue: [`Remote`] hands jobs to the workers (a
//! [`JobRunner`], so the dispatcher treats it like the local engine thread), routes their
//! progress back to the dispatcher, and reads their results into the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::shared_images::SharedImages;
use super::wire::{compute_of, InputFiles, JobOrder, JobResult, Outcome, PERCENT_HEADER};
use super::{job_subject, retrying, stop_subject, Queue, QueueSettings};
use crate::discord::dispatcher::INTERNAL_ERROR;
use crate::discord::engine_thread::{user_facing, EngineEvent, JobEnd};
use crate::discord::runner::JobRunner;
use crate::discord::Data;
use crate::queue::{StopFlag, StopReason};
use crate::store::{ImageRecord, Job, JobId, JobStatus, Store, StoreError};
use crate::worker::{hex_sha256, latents_path, write_atomically, JobProgress};

/// How long handing a job over may keep failing (the server restarting) before the job fails
/// visibly.
pub(super) const PUBLISH_LIMIT: Duration = Duration::from_secs(120);
/// How often a waiting job checks its stop flag.
const STOP_POLL: Duration = Duration::from_millis(250);
/// How often a waiting job looks in the store for an end recorded without it (a result read
/// before it started waiting, after a restart).
const STORE_POLL: Duration = Duration::from_secs(2);
/// The largest image file accepted back from a worker.
const MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// The JetStream job runner. Cheap to clone; every clone shares the connection and the
/// jobs in flight.
#[derive(Clone)]
pub struct Remote(Arc<Inner>);

struct Inner {
    queue: Queue,
    store: Store,
    /// The dispatcher's channel of each job handed out, by job id.
    waiters: Mutex<HashMap<i64, mpsc::UnboundedSender<EngineEvent>>>,
    /// A sharded bot's finished images, kept for the other gateways.
    shared: Option<SharedImages>,
}

impl Remote {
    /// `share_into`: this gateway's data folder, when it is one of several (a sharded bot):
    /// the images it records are then kept for the others, and theirs fetched into it.
    pub async fn connect(
        settings: &QueueSettings,
        store: Store,
        share_into: Option<&Path>,
    ) -> Result<Remote> {
        let queue = Queue::connect(settings, "imagine-gateway").await?;
        let shared = match share_into {
            Some(data_dir) => Some(SharedImages::open(&queue.js, data_dir).await?),
            None => None,
        };
        Ok(Remote(Arc::new(Inner {
            queue,
            store,
            waiters: Mutex::default(),
            shared,
        })))
    }

    /// The images shared with the other gateways (a sharded bot's).
    pub fn shared_images(&self) -> Option<SharedImages> {
        self.0.shared.clone()
    }

    /// The connection to the NATS server (for `/health`).
    pub fn client(&self) -> async_nats::Client {
        self.0.queue.client.clone()
    }

    /// `slots` runners for the dispatcher: that many jobs are with the workers at once.
    pub fn runners(&self, slots: usize) -> Vec<Arc<dyn JobRunner>> {
        (0..slots)
            .map(|_| Arc::new(self.clone()) as Arc<dyn JobRunner>)
            .collect()
    }

    /// Starts following the workers' progress and results (once the bot's state exists).
    pub fn start(&self, data: Data) {
        let inner = self.0.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = follow_progress(&inner).await {
                    tracing::warn!("following the workers' progress stopped ({e:#}); again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let inner = self.0.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = read_results(&inner, &data).await {
                    tracing::warn!("reading the workers' results stopped ({e:#}); again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

impl Inner {
    fn waiter(&self, job: i64) -> Option<mpsc::UnboundedSender<EngineEvent>> {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job)
            .cloned()
    }

    fn forget(&self, job: i64) -> Option<mpsc::UnboundedSender<EngineEvent>> {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job)
    }

    /// Uploads the job's input files, then publishes it (deduplicated by its id).
    async fn publish(&self, job: &Job) -> Result<()> {
        let id = job.id.0;
        let mut files = InputFiles::default();
        if let Some(path) = &job.request.params.init_image {
            let name = format!("in-{id}.png");
            self.upload(&name, Path::new(path)).await?;
            files.image = Some(name);
            let kept = latents_path(Path::new(path));
            if kept.exists() {
                let name = format!("in-{id}.latents");
                self.upload(&name, &kept).await?;
                files.latents = Some(name);
            }
        }
        if let Some(path) = &job.request.params.region_mask {
            let name = format!("in-{id}.mask.png");
            self.upload(&name, Path::new(path)).await?;
            files.region_mask = Some(name);
        }
        let order = JobOrder::new(job, files);
        let payload = bytes::Bytes::from(serde_json::to_vec(&order)?);
        let subject = job_subject(&job.request.model);
        retrying("handing the job to the queue", PUBLISH_LIMIT, || {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("job-{id}").as_str());
            let (subject, payload) = (subject.clone(), payload.clone());
            async move {
                let ack = self
                    .queue
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await?;
                ack.await?;
                Ok(())
            }
        })
        .await
    }

    async fn upload(&self, name: &str, path: &Path) -> Result<()> {
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        retrying("uploading a job's input", PUBLISH_LIMIT, || {
            let bytes = bytes.clone();
            async move {
                self.queue.files.put(name, &mut bytes.as_slice()).await?;
                Ok(())
            }
        })
        .await
    }

    /// Asks the worker running `job` to stop it.
    async fn tell_stop(&self, job: i64) {
        let sent = self
            .queue
            .client
            .publish(stop_subject(job), "cancelled".into())
            .await;
        if let Err(e) = sent {
            tracing::warn!(job, "cannot tell the workers to stop the job: {e}");
        }
    }

    /// Waits for the job's end: a result (sent by [`read_results`]), a stop, or an end found
    /// in the store.
    async fn watch(self: Arc<Self>, job: Job, stop: StopFlag) {
        let id = job.id.0;
        let Some(events) = self.waiter(id) else {
            return;
        };
        if let Err(e) = self.publish(&job).await {
            tracing::error!(
                job = id,
                "the job could not be handed to the workers: {e:#}"
            );
            self.forget(id);
            let _ = events.send(EngineEvent::End(JobEnd::Failed {
                shown: "the job could not be handed to a worker (the queue server is unreachable); please try again later".into(),
                detail: format!("{e:#}"),
            }));
            return;
        }
        let mut tick = tokio::time::interval(STOP_POLL);
        let mut last_check = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if events.is_closed() || self.waiter(id).is_none() {
                break;
            }
            match stop.requested() {
                Some(StopReason::Cancelled) => {
                    self.tell_stop(id).await;
                    self.forget(id);
                    let _ = events.send(EngineEvent::End(JobEnd::Stopped(StopReason::Cancelled)));
                    break;
                }
                Some(StopReason::ShuttingDown) => {
                    // The worker goes on; its result waits in the stream for the next start.
                    self.forget(id);
                    let _ =
                        events.send(EngineEvent::End(JobEnd::Stopped(StopReason::ShuttingDown)));
                    break;
                }
                None => {}
            }
            if last_check.elapsed() >= STORE_POLL {
                last_check = tokio::time::Instant::now();
                if let Ok(Some(now)) = self.store.job(job.id).await {
                    if now.status.is_finished() && self.forget(id).is_some() {
                        let done = now.status == JobStatus::Done;
                        let _ = events.send(EngineEvent::End(JobEnd::Recorded { done }));
                        break;
                    }
                }
            }
        }
    }
}

impl JobRunner for Remote {
    fn run(&self, job: Job, stop: StopFlag) -> mpsc::UnboundedReceiver<EngineEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.id.0, tx);
        tokio::spawn(self.0.clone().watch(job, stop));
        rx
    }

    /// Nothing to restart: the queue outlives any one job.
    fn restart(&self) {}
}

async fn follow_progress(inner: &Inner) -> Result<()> {
    let mut sub = inner.queue.client.subscribe("imagine.progress.>").await?;
    while let Some(msg) = sub.next().await {
        let Some(job) = super::job_of_subject(msg.subject.as_str()) else {
            continue;
        };
        let percent = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(PERCENT_HEADER))
            .and_then(|v| v.as_str().parse::<u8>().ok())
            .filter(|p| *p <= 100);
        let (Some(percent), Some(events)) = (percent, inner.waiter(job)) else {
            continue;
        };
        let preview_png = (!msg.payload.is_empty()).then(|| msg.payload.to_vec());
        let _ = events.send(EngineEvent::Progress(JobProgress {
            percent,
            preview_png,
        }));
    }
    bail!("the progress subscription ended")
}

async fn read_results(inner: &Inner, data: &Data) -> Result<()> {
    let stream = inner.queue.js.get_stream(super::RESULTS_STREAM).await?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            super::RESULTS_CONSUMER,
            pull::Config {
                durable_name: Some(super::RESULTS_CONSUMER.into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let result = match JobResult::parse(&msg.payload) {
            Ok(r) => r,
            Err(why) => {
                tracing::error!("dropping a result from the queue: {why}");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
        };
        let span = tracing::info_span!("job", id = result.job);
        match record(inner, data, &result).instrument(span).await {
            Ok(end) => {
                if let Err(e) = msg.double_ack().await {
                    // Read again later: recording it twice changes nothing.
                    tracing::warn!("cannot confirm a result to the queue: {e}");
                }
                drop_files(inner, &result).await;
                if let Some(done) = end {
                    if let Some(events) = inner.forget(result.job) {
                        let _ = events.send(EngineEvent::End(JobEnd::Recorded { done }));
                    }
                }
                data.outbox.notify();
            }
            Err(e) => {
                tracing::warn!("cannot record the result yet ({e:#}); it comes again");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
            }
        }
    }
    bail!("the results stream ended")
}

/// Writes a result to the store; `Some(done)` if it ended the job, `None` if the job had
/// ended already (a job run twice, or cancelled meanwhile) or is unknown.
async fn record(inner: &Inner, data: &Data, result: &JobResult) -> Result<Option<bool>> {
    let id = JobId(result.job);
    let store = &inner.store;
    let Some(job) = store.job(id).await? else {
        tracing::warn!("a result for a job this store does not know; dropped");
        return Ok(None);
    };
    if job.status.is_finished() {
        tracing::info!(
            worker = result.worker,
            "the job had ended already ({}); this result is dropped",
            job.status
        );
        return Ok(None);
    }
    if job.status == JobStatus::Queued {
        // After a restart the result may come before the job is handed out again.
        match store.mark_running(id).await {
            Ok(()) | Err(StoreError::IllegalTransition { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let ended = match &result.outcome {
        Outcome::Done {
            images,
            precision,
            device,
            seconds,
        } => {
            let records = fetch_images(inner, &data.data_dir, id, images).await?;
            let compute = compute_of(precision, device);
            store
                .finish_job_on(id, &records, Some(&compute))
                .await
                .map(|()| true)
                .inspect(|_| {
                    crate::metrics::job_finished(job.request.kind, &job.request.model, *seconds)
                })
        }
        Outcome::Failed { shown } => {
            crate::metrics::job_failed(crate::metrics::FailureCause::Engine);
            store
                .fail_job(id, &user_facing(shown))
                .await
                .map(|()| false)
        }
        Outcome::Panicked => {
            crate::metrics::job_failed(crate::metrics::FailureCause::WorkerPanic);
            store.fail_job(id, INTERNAL_ERROR).await.map(|()| false)
        }
    };
    match ended {
        Ok(done) => {
            tracing::info!(worker = result.worker, done, "result recorded");
            Ok(Some(done))
        }
        Err(StoreError::IllegalTransition { from, .. }) if from.is_finished() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Downloads a result's images where a local job would have written them, checking each
/// against its hash.
async fn fetch_images(
    inner: &Inner,
    data_dir: &Path,
    id: JobId,
    images: &[super::wire::ResultImage],
) -> Result<Vec<ImageRecord>> {
    let dir = data_dir.join("jobs").join(id.0.to_string());
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut records = Vec::with_capacity(images.len());
    for image in images {
        let path = dir.join(format!("{}.png", image.idx));
        let bytes = download(inner, &image.object).await?;
        if hex_sha256(&bytes) != image.sha256 {
            bail!("the image {} arrived damaged (hash mismatch)", image.object);
        }
        if let Some(name) = &image.latents {
            let latents = download(inner, name).await?;
            if let Some(shared) = &inner.shared {
                shared.put(&latents_path(&path), &latents).await?;
            }
            write_file(&latents_path(&path), latents).await?;
        }
        if let Some(shared) = &inner.shared {
            shared.put(&path, &bytes).await?;
        }
        write_file(&path, bytes).await?;
        records.push(ImageRecord {
            idx: image.idx,
            seed: image.seed,
            path,
            sha256: image.sha256.clone(),
            width: image.width,
            height: image.height,
        });
    }
    Ok(records)
}

/// Reads one object of the files bucket, with a size limit.
pub async fn download(queue_files: impl AsFiles, name: &str) -> Result<Vec<u8>> {
    let files = queue_files.files();
    let mut object = files
        .get(name)
        .await
        .with_context(|| format!("cannot fetch {name} from the queue's files"))?;
    let mut bytes = Vec::new();
    (&mut object)
        .take(MAX_IMAGE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .with_context(|| format!("cannot read {name} from the queue's files"))?;
    if bytes.len() > MAX_IMAGE_BYTES {
        bail!("{name} is larger than {MAX_IMAGE_BYTES} bytes");
    }
    Ok(bytes)
}

/// What holds the files bucket.
pub trait AsFiles {
    fn files(&self) -> &async_nats::jetstream::object_store::ObjectStore;
}

impl AsFiles for &Inner {
    fn files(&self) -> &async_nats::jetstream::object_store::ObjectStore {
        &self.queue.files
    }
}

impl AsFiles for &async_nats::jetstream::object_store::ObjectStore {
    fn files(&self) -> &async_nats::jetstream::object_store::ObjectStore {
        self
    }
}

impl AsFiles for &Queue {
    fn files(&self) -> &async_nats::jetstream::object_store::ObjectStore {
        &self.files
    }
}

pub(super) async fn write_file(path: &Path, bytes: Vec<u8>) -> Result<()> {
    let path: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await?
}

/// The files of a recorded result and of its job's inputs are no longer needed.
async fn drop_files(inner: &Inner, result: &JobResult) {
    let id = result.job;
    let mut names = vec![
        format!("in-{id}.png"),
        format!("in-{id}.latents"),
        format!("in-{id}.mask.png"),
    ];
    if let Outcome::Done { images, .. } = &result.outcome {
        for image in images {
            names.push(image.object.clone());
            names.extend(image.latents.clone());
        }
    }
    for name in names {
        // Absent inputs are the common case; the bucket's max age drops anything missed.
        let _ = inner.queue.files.delete(&name).await;
    }
}
