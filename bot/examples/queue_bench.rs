//! Throughput and added latency of the JetStream queue (issue 14): jobs per minute through a
//! real nats-server and 1, 2 and 3 `imagine worker` processes on the tiny model, and how much
//! longer a job takes through the queue than on an engine in-process. A measurement, not a
//! test. Build the binary first, then run it (same profile):
//!
//! ```sh
//! cargo build --bin imagine && cargo run --example queue_bench -- 24
//! ```
//!
//! Argument: jobs per throughput run (default 24). Prints a Markdown table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use std::sync::Arc;

use imagine::discord::engine_thread::{
    EngineEvent, EngineThread, EnginesFactory, JobEnd, TestFaults,
};
use imagine::jetstream::wire::{JobOrder, JobResult, Outcome};
use imagine::jetstream::{job_subject, Queue, QueueSettings, RESULTS_STREAM};
use imagine::queue::StopFlag;
use imagine::store::JobParams;
use imagine_engine::Precision;
use imagine_tests::servers::nats::NatsServer;

const MODEL: &str = "tiny-sd15";
const STEPS: u32 = 4;
/// Single jobs timed one after another, for the added latency.
const SINGLES: usize = 8;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn order(id: i64) -> JobOrder {
    let params: JobParams = serde_json::from_value(serde_json::json!({
        "width": 64, "height": 64, "steps": STEPS, "guidance": 7.5, "scheduler": "euler"
    }))
    .expect("params");
    JobOrder {
        job: id,
        kind: "imagine".into(),
        parent: None,
        prompt: format!("benchmark job {id}"),
        negative_prompt: String::new(),
        params,
        model: MODEL.into(),
        seeds: vec![1, 2, 3, 4],
        init_image: None,
        init_latents: None,
        region_mask: None,
    }
}

/// The same job on an engine thread in this process (`imagine bot`'s path, with its
/// allocator and denormal settings, as in the worker): what a job costs without the queue.
async fn local_seconds() -> Result<f64> {
    let dir = std::env::temp_dir().join(format!("imagine-queue-bench-{}", std::process::id()));
    let specs = BTreeMap::from([(
        MODEL.to_string(),
        root()
            .join("assets/models/tiny-sd15")
            .to_string_lossy()
            .into_owned(),
    )]);
    let factory: EnginesFactory = Arc::new(move || {
        imagine::worker::Engines::new(specs.clone()).on(candle_core::Device::Cpu, Precision::Fp32)
    });
    let engine = EngineThread::new(factory, dir.clone(), TestFaults::default());
    let mut times = Vec::new();
    for id in 0..=SINGLES as i64 {
        let started = Instant::now();
        let mut events = engine.run(
            order(id + 1).to_job(Default::default()),
            StopFlag::default(),
        );
        loop {
            match events.recv().await {
                Some(EngineEvent::End(JobEnd::Done(_))) => break,
                Some(EngineEvent::End(_)) | None => bail!("the local job failed"),
                Some(EngineEvent::Progress(_)) => {}
            }
        }
        // The first job loads the model: left out, as a warm worker has it loaded.
        if id > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(mean(&times))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

struct Workers(Vec<std::process::Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_workers(n: usize, nats: &NatsServer, dir: &std::path::Path) -> Result<Workers> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("imagine"))
        .context("no target folder")?;
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --bin imagine` first",
            bin.display()
        );
    }
    let mut workers = Workers(Vec::new());
    for i in 0..n {
        let log = dir.join(format!("worker{i}.log"));
        let child = std::process::Command::new(&bin)
            .arg("worker")
            .env("IMAGINE_MODEL", root().join("assets/models/tiny-sd15"))
            .env("IMAGINE_DATA_DIR", dir.join(format!("w{i}")))
            .env("IMAGINE_QUEUE_URL", nats.url())
            .env("IMAGINE_DEVICE", "cpu")
            .env("HF_HUB_OFFLINE", "1")
            .env("RUST_LOG", "warn,imagine=info")
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        workers.0.push(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log)?.contains("worker ready") {
            if Instant::now() > deadline {
                bail!("worker {i} did not start: see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(workers)
}

async fn publish(queue: &Queue, id: i64) -> Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("job-{id}").as_str());
    let payload = serde_json::to_vec(&order(id))?;
    queue
        .js
        .publish_with_headers(job_subject(MODEL), headers, payload.into())
        .await?
        .await?;
    Ok(())
}

/// Waits for the next result; returns the seconds the worker spent on it (from taking it to
/// its images in the bucket).
async fn next_result(results: &mut pull::Stream) -> Result<f64> {
    let msg = results
        .next()
        .await
        .context("results ended")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let result = JobResult::parse(&msg.payload).map_err(anyhow::Error::msg)?;
    msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    match result.outcome {
        Outcome::Done { seconds, .. } => Ok(seconds),
        other => bail!("job {} did not finish: {other:?}", result.job),
    }
}

/// Jobs per minute, a job's latency alone, and the part of it outside the worker's job.
async fn run(workers: usize, jobs: usize) -> Result<(f64, f64, f64)> {
    let nats = NatsServer::start();
    let dir = nats.store_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let settings = QueueSettings::resolve(
        imagine::config::Role::Gateway,
        imagine::jetstream::settings::QueueInputs {
            url: Some(nats.url()),
            ..Default::default()
        },
    )?
    .context("settings")?;
    let queue = Queue::connect(&settings, "queue-bench").await?;
    let _workers = start_workers(workers, &nats, &dir)?;
    let consumer: PullConsumer = queue
        .js
        .get_stream(RESULTS_STREAM)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut results = consumer.messages().await?;
    // Warm-up: every worker loads the model.
    for id in 1..=workers as i64 {
        publish(&queue, id).await?;
    }
    for _ in 0..workers {
        next_result(&mut results).await?;
    }
    // Added latency: one job at a time, publish to result.
    let mut id = workers as i64;
    let (mut singles, mut outside) = (Vec::new(), Vec::new());
    for _ in 0..SINGLES {
        id += 1;
        let started = Instant::now();
        publish(&queue, id).await?;
        let on_worker = next_result(&mut results).await?;
        let took = started.elapsed().as_secs_f64();
        singles.push(took);
        outside.push(took - on_worker);
    }
    // Throughput: all at once.
    let started = Instant::now();
    for _ in 0..jobs {
        id += 1;
        publish(&queue, id).await?;
    }
    for _ in 0..jobs {
        next_result(&mut results).await?;
    }
    let per_minute = jobs as f64 / started.elapsed().as_secs_f64() * 60.0;
    Ok((per_minute, mean(&singles), mean(&outside)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("the argument is a number of jobs")?
        .unwrap_or(24);
    // As the binary does (main.rs): freed tensors stay mapped for reuse.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: allocator tuning only, before the engine threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let local = local_seconds().await?;
    println!("tiny-sd15, 2x2 grid of 64 px, {STEPS} steps; {jobs} jobs per throughput run");
    println!(
        "in-process engine: {:.0} ms a job, {:.0} jobs/min\n",
        local * 1e3,
        60.0 / local
    );
    println!("| workers | jobs/min | one job alone, publish to result (ms) | of which outside the worker's job (ms) | minus the in-process job (ms) |");
    println!("|---|---|---|---|---|");
    for workers in 1..=3 {
        let (per_minute, single, outside) = run(workers, jobs).await?;
        println!(
            "| {workers} | {per_minute:.0} | {:.0} | {:.1} | {:.0} |",
            single * 1e3,
            outside * 1e3,
            (single - local) * 1e3
        );
    }
    Ok(())
}
