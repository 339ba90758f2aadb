//! A sharded bot, end to end: two gateway processes (the real binary, `--shards 0-0` and
//! `--shards 1-1` of 2) on one real PostgreSQL and one nats-server, with `imagine worker`s,
//! against the simulator with a guild on each shard and a DM. Each place's jobs are answered
//! by its shard's gateway; every result is delivered exactly once (the ledger counts no double
//! post, the transcript no second final edit), whichever gateway read it; a gateway killed
//! mid-run loses nothing, and the other neither steals its queued jobs nor doubles its
//! deliveries; one killed mid-delivery has it done once by the other once its claim expires;
//! `/health` says 503, naming the database, while PostgreSQL is down. Each gateway has a data
//! folder of its own: images one recorded reach the other through the queue's images bucket.
//! `IMAGINE_TEST_KEEP_DIRS=1` keeps each test's folder, with every process's log.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::workers::*;
use common::*;
use imagine::store::{JobId, JobStatus, PostgresUrl, Store};
use imagine_tests::servers::nats::NatsServer;
use imagine_tests::servers::postgres::Postgres;
use imagine_tests::{Entry, Fault, Simulator};
use serenity::all::{ChannelId, UserId};

/// A sharded bot's world: `w.channel` is in a guild on shard 0, `one` in a guild on shard 1,
/// `dm` is Alice's DM with the bot (shard 0).
struct Sharded {
    w: World,
    one: ChannelId,
    dm: ChannelId,
    pg: Postgres,
    database: String,
    nats: NatsServer,
    /// Held for the whole test (dropped last, after its processes): each test runs two
    /// gateways, workers, PostgreSQL and nats-server, and their timings (a job still running
    /// when a gateway is killed, a position shown before the line moves on) hold only when
    /// the tests of this file do not also compete with each other for a 2-core machine.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

async fn sharded() -> Sharded {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let database = pg.create_database();
    let nats = NatsServer::start();
    let sim = Simulator::start().await;
    let zero = sim.add_guild_on_shard("Shard Zero Club", 0, 2);
    let one = sim.add_guild_on_shard("Shard One Club", 1, 2);
    let channel = sim.add_channel(zero, "art");
    let one = sim.add_channel(one, "art");
    let alice = sim.add_user("alice");
    let bob = sim.add_user("bob");
    let dm = sim.dm_channel(alice).unwrap();
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("IMAGINE_TEST_KEEP_DIRS").is_some() {
        // Every process's log stays for a look after a failure.
        dir.disable_cleanup(true);
        eprintln!("logs kept in {}", dir.path().display());
    }
    let w = World {
        sim,
        channel,
        alice,
        bob,
        dir,
    };
    Sharded {
        w,
        one,
        dm,
        pg,
        database,
        nats,
        _one_at_a_time,
    }
}

/// A gateway running `shards` of 2, logging to `<dir>/<name>/bot.log`, with its own data
/// folder `<dir>/<name>/data`, as on a machine of its own: no disk is shared.
async fn start_gateway(s: &Sharded, name: &str, shards: &str, env: &[(&str, &str)]) -> Bot {
    let own = s.w.dir.path().join(name);
    std::fs::create_dir_all(&own).unwrap();
    let url = s.nats.url();
    let mut all = vec![
        ("IMAGINE_ROLE", "gateway"),
        ("IMAGINE_QUEUE_URL", url.as_str()),
        ("IMAGINE_DATABASE_URL", s.database.as_str()),
        ("IMAGINE_SHARDS", shards),
        ("IMAGINE_SHARD_TOTAL", "2"),
        ("IMAGINE_WORKER_SLOTS", "2"),
        // Short, so a job of a killed gateway is taken over within seconds.
        ("IMAGINE_HTTP_TIMEOUT", "5"),
    ];
    all.extend_from_slice(env);
    start_bot(&s.w.sim, &own, &all).await
}

fn log_of(s: &Sharded, name: &str) -> PathBuf {
    s.w.dir.path().join(name).join("bot.log")
}

/// Whether the gateway's log has a line about `job` saying `what`.
fn says(s: &Sharded, name: &str, job: i64, what: &str) -> bool {
    let span = format!("job{{id={job}}}");
    std::fs::read_to_string(log_of(s, name))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(&span) && l.contains(what))
}

