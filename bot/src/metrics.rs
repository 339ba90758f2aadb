//! Prometheus metrics: what a server owner graphs and alerts on (queue depth, job durations,
//! failures, Discord errors, deliveries, retention). Off unless `metrics_addr` is set; then
//! `metrics-exporter-prometheus` serves `GET /metrics` on that address.
//!
//! Every series name and label lives here, behind small named functions, so the rest of the
//! bot records events with one line (`metrics::job_finished(kind, model, secs)`) and the
//! README's list of series is this file. Labels take values from small fixed sets (job kinds,
//! configured model names, the causes and reasons below, HTTP status codes), never from user
//! input, so the number of series stays bounded. With no exporter installed every call is a
//! no-op.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use poise::serenity_prelude as serenity;

use crate::health::Health;
use crate::queue::QueueError;
use crate::store::JobKind;

const QUEUE_DEPTH: &str = "imagine_queue_depth";
const JOBS_ADMITTED: &str = "imagine_jobs_admitted_total";
const JOBS_REFUSED: &str = "imagine_jobs_refused_total";
const JOB_DURATION: &str = "imagine_job_duration_seconds";
const JOBS_FAILED: &str = "imagine_jobs_failed_total";
const DISCORD_ERRORS: &str = "imagine_discord_errors_total";
const DELIVERIES: &str = "imagine_deliveries_total";
const DELIVERY_RETRIES: &str = "imagine_delivery_retries_total";
const PURGED_JOBS: &str = "imagine_retention_purged_jobs_total";
const PURGED_BYTES: &str = "imagine_retention_purged_bytes_total";
const STORE_ERRORS: &str = "imagine_store_errors_total";

/// Job durations span a tiny test model (well under a second) to SDXL on a CPU (many
/// minutes).
const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// How often the recorder's histograms are tidied (what `PrometheusBuilder::install` did).
const UPKEEP: Duration = Duration::from_secs(5);

/// Starts the exporter on `addr` (a no-op without one), with `/health` beside `/metrics`; the
/// returned [`Health`] is told what the process depends on as it connects. Must run inside the
/// tokio runtime, which then serves the endpoint. Fails if the address is taken or a recorder
/// is already installed.
pub async fn install(addr: Option<SocketAddr>) -> Result<Health> {
    let health = Health::default();
    let Some(addr) = addr else {
        return Ok(health);
    };
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(JOB_DURATION.into()), DURATION_BUCKETS)
        .context("configuring the metrics histogram")?
        .build_recorder();
    let handle = recorder.handle();
    crate::health::serve(addr, handle.clone(), health.clone()).await?;
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is installed already"))?;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP).await;
            handle.run_upkeep();
        }
    });
    describe();
    tracing::info!(%addr, "serving Prometheus metrics at /metrics, health at /health");
    Ok(health)
}

/// The `# HELP` lines, and series that exist from the start (a scrape before the first job
/// shows a depth of 0 rather than nothing).
fn describe() {
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Jobs waiting in line (not counting the running one)."
    );
    metrics::describe_counter!(JOBS_ADMITTED, "Jobs admitted to the queue, by kind.");
    metrics::describe_counter!(JOBS_REFUSED, "Requests refused before queueing, by reason.");
    metrics::describe_histogram!(
        JOB_DURATION,
        metrics::Unit::Seconds,
        "Time from a job's start to its images on disk, by kind and model."
    );
    metrics::describe_counter!(JOBS_FAILED, "Jobs that failed, by cause.");
    metrics::describe_counter!(
        DISCORD_ERRORS,
        "Discord API calls that failed, by HTTP status (or network, timeout)."
    );
    metrics::describe_counter!(DELIVERIES, "Finished jobs posted to Discord, by kind.");
    metrics::describe_counter!(DELIVERY_RETRIES, "Deliveries tried again after a failure.");
    metrics::describe_counter!(PURGED_JOBS, "Jobs whose images retention deleted.");
    metrics::describe_counter!(PURGED_BYTES, "Bytes of images retention deleted.");
    metrics::describe_counter!(
        STORE_ERRORS,
        "Database errors (SQLite or PostgreSQL), by kind: connection, timeout, database, other."
    );
    metrics::gauge!(QUEUE_DEPTH).set(0.0);
}

/// Why a request never reached the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue was full.
    QueueFull,
    /// The user had as many jobs queued or running as allowed.
    UserCap,
    /// Bad parameters, an unknown model, an unusable attachment.
    BadInput,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::UserCap => "user_cap",
            Refusal::BadInput => "bad_input",
        }
    }
}

