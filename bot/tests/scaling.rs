//! Scaling out, end to end: a gateway (`imagine bot --role gateway`, the real binary against
//! the Discord simulator) and `imagine worker` processes with the tiny model, joined by a
//! real nats-server with JetStream started on a free port. Jobs spread over the workers; a
//! worker killed mid-job, a restarted nats-server and a restarted gateway lose nothing and
//! deliver each job once; a worker takes only the models it serves.

mod common;

use std::path::Path;
use std::time::Duration;

use common::workers::*;
use common::*;
use imagine::store::{JobId, JobStatus, Store};
use imagine_tests::servers::nats::NatsServer;
use serenity::all::UserId;

/// The gateway: the bot binary in the gateway role, `slots` jobs with the workers at once.
async fn start_gateway(w: &World, nats: &NatsServer, slots: usize, env: &[(&str, &str)]) -> Bot {
    let url = nats.url();
    let slots = slots.to_string();
    let mut all = vec![
        ("IMAGINE_ROLE", "gateway"),
        ("IMAGINE_QUEUE_URL", url.as_str()),
        ("IMAGINE_WORKER_SLOTS", slots.as_str()),
    ];
    all.extend_from_slice(env);
    start_bot(&w.sim, w.dir.path(), &all).await
}

async fn status(dir: &Path, job: i64) -> Option<JobStatus> {
    let store = Store::open(dir.join("imagine.db")).await.unwrap();
    let status = store.job(JobId(job)).await.unwrap().map(|j| j.status);
    store.close().await;
    status
}

