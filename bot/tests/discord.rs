//! The real `imagine bot` binary against the Discord simulator, with the committed tiny
//! model: /imagine in a guild and a DM, plain DMs, every button, restarts, queue limits, bad
//! parameters and delivery after the interaction token expired.

mod common;

use std::time::Duration;

use common::*;
use imagine_tests::Entry;

#[tokio::test(flavor = "multi_thread")]
async fn imagine_in_a_guild_then_every_grid_button() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let grid = imagine(
        &w,
        w.alice,
        w.channel,
        "a brown puppy on the beach --seed 42 --steps 4",
    )
    .await;
    assert!(
        grid.content.contains("a brown puppy on the beach"),
        "{}",
        grid.content
    );
    assert!(grid.content.contains(&format!("<@{}>", w.alice)));
    assert_eq!(
        png_of(&w.sim, &grid).dimensions(),
        (128, 128),
        "2x2 grid of 64x64"
    );
    let labels: Vec<String> = ["U1", "U2", "U3", "U4", "🔄", "V1", "V2", "V3", "V4"]
        .iter()
        .map(|l| button(&grid, l))
        .collect();
    assert_eq!(labels.len(), 9);

    // U: the image alone; anyone may press, and the new job is theirs.
    let single = click(&w, w.bob, &grid, "U2").await;
    assert_eq!(png_of(&w.sim, &single).dimensions(), (64, 64));
    assert!(
        single.content.contains("Image #2") && single.content.contains(&format!("<@{}>", w.bob))
    );
    for vary in ["Vary (Subtle)", "Vary (Strong)"] {
        let varied = click(&w, w.alice, &single, vary).await;
        assert_eq!(
            png_of(&w.sim, &varied).dimensions(),
            (128, 128),
            "{vary} makes a grid"
        );
    }
    let variations = click(&w, w.alice, &grid, "V3").await;
    assert_eq!(png_of(&w.sim, &variations).dimensions(), (128, 128));
    let reroll = click(&w, w.alice, &grid, "🔄").await;
    assert_ne!(
        png_of(&w.sim, &reroll),
        png_of(&w.sim, &grid),
        "new seeds, new images"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_fast_grid_decode_grids_come_from_taesd_and_u_from_the_full_vae() {
    let w = world().await;
    let taesd = root().join("assets/models/tiny-taesd");
    let env = [
        ("IMAGINE_TAESD", taesd.to_str().unwrap()),
        ("IMAGINE_FAST_GRID_DECODE", "true"),
    ];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let grid = imagine(&w, w.alice, w.channel, "a lighthouse --seed 7 --steps 4").await;
    let (img, text) = png_and_parameters(&w.sim, &grid);
    assert_eq!(img.dimensions(), (128, 128));
    assert!(text.ends_with(", VAE: tiny-taesd"), "{text}");
    let single = click(&w, w.bob, &grid, "U3").await;
    let (img, text) = png_and_parameters(&w.sim, &single);
    assert_eq!(img.dimensions(), (64, 64));
    assert!(
        !text.contains("VAE:"),
        "U decodes with the full VAE: {text}"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn imagine_in_a_dm_and_a_plain_dm_prompt() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let dm = w.sim.dm_channel(w.alice).unwrap();
    let grid = imagine(&w, w.alice, dm, "a lighthouse --steps 3").await;
    assert_eq!(png_of(&w.sim, &grid).dimensions(), (128, 128));
    click(&w, w.alice, &grid, "U1").await;

    w.sim
        .dm_text(w.alice, "a red fox in snow --steps 3 --ar 2:1")
        .unwrap();
    let path = format!("/channels/{dm}/messages");
    let posted = w.sim.wait_channel_message(dm, WAIT).await.unwrap();
    assert!(posted.content.contains("position"), "{}", posted.content);
    let done = finished(&w.sim, &[format!("{path}/{}", posted.id)]).await;
    let img = png_of(&w.sim, &done);
    assert!(
        img.width() > img.height(),
        "--ar 2:1 is wide: {:?}",
        img.dimensions()
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_parameters_get_a_private_reply_and_nothing_is_queued() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    for (prompt, needle) in [
        ("a cat --ar 100:1", "--ar"),
        ("a cat --foo 3", "Unknown parameter"),
        ("a cat --steps 500", "--steps"),
        ("a cat --model nope", "Unknown model"),
    ] {
        let run = run_imagine(&w, w.alice, w.channel, prompt, None);
        let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
        assert_eq!(cb.kind, 4);
        assert_reply(&cb, needle, true);
    }
    bot.stop().await;
    let store = imagine::store::Store::open(w.dir.path().join("imagine.db"))
        .await
        .unwrap();
    assert!(store.unfinished_jobs().await.unwrap().is_empty());
    assert!(
        store.job(imagine::store::JobId(1)).await.unwrap().is_none(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn buttons_work_after_a_restart_and_interrupted_jobs_are_delivered() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let grid = imagine(&w, w.alice, w.channel, "a castle --steps 3").await;
    // A long job, interrupted while it runs.
    let slow = run_imagine(&w, w.alice, w.channel, "a slow castle --steps 20", None);
    slow_edits(&w.sim, &slow.token, Duration::from_secs(8));
    w.sim.wait_callback(&slow, WAIT).await.unwrap();
    let path = original_path(&w.sim, &slow.token);
    wait_status(w.dir.path(), 2, imagine::store::JobStatus::Running).await;
    bot.stop().await;

    let restarted_at = w.sim.transcript().entries.len();
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
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
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_and_a_busy_user_are_told_privately() {
    let w = world().await;
    let bot = start_bot(
        &w.sim,
        w.dir.path(),
        &[("IMAGINE_QUEUE_CAPACITY", "2"), ("IMAGINE_USER_CAP", "2")],
    )
    .await;
    let send = |user, prompt: &str| run_imagine(&w, user, w.channel, prompt, None);
    let first = send(w.alice, "one slow job --steps 20");
    // Long enough for the four requests below even on a loaded machine.
    slow_edits(&w.sim, &first.token, Duration::from_secs(30));
    w.sim.wait_callback(&first, WAIT).await.unwrap();
    wait_status(w.dir.path(), 1, imagine::store::JobStatus::Running).await;
    let second = send(w.alice, "two --steps 2");
    let cb = w.sim.wait_callback(&second, WAIT).await.unwrap();
    assert_reply(&cb, "position 1", false);
    let over_cap = send(w.alice, "three");
    let cb = w.sim.wait_callback(&over_cap, WAIT).await.unwrap();
    assert_reply(&cb, "already have 2 jobs", true);
    let fourth = send(w.bob, "four --steps 2");
    let cb = w.sim.wait_callback(&fourth, WAIT).await.unwrap();
    assert_reply(&cb, "position 2", false);
    let full = send(w.bob, "five");
    let cb = w.sim.wait_callback(&full, WAIT).await.unwrap();
    assert_reply(&cb, "queue is full", true);
    // The admitted jobs still finish.
    finished(&w.sim, &[original_path(&w.sim, &second.token)]).await;
    finished(&w.sim, &[original_path(&w.sim, &fourth.token)]).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_finishing_after_the_token_expired_is_posted_to_the_channel() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let run = run_imagine(&w, w.alice, w.channel, "a slow late owl --steps 30", None);
    // The job cannot finish before the clock moves: its first edit is held back.
    slow_edits(&w.sim, &run.token, Duration::from_secs(8));
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    w.sim.advance_clock(Duration::from_secs(16 * 60));
    let posted = finished(&w.sim, &[format!("/channels/{}/messages", w.channel)]).await;
    assert!(
        posted.content.contains(&format!("<@{}>", w.alice)),
        "{}",
        posted.content
    );
    assert_eq!(png_of(&w.sim, &posted).dimensions(), (128, 128));
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_prompt_starts_from_the_attachment_and_a_non_image_is_refused() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let png = std::fs::read(root().join("assets/reference/init_64.png")).unwrap();
    let upload = imagine_tests::Upload::png("start.png", png);
    let run = run_imagine(
        &w,
        w.alice,
        w.channel,
        "the same, at night --steps 4",
        Some(upload),
    );
    assert_eq!(w.sim.wait_callback(&run, WAIT).await.unwrap().kind, 4);
    let done = finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    let grid = png_of(&w.sim, &done);
    let bytes = w.sim.file_bytes(&done.attachments[0].url).unwrap();
    let params = imagine::render::read_parameters(&bytes).unwrap().unwrap();
    assert!(
        params.contains("Denoising strength: 0.75"),
        "image to image from the attachment: {params}"
    );
    assert_eq!(grid.dimensions(), (128, 128));

    let text = imagine_tests::Upload {
        filename: "notes.txt".into(),
        bytes: b"hello".to_vec(),
        content_type: "text/plain".into(),
    };
    let run = run_imagine(&w, w.alice, w.channel, "a cat", Some(text));
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_reply(&cb, "not an image", true);

    // A file that claims to be a PNG but is not: the job fails and says why.
    let fake = imagine_tests::Upload::png("fake.png", b"not really a png".to_vec());
    let run = run_imagine(&w, w.alice, w.channel, "a dog", Some(fake));
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    let path = original_path(&w.sim, &run.token);
    let failed = w
        .sim
        .wait_for("the failure to be shown", WAIT, |entries| {
            entries.iter().filter_map(Entry::as_rest).find_map(|c| {
                (c.path == path && c.method == "PATCH")
                    .then(|| c.body["content"].as_str().unwrap_or("").to_string())
            })
        })
        .await
        .unwrap();
    assert!(
        failed.contains("could not use the attached image"),
        "{failed}"
    );
    bot.stop().await;
}
