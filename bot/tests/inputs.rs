//! What users type and attach, through the real `imagine bot` against the Discord simulator:
//! phone photos (JPEG with EXIF rotation) as image prompts, every kind of bad attachment, and
//! prompts beyond Latin-1 in a guild, a DM and a button job.

mod common;

use common::*;
use imagine::store::{JobId, JobStatus, Store};
use imagine_tests::{Entry, Upload};

fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(root().join("assets/testdata/images").join(name)).unwrap()
}

fn upload(filename: &str, content_type: &str) -> Upload {
    Upload {
        filename: filename.into(),
        bytes: corpus(filename),
        content_type: content_type.into(),
    }
}

async fn stop(mut bot: Bot) {
    bot.child.kill().await.unwrap();
}

/// The first line of a PNG's parameters: the prompt.
fn prompt_of(parameters: &str) -> &str {
    parameters.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_jpeg_phone_photo_is_used_upright_as_the_image_prompt() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let photo = upload("photo_exif_orientation_6.jpg", "image/jpeg");
    let run = run_imagine(
        &w,
        w.alice,
        w.channel,
        "the same, in snow --steps 3",
        Some(photo),
    );
    assert_eq!(w.sim.wait_callback(&run, WAIT).await.unwrap().kind, 4);
    let done = finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    let (grid, parameters) = png_and_parameters(&w.sim, &done);
    assert_eq!(grid.dimensions(), (128, 128));
    assert!(
        parameters.contains("Denoising strength: 0.75"),
        "image to image from the photo: {parameters}"
    );
    // The start image the job used is the photo as the phone showed it: 32 wide, 48 high.
    let store = Store::open(w.dir.path().join("imagine.db")).await.unwrap();
    let job = store.job(JobId(1)).await.unwrap().unwrap();
    let start = job.request.params.init_image.expect("an image prompt");
    let start = image::open(&start).unwrap();
    assert_eq!((start.width(), start.height()), (32, 48));
    stop(bot).await;
}

/// The failure message shown in place of an interaction's first message.
async fn failure_shown(w: &World, token: &str) -> String {
    let path = original_path(&w.sim, token);
    w.sim
        .wait_for("the failure to be shown", WAIT, |entries| {
            entries.iter().filter_map(Entry::as_rest).find_map(|c| {
                let content = c.body["content"].as_str().unwrap_or("");
                (c.path == path && c.method == "PATCH" && content.contains("failed"))
                    .then(|| content.to_string())
            })
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_attachment_gets_a_clear_message_and_nothing_is_lost() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    // Declared as images, so only their content can tell: each job fails visibly, saying why.
    let heic = Upload {
        filename: "IMG_0001.HEIC".into(),
        bytes: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec(),
        content_type: "image/heic".into(),
    };
    let cases = [
        (
            upload("bomb_50000x50000.png", "image/png"),
            "it is 50000x50000 pixels, over the limit of 4096x4096",
        ),
        (
            upload("random_bytes.png", "image/png"),
            "it is not an image",
        ),
        (upload("notes.txt", "image/png"), "it is not an image"),
        (upload("tiny.bmp", "image/bmp"), "it is a BMP image"),
        (heic, "it is a HEIC image"),
    ];
    for (file, why) in cases {
        let name = file.filename.clone();
        let run = run_imagine(&w, w.bob, w.channel, "a cat --steps 2", Some(file));
        w.sim.wait_callback(&run, WAIT).await.unwrap();
        let shown = failure_shown(&w, &run.token).await;
        assert!(
            shown.contains("I could not use the attached image: ") && shown.contains(why),
            "{name}: {shown}"
        );
    }
    // A file that says it is not an image is refused privately before any job exists.
    let run = run_imagine(
        &w,
        w.bob,
        w.channel,
        "a cat",
        Some(upload("notes.txt", "text/plain")),
    );
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_reply(&cb, "not an image: attach a PNG, JPEG, WebP or GIF", true);

    // The bot still serves, and no job was left waiting.
    let run = run_imagine(
        &w,
        w.bob,
        w.channel,
        "a cat --steps 2",
        Some(upload("animated.gif", "image/gif")),
    );
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    stop(bot).await;
    let store = Store::open(w.dir.path().join("imagine.db")).await.unwrap();
    assert!(store.unfinished_jobs().await.unwrap().is_empty());
    for id in 1..=5 {
        let job = store.job(JobId(id)).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Failed, "job {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_latin_prompt_is_delivered_exactly_in_a_guild_a_dm_and_under_buttons() {
    const PROMPT: &str = "un café — à Paris ☕ 東京";
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let grid = imagine(&w, w.alice, w.channel, &format!("{PROMPT} --steps 2")).await;
    assert!(grid.content.contains(PROMPT), "{}", grid.content);
    let (_, parameters) = png_and_parameters(&w.sim, &grid);
    assert_eq!(prompt_of(&parameters), PROMPT);

    for label in ["U1", "V1"] {
        let job = click(&w, w.bob, &grid, label).await;
        assert!(job.content.contains(PROMPT), "{label}: {}", job.content);
        let (_, parameters) = png_and_parameters(&w.sim, &job);
        assert_eq!(prompt_of(&parameters), PROMPT, "{label}");
    }

    let dm = w.sim.dm_channel(w.alice).unwrap();
    let in_dm = imagine(&w, w.alice, dm, &format!("{PROMPT} --steps 2")).await;
    assert!(in_dm.content.contains(PROMPT), "{}", in_dm.content);
    let (_, parameters) = png_and_parameters(&w.sim, &in_dm);
    assert_eq!(prompt_of(&parameters), PROMPT);
    stop(bot).await;
}
