//! Retention: keeps the data folder within the configured age and size by deleting the images
//! of the oldest finished jobs, at start and then every hour. The store chooses the jobs and
//! records each purge ([`crate::store::RetentionInventory`]); this module measures and deletes
//! the files (off the async runtime) and words the answer a button under a purged job gets.
//!
//! A purge is recorded before its files are deleted, so no new button job is admitted on
//! images about to vanish. A crash between the two leaves some files behind, never a live
//! button pointing at nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::buttons::ButtonAction;
use crate::jetstream::shared_images::SharedImages;
use crate::store::{Job, JobKind, Purge, RetentionLimits, Store, StoreError};
use crate::worker::latents_path;

/// How often the pass runs after the one at start.
pub const PASS_INTERVAL: Duration = Duration::from_secs(3600);

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    pub jobs: usize,
    pub bytes: u64,
}

/// Runs a pass now and then every [`PASS_INTERVAL`], for as long as the runtime lives. Does
/// nothing when retention is off.
/// `shared`: a sharded gateway's images bucket, where a purged job's images go too.
pub fn spawn(
    store: Store,
    data_dir: PathBuf,
    limits: RetentionLimits,
    shared: Option<SharedImages>,
) {
    if limits.is_off() {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PASS_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = run_pass(&store, &data_dir, &limits, shared.as_ref()).await {
                tracing::warn!("retention pass failed, trying again in an hour: {e:#}");
            }
        }
    });
}

/// One pass: choose, record, delete.
pub async fn run_pass(
    store: &Store,
    data_dir: &Path,
    limits: &RetentionLimits,
    shared: Option<&SharedImages>,
) -> Result<PassOutcome> {
    if shared.is_some() {
        // Each gateway of a sharded bot holds copies of images (those it recorded or
        // fetched): the ones another gateway's pass purged go here too.
        let swept = sweep_purged_copies(store, data_dir).await?;
        if swept.jobs > 0 {
            crate::metrics::images_purged(swept.jobs, swept.bytes);
            tracing::info!(
                jobs = swept.jobs,
                bytes = swept.bytes,
                "retention: deleted this gateway's copies of images purged elsewhere"
            );
        }
    }
    let inventory = store
        .retention_inventory()
        .await
        .context("reading finished jobs")?;
    let limits = *limits;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let plan =
        tokio::task::spawn_blocking(move || inventory.select(&limits, now, bytes_on_disk)).await?;
    if plan.is_empty() {
        return Ok(PassOutcome::default());
    }
    let ids: Vec<_> = plan.iter().map(|p| p.job).collect();
    let marked = store
        .mark_images_purged(&ids)
        .await
        .context("recording the purge")?;
    let plan: Vec<Purge> = plan
        .into_iter()
        .filter(|p| marked.contains(&p.job))
        .collect();
    if let Some(shared) = shared {
        let files: Vec<PathBuf> = plan.iter().flat_map(|p| p.files.clone()).collect();
        shared.delete(&files).await;
    }
    let data_dir = data_dir.to_path_buf();
    let outcome = tokio::task::spawn_blocking(move || delete(&plan, &data_dir)).await?;
    crate::metrics::images_purged(outcome.jobs, outcome.bytes);
    tracing::info!(
        jobs = outcome.jobs,
        bytes = outcome.bytes,
        "retention: deleted the images of old jobs"
    );
    Ok(outcome)
}

/// A stored image and what was kept beside it (the latents of a fast-decoded grid cell).
fn bytes_on_disk(path: &Path) -> u64 {
    [path.to_path_buf(), latents_path(path)]
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn delete(plan: &[Purge], data_dir: &Path) -> PassOutcome {
    let mut outcome = PassOutcome::default();
    for purge in plan {
        for file in &purge.files {
            for path in [file.clone(), latents_path(file)] {
                outcome.bytes += remove_file(&path);
            }
        }
        // The job's own folder, now empty unless something unexpected was left in it.
        let _ = std::fs::remove_dir(data_dir.join("jobs").join(purge.job.0.to_string()));
        outcome.jobs += 1;
    }
    outcome
}

/// Deletes the folders under `jobs/` of the jobs the store says were purged.
async fn sweep_purged_copies(store: &Store, data_dir: &Path) -> Result<PassOutcome> {
    let jobs = data_dir.join("jobs");
    let listed = {
        let jobs = jobs.clone();
        tokio::task::spawn_blocking(move || job_folders(&jobs)).await?
    };
    let mut purged = Vec::new();
    for id in listed {
        if store.images_purged(crate::store::JobId(id)).await? {
            purged.push(id);
        }
    }
    let outcome = tokio::task::spawn_blocking(move || {
        let mut outcome = PassOutcome::default();
        for id in purged {
            let folder = jobs.join(id.to_string());
            let files = std::fs::read_dir(&folder).into_iter().flatten().flatten();
            for file in files {
                outcome.bytes += remove_file(&file.path());
            }
            let _ = std::fs::remove_dir(&folder);
            outcome.jobs += 1;
        }
        outcome
    })
    .await?;
    Ok(outcome)
}

/// The job ids of the folders under `jobs`.
fn job_folders(jobs: &Path) -> Vec<i64> {
    std::fs::read_dir(jobs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .collect()
}

/// Deletes `path`, returning the bytes freed; a file already gone is fine.
fn remove_file(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    match std::fs::remove_file(path) {
        Ok(()) => meta.len(),
        Err(e) => {
            tracing::warn!(path = %path.display(), "retention could not delete a file: {e}");
            0
        }
    }
}

/// The private answer to a button under `parent` whose images are gone, or `None` when the
/// button can still work. 🔄 also needs the image the job started from, which may have gone
/// with an older job.
pub async fn cleaned_up(
    store: &Store,
    parent: &Job,
    action: ButtonAction,
) -> Result<Option<String>, StoreError> {
    if store.images_purged(parent.id).await? {
        return Ok(Some(purged_reply(parent)));
    }
    let start = match (action, &parent.request.params.init_image) {
        (ButtonAction::Reroll, Some(path)) => PathBuf::from(path),
        _ => return Ok(None),
    };
    // Another job's image: gone when that job's images were purged (it may be on another
    // gateway's disk, in a sharded bot, until fetched). An image prompt: gone when its file is.
    let source_job = crate::jetstream::shared_images::key_of(&start)
        .and_then(|key| key.split('/').nth(1)?.parse::<i64>().ok());
    let gone = match source_job {
        Some(id) => store.images_purged(crate::store::JobId(id)).await?,
        None => !tokio::fs::try_exists(&start).await.unwrap_or(true),
    };
    if !gone {
        return Ok(None);
    }
    Ok(Some(
        "The image this job started from was cleaned up (this bot keeps images for a limited \
         time or space), so 🔄 cannot redo it. Its U and V buttons still work, or run /imagine \
         again with a new image."
            .into(),
    ))
}

fn purged_reply(parent: &Job) -> String {
    let again = match (parent.request.kind, parent.request.seeds.first()) {
        (JobKind::Imagine, Some(seed)) => {
            format!(" with the same prompt, parameters and `--seed {seed}` to make the same images again")
        }
        _ => " with the same prompt to make new ones".into(),
    };
    format!(
        "This job's images were cleaned up: this bot keeps images for a limited time or space, \
         so its buttons no longer work. Run /imagine{again}."
    )
}
