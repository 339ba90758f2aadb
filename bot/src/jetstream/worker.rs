//! `imagine worker`: models and engine only. Takes jobs for the models it serves from the
//! JetStream queue, one at a time per compute device, runs them on the supervised engine
//! thread, and sends back progress, the images (through the files bucket) and a result.
//! A SIGTERM stops the running job between steps and hands it back to the queue.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;

use super::gateway::download;
use super::wire::{JobOrder, JobResult, LocalInputs, Outcome, ResultImage, PERCENT_HEADER};
use super::{job_subject, model_consumer, progress_subject, result_subject, retrying, Queue};
use crate::config::Config;
use crate::discord::engine_thread::{EngineEvent, EngineThread, JobEnd, TestFaults};
use crate::queue::{StopFlag, StopReason};
use crate::worker::{latents_path, write_atomically, JobOutput};

/// How long sending a result may keep failing (the server restarting) before the job is
/// handed back for another worker.
const RESULT_LIMIT: Duration = Duration::from_secs(300);
/// Cancels remembered for jobs not yet taken.
const CANCELS_KEPT: usize = 1024;

/// The running jobs' stop flags, and recent cancels of jobs not taken yet.
#[derive(Default)]
struct Stops {
    running: HashMap<i64, StopFlag>,
    cancelled: VecDeque<i64>,
    stopping: bool,
}

struct Worker {
    queue: Queue,
    name: String,
    data_dir: PathBuf,
    consumers: Vec<(String, PullConsumer)>,
    max_attempts: u32,
    ack_wait: Duration,
    stops: Mutex<Stops>,
    stopping: watch::Sender<bool>,
}