impl From<&QueueError> for Refusal {
    fn from(e: &QueueError) -> Self {
        match e {
            QueueError::Full(_) => Refusal::QueueFull,
            QueueError::UserCap(_) => Refusal::UserCap,
        }
    }
}

/// Why an admitted job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The attached image could not be downloaded or decoded.
    ImagePrompt,
    /// The engine returned an error (model loading, generation, writing the images).
    Engine,
    /// The worker panicked or stopped during the job.
    WorkerPanic,
    /// The job could not be delivered to Discord.
    Delivery,
    /// The store or the bot itself failed around the job.
    Internal,
}

impl FailureCause {
    fn label(self) -> &'static str {
        match self {
            FailureCause::ImagePrompt => "image_prompt",
            FailureCause::Engine => "engine",
            FailureCause::WorkerPanic => "worker_panic",
            FailureCause::Delivery => "delivery",
            FailureCause::Internal => "internal",
        }
    }
}

/// Jobs now waiting in line.
pub fn queue_depth(waiting: usize) {
    metrics::gauge!(QUEUE_DEPTH).set(waiting as f64);
}

pub fn job_admitted(kind: JobKind) {
    metrics::counter!(JOBS_ADMITTED, "kind" => kind.as_str()).increment(1);
}

pub fn job_refused(reason: Refusal) {
    metrics::counter!(JOBS_REFUSED, "reason" => reason.label()).increment(1);
}

/// A job made its images in `secs` (from its start on the worker).
pub fn job_finished(kind: JobKind, model: &str, secs: f64) {
    metrics::histogram!(JOB_DURATION, "kind" => kind.as_str(), "model" => model.to_string())
        .record(secs);
}

pub fn job_failed(cause: FailureCause) {
    metrics::counter!(JOBS_FAILED, "cause" => cause.label()).increment(1);
}

/// A Discord API call failed: counted by HTTP status, or `timeout` / `network` when no
/// answer came. Errors that are not HTTP calls are not counted.
pub fn discord_error(e: &serenity::Error) {
    let serenity::Error::Http(http) = e else {
        return;
    };
    let status = match http {
        serenity::HttpError::UnsuccessfulRequest(r) => status_label(r.status_code.as_u16()),
        serenity::HttpError::Request(r) if r.is_timeout() => "timeout".into(),
        serenity::HttpError::Request(r) => match r.status() {
            Some(s) => status_label(s.as_u16()),
            None => "network".into(),
        },
        _ => "other".into(),
    };
    metrics::counter!(DISCORD_ERRORS, "status" => status).increment(1);
}

/// A call made with our own REST client failed: `status` is `None` when no answer came.
pub fn discord_call_failed(status: Option<u16>, timed_out: bool) {
    let label = match (status, timed_out) {
        (Some(code), _) => status_label(code),
        (None, true) => "timeout".into(),
        (None, false) => "network".into(),
    };
    metrics::counter!(DISCORD_ERRORS, "status" => label).increment(1);
}

fn status_label(code: u16) -> String {
    if (100..600).contains(&code) {
        code.to_string()
    } else {
        "other".into()
    }
}

/// A finished job reached its user.
pub fn delivered(kind: JobKind) {
    metrics::counter!(DELIVERIES, "kind" => kind.as_str()).increment(1);
}

/// A delivery failed and is tried again (another way, or later).
pub fn delivery_retry() {
    metrics::counter!(DELIVERY_RETRIES).increment(1);
}

/// A retention pass deleted the images of `jobs` jobs, `bytes` in all.
pub fn images_purged(jobs: usize, bytes: u64) {
    metrics::counter!(PURGED_JOBS).increment(jobs as u64);
    metrics::counter!(PURGED_BYTES).increment(bytes);
}

/// A database call failed. `connection`: the server or file could not be reached or the link
/// broke; `timeout`: no connection came in time (pool exhausted, server gone); `database`: the
/// database refused the statement (constraint, lock, disk full); `other`: anything else.
pub fn store_error(e: &sqlx::Error) {
    metrics::counter!(STORE_ERRORS, "kind" => store_error_kind(e)).increment(1);
}

fn store_error_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => "connection",
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => "connection",
        sqlx::Error::PoolTimedOut => "timeout",
        sqlx::Error::Database(_) => "database",
        _ => "other",
    }
}
