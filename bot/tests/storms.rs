//! Storms: the real `imagine bot` against the Discord simulator under what a server owner
//! meets in the first week: kill -9 at random moments, a flood of requests, SIGTERM mid-job,
//! and a look for tokens in the logs and the database. Each asserts what users would notice:
//! every interaction answered within 3 s, every admitted job delivered exactly once, refusals
//! private, caps held, nobody pinged but the requester, no secret left behind.
//!
//! Jobs are told apart by a tag in their prompt (`j007q`), which the bot echoes in every
//! message about the job. Waits follow the simulator's events; timeouts are generous because
//! the machine may be loaded.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use imagine_tests::{Fault, Interaction, InteractionReport, Simulator};
use serenity::all::UserId;

/// Discord's deadline for the first answer to an interaction.
const ANSWER: Duration = Duration::from_secs(3);
/// Long enough for every admitted job of a storm on the tiny model, on a loaded machine.
const ALL_DELIVERED: Duration = Duration::from_secs(300);
/// How much of the transcript a failed storm prints (all of it would be thousands of lines).
const TRANSCRIPT_TAIL: usize = 150;

/// A tag no other tag contains.
fn tag(i: usize) -> String {
    format!("j{i:03}q")
}

/// One `/imagine` the test sent.
struct Sent {
    run: Interaction,
    tag: String,
    user: UserId,
}

fn send(w: &World, user: UserId, i: usize, rest: &str) -> Sent {
    let tag = tag(i);
    let run = run_imagine(w, user, w.channel, &format!("{tag} {rest}"), None);
    Sent { run, tag, user }
}

fn report(sim: &Simulator, sent: &Sent) -> InteractionReport {
    sim.interaction_report(&sent.run)
        .expect("the simulator knows every interaction it sent")
}

/// Waits until every interaction was answered or Discord gave up on it. (It cannot take
/// long: Discord gives up after 3 s. What is wrong shows in the checks that follow.)
async fn settled(sim: &Simulator, sent: &[Sent]) {
    let _ = sim
        .wait_until("every interaction answered or failed", WAIT, |sim| {
            sent.iter()
                .all(|s| {
                    let r = report(sim, s);
                    r.callback.is_some() || r.failed
                })
                .then_some(())
        })
        .await;
}

/// Waits until each of `tags` was delivered at least once, or [`ALL_DELIVERED`] passed; the
/// checks that follow name what is missing.
async fn all_delivered(sim: &Simulator, tags: &[String]) {
    let waited = sim
        .wait_until("every admitted job delivered", ALL_DELIVERED, |sim| {
            tags.iter()
                .all(|t| deliveries_of(sim, t) >= 1)
                .then_some(())
        })
        .await;
    if waited.is_err() {
        eprintln!("gave up waiting for deliveries after {ALL_DELIVERED:?}");
    }
}

/// Messages that ping anyone but the requester of the job they are about (each message once).
fn stray_pings(sim: &Simulator, sent: &[Sent]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for event in sim.message_events() {
        let content = event.message["content"].as_str().unwrap_or("");
        let owner = sent
            .iter()
            .find(|s| content.contains(&s.tag))
            .map(|s| s.user);
        let fine = match owner {
            Some(user) => event.pings.at_most(user),
            None => event.pings.is_empty(),
        };
        if !fine && seen.insert(event.message_id) {
            problems.push(format!(
                "message {} pinged {:?}: {content:?}",
                event.message_id, event.pings
            ));
        }
    }
    problems
}

