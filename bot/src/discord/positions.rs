//! Where a waiting job stands in line, as its message shows it.
//!
//! The only gateway (or the one-process bot) knows its whole line: the queue in memory, and
//! every move of it is shown at once. Sharded gateways each keep a line but share the workers,
//! so a job's place is among the jobs waiting at every gateway: read from the store (status
//! `queued`, in admission order), and refreshed every few seconds, since the other gateways'
//! lines move without telling this one. Only changes are shown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::updates::Update;
use super::Data;
use crate::queue::Reservation;
use crate::store::{JobId, StoreError};

/// How often a sharded gateway re-reads the shared line.
const REFRESH: Duration = Duration::from_secs(2);

/// A sharded gateway's view of the shared line: the place last shown for each of its waiting
/// jobs. Cheap to clone.
#[derive(Clone, Default)]
pub struct SharedLine {
    shown: Arc<Mutex<HashMap<JobId, usize>>>,
    moved: Arc<Notify>,
}

impl SharedLine {
    fn shown(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, usize>> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The place a job being admitted will most likely get (its first reply says it).
pub async fn expected(data: &Data, reservation: &Reservation) -> Result<usize, StoreError> {
    if data.config.shards.is_whole() {
        return Ok(reservation.expected_position());
    }
    // Every job waiting at any gateway was admitted before this one.
    Ok(data.store.queued_jobs().await?.len() + 1)
}

/// The job entered the line at `position` of this gateway's queue; its first reply said
/// `announced`.
pub fn entered(data: &Data, job: JobId, position: usize, announced: usize) {
    if !data.config.shards.is_whole() {
        data.line.shown().insert(job, announced);
        data.line.moved.notify_one();
        return;
    }
    if position != announced {
        let wait = data.queue.wait_for(position);
        data.updates.show(job, Update::Queued(position, wait));
    }
    // It took its place ahead of later jobs (its admission was the slower): each moved back.
    for (behind, place) in data.queue.positions().into_iter().skip(position) {
        let wait = data.queue.wait_for(place);
        data.updates.show(behind, Update::Queued(place, wait));
    }
}

/// The line moved (a job started, one was cancelled): show the new places.
pub fn line_moved(data: &Data) {
    if data.config.shards.is_whole() {
        data.updates.show_positions(&data.queue);
    } else {
        data.line.moved.notify_one();
    }
}

/// A sharded gateway re-reads the shared line when its own moves, and every [`REFRESH`].
pub fn start(data: Data) {
    if data.config.shards.is_whole() {
        return;
    }
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(REFRESH, data.line.moved.notified()).await;
            if let Err(e) = refresh(&data).await {
                tracing::warn!("cannot read the shared line: {e}");
            }
        }
    });
}

/// Shows each of this gateway's waiting jobs its place among all gateways' waiting jobs,
/// where that changed.
async fn refresh(data: &Data) -> Result<(), StoreError> {
    let mine = data.queue.positions();
    if mine.is_empty() {
        data.line.shown().clear();
        return Ok(());
    }
    let line = data.store.queued_jobs().await?;
    let places: HashMap<JobId, usize> = line.iter().enumerate().map(|(i, j)| (*j, i + 1)).collect();
    let mut shown = data.line.shown();
    shown.retain(|job, _| mine.iter().any(|(j, _)| j == job));
    for (job, _) in mine {
        // Absent: it left the line meanwhile (started or cancelled).
        let Some(&place) = places.get(&job) else {
            continue;
        };
        if shown.insert(job, place) != Some(place) {
            let wait = data.queue.wait_for(place);
            data.updates.show(job, Update::Queued(place, wait));
        }
    }
    Ok(())
}
