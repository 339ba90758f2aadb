//! Live updates of queued and running jobs (queue positions, progress percent and previews),
//! on a task of their own. Discord traffic never holds up the engine: the dispatcher only
//! records the latest view of each message here and moves on; this task edits the messages,
//! one request at a time, each bounded by the HTTP timeout. Updates coalesce, latest wins per
//! job, so a slow Discord gets fewer edits, never a backlog.
//!
//! A final message must never be overwritten by a late live edit: the task re-reads the job
//! before each edit and skips ended jobs, and delivery calls [`LiveUpdates::settle`] first,
//! which drops what is pending for the job and waits for an edit in flight.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::courier::Courier;
use crate::queue::JobQueue;
use crate::store::{Job, JobId, Store};

/// What a live message should show.
pub enum Update {
    /// Waiting, at this position (1 = next), with the estimated wait.
    Queued(usize, Option<std::time::Duration>),
    /// Running, with a preview PNG when there is a new one.
    Progress {
        percent: u8,
        preview: Option<Vec<u8>>,
    },
}

#[derive(Clone)]
pub struct LiveUpdates {
    pending: Arc<Mutex<BTreeMap<JobId, Update>>>,
    wake: Arc<Notify>,
    in_flight: watch::Sender<Option<JobId>>,
}

impl LiveUpdates {
    /// Starts the task that edits the messages.
    pub fn start(store: Store, courier: Courier) -> LiveUpdates {
        let updates = LiveUpdates {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
            in_flight: watch::channel(None).0,
        };
        tokio::spawn(updates.clone().serve(store, courier));
        updates
    }

    /// Records the latest view of `job`'s message; returns at once.
    pub fn show(&self, job: JobId, update: Update) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // A preview not shown yet survives a newer percent without one.
        let update = match (pending.remove(&job), update) {
            (
                Some(Update::Progress {
                    preview: Some(png), ..
                }),
                Update::Progress {
                    percent,
                    preview: None,
                },
            ) => Update::Progress {
                percent,
                preview: Some(png),
            },
            (_, update) => update,
        };
        pending.insert(job, update);
        drop(pending);
        self.wake.notify_one();
    }

    /// Every waiting job's new place in line.
    pub fn show_positions(&self, queue: &JobQueue) {
        for (job, position) in queue.positions() {
            self.show(job, Update::Queued(position, queue.wait_for(position)));
        }
    }

    /// No more live edits of `job`: drops what is pending and waits for an edit in flight (at
    /// most one HTTP timeout).
    pub async fn settle(&self, job: JobId) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job);
        let mut in_flight = self.in_flight.subscribe();
        let _ = in_flight.wait_for(|j| *j != Some(job)).await;
    }

    fn take_next(&self) -> Option<(JobId, Update)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let job = *pending.keys().next()?;
        let update = pending.remove(&job)?;
        // Marked in flight under the lock, so `settle` cannot miss it.
        self.in_flight.send_replace(Some(job));
        Some((job, update))
    }

    async fn serve(self, store: Store, courier: Courier) {
        loop {
            while let Some((id, update)) = self.take_next() {
                if let Ok(Some(job)) = store.job(id).await {
                    edit(&courier, &job, update).await;
                }
                self.in_flight.send_replace(None);
            }
            self.wake.notified().await;
        }
    }
}

async fn edit(courier: &Courier, job: &Job, update: Update) {
    // Ended jobs belong to the outbox; a job told its result comes by DM keeps that notice.
    if job.status.is_finished() || !job.delivery.admitted || job.delivery.dm_notice_at.is_some() {
        return;
    }
    let result = match update {
        Update::Queued(position, wait) => courier.queued(job, position, wait).await,
        Update::Progress { percent, preview } => courier.progress(job, percent, preview).await,
    };
    if let Err(e) = result {
        tracing::debug!(job = job.id.0, "live update not shown: {e:#}");
    }
}