fn assert_no_problems(what: &str, problems: &[String], sim: &Simulator) {
    if problems.is_empty() {
        return;
    }
    const SHOWN: usize = 40;
    let more = match problems.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!("\n... and {n} more"),
    };
    let transcript = sim.transcript();
    let skip = transcript.entries.len().saturating_sub(TRANSCRIPT_TAIL);
    let tail: Vec<String> = transcript.entries[skip..]
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{:5} {e}", skip + i))
        .collect();
    panic!(
        "{what}: {} problem(s):\n{}{more}\n--- the last {} transcript entries ---\n{}",
        problems.len(),
        problems[..problems.len().min(SHOWN)].join("\n"),
        tail.len(),
        tail.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_storm_every_admitted_job_is_delivered_exactly_once() {
    const JOBS: usize = 20;
    const KILLS: usize = 5;
    let mut rng = Rng::from_env_or_clock("kill_9_storm");
    let w = world().await;
    let mut users = vec![w.alice, w.bob];
    users.extend(["carol", "dave", "erin"].map(|name| w.sim.add_user(name)));
    // Every job fits: 4 per user, 20 in all.
    let env = [("IMAGINE_QUEUE_CAPACITY", "32"), ("IMAGINE_USER_CAP", "8")];
    let mut sent: Vec<Sent> = Vec::new();
    let mut kills = Vec::new();
    for round in 0..KILLS {
        let bot = start_bot(&w.sim, w.dir.path(), &env).await;
        let batch = rng.between(2, 4) as usize;
        for _ in 0..batch.min(JOBS - sent.len()) {
            let i = sent.len();
            sent.push(send(
                &w,
                users[i % users.len()],
                i,
                "a lighthouse --steps 2",
            ));
            let pause = rng.between(0, 6) as usize;
            grown_by(&w.sim, pause).await;
        }
        // Now and then a result that never gets an answer, applied by Discord or not: when the
        // bot dies, it cannot know whether the user saw it.
        if rng.between(0, 1) == 1 {
            let victim = &sent[rng.between(0, sent.len() as u64 - 1) as usize];
            let fault = match rng.between(0, 1) {
                0 => Fault::Hang,
                _ => Fault::HangAfterApplying,
            };
            eprintln!("{}'s result will hang: {fault:?}", victim.tag);
            let route = format!("/webhooks/*/{}/**", victim.run.token);
            w.sim.fail_result_route("*", &route, fault, 1);
        }
        // Anywhere from before the first answer to the middle of a delivery.
        let moment = rng.between(1, 80) as usize;
        grown_by(&w.sim, moment).await;
        eprintln!(
            "kill -9 #{} after {moment} more events ({} jobs sent)",
            round + 1,
            sent.len()
        );
        kills.push(w.sim.clock());
        bot.kill9().await;
    }
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    while sent.len() < JOBS {
        let i = sent.len();
        sent.push(send(
            &w,
            users[i % users.len()],
            i,
            "a lighthouse --steps 2",
        ));
    }
    settled(&w.sim, &sent).await;
    let admitted: Vec<String> = sent
        .iter()
        .filter(|s| report(&w.sim, s).answered_publicly())
        .map(|s| s.tag.clone())
        .collect();
    all_delivered(&w.sim, &admitted).await;
    // One more kill and start, then a last job through: a result delivered again at start-up
    // would show up by the time the last job is delivered.
    bot.kill9().await;
    kills.push(w.sim.clock());
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let last = send(&w, w.alice, JOBS, "the end --steps 1");
    all_delivered(&w.sim, std::slice::from_ref(&last.tag)).await;
    bot.kill9().await;

    let jobs = all_jobs(w.dir.path()).await;
    let mut problems = Vec::new();
    for s in &sent {
        let r = report(&w.sim, s);
        let delivered = deliveries_of(&w.sim, &s.tag);
        if r.callback.is_some() && !r.answered_within(ANSWER) {
            problems.push(format!("{}: answered after {:?}", s.tag, r.answered_after));
        }
        if r.answered_privately() {
            problems.push(format!(
                "{}: refused though every job fits: {:?}",
                s.tag,
                r.reply_text()
            ));
        }
        if r.answered_publicly() && delivered != 1 {
            problems.push(format!("{}: admitted, delivered {delivered} times", s.tag));
        }
        if r.callback.is_none() {
            let killed_in_time = kills
                .iter()
                .any(|k| *k >= r.sent_at && *k <= r.sent_at + ANSWER);
            if !killed_in_time {
                problems.push(format!(
                    "{}: never answered, though no kill came within 3 s",
                    s.tag
                ));
            }
            if delivered != 0 {
                problems.push(format!(
                    "{}: never answered, yet delivered {delivered} times",
                    s.tag
                ));
            }
            let ran = jobs
                .iter()
                .filter(|j| j.request.prompt.contains(&s.tag))
                .any(|j| j.started_at.is_some() || j.status == imagine::store::JobStatus::Done);
            if ran {
                problems.push(format!("{}: never answered, yet its job ran", s.tag));
            }
        }
    }
    sent.push(last);
    problems.extend(stray_pings(&w.sim, &sent));
    eprintln!("kill_9_storm: {} of {JOBS} admitted", admitted.len());
    assert_no_problems("kill -9 storm", &problems, &w.sim);
}

/// Waits until `count` more things happened (REST calls, gateway frames, notes); heartbeats
/// keep the count growing even when nothing else happens.
async fn grown_by(sim: &Simulator, count: usize) {
    let from = sim.transcript().entries.len();
    sim.wait_for("the simulator to see more traffic", WAIT, |entries| {
        (entries.len() >= from + count).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_200_from_50_users_is_answered_in_time_within_the_caps() {
    const USERS: usize = 50;
    const REQUESTS: usize = 200;
    const CAPACITY: usize = 40;
    const USER_CAP: usize = 2;
    let w = world().await;
    let mut users = vec![w.alice, w.bob];
    users.extend((2..USERS).map(|i| w.sim.add_user(&format!("user{i}"))));
    let capacity = CAPACITY.to_string();
    let user_cap = USER_CAP.to_string();
    let env = [
        ("IMAGINE_QUEUE_CAPACITY", capacity.as_str()),
        ("IMAGINE_USER_CAP", user_cap.as_str()),
    ];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let mut sent = Vec::new();
    for i in 0..REQUESTS {
        let user = users[i % USERS];
        // Some prompts try to ping a whole server, a role, or someone else.
        let rest = match i % 10 {
            3 => format!("@everyone look <@&{}> --steps 1", w.channel),
            7 => format!("for <@{}> @here --steps 1", users[(i + 1) % USERS]),
            _ => "a small boat --steps 1".to_owned(),
        };
        sent.push(send(&w, user, i, &rest));
        // 200 requests in about 9 s.
        tokio::time::sleep(Duration::from_millis(45)).await;
    }
    settled(&w.sim, &sent).await;
    let admitted: Vec<String> = sent
        .iter()
        .filter(|s| report(&w.sim, s).answered_publicly())
        .map(|s| s.tag.clone())
        .collect();
    all_delivered(&w.sim, &admitted).await;
    bot.stop().await;

    let mut problems = Vec::new();
    for s in &sent {
        let r = report(&w.sim, s);
        if !r.answered_within(ANSWER) {
            problems.push(format!(
                "{}: answered after {:?} (failed: {})",
                s.tag, r.answered_after, r.failed
            ));
        }
        if r.answered_privately() && r.reply_text().is_empty() {
            problems.push(format!("{}: a private answer that says nothing", s.tag));
        }
        let delivered = deliveries_of(&w.sim, &s.tag);
        let expected = usize::from(r.answered_publicly());
        if delivered != expected {
            problems.push(format!(
                "{}: public answer {}, delivered {delivered} times",
                s.tag,
                r.answered_publicly()
            ));
        }
    }
    problems.extend(stray_pings(&w.sim, &sent));
    problems.extend(cap_breaches(w.dir.path(), USER_CAP, CAPACITY).await);
    eprintln!("flood: {} of {REQUESTS} admitted", admitted.len());
    assert!(
        admitted.len() >= CAPACITY,
        "a good share is admitted: {}",
        admitted.len()
    );
    assert_no_problems("flood", &problems, &w.sim);
}

/// The most intervals `[start, end)` open at once.
fn most_at_once(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i8)> = intervals
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // At the same millisecond an end comes before a start.
    edges.sort();
    let (mut open, mut most) = (0i64, 0i64);
    for (_, step) in edges {
        open += i64::from(step);
        most = most.max(open);
    }
    most as usize
}

/// From the bot's own records: when any user had more than `user_cap` jobs queued or running,
/// or more than `capacity` jobs waited.
async fn cap_breaches(dir: &Path, user_cap: usize, capacity: usize) -> Vec<String> {
    let jobs = all_jobs(dir).await;
    let never = i64::MAX;
    let mut by_user: BTreeMap<u64, Vec<(i64, i64)>> = BTreeMap::new();
    let mut waiting = Vec::new();
    for job in &jobs {
        let end = job.finished_at.unwrap_or(never);
        by_user
            .entry(job.request.user_id)
            .or_default()
            .push((job.created_at, end));
        waiting.push((job.created_at, job.started_at.unwrap_or(end)));
    }
    let mut problems = Vec::new();
    for (user, intervals) in by_user {
        let most = most_at_once(&intervals);
        if most > user_cap {
            problems.push(format!(
                "user {user} had {most} jobs at once (cap {user_cap})"
            ));
        }
    }
    let most = most_at_once(&waiting);
    if most > capacity {
        problems.push(format!("{most} jobs waited at once (capacity {capacity})"));
    }
    problems
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_job_exits_cleanly_in_time_and_the_job_is_delivered_once_after_restart() {
    const SHUTDOWN: Duration = Duration::from_secs(20);
    let w = world().await;
    let env = [("IMAGINE_SHUTDOWN_TIMEOUT", "20")];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    // One job running and two waiting when the signal comes ("slow": 0.4 s a step, a test
    // fault of the bot; without it the job may just be fast).
    let sent: Vec<Sent> = (0..3)
        .map(|i| send(&w, w.alice, i, "a slow long exposure --steps 10"))
        .collect();
    for s in &sent {
        w.sim.wait_callback(&s.run, WAIT).await.unwrap();
    }
    wait_status(w.dir.path(), 1, imagine::store::JobStatus::Running).await;
    // The margin covers a loaded machine, not a shutdown that ignores its timeout.
    let exit = bot.terminate(SHUTDOWN + Duration::from_secs(30)).await;
    let exit = exit.expect("the bot exits within its shutdown timeout after SIGTERM");
    assert!(
        exit.success(),
        "SIGTERM is a clean stop: exit status 0, got {exit}"
    );

    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let tags: Vec<String> = sent.iter().map(|s| s.tag.clone()).collect();
    all_delivered(&w.sim, &tags).await;
    let last = send(&w, w.bob, 3, "the end --steps 1");
    all_delivered(&w.sim, std::slice::from_ref(&last.tag)).await;
    bot.stop().await;
    let mut sent = sent;
    sent.push(last);
    let mut problems: Vec<String> = sent
        .iter()
        .map(|s| (s, deliveries_of(&w.sim, &s.tag)))
        .filter(|(_, n)| *n != 1)
        .map(|(s, n)| format!("{}: delivered {n} times", s.tag))
        .collect();
    problems.extend(stray_pings(&w.sim, &sent));
    assert_no_problems("SIGTERM mid-job", &problems, &w.sim);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_is_left_in_trace_logs_or_the_database_after_delivery() {
    let w = world().await;
    let env = [("RUST_LOG", "trace")];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let grid = imagine(&w, w.alice, w.channel, "j000q a quiet pond --steps 1").await;
    click(&w, w.bob, &grid, "U1").await;
    let dm = w.sim.dm_channel(w.alice).unwrap();
    imagine(&w, w.alice, dm, "j001q a quiet lake --steps 1").await;
    // A graceful stop, so whatever the bot does after delivery is done.
    bot.terminate(Duration::from_secs(60)).await;

    let mut secrets = vec![("the bot token".to_owned(), w.sim.token().to_owned())];
    for r in w.sim.interaction_reports() {
        let name = format!("interaction {}'s token", r.interaction.id);
        secrets.push((name, r.interaction.token));
    }
    let mut problems = Vec::new();
    for file in ["bot.log", "imagine.db", "imagine.db-wal", "imagine.db-shm"] {
        let Ok(bytes) = std::fs::read(w.dir.path().join(file)) else {
            continue;
        };
        for (name, secret) in &secrets {
            if contains(&bytes, secret.as_bytes()) {
                problems.push(format!("{name} is in {file}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(bot.log and the database are kept in {})",
        problems.join("\n"),
        w.dir.keep().display()
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
