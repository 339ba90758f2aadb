//! The dispatcher: one loop per worker (compute device), each taking jobs off the shared queue
//! one at a time and handing each to its engine thread,
//! passes its progress on to the live updates (at most every 2.5 s, only when something
//! changed; never waiting on Discord), and records how it ended in the store, then wakes the
//! outbox, which tells the user. The dispatcher supervises itself: if its loop panics, the job
//! in hand fails visibly and a new loop starts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::Instrument;

use super::engine_thread::{EngineEvent, JobEnd};
use super::image_prompt::download_image;
use super::runner::JobRunner;
use super::updates::Update;
use super::Data;
use crate::jetstream::shared_images::{key_of, SharedImages};
use crate::queue::StopReason;
use crate::store::{ImageRecord, Job, JobId, StoreError};

/// Minimum time between two edits of a running job's message.
const EDIT_INTERVAL: Duration = Duration::from_millis(2500);

/// What a job that panicked tells its user.
pub const INTERNAL_ERROR: &str = "internal error (the details are in the bot's log)";

/// The job a dispatch loop has in hand, for its supervisor.
type InHand = std::sync::Arc<std::sync::Mutex<Option<JobId>>>;

/// Runs until the bot stops: a queue loop per engine thread, each restarted if it panics.
pub fn start(data: Data, engines: Vec<std::sync::Arc<dyn JobRunner>>) {
    for engine in engines {
        let data = data.clone();
        tokio::spawn(async move {
            let in_hand = InHand::default();
            loop {
                let run = tokio::spawn(dispatch(data.clone(), engine.clone(), in_hand.clone()));
                match run.await {
                    Ok(()) => return,
                    Err(e) if e.is_panic() => {
                        tracing::error!("the dispatcher panicked; starting it again");
                        let job = in_hand.lock().unwrap_or_else(|p| p.into_inner()).take();
                        if let Some(job) = job {
                            end_after_panic(&data, job).await;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
}

async fn end_after_panic(data: &Data, job: JobId) {
    if let Err(e) = data.store.fail_job(job, INTERNAL_ERROR).await {
        tracing::error!(job = job.0, "cannot record the failure: {e}");
    }
    data.queue.finish(job);
    data.outbox.notify();
}

async fn dispatch(data: Data, engine: std::sync::Arc<dyn JobRunner>, in_hand: InHand) {
    loop {
        // Stopping wins over a waiting job: no job starts once the stop began.
        let id = tokio::select! {
            biased;
            () = data.shutdown.stopping() => return,
            id = data.queue.next() => id,
        };
        *in_hand.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        let span = tracing::info_span!("job", id = id.0);
        let outcome = run_one(&data, engine.as_ref(), id)
            .instrument(span.clone())
            .await;
        if let Err(e) = outcome {
            span.in_scope(|| tracing::error!("the job ended with an internal error: {e:#}"));
            crate::metrics::job_failed(crate::metrics::FailureCause::Internal);
            // Whatever state it was left in, it ends visibly.
            let _ = data.store.fail_job(id, INTERNAL_ERROR).await;
        }
        in_hand.lock().unwrap_or_else(|p| p.into_inner()).take();
        data.queue.finish(id);
        data.outbox.notify();
    }
}

async fn run_one(data: &Data, engine: &dyn JobRunner, id: JobId) -> anyhow::Result<()> {
    let marked = data.store.mark_running(id).await;
    data.queue.started(id);
    match marked {
        // Cancelled between entering the line and starting: nothing to run.
        Err(StoreError::IllegalTransition { from, .. }) if from.is_finished() => {
            tracing::info!("the job ended before it started ({from})");
            return Ok(());
        }
        other => other?,
    }
    let started = Instant::now();
    let job = data
        .store
        .job(id)
        .await?
        .with_context(|| format!("job {id} vanished"))?;
    tracing::info!(
        kind = job.request.kind.as_str(),
        model = job.request.model,
        "job started"
    );
    super::positions::line_moved(data);
    let job = match with_inputs(data, job).await {
        Ok(job) => job,
        Err(why) => {
            tracing::warn!("job failed: {why}");
            crate::metrics::job_failed(crate::metrics::FailureCause::ImagePrompt);
            data.store.fail_job(id, &why).await?;
            return Ok(());
        }
    };
    let stop = data.queue.stop_flag(id).unwrap_or_default();
    let mut events = engine.run(job.clone(), stop);
    let mut last_edit: Option<Instant> = None;
    let mut shown = None;
    let end = loop {
        match events.recv().await {
            Some(EngineEvent::Progress(p)) => {
                let due = last_edit.is_none_or(|t| t.elapsed() >= EDIT_INTERVAL);
                let changed = shown != Some(p.percent) || p.preview_png.is_some();
                if due && changed {
                    last_edit = Some(Instant::now());
                    shown = Some(p.percent);
                    let update = Update::Progress {
                        percent: p.percent,
                        preview: p.preview_png,
                    };
                    data.updates.show(id, update);
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
    match &end {
        JobEnd::Done(_) => {
            data.queue.record_job_time(started.elapsed());
            crate::metrics::job_finished(
                job.request.kind,
                &job.request.model,
                started.elapsed().as_secs_f64(),
            )
        }
        JobEnd::Failed { .. } => crate::metrics::job_failed(crate::metrics::FailureCause::Engine),
        JobEnd::Panicked => crate::metrics::job_failed(crate::metrics::FailureCause::WorkerPanic),
        JobEnd::Recorded { done } => {
            if *done {
                data.queue.record_job_time(started.elapsed());
            }
        }
        JobEnd::Stopped(_) => {}
    }
    record_end(data, id, end).await
}

async fn record_end(data: &Data, id: JobId, end: JobEnd) -> anyhow::Result<()> {
    let store = &data.store;
    match end {
        JobEnd::Done(output) => {
            store
                .finish_job_on(id, &output.images, Some(&output.compute))
                .await?;
            tracing::info!("job done");
        }
        JobEnd::Failed { shown, detail } => {
            tracing::warn!("job failed: {detail}");
            store.fail_job(id, &shown).await?;
        }
        JobEnd::Stopped(StopReason::Cancelled) => {
            store.cancel_job(id).await?;
            tracing::info!("job cancelled while running");
        }
        JobEnd::Stopped(StopReason::ShuttingDown) => {
            store.requeue_job(id).await?;
            tracing::info!("job stopped for the shutdown; it resumes at the next start");
        }
        JobEnd::Panicked => store.fail_job(id, INTERNAL_ERROR).await?,
        JobEnd::Recorded { .. } => {}
    }
    Ok(())
}

/// The job with its input files where the worker expects them: stored paths made absolute
/// (rows written by older versions hold paths relative to the data folder's parent), and an
/// image prompt whose download a restart interrupted fetched again. An `Err` is the user's
/// reason.
async fn with_inputs(data: &Data, mut job: Job) -> Result<Job, String> {
    let params = &mut job.request.params;
    if let Some(path) = &params.init_image {
        let mut local = stored_path(&data.data_dir, Path::new(path));
        if let Some(shared) = &data.shared_images {
            // A button's source image, which another gateway may have recorded (an image
            // prompt, under `inputs/`, is always this one's: downloaded at admission, or again
            // below).
            if key_of(&local).is_some() {
                match shared.fetch(&local).await {
                    Ok(fetched) => local = fetched,
                    Err(e) => tracing::warn!("cannot fetch the source image: {e:#}"),
                }
            }
        }
        params.init_image = Some(local.to_string_lossy().into_owned());
    }
    if let (Some(url), Some(path)) = (&job.delivery.image_url, &params.init_image) {
        if !Path::new(path).exists() {
            tracing::info!("downloading the image prompt again after a restart");
            download_image(data, url, path).await.map_err(|why| {
                format!("{why} Please run /imagine again with the image attached.")
            })?;
        }
        let _ = data.store.image_downloaded(job.id).await;
    }
    Ok(job)
}

/// Where a stored image path points. New rows hold absolute paths. Older rows hold the data
/// folder as it was configured (often relative to where the bot was started), then
/// `jobs/...` or `inputs/...`: those are found again under today's data folder.
///
/// An absolute path that is not there (another gateway's data folder, in a sharded bot; a
/// data folder moved) is looked for under this data folder the same way.
pub fn stored_path(data_dir: &Path, stored: &Path) -> std::path::PathBuf {
    if stored.is_absolute() && (stored.exists() || stored.starts_with(data_dir)) {
        return stored.to_path_buf();
    }
    let parts: Vec<_> = stored.components().collect();
    match parts
        .iter()
        .rposition(|c| matches!(c.as_os_str().to_str(), Some("jobs" | "inputs")))
    {
        Some(i) => parts[i..]
            .iter()
            .fold(data_dir.to_path_buf(), |p, c| p.join(c)),
        None => data_dir.join(stored),
    }
}

/// Image records with their paths resolved by [`stored_path`], and, in a sharded bot, the
/// files another gateway recorded fetched into this one's data folder.
pub async fn resolve_images(
    data_dir: &Path,
    shared: Option<&SharedImages>,
    images: Vec<ImageRecord>,
) -> Vec<ImageRecord> {
    let images = images
        .into_iter()
        .map(|mut r| {
            r.path = stored_path(data_dir, &r.path);
            r
        })
        .collect();
    match shared {
        Some(shared) => shared.localize(images).await,
        None => images,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_relative_paths_are_found_under_the_data_folder() {
        let data = Path::new("/srv/imagine/data");
        assert_eq!(
            stored_path(data, Path::new("imagine-data/jobs/3/0.png")),
            Path::new("/srv/imagine/data/jobs/3/0.png")
        );
        assert_eq!(
            stored_path(data, Path::new("./x/inputs/1-2.png")),
            Path::new("/srv/imagine/data/inputs/1-2.png")
        );
        assert_eq!(
            stored_path(data, Path::new("/srv/imagine/data/jobs/9/0.png")),
            Path::new("/srv/imagine/data/jobs/9/0.png"),
            "paths in the data folder are kept"
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let there = elsewhere.path().join("jobs/3/0.png");
        std::fs::create_dir_all(there.parent().unwrap()).unwrap();
        std::fs::write(&there, b"png").unwrap();
        assert_eq!(stored_path(data, &there), there, "existing files are kept");
        assert_eq!(
            stored_path(data, Path::new("/another/gateway/data/jobs/3/0.png")),
            Path::new("/srv/imagine/data/jobs/3/0.png"),
            "a path that is not here is looked for in this data folder"
        );
    }
}
