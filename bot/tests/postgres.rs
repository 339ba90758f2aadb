//! The real `imagine bot` binary with its store on PostgreSQL (`IMAGINE_DATABASE_URL`), on a
//! throwaway server the tests start: a grid delivered, a job interrupted by a restart resumed
//! and delivered, an old button working after the restart, store errors counted in the
//! metrics when the server goes away, and bad or unreachable URLs refused at start with a
//! message that says what to do.

mod common;

use std::time::Duration;

use common::*;
use imagine::store::{JobId, JobKind, JobStatus, PostgresUrl, Store};
use imagine_tests::servers::postgres::Postgres;

async fn start_postgres() -> Postgres {
    tokio::task::spawn_blocking(Postgres::start).await.unwrap()
}

async fn connect(url: &str) -> Store {
    Store::connect_postgres(&PostgresUrl::parse(url).unwrap())
        .await
        .unwrap()
}

/// Waits until job `job` in the PostgreSQL database is `status`.
async fn wait_status(url: &str, job: i64, status: JobStatus) {
    let store = connect(url).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = store.job(JobId(job)).await.unwrap().map(|j| j.status);
        if now == Some(status) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} never became {status:?} (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grid_a_restart_and_an_old_button_with_the_store_on_postgres() {
    let pg = start_postgres().await;
    let url = pg.create_database();
    let env = [("IMAGINE_DATABASE_URL", url.as_str())];
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let grid = imagine(&w, w.alice, w.channel, "a castle --steps 3").await;
    assert_eq!(png_of(&w.sim, &grid).dimensions(), (128, 128));
    // A long job, interrupted while it runs.
    let slow = run_imagine(&w, w.alice, w.channel, "a slow castle --steps 20", None);
    slow_edits(&w.sim, &slow.token, Duration::from_secs(8));
    w.sim.wait_callback(&slow, WAIT).await.unwrap();
    let path = original_path(&w.sim, &slow.token);
    wait_status(&url, 2, JobStatus::Running).await;
    bot.kill9().await;

    let restarted_at = w.sim.transcript().entries.len();
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let resumed = finished_after(&w.sim, &[path], restarted_at).await;
    assert_eq!(
        png_of(&w.sim, &resumed).dimensions(),
        (128, 128),
        "the interrupted job was resumed and delivered"
    );
    let single = click(&w, w.bob, &grid, "U4").await;
    assert_eq!(
        png_of(&w.sim, &single).dimensions(),
        (64, 64),
        "an old button works after the restart"
    );
    // Discord has the message; the bot records that it was delivered right after.
    let store = connect(&url).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.undelivered().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bot.stop().await;

    // Everything is in PostgreSQL, delivered once; no SQLite file was made.
    let mut jobs = Vec::new();
    for id in 1..=4 {
        jobs.push(store.job(JobId(id)).await.unwrap());
    }
    let jobs: Vec<_> = jobs.into_iter().flatten().collect();
    let kinds: Vec<JobKind> = jobs.iter().map(|j| j.request.kind).collect();
    assert_eq!(
        kinds,
        [JobKind::Imagine, JobKind::Imagine, JobKind::Upscale],
        "{jobs:#?}"
    );
    for job in &jobs {
        assert_eq!(job.status, JobStatus::Done, "{job:?}");
        assert!(job.delivery.delivered_at.is_some(), "{job:?}");
    }
    assert_eq!(store.images(JobId(1)).await.unwrap().len(), 4);
    assert_eq!(deliveries_of(&w.sim, "a slow castle"), 1, "delivered once");
    assert!(!w.dir.path().join("imagine.db").exists());
    store.close().await;
}

/// The value of every series called `name`, summed over its labels.
fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn store_errors_are_counted_when_postgres_goes_away() {
    let mut pg = start_postgres().await;
    let url = pg.create_database();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("IMAGINE_DATABASE_URL", url.as_str()),
        ("IMAGINE_METRICS_ADDR", addr.as_str()),
    ];
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    imagine(&w, w.alice, w.channel, "a castle --steps 3").await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let scrape = || async {
        let response = client.get(format!("http://{addr}/metrics")).send().await;
        response.unwrap().text().await.unwrap()
    };
    assert_eq!(total(&scrape().await, "imagine_store_errors_total"), 0.0);

    pg.stop();
    let _ = run_imagine(&w, w.alice, w.channel, "a second castle --steps 3", None);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = scrape().await;
        if total(&metrics, "imagine_store_errors_total") > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no store error counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bot.stop().await;
}

/// `imagine bot` with `IMAGINE_DATABASE_URL` set to `url`: its exit status and what it said.
async fn bot_with_database_url(url: &str) -> (std::process::ExitStatus, String) {
    let sim = imagine_tests::Simulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagine"))
        .arg("bot")
        .env("DISCORD_TOKEN", sim.token())
        .env("DISCORD_API_BASE", sim.api_base())
        .env("IMAGINE_MODEL", root().join("assets/models/tiny-sd15"))
        .env("IMAGINE_DATA_DIR", dir.path().join("data"))
        .env("IMAGINE_DATABASE_URL", url)
        .env("HF_HUB_OFFLINE", "1")
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("the bot gives up")
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_or_unreachable_database_url_stops_the_bot_with_a_clear_message() {
    let (status, said) = bot_with_database_url("mysql://imagine:hunter2@db/imagine").await;
    assert!(!status.success());
    assert!(said.contains("IMAGINE_DATABASE_URL"), "{said}");
    assert!(said.contains("postgres://"), "{said}");
    assert!(
        !said.contains("hunter2"),
        "the password is never shown: {said}"
    );

    // Nothing listens on this port.
    let port = free_port();
    let url = format!("postgres://imagine:hunter2@127.0.0.1:{port}/imagine");
    let (status, said) = bot_with_database_url(&url).await;
    assert!(!status.success());
    assert!(said.contains("PostgreSQL database"), "{said}");
    assert!(said.contains("refused"), "the cause is named: {said}");
    assert!(
        !said.contains("hunter2"),
        "the password is never shown: {said}"
    );
}
