//! Delivery, end to end: the real `imagine bot` binary against the Discord simulator, with
//! Discord misbehaving (429 with `retry_after`, 5xx, a request that hangs past the timeout, a
//! gateway drop), the bot stopped by SIGTERM, jobs cancelled, a model whose weights are
//! truncated, a job that panics, a first reply that fails, and prompts that try to ping a
//! server. Each job is delivered exactly once, and nothing pings anyone but the requester.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use imagine::store::{Job, JobId, JobStatus, Store};
use imagine_tests::{Fault, RestCall, Simulator};
use serde_json::Value;

/// Successful calls that put a job's result on Discord: edits of its message or posts, among
/// `paths`, whose body carries result buttons.
fn result_deliveries(sim: &Simulator, paths: &[String]) -> Vec<RestCall> {
    sim.transcript()
        .rest_calls()
        .filter(|c| paths.contains(&c.path) && matches!(c.method.as_str(), "PATCH" | "POST"))
        .filter(|c| c.status < 300 && has_buttons(&c.body))
        .cloned()
        .collect()
}

async fn job(dir: &Path, id: i64) -> Job {
    maybe_job(dir, id).await.expect("the job exists")
}

async fn maybe_job(dir: &Path, id: i64) -> Option<Job> {
    let store = Store::open(dir.join("imagine.db")).await.unwrap();
    let job = store.job(JobId(id)).await.unwrap();
    store.close().await;
    job
}

