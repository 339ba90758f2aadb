//! Compute devices and precision, end to end through the simulator: several workers (one per
//! configured device) share the one queue and run jobs at once, the queue's positions and wait
//! estimates count them, and every job records what it computed in and on, in its PNG and its
//! row. A button job computes in its parent's precision, even after a restart with another
//! default, so that it reproduces its image.

mod common;

use std::time::Duration;

use common::*;
use imagine::store::{Compute, JobStatus};

fn compute(precision: &str) -> Option<Compute> {
    Some(Compute {
        precision: precision.into(),
        device: "cpu".into(),
    })
}

/// Waits until `n` jobs run at the same time.
async fn wait_running_together(dir: &std::path::Path, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let jobs = all_jobs(dir).await;
        let running = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Running)
            .count();
        if running >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} jobs running at once: {:?}",
            jobs.iter().map(|j| j.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_two_jobs_at_once_from_one_queue() {
    let w = world().await;
    let env = [("IMAGINE_DEVICE", "cpu,cpu"), ("IMAGINE_PRECISION", "fp32")];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;

    // A first job, so that the queue knows how long jobs take.
    let first = imagine(&w, w.alice, w.channel, "a lighthouse at dusk --steps 2").await;
    let (_, text) = png_and_parameters(&w.sim, &first);
    assert!(text.contains(", Precision: fp32, Device: cpu"), "{text}");

    let a = run_imagine(&w, w.alice, w.channel, "a slow red kite --steps 8", None);
    let b = run_imagine(&w, w.bob, w.channel, "a slow blue kite --steps 8", None);
    wait_running_together(w.dir.path(), 2).await;

    // Both workers busy: the next job waits first in line, with an estimate.
    let c = run_imagine(&w, w.alice, w.channel, "a green kite --steps 2", None);
    let cb = w.sim.wait_callback(&c, WAIT).await.unwrap();
    let content = cb.data["content"].as_str().unwrap();
    assert!(
        content.contains("position 1 in the queue, starts in"),
        "{content}"
    );

    for run in [&a, &b, &c] {
        finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    }
    bot.stop().await;
    let jobs = all_jobs(w.dir.path()).await;
    assert_eq!(jobs.len(), 4);
    for job in &jobs {
        assert_eq!(job.status, JobStatus::Done, "job {}", job.id.0);
        assert_eq!(job.compute, compute("fp32"), "job {}", job.id.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_button_reproduces_its_parents_precision_after_a_restart() {
    let w = world().await;
    let dir = w.dir.path();
    let bot = start_bot(&w.sim, dir, &[("IMAGINE_PRECISION", "fp16")]).await;
    let grid = imagine(&w, w.alice, w.channel, "a paper boat --seed 5 --steps 3").await;
    let (_, text) = png_and_parameters(&w.sim, &grid);
    assert!(text.contains(", Precision: fp16, Device: cpu"), "{text}");
    let v1_before = click(&w, w.alice, &grid, "V1").await;
    let (_, text) = png_and_parameters(&w.sim, &v1_before);
    assert!(text.contains(", Precision: fp16, "), "{text}");
    bot.stop().await;

    // The host's default is now fp32; the buttons under the fp16 grid still compute in fp16.
    let bot = start_bot(&w.sim, dir, &[("IMAGINE_PRECISION", "fp32")]).await;
    let v1_after = click(&w, w.alice, &grid, "V1").await;
    let (_, text) = png_and_parameters(&w.sim, &v1_after);
    assert!(text.contains(", Precision: fp16, "), "{text}");
    let fresh = imagine(&w, w.alice, w.channel, "a paper boat --seed 5 --steps 3").await;
    let (_, text) = png_and_parameters(&w.sim, &fresh);
    assert!(text.contains(", Precision: fp32, "), "{text}");
    bot.stop().await;

    let jobs = all_jobs(dir).await;
    let precisions: Vec<_> = jobs.iter().map(|j| j.compute.clone()).collect();
    assert_eq!(
        precisions,
        vec![
            compute("fp16"),
            compute("fp16"),
            compute("fp16"),
            compute("fp32")
        ]
    );
    // Both V1 jobs ask for what the grid computed in, from the store.
    assert_eq!(jobs[1].request.params.precision.as_deref(), Some("fp16"));
    assert_eq!(jobs[1].request.params, jobs[2].request.params);
}