/// Sends `/imagine prompt` and waits for the queued answer; returns the message path.
async fn submit(w: &World, user: UserId, prompt: &str) -> String {
    let run = run_imagine(w, user, w.channel, prompt, None);
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_eq!(cb.kind, 4, "answered at once: {}", cb.data);
    original_path(&w.sim, &run.token)
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_spread_over_three_workers_and_each_is_delivered_once() {
    let w = world().await;
    let nats = NatsServer::start();
    let _gateway = start_gateway(&w, &nats, 3, &[]).await;
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(start_worker(w.dir.path(), name, &nats, &[]).await);
    }
    let carol = w.sim.add_user("carol");
    let mut paths = Vec::new();
    for (i, user) in [w.alice, w.bob, carol, w.alice, w.bob, carol]
        .into_iter()
        .enumerate()
    {
        paths.push(submit(&w, user, &format!("spread{i} slow fox --steps 2")).await);
    }
    for path in &paths {
        finished(&w.sim, std::slice::from_ref(path)).await;
    }
    for i in 0..paths.len() {
        assert_eq!(deliveries_of(&w.sim, &format!("spread{i} ")), 1, "job {i}");
    }
    // A worker logs the end just after the gateway has the result.
    for job in 1..=6 {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !workers.iter().any(|wk| wk.says(job, "job ended")) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job} never ended on a worker"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for worker in &workers {
        let ran = (1..=6).filter(|job| worker.says(*job, "job ended")).count();
        assert!(
            ran >= 1,
            "every worker took jobs:\n{}",
            worker.lines().join("\n")
        );
    }
    let total: usize = workers
        .iter()
        .map(|wk| (1..=6).filter(|job| wk.says(*job, "job ended")).count())
        .sum();
    assert_eq!(total, 6, "each job ran once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_job_hands_it_to_another_and_it_is_delivered_once() {
    let w = world().await;
    let nats = NatsServer::start();
    let _gateway = start_gateway(&w, &nats, 1, &[]).await;
    let mut a = start_worker(w.dir.path(), "wa", &nats, &[]).await;
    let mut b = start_worker(w.dir.path(), "wb", &nats, &[]).await;
    let path = submit(&w, w.alice, "killed-worker slow fox --steps 8").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !a.says(1, "job started") && !b.says(1, "job started") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker started the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-job: a step or two in.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (victim, other) = if a.says(1, "job started") {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    victim.kill9().await;
    assert!(!victim.says(1, "job ended"), "killed before the end");
    finished(&w.sim, &[path]).await;
    assert!(other.says(1, "attempt=2"), "{}", other.lines().join("\n"));
    other.wait_says(1, "job ended").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(deliveries_of(&w.sim, "killed-worker"), 1);
    assert_eq!(status(w.dir.path(), 1).await, Some(JobStatus::Done));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_restart_mid_run_loses_nothing() {
    let w = world().await;
    let mut nats = NatsServer::start();
    let _gateway = start_gateway(&w, &nats, 2, &[]).await;
    let worker = start_worker(w.dir.path(), "w1", &nats, &[]).await;
    let mut paths = Vec::new();
    for (i, user) in [w.alice, w.bob, w.alice].into_iter().enumerate() {
        paths.push(submit(&w, user, &format!("restart{i} slow owl --steps 4")).await);
    }
    worker.wait_says(1, "job started").await;
    tokio::task::block_in_place(|| nats.restart());
    for path in &paths {
        finished(&w.sim, std::slice::from_ref(path)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..paths.len() {
        assert_eq!(deliveries_of(&w.sim, &format!("restart{i} ")), 1, "job {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_and_restarted_keeps_buttons_and_pending_deliveries() {
    let w = world().await;
    let nats = NatsServer::start();
    let gateway = start_gateway(&w, &nats, 1, &[]).await;
    let worker = start_worker(w.dir.path(), "w1", &nats, &[]).await;
    let first = imagine(&w, w.alice, w.channel, "before-restart cat --steps 1").await;
    let pending = submit(&w, w.bob, "pending-delivery slow cat --steps 4").await;
    worker.wait_says(2, "job started").await;
    gateway.kill9().await;
    // The worker finishes while no gateway runs: the result waits in the stream.
    worker.wait_says(2, "job ended").await;
    let _gateway = start_gateway(&w, &nats, 1, &[]).await;
    finished(&w.sim, &[pending]).await;
    let single = click(&w, w.alice, &first, "U1").await;
    assert_eq!(single.attachments.len(), 1, "U1 made its image");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deliveries_of(&w.sim, "pending-delivery"), 1);
    assert_eq!(status(w.dir.path(), 3).await, Some(JobStatus::Done));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serving_only_model_b_never_takes_model_a_jobs() {
    let w = world().await;
    let nats = NatsServer::start();
    let tiny = root().join("assets/models/tiny-sd15");
    let config = w.dir.path().join("models.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nmodel-a = {path:?}\nmodel-b = {path:?}\n",
            path = tiny.to_string_lossy()
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let _gateway = start_gateway(&w, &nats, 2, &[("IMAGINE_CONFIG", &config)]).await;
    let only_b = [
        ("IMAGINE_CONFIG", config.as_str()),
        ("IMAGINE_WORKER_MODELS", "model-b"),
    ];
    let worker_b = start_worker(w.dir.path(), "wb", &nats, &only_b).await;
    let job_a = submit(&w, w.alice, "for-model-a fox --model model-a --steps 1").await;
    let job_b = submit(&w, w.bob, "for-model-b fox --model model-b --steps 1").await;
    finished(&w.sim, &[job_b]).await;
    worker_b.wait_says(2, "job ended").await;
    // Plenty of time to take job A, had it been allowed to.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!worker_b.touched(1), "{}", worker_b.lines().join("\n"));
    assert_ne!(status(w.dir.path(), 1).await, Some(JobStatus::Done));
    let only_a = [
        ("IMAGINE_CONFIG", config.as_str()),
        ("IMAGINE_WORKER_MODELS", "model-a"),
    ];
    let worker_a = start_worker(w.dir.path(), "wa", &nats, &only_a).await;
    finished(&w.sim, &[job_a]).await;
    worker_a.wait_says(1, "job ended").await;
    assert!(!worker_b.touched(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_workers_keep_dying_fails_visibly_after_its_attempts() {
    let w = world().await;
    let nats = NatsServer::start();
    let _gateway = start_gateway(&w, &nats, 1, &[]).await;
    let once = [("IMAGINE_JOB_MAX_ATTEMPTS", "1")];
    let mut first = start_worker(w.dir.path(), "w1", &nats, &once).await;
    let run = run_imagine(&w, w.alice, w.channel, "doomed slow fox --steps 8", None);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    first.wait_says(1, "job started").await;
    first.kill9().await;
    // The next worker gets the job's second delivery: past its one attempt, it fails it.
    let second = start_worker(w.dir.path(), "w2", &nats, &once).await;
    let path = original_path(&w.sim, &run.token);
    let shown = w
        .sim
        .wait_for("the failure shown to the user", WAIT, |entries| {
            entries
                .iter()
                .filter_map(imagine_tests::Entry::as_rest)
                .find(|c| {
                    c.path == path
                        && c.method == "PATCH"
                        && c.status < 300
                        && c.body["content"]
                            .as_str()
                            .unwrap_or("")
                            .contains("no worker could finish this job")
                })
                .map(|c| c.body["content"].as_str().unwrap_or("").to_string())
        })
        .await
        .unwrap();
    assert!(shown.contains("failed"), "{shown}");
    assert_eq!(status(w.dir.path(), 1).await, Some(JobStatus::Failed));
    assert!(
        !second.says(1, "job started"),
        "a job past its attempts is failed, not run again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_keeps_positions_and_caps_and_a_worker_serves_health_and_metrics() {
    let w = world().await;
    let nats = NatsServer::start();
    let _gateway = start_gateway(&w, &nats, 1, &[]).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let worker = start_worker(
        w.dir.path(),
        "w1",
        &nats,
        &[("IMAGINE_METRICS_ADDR", metrics.as_str())],
    )
    .await;
    let mut paths = Vec::new();
    for i in 0..3 {
        paths.push(submit(&w, w.alice, &format!("capped{i} slow fox --steps 6")).await);
    }
    // Alice's three jobs are with the worker or in line at the gateway: a fourth is refused.
    let fourth = run_imagine(&w, w.alice, w.channel, "capped3 fox --steps 1", None);
    let cb = w.sim.wait_callback(&fourth, WAIT).await.unwrap();
    assert_reply(&cb, "You already have 3 jobs", true);
    // One job is with the worker (one slot), two wait at the gateway: Bob is third in line.
    let bob = run_imagine(&w, w.bob, w.channel, "after-capped fox --steps 1", None);
    let cb = w.sim.wait_callback(&bob, WAIT).await.unwrap();
    assert_reply(&cb, "position 3 in the queue", false);
    paths.push(original_path(&w.sim, &bob.token));
    for path in &paths {
        finished(&w.sim, std::slice::from_ref(path)).await;
    }
    worker.wait_says(4, "job ended").await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = client
        .get(format!("http://{metrics}/health"))
        .send()
        .await
        .expect("the worker answers /health");
    assert!(health.status().is_success(), "{}", health.status());
    let text = scrape(&metrics).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("imagine_job_duration_seconds_count") && l.contains("tiny-sd15"))
        .unwrap_or_else(|| panic!("the worker counts its jobs:\n{text}"));
    assert!(line.ends_with(" 4"), "four jobs ran on this worker: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_job_running_on_a_worker_stops_it_there() {
    let w = world().await;
    let nats = NatsServer::start();
    let _gateway = start_gateway(&w, &nats, 1, &[]).await;
    let worker = start_worker(w.dir.path(), "w1", &nats, &[]).await;
    let run = run_imagine(
        &w,
        w.alice,
        w.channel,
        "remote-cancel slow tower --steps 40",
        None,
    );
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    worker.wait_says(1, "job started").await;
    let message = w
        .sim
        .bot_http()
        .get_original_interaction_response(&run.token)
        .await
        .unwrap();
    let click = w
        .sim
        .click_button(w.alice, message.id, &button(&message, "❌"))
        .unwrap();
    w.sim.wait_callback(&click, WAIT).await.unwrap();
    wait_status(w.dir.path(), 1, JobStatus::Cancelled).await;
    // The worker stops between steps (40 steps take 16 s), and takes the next job.
    worker.wait_says(1, "job cancelled while running").await;
    let next = imagine(&w, w.bob, w.channel, "after-cancel fox --steps 1").await;
    assert!(has_buttons(&serde_json::to_value(&next).unwrap()));
    assert_eq!(deliveries_of(&w.sim, "remote-cancel"), 0);
}

/// The whole scaled-out stack as the README sets it up: the gateway's store on a real
/// PostgreSQL, two workers over JetStream. A grid is delivered once, its U2 too, both jobs are
/// done in PostgreSQL, and no SQLite file is made.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_on_postgres_with_two_workers_delivers_a_grid_and_its_buttons() {
    use imagine::store::PostgresUrl;
    use imagine_tests::servers::postgres::Postgres;
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.create_database();
    let w = world().await;
    let nats = NatsServer::start();
    let env = [("IMAGINE_DATABASE_URL", url.as_str())];
    let _gateway = start_gateway(&w, &nats, 2, &env).await;
    let _workers = [
        start_worker(w.dir.path(), "w1", &nats, &[]).await,
        start_worker(w.dir.path(), "w2", &nats, &[]).await,
    ];
    let path = submit(&w, w.alice, "pg lighthouse --steps 2").await;
    let grid = finished(&w.sim, std::slice::from_ref(&path)).await;
    assert_eq!(png_of(&w.sim, &grid).dimensions(), (128, 128));
    let single = click(&w, w.alice, &grid, "U2").await;
    assert_eq!(png_of(&w.sim, &single).dimensions(), (64, 64));
    assert_eq!(
        deliveries_of(&w.sim, "pg lighthouse"),
        2,
        "the grid and U2, once each"
    );

    let store = Store::connect_postgres(&PostgresUrl::parse(&url).unwrap())
        .await
        .unwrap();
    for job in [1, 2] {
        let status = store.job(JobId(job)).await.unwrap().map(|j| j.status);
        assert_eq!(status, Some(JobStatus::Done), "job {job} in PostgreSQL");
    }
    assert!(!w.dir.path().join("imagine.db").exists(), "no SQLite file");
}