/// Waits until the bot recorded the job as delivered.
async fn wait_delivered(dir: &Path, id: i64) -> Job {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = job(dir, id).await;
        if job.delivery.delivered_at.is_some() {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} was never delivered: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for an edit of the interaction's message whose content says `needle`.
async fn wait_edit_saying(sim: &Simulator, token: &str, needle: &str) -> Value {
    let path = original_path(sim, token);
    sim.wait_for(&format!("an edit saying {needle:?}"), WAIT, |entries| {
        entries
            .iter()
            .filter_map(imagine_tests::Entry::as_rest)
            .find(|c| {
                c.path == path
                    && c.method == "PATCH"
                    && c.status < 300
                    && c.body["content"].as_str().unwrap_or("").contains(needle)
            })
            .map(|c| c.body.clone())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_with_retry_after_on_the_final_edit_is_retried_and_delivered_once() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let run = run_imagine(&w, w.alice, w.channel, "a rate limited fox --steps 1", None);
    let path = original_path(&w.sim, &run.token);
    let limited = Fault::RateLimited {
        retry_after: Duration::from_millis(1500),
    };
    w.sim.fail_route("PATCH", &path, limited, 3);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    let done = finished(&w.sim, std::slice::from_ref(&path)).await;
    assert_eq!(png_of(&w.sim, &done).dimensions(), (128, 128));
    wait_delivered(w.dir.path(), 1).await;
    let limited_finals = w
        .sim
        .transcript()
        .rest_calls()
        .filter(|c| c.path == path && c.status == 429 && has_buttons(&c.body))
        .count();
    assert!(limited_finals >= 1, "the final edit itself met the 429");
    assert_eq!(
        result_deliveries(&w.sim, &[path]).len(),
        1,
        "delivered once"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_on_the_final_edit_are_retried_and_delivered_once() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let run = run_imagine(&w, w.alice, w.channel, "a stormy sea --steps 1", None);
    let path = original_path(&w.sim, &run.token);
    w.sim.fail_route("PATCH", &path, Fault::ServerError(500), 2);
    w.sim.fail_route("PATCH", &path, Fault::ServerError(502), 2);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    finished(&w.sim, std::slice::from_ref(&path)).await;
    wait_delivered(w.dir.path(), 1).await;
    let channel_posts = format!("/channels/{}/messages", w.channel);
    assert_eq!(
        result_deliveries(&w.sim, &[path, channel_posts]).len(),
        1,
        "one result, not a second post"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_on_a_late_post_are_retried_and_it_is_posted_once() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let run = run_imagine(&w, w.alice, w.channel, "a slow late heron --steps 6", None);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    // The token dies while the job runs: the result must be posted in the channel.
    w.sim.advance_clock(Duration::from_secs(16 * 60));
    let posts = format!("/channels/{}/messages", w.channel);
    w.sim.fail_route("POST", &posts, Fault::ServerError(502), 1);
    w.sim.fail_route("POST", &posts, Fault::ServerError(500), 1);
    let posted = finished(&w.sim, std::slice::from_ref(&posts)).await;
    assert!(posted.content.contains(&format!("<@{}>", w.alice)));
    wait_delivered(w.dir.path(), 1).await;
    let failed_posts = w
        .sim
        .transcript()
        .calls_to("POST", &posts)
        .iter()
        .filter(|c| c.status >= 500)
        .count();
    assert_eq!(failed_posts, 2, "both 5xx were met");
    let paths = [posts, original_path(&w.sim, &run.token)];
    assert_eq!(result_deliveries(&w.sim, &paths).len(), 1, "posted once");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_the_bot_may_not_make_goes_to_the_requester_by_dm() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let run = run_imagine(&w, w.alice, w.channel, "a slow far island --steps 6", None);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    w.sim.advance_clock(Duration::from_secs(16 * 60));
    // As in a server where the bot is not a member: 403 on the channel.
    let posts = format!("/channels/{}/messages", w.channel);
    w.sim.fail_route("POST", &posts, Fault::ServerError(403), 5);
    let dm = w.sim.dm_channel(w.alice).unwrap();
    let dm_posts = format!("/channels/{dm}/messages");
    let sent = finished(&w.sim, std::slice::from_ref(&dm_posts)).await;
    assert_eq!(png_of(&w.sim, &sent).dimensions(), (128, 128));
    wait_delivered(w.dir.path(), 1).await;
    assert_eq!(result_deliveries(&w.sim, &[posts, dm_posts]).len(), 1);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_that_hangs_past_the_timeout_does_not_hold_up_the_next_job() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[("IMAGINE_HTTP_TIMEOUT", "2")]).await;
    let hung = run_imagine(&w, w.alice, w.channel, "a slow hung owl --steps 3", None);
    let hung_path = original_path(&w.sim, &hung.token);
    w.sim.fail_route(
        "PATCH",
        &hung_path,
        Fault::Latency(Duration::from_secs(8)),
        4,
    );
    w.sim.wait_callback(&hung, WAIT).await.unwrap();
    let next = run_imagine(&w, w.bob, w.channel, "a quick next job --steps 1", None);
    w.sim.wait_callback(&next, WAIT).await.unwrap();
    finished(&w.sim, &[original_path(&w.sim, &next.token)]).await;
    let (first, second) = (
        wait_delivered(w.dir.path(), 1).await,
        job(w.dir.path(), 2).await,
    );
    assert!(
        second.delivery.delivered_at.unwrap() < first.delivery.delivered_at.unwrap(),
        "the next job was delivered while the first one's edits hung"
    );
    let message = finished(&w.sim, std::slice::from_ref(&hung_path)).await;
    let shown = w.sim.message(message.id).unwrap();
    assert!(has_buttons(&serde_json::to_value(&shown).unwrap()));
    let posts = format!("/channels/{}/messages", w.channel);
    assert!(
        result_deliveries(&w.sim, &[posts]).is_empty(),
        "no second message was posted"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_drop_mid_job_still_delivers_it_once() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let run = run_imagine(
        &w,
        w.alice,
        w.channel,
        "a slow drifting kite --steps 8",
        None,
    );
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    wait_status(w.dir.path(), 1, JobStatus::Running).await;
    assert!(w.sim.drop_gateway(), "the bot had a gateway connection");
    let path = original_path(&w.sim, &run.token);
    finished(&w.sim, std::slice::from_ref(&path)).await;
    wait_delivered(w.dir.path(), 1).await;
    // The bot still takes requests after it reconnected.
    imagine(&w, w.bob, w.channel, "after the drop --steps 1").await;
    assert_eq!(result_deliveries(&w.sim, &[path]).len(), 1);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_job_exits_zero_in_time_and_the_restart_delivers_once() {
    let w = world().await;
    let env = [("IMAGINE_SHUTDOWN_TIMEOUT", "3")];
    let mut bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let run = run_imagine(
        &w,
        w.alice,
        w.channel,
        "a slow long voyage --steps 40",
        None,
    );
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    wait_status(w.dir.path(), 1, JobStatus::Running).await;
    let pid = bot.child.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    // Generous: the bound is 3 s, the machine may be loaded.
    let exit = tokio::time::timeout(Duration::from_secs(60), bot.child.wait())
        .await
        .expect("the bot exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let stopped = job(w.dir.path(), 1).await;
    assert_eq!(
        stopped.status,
        JobStatus::Queued,
        "checkpointed for the next start"
    );

    let restarted_at = w.sim.transcript().entries.len();
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let path = original_path(&w.sim, &run.token);
    finished_after(&w.sim, std::slice::from_ref(&path), restarted_at).await;
    wait_delivered(w.dir.path(), 1).await;
    assert_eq!(result_deliveries(&w.sim, &[path]).len(), 1);
    bot.stop().await;
}

/// The ❌ button's id on the interaction's message.
async fn cancel_button(sim: &Simulator, token: &str) -> (serenity::all::MessageId, String) {
    let message = sim
        .bot_http()
        .get_original_interaction_response(token)
        .await
        .unwrap();
    (message.id, button(&message, "❌"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_requester_cancels_a_running_job_and_a_waiting_one() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let running = run_imagine(
        &w,
        w.alice,
        w.channel,
        "a slow doomed tower --steps 40",
        None,
    );
    w.sim.wait_callback(&running, WAIT).await.unwrap();
    wait_status(w.dir.path(), 1, JobStatus::Running).await;
    let waiting = run_imagine(&w, w.alice, w.channel, "a waiting bridge --steps 2", None);
    w.sim.wait_callback(&waiting, WAIT).await.unwrap();

    let (message, cancel) = cancel_button(&w.sim, &waiting.token).await;
    let click = w.sim.click_button(w.alice, message, &cancel).unwrap();
    let cb = w.sim.wait_callback(&click, WAIT).await.unwrap();
    assert_reply(&cb, "Cancelled", true);
    let shown = wait_edit_saying(&w.sim, &waiting.token, "cancelled").await;
    assert!(!has_buttons(&shown), "no buttons under a cancelled job");

    let (message, cancel) = cancel_button(&w.sim, &running.token).await;
    let click = w.sim.click_button(w.alice, message, &cancel).unwrap();
    w.sim.wait_callback(&click, WAIT).await.unwrap();
    let shown = wait_edit_saying(&w.sim, &running.token, "cancelled").await;
    assert_eq!(
        shown["components"],
        serde_json::json!([]),
        "the ❌ is gone too"
    );

    let (first, second) = (job(w.dir.path(), 1).await, job(w.dir.path(), 2).await);
    assert_eq!(
        (first.status, second.status),
        (JobStatus::Cancelled, JobStatus::Cancelled)
    );
    assert_eq!(second.started_at, None, "the waiting job never ran");
    // The bot goes on serving.
    imagine(&w, w.bob, w.channel, "after the cancels --steps 1").await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn someone_else_cannot_cancel_a_job() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    // In a DM nobody has server permissions: only the requester may cancel.
    let dm = w.sim.dm_channel(w.alice).unwrap();
    let run = run_imagine(&w, w.alice, dm, "a slow guarded gate --steps 10", None);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    let (message, cancel) = cancel_button(&w.sim, &run.token).await;
    let click = w.sim.click_button(w.bob, message, &cancel).unwrap();
    let cb = w.sim.wait_callback(&click, WAIT).await.unwrap();
    assert_reply(&cb, "Only the person who asked", true);
    let done = finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    assert_eq!(png_of(&w.sim, &done).dimensions(), (128, 128), "it went on");
    assert_eq!(job(w.dir.path(), 1).await.status, JobStatus::Done);
    bot.stop().await;
}

/// A copy of the tiny model with its UNet weights cut in half.
fn truncated_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("broken");
    let source = root().join("assets/models/tiny-sd15");
    for entry in walk(&source) {
        let target = model.join(entry.strip_prefix(&source).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    let unet = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 2]).unwrap();
    model
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_with_truncated_weights_fails_visibly_and_the_next_job_is_delivered() {
    let w = world().await;
    let broken = truncated_model(w.dir.path());
    let config = w.dir.path().join("imagine.toml");
    let toml = format!("[models]\nbroken = {:?}\n", broken.to_str().unwrap());
    std::fs::write(&config, toml).unwrap();
    let env = [("IMAGINE_CONFIG", config.to_str().unwrap())];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let run = run_imagine(
        &w,
        w.alice,
        w.channel,
        "a cat --model broken --steps 1",
        None,
    );
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    let shown = wait_edit_saying(&w.sim, &run.token, "failed").await;
    let content = shown["content"].as_str().unwrap();
    assert!(
        content.contains("the model broken could not be loaded"),
        "{content}"
    );
    assert!(!content.contains('/'), "no paths shown: {content}");
    imagine(&w, w.alice, w.channel, "a dog on the good model --steps 1").await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_panics_fails_visibly_and_the_bot_serves_the_next() {
    let w = world().await;
    let env = [("IMAGINE_TEST_FAULTS", "panic-in-job:kaboom")];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let run = run_imagine(&w, w.alice, w.channel, "a kaboom firework --steps 1", None);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    let shown = wait_edit_saying(&w.sim, &run.token, "failed").await;
    assert!(shown["content"]
        .as_str()
        .unwrap()
        .contains("internal error"));
    assert_eq!(job(w.dir.path(), 1).await.status, JobStatus::Failed);
    for prompt in ["a calm lake --steps 1", "a calm hill --steps 1"] {
        let done = imagine(&w, w.bob, w.channel, prompt).await;
        assert_eq!(png_of(&w.sim, &done).dimensions(), (128, 128));
    }
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_reply_that_failed_leaves_no_job_to_run_later() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    w.sim.fail_route(
        "POST",
        "/interactions/*/*/callback",
        Fault::ServerError(500),
        1,
    );
    let lost = run_imagine(&w, w.alice, w.channel, "a lost letter --steps 1", None);
    let abandoned = async {
        loop {
            let status = maybe_job(w.dir.path(), 1).await.map(|j| j.status);
            if status == Some(JobStatus::Cancelled) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, abandoned).await.unwrap();
    bot.stop().await;

    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    imagine(&w, w.bob, w.channel, "after the restart --steps 1").await;
    let lost_job = job(w.dir.path(), 1).await;
    assert_eq!(lost_job.status, JobStatus::Cancelled);
    assert_eq!(lost_job.started_at, None, "it never ran");
    assert!(
        result_deliveries(&w.sim, &[original_path(&w.sim, &lost.token)]).is_empty(),
        "nothing was delivered for it"
    );
    bot.stop().await;
}

/// The allowed mentions of a message body the bot sent, if it has content.
fn mentions_of(call: &RestCall) -> Option<(String, Value)> {
    let message = if call.path.ends_with("/callback") {
        &call.body["data"]
    } else {
        &call.body
    };
    let content = message["content"].as_str()?.to_string();
    Some((content, message["allowed_mentions"].clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_with_mentions_ping_no_one_but_the_requester() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let prompt = format!("hello @everyone @here <@&123> <@{}> --steps 1", w.bob);
    let grid = imagine(&w, w.alice, w.channel, &prompt).await;
    click(&w, w.alice, &grid, "U1").await;
    let dm = w.sim.dm_channel(w.alice).unwrap();
    imagine(&w, w.alice, dm, &prompt).await;
    let bad = run_imagine(&w, w.alice, w.channel, "@everyone --ar 100:1", None);
    w.sim.wait_callback(&bad, WAIT).await.unwrap();

    let alice = w.alice.to_string();
    let mut checked = 0;
    for call in w.sim.transcript().rest_calls() {
        if !matches!(call.method.as_str(), "POST" | "PATCH") {
            continue;
        }
        let Some((content, mentions)) = mentions_of(call) else {
            continue;
        };
        assert!(mentions.is_object(), "no allowed_mentions on {content:?}");
        assert_eq!(mentions["parse"], serde_json::json!([]), "{content:?}");
        let roles = mentions["roles"].as_array().map_or(0, Vec::len);
        assert_eq!(roles, 0, "{content:?}");
        for user in mentions["users"].as_array().into_iter().flatten() {
            assert_eq!(user.as_str(), Some(alice.as_str()), "{content:?}");
        }
        checked += 1;
    }
    assert!(
        checked >= 6,
        "replies, edits and results were all checked ({checked})"
    );
    bot.stop().await;
}

/// The bot's log without terminal colour codes.
fn log_lines(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("bot.log")).unwrap();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An SGR sequence: ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_log_line_about_a_job_names_the_job() {
    let w = world().await;
    let env = [("RUST_LOG", "warn,imagine=debug")];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let run = run_imagine(&w, w.alice, w.channel, "a logged lark --steps 1", None);
    let path = original_path(&w.sim, &run.token);
    w.sim.fail_route("PATCH", &path, Fault::ServerError(503), 2);
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    finished(&w.sim, std::slice::from_ref(&path)).await;
    wait_delivered(w.dir.path(), 1).await;
    bot.stop().await;
    let lines = log_lines(w.dir.path());
    let about_jobs: Vec<&String> = lines
        .iter()
        .filter(|l| {
            [
                "job admitted",
                "job started",
                "job done",
                "delivery failed",
                "delivered",
            ]
            .iter()
            .any(|m| l.contains(m))
        })
        .collect();
    assert!(about_jobs.len() >= 5, "{lines:#?}");
    for line in about_jobs {
        assert!(line.contains("job{id=1}"), "{line}");
    }
}
