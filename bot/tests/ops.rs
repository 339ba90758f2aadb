//! Operating the bot, on the real `imagine bot` binary against the Discord simulator:
//! Prometheus metrics as a scraper sees them, and retention deleting old images while their
//! buttons say so.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use imagine::buttons::ButtonId;
use imagine::store::Store;
use imagine_tests::Fault;

/// The value of the series `name` with exactly `labels`, in Prometheus' text format.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let got: BTreeMap<&str, &str> = label_text
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (series_name == name && got == want).then(|| value.parse().ok())?
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_delivered_job_a_refusal_and_a_discord_error() {
    let w = world().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let bot = start_bot(&w.sim, w.dir.path(), &[("IMAGINE_METRICS_ADDR", &addr)]).await;
    let before = scrape(&addr).await;
    assert_eq!(sample(&before, "imagine_queue_depth", &[]), Some(0.0));

    let refused = run_imagine(&w, w.alice, w.channel, "a cat --foo 3", None);
    let cb = w.sim.wait_callback(&refused, WAIT).await.unwrap();
    assert_reply(&cb, "Unknown parameter", true);

    // Discord fails the job's first progress edit once; the finished job still arrives.
    w.sim.fail_route(
        "PATCH",
        "/webhooks/*/*/messages/@original",
        Fault::ServerError(500),
        1,
    );
    let run = run_imagine(&w, w.alice, w.channel, "a red lighthouse --steps 4", None);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = scrape(&addr).await;
        let delivered = sample(&text, "imagine_deliveries_total", &[("kind", "imagine")]);
        if delivered == Some(1.0) || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let job = [("kind", "imagine"), ("model", "tiny-sd15")];
    for (name, labels, value) in [
        ("imagine_deliveries_total", &[("kind", "imagine")][..], 1.0),
        ("imagine_queue_depth", &[][..], 0.0),
        (
            "imagine_jobs_admitted_total",
            &[("kind", "imagine")][..],
            1.0,
        ),
        (
            "imagine_jobs_refused_total",
            &[("reason", "bad_input")][..],
            1.0,
        ),
        ("imagine_job_duration_seconds_count", &job[..], 1.0),
        (
            "imagine_discord_errors_total",
            &[("status", "500")][..],
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&text, name, labels),
            Some(value),
            "{name}{labels:?} in\n{text}"
        );
    }
    assert!(
        text.contains("imagine_job_duration_seconds_bucket{"),
        "durations are a histogram:\n{text}"
    );
    assert!(
        !text.contains("imagine_jobs_failed_total{"),
        "nothing failed:\n{text}"
    );
    drop(bot);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_images_and_their_buttons_say_they_were_cleaned_up() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let grid = imagine(&w, w.alice, w.channel, "a castle --seed 5 --steps 2").await;
    let job = ButtonId::parse(&button(&grid, "U1")).unwrap().job;
    let job_dir = w.dir.path().join("data/jobs").join(job.0.to_string());
    assert!(job_dir.join("0.png").exists());
    // Retention never takes a result the outbox has not marked delivered: let it.
    let store = Store::open(w.dir.path().join("imagine.db")).await.unwrap();
    wait_delivered(&store, job).await;
    drop(bot);

    // Restarted with a 1,000-byte limit: the pass at start deletes the grid's images.
    let bot = start_bot(
        &w.sim,
        w.dir.path(),
        &[("IMAGINE_RETENTION_MAX_GB", "0.000001")],
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !store.images_purged(job).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The purge is recorded before its files are deleted (so no new button job starts on
    // them): wait for the deletion too.
    while job_dir.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job's folder is gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pressed = w
        .sim
        .click_button(w.bob, grid.id, &button(&grid, "U1"))
        .unwrap();
    let cb = w.sim.wait_callback(&pressed, WAIT).await.unwrap();
    assert_reply(&cb, "This job's images were cleaned up", true);
    assert_reply(&cb, "--seed 5", true);

    let fresh = imagine(&w, w.bob, w.channel, "a lighthouse --steps 2").await;
    assert_eq!(png_of(&w.sim, &fresh).dimensions(), (128, 128));
    let single = click(&w, w.alice, &fresh, "U2").await;
    assert_eq!(png_of(&w.sim, &single).dimensions(), (64, 64));
    drop(bot);
}
