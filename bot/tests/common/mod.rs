//! What the bot's end-to-end tests share: starting the real `imagine bot` binary against the
//! Discord simulator with the committed tiny model, sending `/imagine` and pressing buttons,
//! and waiting for what the bot posts. Each test file uses part of it.
#![allow(dead_code)]

pub mod workers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use imagine_tests::{Entry, OptionValue, Simulator};
use serde_json::Value;
use serenity::all::{ChannelId, Message, UserId};
use tokio::process::{Child, Command};

pub const WAIT: Duration = Duration::from_secs(120);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct Bot {
    pub child: Child,
}

/// Starts `imagine bot` on `dir`'s database and data folder, and waits until it is ready.
pub async fn start_bot(sim: &Simulator, dir: &Path, env: &[(&str, &str)]) -> Bot {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagine"));
    cmd.arg("bot")
        .env("DISCORD_TOKEN", sim.token())
        .env("DISCORD_API_BASE", sim.api_base())
        .env("IMAGINE_MODEL", root().join("assets/models/tiny-sd15"))
        .env("IMAGINE_DB", dir.join("imagine.db"))
        .env("IMAGINE_DATA_DIR", dir.join("data"))
        .env("HF_HUB_OFFLINE", "1")
        .env("NO_PROXY", "127.0.0.1")
        .env("RUST_LOG", "warn,imagine=info")
        // Jobs whose prompt says "slow" take 0.4 s a step, so tests can act while they run.
        .env("IMAGINE_TEST_FAULTS", "slow-job:slow")
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("bot.log"))
                .unwrap(),
        )
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let before = count_registrations(sim);
    let child = cmd.spawn().expect("start imagine bot");
    wait_registered(sim, before).await;
    Bot { child }
}

/// Discord being slow to accept edits of one interaction's message (the job itself goes on:
/// a job that should run for a while has "slow" in its prompt).
pub fn slow_edits(sim: &Simulator, token: &str, hold: Duration) {
    let route = format!("/webhooks/*/{token}/messages/@original");
    sim.fail_route("PATCH", &route, imagine_tests::Fault::Latency(hold), 1);
}