/// Waits until the gateway's log says `what` about `job` (it logs just after answering).
async fn wait_says(s: &Sharded, name: &str, job: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !says(s, name, job, what) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway {name} never said {what:?} about job {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Image `k` (0 = top left) of a 2x2 grid.
fn grid_quadrant(grid: &image::RgbImage, k: u32) -> image::RgbImage {
    let (w, h) = (grid.width() / 2, grid.height() / 2);
    image::imageops::crop_imm(grid, (k % 2) * w, (k / 2) * h, w, h).to_image()
}

/// Whether the gateway's log says it fetched `key` from the images bucket.
fn fetched(s: &Sharded, name: &str, key: &str) -> bool {
    std::fs::read_to_string(log_of(s, name))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("fetched an image another gateway recorded") && l.contains(key))
}

/// Sends `/imagine prompt` in `channel`, waits for the queued answer; the message's path.
async fn submit(s: &Sharded, user: UserId, channel: ChannelId, prompt: &str) -> String {
    let run = run_imagine(&s.w, user, channel, prompt, None);
    let cb = s.w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_eq!(cb.kind, 4, "answered at once: {}", cb.data);
    original_path(&s.w.sim, &run.token)
}

/// Final results (buttons) written to the message at `path`: more than one means two
/// deliveries of one job raced, even if they looked the same.
fn final_edits(sim: &Simulator, path: &str) -> usize {
    count(&sim.transcript().entries, |c| {
        c.method == "PATCH" && c.path == path && c.status < 300 && has_buttons(&c.response)
    })
}

async fn store(s: &Sharded) -> Store {
    Store::connect_postgres(&PostgresUrl::parse(&s.database).unwrap())
        .await
        .unwrap()
}

async fn status(store: &Store, job: i64) -> Option<JobStatus> {
    store.job(JobId(job)).await.unwrap().map(|j| j.status)
}

async fn wait_status(store: &Store, job: i64, wanted: JobStatus) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = status(store, job).await;
        if now == Some(wanted) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} never became {wanted:?} (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_answer_their_own_shards_and_deliver_every_result_once() {
    let s = sharded().await;
    let cap = [("IMAGINE_USER_CAP", "2")];
    let _a = start_gateway(&s, "a", "0-0", &cap).await;
    let _b = start_gateway(&s, "b", "1-1", &cap).await;
    let _workers = [
        start_worker(s.w.dir.path(), "w1", &s.nats, &[]).await,
        start_worker(s.w.dir.path(), "w2", &s.nats, &[]).await,
    ];
    let (alice, bob) = (s.w.alice, s.w.bob);
    // Jobs 1, 2 and 3, one at a time so their ids are known: Alice's in the servers on
    // shards 0 and 1, Bob's by DM (shard 0).
    let zero = submit(
        &s,
        alice,
        s.w.channel,
        "zero-shard slow lighthouse --steps 12",
    )
    .await;
    let one = submit(&s, alice, s.one, "one-shard slow lighthouse --steps 12").await;
    // Alice has a job at each gateway: her third, by DM at A, passes A's own line but not
    // the cap, which counts her jobs at B too.
    let third = run_imagine(&s.w, alice, s.dm, "capped lighthouse", None);
    let cb = s.w.sim.wait_callback(&third, WAIT).await.unwrap();
    assert_reply(&cb, "You already have 2 jobs", true);
    let bob_dm = s.w.sim.dm_channel(bob).unwrap();
    let dm = submit(&s, bob, bob_dm, "dm-shard lighthouse --steps 2").await;
    // Each was admitted by the gateway of its place's shard, and only by it.
    for (job, owner, other) in [(1, "a", "b"), (2, "b", "a"), (3, "a", "b")] {
        wait_says(&s, owner, job, "job admitted").await;
        assert!(
            !says(&s, other, job, "job admitted"),
            "job {job} not by {other}"
        );
    }
    let mut grids = Vec::new();
    for path in [&zero, &one, &dm] {
        grids.push(finished(&s.w.sim, std::slice::from_ref(path)).await);
    }
    // U2 under the grid of shard 1's server: its gateway serves it, whoever read the result.
    let u2 = run_click(&s, alice, &grids[1], "U2");
    let single = finished(&s.w.sim, std::slice::from_ref(&u2)).await;
    assert_eq!(png_of(&s.w.sim, &single).dimensions(), (64, 64));
    wait_says(&s, "b", 4, "job admitted").await;

    let sim = &s.w.sim;
    assert_eq!(deliveries_of(sim, "zero-shard slow lighthouse"), 1);
    assert_eq!(
        deliveries_of(sim, "one-shard slow lighthouse"),
        2,
        "the grid and U2"
    );
    assert_eq!(deliveries_of(sim, "dm-shard lighthouse"), 1);
    assert_eq!(deliveries_of(sim, "capped lighthouse"), 0);
    for path in [&zero, &one, &dm, &u2] {
        assert_eq!(final_edits(sim, path), 1, "one final edit of {path}");
    }
    let store = store(&s).await;
    for job in 1..=4 {
        assert_eq!(
            status(&store, job).await,
            Some(JobStatus::Done),
            "job {job}"
        );
    }
    assert_eq!(
        status(&store, 5).await,
        None,
        "the capped request wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_positions_count_the_jobs_waiting_at_every_gateway() {
    let s = sharded().await;
    let one_slot = [("IMAGINE_WORKER_SLOTS", "1")];
    let _a = start_gateway(&s, "a", "0-0", &one_slot).await;
    let _b = start_gateway(&s, "b", "1-1", &one_slot).await;
    let _worker = start_worker(s.w.dir.path(), "w1", &s.nats, &[]).await;
    let (alice, bob) = (s.w.alice, s.w.bob);
    // Each gateway's one slot is taken (job 1 runs, job 2 waits for the worker) ...
    let mut paths = vec![
        submit(&s, alice, s.w.channel, "pos-a1 slow --steps 10").await,
        submit(&s, bob, s.one, "pos-b1 slow --steps 10").await,
    ];
    let store = store(&s).await;
    for job in [1, 2] {
        wait_status(&store, job, JobStatus::Running).await;
    }
    // ... so job 3 waits in A's line, first of all; job 4 in B's, where it is alone, yet
    // second in the bot's line.
    for (job, user, channel, prompt, owner) in [
        (3, alice, s.w.channel, "pos-a2 --steps 1", "a"),
        (4, bob, s.one, "pos-b2 --steps 1", "b"),
    ] {
        let run = run_imagine(&s.w, user, channel, prompt, None);
        let cb = s.w.sim.wait_callback(&run, WAIT).await.unwrap();
        let place = job - 2;
        assert_reply(&cb, &format!("position {place} in the queue"), false);
        paths.push(original_path(&s.w.sim, &run.token));
        wait_says(&s, owner, job, "job admitted").await;
    }
    // Once A hands job 3 to the workers, B moves job 4 up, though its own line did not move.
    let last = paths[3].clone();
    s.w.sim
        .wait_for("job 4 shown first in line", WAIT, |entries| {
            entries.iter().filter_map(Entry::as_rest).find_map(|c| {
                let content = c.body["content"].as_str().unwrap_or("");
                (c.method == "PATCH" && c.path == last && content.contains("position 1 in"))
                    .then_some(())
            })
        })
        .await
        .unwrap();
    for path in &paths {
        finished(&s.w.sim, std::slice::from_ref(path)).await;
    }
    for prompt in ["pos-a1", "pos-b1", "pos-a2", "pos-b2"] {
        assert_eq!(deliveries_of(&s.w.sim, prompt), 1, "{prompt}");
    }
}

/// Clicks `label` under `msg`; the new job's message path.
fn run_click(s: &Sharded, user: UserId, msg: &serenity::all::Message, label: &str) -> String {
    let run =
        s.w.sim
            .click_button(user, msg.id, &button(msg, label))
            .unwrap();
    original_path(&s.w.sim, &run.token)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_mid_run_loses_nothing_and_the_other_steals_and_doubles_nothing() {
    let s = sharded().await;
    // One job with the workers at a time per gateway: A's second job waits in A's line.
    let one_slot = [("IMAGINE_WORKER_SLOTS", "1")];
    let a = start_gateway(&s, "a", "0-0", &one_slot).await;
    let _b = start_gateway(&s, "b", "1-1", &one_slot).await;
    let worker = start_worker(s.w.dir.path(), "w1", &s.nats, &[]).await;
    let (alice, bob) = (s.w.alice, s.w.bob);
    // Job 1 is with the worker before job 2 is asked for: two requests a moment apart may
    // enter the line in either order (each waits on Discord for its first message).
    let first = submit(&s, alice, s.w.channel, "kill-a slow first --steps 30").await;
    worker.wait_says(1, "job started").await;
    let second = submit(&s, bob, s.w.channel, "kill-a slow second --steps 2").await;
    let third = submit(&s, bob, s.one, "kill-b third --steps 2").await;
    wait_says(&s, "a", 2, "job admitted").await;
    a.kill9().await;

    // B reads job 1's result and, A being gone, takes its delivery over.
    let grid = finished(&s.w.sim, std::slice::from_ref(&first)).await;
    wait_says(&s, "b", 1, "taking over the delivery").await;
    finished(&s.w.sim, std::slice::from_ref(&third)).await;
    // Job 2 never left A's line: B leaves it alone (it is A's to resume).
    let store = store(&s).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&store, 2).await, Some(JobStatus::Queued));
    assert!(!says(&s, "b", 2, ""), "B never touched job 2");

    // A restarted resumes its own job 2; its buttons work again.
    let _a = start_gateway(&s, "a", "0-0", &one_slot).await;
    finished(&s.w.sim, std::slice::from_ref(&second)).await;
    // U1's source image was recorded by B, on B's disk: A fetched it from the queue's
    // images bucket.
    let u1 = run_click(&s, alice, &grid, "U1");
    let single = finished(&s.w.sim, std::slice::from_ref(&u1)).await;
    wait_says(&s, "a", 4, "job admitted").await;
    assert!(fetched(&s, "a", "jobs/1/0.png"), "A fetched B's image");
    assert_eq!(
        png_of(&s.w.sim, &single),
        grid_quadrant(&png_of(&s.w.sim, &grid), 0),
        "U1 is the grid's first image"
    );

    let sim = &s.w.sim;
    assert_eq!(
        deliveries_of(sim, "kill-a slow first"),
        2,
        "the grid and U1"
    );
    assert_eq!(deliveries_of(sim, "kill-a slow second"), 1);
    assert_eq!(deliveries_of(sim, "kill-b third"), 1);
    for path in [&first, &second, &third, &u1] {
        assert_eq!(final_edits(sim, path), 1, "one final edit of {path}");
    }
    for job in 1..=4 {
        assert_eq!(
            status(&store, job).await,
            Some(JobStatus::Done),
            "job {job}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_mid_delivery_has_it_delivered_once_by_another() {
    let s = sharded().await;
    let a = start_gateway(&s, "a", "0-0", &[]).await;
    let _worker = start_worker(s.w.dir.path(), "w1", &s.nats, &[]).await;
    let run = run_imagine(
        &s.w,
        s.w.alice,
        s.w.channel,
        "mid-delivery fox --steps 2",
        None,
    );
    s.w.sim.wait_callback(&run, WAIT).await.unwrap();
    let path = original_path(&s.w.sim, &run.token);
    // Discord never answers A's final edit (and does not apply it): A is killed holding the
    // delivery's claim, its request in flight.
    let pattern = format!("/webhooks/*/{}/messages/@original", run.token);
    s.w.sim.fail_result_route("PATCH", &pattern, Fault::Hang, 1);
    s.w.sim
        .wait_for("A's final edit in flight", WAIT, |entries| {
            entries.iter().find_map(|e| match e {
                Entry::Note(n) if n.contains("hanging") && n.contains(&run.token) => Some(()),
                _ => None,
            })
        })
        .await
        .unwrap();
    a.kill9().await;
    // B, running the other shard, takes the delivery over once A's claim has expired.
    let _b = start_gateway(&s, "b", "1-1", &[]).await;
    finished(&s.w.sim, std::slice::from_ref(&path)).await;
    wait_says(&s, "b", 1, "taking over the delivery").await;
    // A recorded the images, on its own disk: B fetched them to deliver.
    assert!(fetched(&s, "b", "jobs/1/0.png"), "B fetched A's images");
    assert_eq!(deliveries_of(&s.w.sim, "mid-delivery fox"), 1);
    assert_eq!(
        final_edits(&s.w.sim, &path),
        1,
        "A's edit never landed, B's once"
    );
    let store = store(&s).await;
    let job = store.job(JobId(1)).await.unwrap().unwrap();
    assert!(job.delivery.delivered_at.is_some(), "recorded as delivered");
}

/// `GET /health`: the status and the body.
async fn health_of(client: &reqwest::Client, addr: &str) -> (u16, String) {
    let answer = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("the gateway answers /health");
    (answer.status().as_u16(), answer.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_says_503_and_names_the_database_while_postgresql_is_down() {
    let mut s = sharded().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _a = start_gateway(&s, "a", "0-0", &[("IMAGINE_METRICS_ADDR", &metrics)]).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = || health_of(&client, &metrics);
    assert_eq!(health().await, (200, "OK".to_string()));
    tokio::task::block_in_place(|| s.pg.stop());
    let (code, why) = health().await;
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("database down: "), "{why}");
    assert!(!why.contains("queue"), "the queue is up: {why}");
    // The queue server going too is named as well.
    s.nats.stop();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, why) = health().await;
        if why.contains("queue down: ") {
            assert_eq!(code, 503);
            assert!(why.contains("database down: "), "{why}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The metrics are still served beside it.
    let text = scrape(&metrics).await;
    assert!(text.contains("imagine_queue_depth"), "{text}");
}

/// Whether the queue's images bucket holds `key`.
async fn in_bucket(s: &Sharded, key: &str) -> bool {
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_object_store("imagine-images")
        .await
        .unwrap();
    // A deleted object keeps a marker: its info says so.
    bucket.info(key).await.is_ok_and(|info| !info.deleted)
}

async fn wait_gone(path: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never deleted",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_purges_an_image_from_the_bucket_and_every_gateways_copy() {
    let s = sharded().await;
    let a = start_gateway(&s, "a", "0-0", &[]).await;
    let b = start_gateway(&s, "b", "1-1", &[]).await;
    let _worker = start_worker(s.w.dir.path(), "w1", &s.nats, &[]).await;
    let alice = s.w.alice;
    // Job 1 is B's, but B dies while it runs: A records it (its disk, and the bucket).
    let path = submit(&s, alice, s.one, "kept-then-purged slow --steps 10").await;
    wait_status(&store(&s).await, 1, JobStatus::Running).await;
    b.kill9().await;
    let grid = finished(&s.w.sim, std::slice::from_ref(&path)).await;
    let (a_jobs, b_jobs) = (
        s.w.dir.path().join("a/data/jobs/1"),
        s.w.dir.path().join("b/data/jobs/1"),
    );
    assert!(a_jobs.join("0.png").exists() && !b_jobs.exists());
    assert!(in_bucket(&s, "jobs/1/0.png").await);
    // B, back, serves U1 under it: it fetches the source image into its own folder.
    let b = start_gateway(&s, "b", "1-1", &[]).await;
    let u1 = run_click(&s, alice, &grid, "U1");
    finished(&s.w.sim, std::slice::from_ref(&u1)).await;
    assert!(fetched(&s, "b", "jobs/1/0.png") && b_jobs.join("0.png").exists());
    let store = store(&s).await;
    for job in [1, 2] {
        wait_delivered(&store, JobId(job)).await;
    }

    // A restarted with a 1,000-byte limit purges job 1: its files and the bucket's copy.
    let tiny = [("IMAGINE_RETENTION_MAX_GB", "0.000001")];
    a.kill9().await;
    let _a = start_gateway(&s, "a", "0-0", &tiny).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !store.images_purged(JobId(1)).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_gone(&a_jobs).await;
    assert!(!in_bucket(&s, "jobs/1/0.png").await, "gone from the bucket");
    // B's next pass deletes the copy it fetched.
    b.kill9().await;
    let _b = start_gateway(&s, "b", "1-1", &tiny).await;
    wait_gone(&b_jobs).await;
    let pressed =
        s.w.sim
            .click_button(alice, grid.id, &button(&grid, "U2"))
            .unwrap();
    let cb = s.w.sim.wait_callback(&pressed, WAIT).await.unwrap();
    assert_reply(&cb, "This job's images were cleaned up", true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_sharded_later_shares_the_images_it_recorded_before() {
    let s = sharded().await;
    // One gateway running both shards (not sharded): its images stay on its disk.
    let whole = start_gateway(&s, "a", "0-1", &[]).await;
    let _worker = start_worker(s.w.dir.path(), "w1", &s.nats, &[]).await;
    // serenity starts a process's shards a few seconds apart.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !s.w.sim.connected_shards().contains(&[1, 2]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shard 1 never connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = submit(&s, s.w.alice, s.one, "before-sharding --steps 1").await;
    let grid = finished(&s.w.sim, std::slice::from_ref(&path)).await;
    whole.kill9().await;
    // Sharded: A (shard 0) on the old folder shares them; B (shard 1, the grid's server, a
    // new machine) serves its buttons.
    let _a = start_gateway(&s, "a", "0-0", &[]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !in_bucket(&s, "jobs/1/3.png").await {
        assert!(tokio::time::Instant::now() < deadline, "never shared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _b = start_gateway(&s, "b", "1-1", &[]).await;
    let u4 = run_click(&s, s.w.alice, &grid, "U4");
    let single = finished(&s.w.sim, std::slice::from_ref(&u4)).await;
    assert!(fetched(&s, "b", "jobs/1/3.png"));
    assert_eq!(
        png_of(&s.w.sim, &single),
        grid_quadrant(&png_of(&s.w.sim, &grid), 3)
    );
}
