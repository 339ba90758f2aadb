//! Graceful stop. On SIGTERM (what systemd and containers send) or Ctrl-C the bot stops
//! admitting (new requests get a private "restarting" reply), lets the running job finish or
//! stops it between steps and puts it back in line, delivers what it can, and exits 0, all
//! within `shutdown_timeout`. Whatever is left (a job still running, a delivery Discord did not
//! confirm) is in the store, and the next start delivers it exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poise::serenity_prelude::ShardManager;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Data;
use crate::queue::StopReason;

/// What a request gets while the bot is stopping.
pub const RESTARTING: &str = "The bot is restarting. Please try again in a minute.";

/// The stop signal, shared by everything that must react to it.
#[derive(Clone)]
pub struct Shutdown {
    stopping: watch::Sender<bool>,
    drained: watch::Sender<bool>,
    /// Whether a drain routine runs (set once the bot is connected).
    draining: Arc<AtomicBool>,
    pub timeout: Duration,
}

impl Shutdown {
    pub fn new(timeout: Duration) -> Shutdown {
        Shutdown {
            stopping: watch::channel(false).0,
            drained: watch::channel(false).0,
            draining: Arc::default(),
            timeout,
        }
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub fn trigger(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the stop is triggered.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    async fn drained(&self) {
        let mut rx = self.drained.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// Waits for SIGTERM or Ctrl-C, then stops: waits for [`drain`] (bounded), then closes the
/// gateway, which ends the client and lets `run` return.
pub fn on_signal(shutdown: Shutdown, shards: Arc<ShardManager>) {
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(
            signal,
            timeout_s = shutdown.timeout.as_secs_f64(),
            "stopping: no new jobs; finishing or checkpointing the running one"
        );
        shutdown.trigger();
        if shutdown.draining.load(Ordering::SeqCst) {
            // The drain keeps to the timeout itself; the margin covers a last slow request.
            let bound = shutdown.timeout + Duration::from_secs(2);
            tokio::select! {
                drained = tokio::time::timeout(bound, shutdown.drained()) => {
                    if drained.is_err() {
                        tracing::warn!("the stop took longer than allowed; exiting anyway");
                    }
                }
                second = wait_for_signal() => {
                    tracing::warn!(signal = second, "second signal: exiting now");
                }
            }
        }
        shards.shutdown_all().await;
    });
}

#[cfg(unix)]
pub(crate) async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
        },
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the bot");
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(not(unix))]
pub(crate) async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

/// The bot's side of a stop, started once it is connected: when the stop comes, let the
/// running job finish for half the time, then stop it between steps (it is requeued), then
/// deliver what ended, until the time is up.
pub fn drain(data: Data) {
    data.shutdown.draining.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        data.shutdown.stopping().await;
        let started = Instant::now();
        let deadline = started + data.shutdown.timeout;
        let finish_by = started + data.shutdown.timeout / 2;
        if !wait_idle(&data, finish_by).await {
            for job in data.queue.running() {
                tracing::info!(
                    job = job.0,
                    "stopping the running job; it resumes at the next start"
                );
                if let Some(flag) = data.queue.stop_flag(job) {
                    flag.request(StopReason::ShuttingDown);
                }
            }
            wait_idle(&data, deadline).await;
        }
        data.outbox.flush(deadline).await;
        if let Err(e) = data.store.compact_wal().await {
            tracing::warn!("cannot compact the database's log: {e}");
        }
        tracing::info!("stopped");
        data.shutdown.drained.send_replace(true);
    });
}

/// Waits until no job runs, or `until`; returns whether none runs.
async fn wait_idle(data: &Data, until: Instant) -> bool {
    loop {
        if data.queue.running().is_empty() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