/// Waits until the job's status in the bot's database is `status` (read beside the running
/// bot: the database is in WAL mode).
pub async fn wait_status(dir: &Path, job: i64, status: imagine::store::JobStatus) {
    let store = imagine::store::Store::open(dir.join("imagine.db"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = store
            .job(imagine::store::JobId(job))
            .await
            .unwrap()
            .map(|j| j.status);
        if now == Some(status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} never became {status:?} (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_registered(sim: &Simulator, registrations: usize) {
    sim.wait_for("the bot to register /imagine", WAIT, |entries| {
        (count(entries, |c| {
            c.method == "PUT" && c.path.ends_with("/commands") && c.status < 300
        }) > registrations)
            .then_some(())
    })
    .await
    .unwrap();
}

impl Bot {
    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGKILL, as the OOM killer or a power cut would: no cleanup of any kind.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, what systemd and container runtimes send; waits up to `limit` for the exit.
    /// `None`: still running after `limit` (it is then killed).
    pub async fn terminate(mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().expect("the bot is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Some(status.unwrap()),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

/// Every job row in the bot's database, by id (read after the bot stopped, or beside it).
pub async fn all_jobs(dir: &Path) -> Vec<imagine::store::Job> {
    let store = imagine::store::Store::open(dir.join("imagine.db"))
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for id in 1.. {
        match store.job(imagine::store::JobId(id)).await.unwrap() {
            Some(job) => jobs.push(job),
            None => break,
        }
    }
    store.close().await;
    jobs
}

/// How many times a finished result whose text contains `marker` reached users.
pub fn deliveries_of(sim: &Simulator, marker: &str) -> usize {
    sim.deliveries()
        .iter()
        .filter(|d| d.content().contains(marker))
        .count()
}

/// A small seeded generator (SplitMix64), so a failing storm can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `IMAGINE_STORM_SEED` if set, else from the clock; prints the seed.
    pub fn from_env_or_clock(test: &str) -> Self {
        let seed = std::env::var("IMAGINE_STORM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} (replay with IMAGINE_STORM_SEED={seed})");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

pub fn count(entries: &[Entry], f: impl Fn(&imagine_tests::RestCall) -> bool) -> usize {
    entries
        .iter()
        .filter_map(Entry::as_rest)
        .filter(|c| f(c))
        .count()
}

pub fn count_registrations(sim: &Simulator) -> usize {
    count(&sim.transcript().entries, |c| {
        c.method == "PUT" && c.path.ends_with("/commands") && c.status < 300
    })
}

/// The callback's message says `needle`; `private` also asks that only the user sees it.
pub fn assert_reply(cb: &imagine_tests::Callback, needle: &str, private: bool) {
    let content = cb.data["content"].as_str().unwrap_or("");
    assert!(
        content.contains(needle),
        "expected {needle:?} in {}",
        cb.data
    );
    let ephemeral = cb.data["flags"].as_u64().unwrap_or(0) & 64 == 64;
    assert_eq!(ephemeral, private, "ephemeral flag: {}", cb.data);
}

/// The message carries result buttons (U, V, 🔄, Vary), not only the ❌ of a live job.
pub fn has_buttons(v: &Value) -> bool {
    v["components"].as_array().is_some_and(|rows| {
        rows.iter()
            .filter_map(|row| row["components"].as_array())
            .flatten()
            .any(|b| !b["custom_id"].as_str().unwrap_or("").starts_with("im1:x:"))
    })
}

/// The first edit of an interaction's message (or of a channel message) that carries buttons:
/// the finished job.
pub async fn finished(sim: &Simulator, paths: &[String]) -> Message {
    finished_after(sim, paths, 0).await
}

/// Like [`finished`], among transcript entries from index `from` on.
pub async fn finished_after(sim: &Simulator, paths: &[String], from: usize) -> Message {
    sim.wait_for("a finished job (a message with buttons)", WAIT, |entries| {
        entries
            .iter()
            .skip(from)
            .filter_map(Entry::as_rest)
            .find_map(|c| {
                let relevant =
                    paths.contains(&c.path) && (c.method == "PATCH" || c.method == "POST");
                (relevant && c.status < 300 && has_buttons(&c.response))
                    .then(|| serde_json::from_value(c.response.clone()).unwrap())
            })
    })
    .await
    .unwrap()
}

pub fn original_path(sim: &Simulator, token: &str) -> String {
    format!(
        "/webhooks/{}/{}/messages/@original",
        sim.application_id(),
        token
    )
}

pub fn button(msg: &Message, label: &str) -> String {
    let v = serde_json::to_value(&msg.components).unwrap();
    for row in v.as_array().unwrap() {
        for b in row["components"].as_array().unwrap() {
            let shown = b["label"]
                .as_str()
                .or(b["emoji"]["name"].as_str())
                .unwrap_or("");
            if shown == label {
                return b["custom_id"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("no button {label} in {v}");
}

pub fn png_of(sim: &Simulator, msg: &Message) -> image::RgbImage {
    png_and_parameters(sim, msg).0
}

/// The attached image and its `parameters` chunk.
pub fn png_and_parameters(sim: &Simulator, msg: &Message) -> (image::RgbImage, String) {
    assert_eq!(msg.attachments.len(), 1, "one image attached: {msg:?}");
    let bytes = sim
        .file_bytes(&msg.attachments[0].url)
        .expect("the uploaded file");
    let text = imagine::render::read_parameters(&bytes)
        .unwrap()
        .expect("parameters chunk");
    (image::load_from_memory(&bytes).unwrap().to_rgb8(), text)
}

pub struct World {
    pub sim: Simulator,
    pub channel: ChannelId,
    pub alice: UserId,
    pub bob: UserId,
    pub dir: tempfile::TempDir,
}

pub async fn world() -> World {
    let sim = Simulator::start().await;
    let guild = sim.add_guild("Imagine Club");
    let channel = sim.add_channel(guild, "art");
    let alice = sim.add_user("alice");
    let bob = sim.add_user("bob");
    World {
        sim,
        channel,
        alice,
        bob,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// Sends `/imagine prompt [image]` as `user` in `channel`.
pub fn run_imagine(
    w: &World,
    user: UserId,
    channel: ChannelId,
    prompt: &str,
    image: Option<imagine_tests::Upload>,
) -> imagine_tests::Interaction {
    let mut options = vec![("prompt", OptionValue::from(prompt))];
    options.extend(image.map(|i| ("image", i.into())));
    w.sim
        .slash_command(user, channel, "imagine", options)
        .unwrap()
}

/// Runs `/imagine prompt` and returns the finished message.
pub async fn imagine(w: &World, user: UserId, channel: ChannelId, prompt: &str) -> Message {
    let run = run_imagine(w, user, channel, prompt, None);
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_eq!(cb.kind, 4, "answered at once with the queue position");
    assert!(
        cb.data["content"].as_str().unwrap().contains("position"),
        "{}",
        cb.data
    );
    finished(&w.sim, &[original_path(&w.sim, &run.token)]).await
}

pub async fn click(w: &World, user: UserId, msg: &Message, label: &str) -> Message {
    let run = w
        .sim
        .click_button(user, msg.id, &button(msg, label))
        .unwrap();
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_eq!(cb.kind, 4, "{label}: a new message for the new job");
    finished(&w.sim, &[original_path(&w.sim, &run.token)]).await
}

/// Waits until the outbox has marked `job` delivered (retention never takes a result before).
pub async fn wait_delivered(store: &imagine::store::Store, job: imagine::store::JobId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = store.job(job).await.unwrap().expect("the job exists");
        if found.delivery.delivered_at.is_some() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {} never marked delivered",
            job.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` of the process serving `addr`: Prometheus's text.
pub async fn scrape(addr: &str) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("the metrics endpoint answers");
    assert!(response.status().is_success(), "{}", response.status());
    response.text().await.unwrap()
}
