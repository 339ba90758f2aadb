//! The dispatcher: takes jobs off the queue one at a time, hands each to the worker thread,
//! relays its progress to Discord (at most every 2.5 s, only when something changed), and
//! records the outcome in the store before telling the user.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::courier::Courier;
use crate::queue::JobQueue;
use crate::store::{ImageRecord, JobId, Store};
use crate::worker::{run_job, Engines, JobProgress, WorkItem};

/// Minimum time between two edits of a running job's message.
const EDIT_INTERVAL: Duration = Duration::from_millis(2500);

enum WorkerEvent {
    Progress(JobProgress),
    Done(Result<Vec<ImageRecord>, String>),
}

/// Starts the worker thread that owns the models; returns the sender that feeds it.
fn start_worker(
    mut engines: Engines,
    data_dir: PathBuf,
) -> std_mpsc::Sender<(WorkItem, mpsc::UnboundedSender<WorkerEvent>)> {
    let (tx, rx) = std_mpsc::channel::<(WorkItem, mpsc::UnboundedSender<WorkerEvent>)>();
    std::thread::Builder::new()
        .name("imagine-worker".into())
        .spawn(move || {
            imagine_engine::kernels::denormals::flush_on_compute_threads();
            for (item, events) in rx {
                let progress_events = events.clone();
                let result = run_job(&mut engines, &item, &data_dir, &mut |p| {
                    let _ = progress_events.send(WorkerEvent::Progress(p));
                });
                let _ = events.send(WorkerEvent::Done(result.map_err(|e| format!("{e:#}"))));
            }
        })
        .expect("spawning the worker thread");
    tx
}

/// Runs forever: the queue loop.
pub async fn run(
    queue: JobQueue,
    store: Store,
    courier: Courier,
    engines: Engines,
    data_dir: PathBuf,
) {
    let worker = start_worker(engines, data_dir);
    loop {
        let id = queue.next().await;
        if let Err(e) = run_one(id, &queue, &store, &courier, &worker).await {
            tracing::error!(job = id.0, "job ended with an internal error: {e:#}");
        }
        queue.finish(id);
    }
}

async fn run_one(
    id: JobId,
    queue: &JobQueue,
    store: &Store,
    courier: &Courier,
    worker: &std_mpsc::Sender<(WorkItem, mpsc::UnboundedSender<WorkerEvent>)>,
) -> anyhow::Result<()> {
    store.mark_running(id).await?;
    let job = store
        .job(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {} vanished", id.0))?;
    tracing::info!(job = id.0, kind = job.request.kind.as_str(), "job started");
    update_positions(queue, store, courier).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    worker
        .send((WorkItem { job: job.clone() }, tx))
        .map_err(|_| anyhow::anyhow!("the worker thread has stopped"))?;
    let mut last_edit: Option<Instant> = None;
    let mut shown = None;
    let result = loop {
        match rx.recv().await {
            Some(WorkerEvent::Progress(p)) => {
                let due = last_edit.is_none_or(|t| t.elapsed() >= EDIT_INTERVAL);
                let changed = shown != Some(p.percent) || p.preview_png.is_some();
                if due && changed {
                    last_edit = Some(Instant::now());
                    shown = Some(p.percent);
                    if let Err(e) = courier.progress(&job, p.percent, p.preview_png).await {
                        tracing::warn!(job = id.0, "progress not shown: {e:#}");
                    }
                }
            }
            Some(WorkerEvent::Done(r)) => break r,
            None => break Err("the worker stopped during the job".into()),
        }
    };
    match result {
        Ok(images) => {
            store.finish_job(id, &images).await?;
            let job = store.job(id).await?.unwrap_or(job);
            courier.done(&job, &images).await?;
            tracing::info!(job = id.0, "job done");
        }
        Err(error) => {
            tracing::warn!(job = id.0, "job failed: {error}");
            store.fail_job(id, &error).await?;
            courier.failed(&job, &user_facing(&error)).await?;
        }
    }
    Ok(())
}

/// A failure as users see it: the first line, without file system paths.
fn user_facing(error: &str) -> String {
    let first = error.lines().next().unwrap_or(error);
    let short: String = first.chars().take(300).collect();
    if short.contains('/') {
        "the image could not be made (see the bot's log)".into()
    } else {
        short
    }
}

/// Tells every waiting job its new place in line.
pub async fn update_positions(queue: &JobQueue, store: &Store, courier: &Courier) {
    for (job, position) in queue.positions() {
        if let Ok(Some(job)) = store.job(job).await {
            if let Err(e) = courier.queued(&job, position).await {
                tracing::debug!(job = job.id.0, "position not shown: {e:#}");
            }
        }
    }
}