/// Runs the worker until SIGTERM or Ctrl-C.
pub async fn run(mut config: Config) -> Result<()> {
    let settings = config
        .queue
        .clone()
        .context("a worker needs queue_url (IMAGINE_QUEUE_URL)")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    config.data_dir = std::path::absolute(&config.data_dir)?;
    let health = crate::metrics::install(config.metrics_addr).await?;
    let factories = crate::discord::engines_factories(&config).await?;
    let queue = Queue::connect(
        &settings,
        &format!("imagine-worker {}", settings.worker_name),
    )
    .await?;
    health.watch_queue(queue.client.clone());
    let served: Vec<String> = settings
        .served(&config.models)
        .into_iter()
        .map(str::to_string)
        .collect();
    let stream = queue.js.get_stream(super::JOBS_STREAM).await?;
    let mut consumers = Vec::new();
    for model in &served {
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &model_consumer(model),
                pull::Config {
                    durable_name: Some(model_consumer(model)),
                    filter_subject: job_subject(model),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: settings.ack_wait,
                    // One delivery more than the attempts: the last one only reports the failure.
                    max_deliver: i64::from(settings.max_attempts) + 1,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot create the queue consumer of model {model}"))?;
        consumers.push((model.clone(), consumer));
    }
    let worker = Arc::new(Worker {
        queue,
        name: settings.worker_name.clone(),
        data_dir: config.data_dir.clone(),
        consumers,
        max_attempts: settings.max_attempts,
        ack_wait: settings.ack_wait,
        stops: Mutex::default(),
        stopping: watch::channel(false).0,
    });
    tokio::spawn(follow_stops(worker.clone()));
    tokio::spawn(stop_on_signal(worker.clone()));
    let faults = TestFaults::from_env();
    tracing::info!(
        worker = worker.name,
        models = served.join(","),
        devices = factories.len(),
        "worker ready: taking jobs"
    );
    let mut loops = Vec::new();
    for factory in factories {
        let engine = EngineThread::new(factory, config.data_dir.clone(), faults.clone());
        loops.push(tokio::spawn(serve(worker.clone(), engine)));
    }
    for l in loops {
        l.await?;
    }
    tracing::info!(worker = worker.name, "worker stopped");
    Ok(())
}

impl Worker {
    fn stops(&self) -> std::sync::MutexGuard<'_, Stops> {
        self.stops.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}

async fn stop_on_signal(worker: Arc<Worker>) {
    let signal = crate::discord::shutdown::wait_for_signal().await;
    tracing::info!(signal, "stopping: the running job goes back to the queue");
    worker.stopping.send_replace(true);
    let mut stops = worker.stops();
    stops.stopping = true;
    for flag in stops.running.values() {
        flag.request(StopReason::ShuttingDown);
    }
}

/// Cancels from the gateway: the running job stops at its next step; a job not taken yet is
/// dropped when it comes.
async fn follow_stops(worker: Arc<Worker>) {
    loop {
        match worker.queue.client.subscribe("imagine.stop.>").await {
            Ok(mut sub) => {
                while let Some(msg) = sub.next().await {
                    let Some(job) = super::job_of_subject(msg.subject.as_str()) else {
                        continue;
                    };
                    let mut stops = worker.stops();
                    match stops.running.get(&job) {
                        Some(flag) => flag.request(StopReason::Cancelled),
                        None => {
                            stops.cancelled.push_back(job);
                            if stops.cancelled.len() > CANCELS_KEPT {
                                stops.cancelled.pop_front();
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("cannot follow cancels ({e}); again"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One device's loop: take a job, run it, report it; until stopped.
async fn serve(worker: Arc<Worker>, engine: EngineThread) {
    // With one model a pull waits long; with several each gets a short turn.
    let wait = if worker.consumers.len() == 1 {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    };
    let mut turn = 0;
    let mut stopping = worker.stopping.subscribe();
    while !worker.is_stopping() {
        let (_, consumer) = &worker.consumers[turn % worker.consumers.len()];
        turn += 1;
        let taken = tokio::select! {
            taken = take_one(consumer, wait) => taken,
            _ = stopping.wait_for(|s| *s) => return,
        };
        match taken {
            Ok(Some(msg)) => handle(&worker, &engine, msg).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("cannot take jobs from the queue ({e:#}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn take_one(consumer: &PullConsumer, wait: Duration) -> Result<Option<Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(wait)
        .messages()
        .await?;
    match batch.next().await {
        Some(Ok(msg)) => Ok(Some(msg)),
        Some(Err(e)) => Err(anyhow::anyhow!(e)),
        None => Ok(None),
    }
}

async fn handle(worker: &Worker, engine: &EngineThread, msg: Message) {
    let order = match JobOrder::parse(&msg.payload) {
        Ok(order) => order,
        Err(why) => {
            tracing::error!("dropping a job from the queue: {why}");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tracing::info_span!("job", id = order.job);
    handle_order(worker, engine, msg, order)
        .instrument(span)
        .await
}

async fn handle_order(worker: &Worker, engine: &EngineThread, msg: Message, order: JobOrder) {
    let attempt = msg.info().map(|i| i.delivered).unwrap_or(1);
    let id = order.job;
    if attempt > i64::from(worker.max_attempts) {
        tracing::warn!(attempt, "the job's workers kept dying; it fails");
        let shown = format!(
            "no worker could finish this job: it was tried {} times and each worker running it stopped (crashed or was killed)",
            worker.max_attempts
        );
        report(worker, &msg, id, Outcome::Failed { shown }).await;
        return;
    }
    if worker.stops().cancelled.contains(&id) {
        tracing::info!("the job was cancelled before it started");
        let _ = msg.ack().await;
        return;
    }
    tracing::info!(
        worker = worker.name,
        attempt,
        model = order.model,
        "job started"
    );
    let started = Instant::now();
    let acker = tokio::spawn(keep_alive(msg.clone(), worker.ack_wait / 3));
    let end = match fetch_inputs(worker, &order).await {
        Ok(init) => run_engine(worker, engine, order.to_job(init)).await,
        Err(e) => JobEnd::Failed {
            shown: "the job's start image or mask could not be fetched from the queue".into(),
            detail: format!("{e:#}"),
        },
    };
    acker.abort();
    let outcome = match end {
        JobEnd::Done(output) => match upload(worker, id, &output).await {
            Ok(images) => {
                crate::metrics::job_finished(
                    order.kind.parse().unwrap_or(crate::store::JobKind::Imagine),
                    &order.model,
                    started.elapsed().as_secs_f64(),
                );
                Outcome::Done {
                    images,
                    precision: output.compute.precision.clone(),
                    device: output.compute.device.clone(),
                    seconds: started.elapsed().as_secs_f64(),
                }
            }
            Err(e) => {
                tracing::warn!("cannot send the images ({e:#}); the job goes back to the queue");
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                clean_up(worker, id);
                return;
            }
        },
        JobEnd::Failed { shown, detail } => {
            tracing::warn!("job failed: {detail}");
            crate::metrics::job_failed(crate::metrics::FailureCause::Engine);
            Outcome::Failed { shown }
        }
        JobEnd::Panicked | JobEnd::Recorded { .. } => {
            crate::metrics::job_failed(crate::metrics::FailureCause::WorkerPanic);
            Outcome::Panicked
        }
        JobEnd::Stopped(StopReason::Cancelled) => {
            tracing::info!("job cancelled while running");
            let _ = msg.ack().await;
            clean_up(worker, id);
            return;
        }
        JobEnd::Stopped(StopReason::ShuttingDown) => {
            tracing::info!("job stopped for the shutdown; it goes back to the queue");
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            clean_up(worker, id);
            return;
        }
    };
    let done = matches!(outcome, Outcome::Done { .. });
    report(worker, &msg, id, outcome).await;
    clean_up(worker, id);
    tracing::info!(worker = worker.name, done, "job ended");
}

/// Tells the queue the job is still being worked on, so it is not given to another worker.
async fn keep_alive(msg: Message, every: Duration) {
    loop {
        if let Err(e) = msg.ack_with(AckKind::Progress).await {
            tracing::debug!("in-progress ack failed: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs the job on the engine thread, passing progress on.
async fn run_engine(worker: &Worker, engine: &EngineThread, job: crate::store::Job) -> JobEnd {
    let id = job.id.0;
    let stop = StopFlag::default();
    {
        let mut stops = worker.stops();
        if stops.stopping {
            return JobEnd::Stopped(StopReason::ShuttingDown);
        }
        stops.running.insert(id, stop.clone());
    }
    let mut events = engine.run(job, stop);
    let max_payload = worker
        .queue
        .client
        .server_info()
        .max_payload
        .saturating_sub(4096);
    let end = loop {
        match events.recv().await {
            Some(EngineEvent::Progress(p)) => {
                let mut headers = HeaderMap::new();
                headers.insert(PERCENT_HEADER, p.percent.to_string().as_str());
                let preview = p.preview_png.filter(|png| png.len() <= max_payload);
                let payload = preview.map(bytes::Bytes::from).unwrap_or_default();
                let sent = worker
                    .queue
                    .client
                    .publish_with_headers(progress_subject(id), headers, payload)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!("progress not sent: {e}");
                }
            }
            Some(EngineEvent::End(end)) => break end,
            None => {
                tracing::error!("the engine thread died during the job");
                engine.restart();
                break JobEnd::Panicked;
            }
        }
    };
    worker.stops().running.remove(&id);
    end
}

/// Where the job's input files go on this worker.
fn inputs_dir(worker: &Worker) -> PathBuf {
    worker.data_dir.join("inputs")
}

/// Downloads the job's start image (and its latents) and painted mask from the files bucket.
async fn fetch_inputs(worker: &Worker, order: &JobOrder) -> Result<LocalInputs> {
    let mut local = LocalInputs::default();
    let dir = inputs_dir(worker);
    if let Some(name) = &order.init_image {
        tokio::fs::create_dir_all(&dir).await?;
        let path = dir.join(format!("job-{}.png", order.job));
        let bytes = download(&worker.queue, name).await?;
        write(&path, bytes).await?;
        if let Some(latents) = &order.init_latents {
            let bytes = download(&worker.queue, latents).await?;
            write(&latents_path(&path), bytes).await?;
        }
        local.image = Some(path.to_string_lossy().into_owned());
    }
    if let Some(name) = &order.region_mask {
        tokio::fs::create_dir_all(&dir).await?;
        let path = dir.join(format!("job-{}.mask.png", order.job));
        let bytes = download(&worker.queue, name).await?;
        write(&path, bytes).await?;
        local.region_mask = Some(path.to_string_lossy().into_owned());
    }
    Ok(local)
}

async fn write(path: &Path, bytes: Vec<u8>) -> Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await?
}

/// Puts the job's images (and kept latents) in the files bucket.
async fn upload(worker: &Worker, id: i64, output: &JobOutput) -> Result<Vec<ResultImage>> {
    let mut images = Vec::with_capacity(output.images.len());
    for record in &output.images {
        let object = format!("out-{id}-{}.png", record.idx);
        put(worker, &object, &record.path).await?;
        let kept = latents_path(&record.path);
        let latents = if kept.exists() {
            let name = format!("out-{id}-{}.latents", record.idx);
            put(worker, &name, &kept).await?;
            Some(name)
        } else {
            None
        };
        images.push(ResultImage {
            idx: record.idx,
            seed: record.seed,
            sha256: record.sha256.clone(),
            width: record.width,
            height: record.height,
            object,
            latents,
        });
    }
    Ok(images)
}

async fn put(worker: &Worker, name: &str, path: &Path) -> Result<()> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    retrying("uploading an image", RESULT_LIMIT, || {
        let bytes = bytes.clone();
        async move {
            worker.queue.files.put(name, &mut bytes.as_slice()).await?;
            Ok(())
        }
    })
    .await
}

/// Sends the result (deduplicated per delivery), then acks the job. A crash in between runs
/// the job again; the gateway records only the first result.
async fn report(worker: &Worker, msg: &Message, id: i64, outcome: Outcome) {
    let attempt = msg.info().map(|i| i.delivered).unwrap_or(1);
    let result = JobResult {
        job: id,
        worker: worker.name.clone(),
        outcome,
    };
    let payload = match serde_json::to_vec(&result) {
        Ok(p) => bytes::Bytes::from(p),
        Err(e) => {
            tracing::error!("cannot encode the result: {e}");
            return;
        }
    };
    let sent = retrying("sending the result", RESULT_LIMIT, || {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("result-{id}-{attempt}").as_str());
        let payload = payload.clone();
        async move {
            let ack = worker
                .queue
                .js
                .publish_with_headers(result_subject(id), headers, payload)
                .await?;
            ack.await?;
            Ok(())
        }
    })
    .await;
    match sent {
        Ok(()) => {
            let acked = retrying("confirming the job", Duration::from_secs(30), || async {
                msg.double_ack().await.map_err(|e| anyhow::anyhow!(e))
            })
            .await;
            if let Err(e) = acked {
                tracing::warn!("{e:#}; the job may run again (its result counts once)");
            }
        }
        Err(e) => {
            tracing::error!("{e:#}; the job goes back to the queue");
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// The job's files on this worker are in the bucket now (or not needed).
fn clean_up(worker: &Worker, id: i64) {
    let _ = std::fs::remove_dir_all(worker.data_dir.join("jobs").join(id.to_string()));
    let input = inputs_dir(worker).join(format!("job-{id}.png"));
    let _ = std::fs::remove_file(latents_path(&input));
    let _ = std::fs::remove_file(input);
    let _ = std::fs::remove_file(inputs_dir(worker).join(format!("job-{id}.mask.png")));
}
