//! The toolbox under a single image, end to end through the simulator with the real bot and
//! the tiny model, measured on the pixels: Zoom Out keeps the picture (shrunk) in the middle of
//! each of its four images, Pan keeps the old pixels where they were and grows the canvas, and
//! the buttons keep working after a restart and on their own results; Vary (Region) repaints
//! the picked cells and keeps every other pixel outside a feathered border.

mod common;

use common::*;
use image::{imageops, RgbImage};
use imagine_engine::inpaint::region_feather;
use imagine_engine::outpaint::FEATHER;

/// Image `k` (0-3) of a 2x2 grid.
fn quadrant(grid: &RgbImage, k: u32) -> RgbImage {
    let (w, h) = (grid.width() / 2, grid.height() / 2);
    imageops::crop_imm(grid, (k % 2) * w, (k / 2) * h, w, h).to_image()
}

/// Every pixel of `part` at offset (x0, y0) in `whole`, within `margin` of `part`'s edges
/// left out, is equal to the one in `whole`.
fn assert_kept(
    whole: &RgbImage,
    part: &RgbImage,
    (x0, y0): (u32, u32),
    margin: [u32; 4],
    what: &str,
) {
    let [left, right, top, bottom] = margin;
    for y in top..part.height() - bottom {
        for x in left..part.width() - right {
            assert_eq!(
                whole.get_pixel(x0 + x, y0 + y),
                part.get_pixel(x, y),
                "{what}: ({x}, {y})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoom_out_and_pan_extend_an_upscaled_image_and_survive_a_restart() {
    let w = world().await;
    let dir = w.dir.path();
    let bot = start_bot(&w.sim, dir, &[]).await;
    let grid = imagine(
        &w,
        w.alice,
        w.channel,
        "a lighthouse on a cliff --seed 3 --steps 3",
    )
    .await;
    let u2 = click(&w, w.alice, &grid, "U2").await;
    let picture = png_of(&w.sim, &u2);
    assert_eq!(picture.dimensions(), (64, 64));

    // Zoom Out 2x: four images of the same size, the picture at half size in the middle.
    let zoom = click(&w, w.alice, &u2, "Zoom Out 2x").await;
    assert!(zoom.content.contains("Zoom Out 2x"), "{}", zoom.content);
    let zoomed = png_of(&w.sim, &zoom);
    assert_eq!(
        zoomed.dimensions(),
        (128, 128),
        "a 2x2 grid of 64 px images"
    );
    let shrunk = imageops::resize(&picture, 32, 32, imageops::FilterType::Lanczos3);
    let f = FEATHER.min(32 / 4);
    for k in 0..4 {
        assert_kept(&quadrant(&zoomed, k), &shrunk, (16, 16), [f; 4], "zoom");
    }
    assert_ne!(
        quadrant(&zoomed, 0),
        quadrant(&zoomed, 1),
        "four different borders"
    );

    // ➡️: the canvas grows by half a side, the old pixels stay where they were.
    let pan = click(&w, w.alice, &u2, "➡️").await;
    assert!(pan.content.contains("Pan Right"), "{}", pan.content);
    let panned = png_of(&w.sim, &pan);
    assert_eq!(
        panned.dimensions(),
        (192, 128),
        "four 96x64 images: a square panned right is 3:2"
    );
    let f = FEATHER.min(64 / 4);
    for k in 0..4 {
        assert_kept(
            &quadrant(&panned, k),
            &picture,
            (0, 0),
            [0, f, 0, 0],
            "pan right",
        );
    }
    bot.stop().await;

    // After a restart the same buttons work; and a U image of a pan has the toolbox too.
    let bot = start_bot(&w.sim, dir, &[]).await;
    let left = click(&w, w.bob, &u2, "⬅️").await;
    let lefted = png_of(&w.sim, &left);
    assert_eq!(lefted.dimensions(), (192, 128));
    for k in 0..4 {
        assert_kept(
            &quadrant(&lefted, k),
            &picture,
            (32, 0),
            [f, 0, 0, 0],
            "pan left",
        );
    }
    let u1 = click(&w, w.bob, &pan, "U1").await;
    let wide = png_of(&w.sim, &u1);
    assert_eq!(
        wide,
        quadrant(&panned, 0),
        "U1 is the first image of the pan"
    );
    let up = click(&w, w.bob, &u1, "⬆️").await;
    let upped = png_of(&w.sim, &up);
    assert_eq!(upped.dimensions(), (192, 192), "96x64 panned up: 96x96");
    let zoom = click(&w, w.bob, &u1, "Zoom Out 1.5x").await;
    let zoomed = png_of(&w.sim, &zoom);
    assert_eq!(zoomed.dimensions(), (192, 128), "zoom keeps the 3:2 size");
    bot.stop().await;

    let jobs = all_jobs(dir).await;
    assert!(jobs
        .iter()
        .all(|j| j.status == imagine::store::JobStatus::Done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upscales_double_the_size_with_new_detail_and_chain_with_pan_and_zoom() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let grid = imagine(
        &w,
        w.alice,
        w.channel,
        "a fox in the snow --seed 9 --steps 4",
    )
    .await;
    let u3 = click(&w, w.alice, &grid, "U3").await;
    let picture = png_of(&w.sim, &u3);

    let subtle = click(&w, w.alice, &u3, "Upscale (Subtle)").await;
    assert!(
        subtle.content.contains("Upscaled (Subtle)"),
        "{}",
        subtle.content
    );
    let (big, text) = png_and_parameters(&w.sim, &subtle);
    assert_eq!(big.dimensions(), (128, 128));
    assert!(
        text.contains("Size: 128x128") && text.contains("Denoising strength: 0.25"),
        "{text}"
    );
    let resized = imageops::resize(&picture, 128, 128, imageops::FilterType::Lanczos3);
    assert_ne!(big, resized, "more than a resize");
    // An upscaled image has the whole toolbox, a second upscale included.
    for label in ["Vary (Subtle)", "Upscale (Creative)", "Zoom Out 2x", "⬇️"] {
        button(&subtle, label);
    }
    let creative = click(&w, w.alice, &subtle, "Upscale (Creative)").await;
    assert_eq!(png_of(&w.sim, &creative).dimensions(), (256, 256));

    // The chain: Pan, then Zoom Out, then Upscale.
    let pan = click(&w, w.alice, &u3, "⬇️").await;
    let pan_u1 = click(&w, w.alice, &pan, "U1").await;
    assert_eq!(png_of(&w.sim, &pan_u1).dimensions(), (64, 96));
    let zoom = click(&w, w.alice, &pan_u1, "Zoom Out 2x").await;
    let zoom_u4 = click(&w, w.alice, &zoom, "U4").await;
    assert_eq!(png_of(&w.sim, &zoom_u4).dimensions(), (64, 96));
    let up = click(&w, w.alice, &zoom_u4, "Upscale (Subtle)").await;
    assert_eq!(png_of(&w.sim, &up).dimensions(), (128, 192));
    bot.stop().await;

    let jobs = all_jobs(w.dir.path()).await;
    assert!(jobs
        .iter()
        .all(|j| j.status == imagine::store::JobStatus::Done));
    let kinds: Vec<&str> = jobs.iter().map(|j| j.request.kind.as_str()).collect();
    assert!(kinds.contains(&"upscale_subtle") && kinds.contains(&"upscale_creative"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_esrgan_model_is_the_first_stage_of_upscales() {
    let w = world().await;
    let esrgan = root().join("assets/models/tiny-esrgan-x2.safetensors");
    let env = [("IMAGINE_UPSCALER", esrgan.to_str().unwrap())];
    let bot = start_bot(&w.sim, w.dir.path(), &env).await;
    let grid = imagine(&w, w.alice, w.channel, "a red barn --seed 2 --steps 4").await;
    let u1 = click(&w, w.alice, &grid, "U1").await;
    let up = click(&w, w.alice, &u1, "Upscale (Subtle)").await;
    let (img, text) = png_and_parameters(&w.sim, &up);
    assert_eq!(img.dimensions(), (128, 128));
    assert!(text.contains(", Upscaler: tiny-esrgan-x2"), "{text}");
    bot.stop().await;

    // A file that is not an ESRGAN model stops the bot at start, saying why.
    let taesd = root().join("assets/models/tiny-taesd/diffusion_pytorch_model.safetensors");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagine"))
        .arg("bot")
        .env("DISCORD_TOKEN", w.sim.token())
        .env("DISCORD_API_BASE", w.sim.api_base())
        .env("IMAGINE_MODEL", root().join("assets/models/tiny-sd15"))
        .env("IMAGINE_DB", w.dir.path().join("other.db"))
        .env("IMAGINE_DATA_DIR", w.dir.path().join("other"))
        .env("IMAGINE_UPSCALER", &taesd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("upscaler") && err.contains("conv_first"),
        "{err}"
    );
}

/// The bot's DMs to `user` so far, as text.
fn dms_to(w: &World, user: serenity::all::UserId) -> Vec<String> {
    let dm = w.sim.dm_channel(user).unwrap();
    w.sim
        .message_events()
        .iter()
        .filter(|e| e.channel_id == dm)
        .map(|e| e.message["content"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_reaction_sends_the_seeds_and_parameters_by_dm() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    let grid = imagine(
        &w,
        w.alice,
        w.channel,
        "a quiet harbour --seed 1234 --steps 2",
    )
    .await;
    // Other emoji, and messages that are no job, are left alone.
    w.sim.add_reaction(w.bob, grid.id, "❤️").unwrap();
    bot.stop().await;

    // After a restart, ✉️ on the grid: Bob (who did not make it) gets its parameters.
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    w.sim.add_reaction(w.bob, grid.id, "✉️").unwrap();
    let dm = w
        .sim
        .wait_until("the parameters by DM", WAIT, |_| {
            dms_to(&w, w.bob).into_iter().find(|t| t.contains("seeds"))
        })
        .await
        .unwrap();
    assert!(dm.contains("seeds 1234, 1235, 1236, 1237"), "{dm}");
    assert!(dm.contains("a quiet harbour\nSteps: 2, Sampler: "), "{dm}");
    assert!(dm.contains("Seed: 1234, Size: 64x64"), "{dm}");
    assert_eq!(dms_to(&w, w.bob).len(), 1, "one DM, for the one envelope");
    assert!(dms_to(&w, w.alice).is_empty());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_shows_your_jobs_the_queue_and_the_models() {
    let w = world().await;
    let bot = start_bot(&w.sim, w.dir.path(), &[]).await;
    imagine(&w, w.alice, w.channel, "a warm-up --steps 2").await;
    let first = run_imagine(&w, w.alice, w.channel, "a slow long river --steps 20", None);
    wait_status(w.dir.path(), 2, imagine::store::JobStatus::Running).await;
    let second = run_imagine(
        &w,
        w.alice,
        w.channel,
        "a slow second river --steps 2",
        None,
    );
    w.sim.wait_callback(&second, WAIT).await.unwrap();
    // In line once its first reply is confirmed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !all_jobs(w.dir.path())
        .await
        .iter()
        .any(|j| j.id.0 == 3 && j.delivery.admitted)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job 3 never admitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let ask = w
        .sim
        .slash_command(w.alice, w.channel, "info", vec![])
        .unwrap();
    let cb = w.sim.wait_callback(&ask, WAIT).await.unwrap();
    assert_eq!(cb.data["flags"].as_u64().unwrap_or(0) & 64, 64, "private");
    let text = cb.data["content"].as_str().unwrap();
    assert!(text.contains("`a slow long river` (running)"), "{text}");
    assert!(
        text.contains("`a slow second river` (waiting, position 1)"),
        "{text}"
    );
    assert!(
        text.contains("**Queue**: 1 waiting, 1 running on 1 worker"),
        "{text}"
    );
    assert!(
        text.contains("`tiny-sd15` (default): a job takes about"),
        "{text}"
    );
    // Bob has none.
    let ask = w
        .sim
        .slash_command(w.bob, w.channel, "info", vec![])
        .unwrap();
    let cb = w.sim.wait_callback(&ask, WAIT).await.unwrap();
    assert!(cb.data["content"]
        .as_str()
        .unwrap()
        .contains("None queued or running."));
    for run in [&first, &second] {
        finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    }
    bot.stop().await;
}

/// The custom_id of the one select menu on `msg`.
fn select_id(msg: &serenity::all::Message) -> String {
    let v = serde_json::to_value(&msg.components).unwrap();
    let select = &v[0]["components"][0];
    assert_eq!(select["type"], 3, "a string select: {v}");
    assert_eq!(v.as_array().unwrap().len(), 1, "one row: {v}");
    select["custom_id"].as_str().unwrap().to_string()
}

/// How far apart two images are inside columns `x0..x1`, in summed 0-255 levels.
fn difference_in(a: &RgbImage, b: &RgbImage, x0: u32, x1: u32) -> u64 {
    (0..a.height())
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .map(|(x, y)| {
            let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
            (0..3).map(|c| p[c].abs_diff(q[c]) as u64).sum::<u64>()
        })
        .sum()
}

/// Picks `values` in the region menu `menu` as `user`; the finished Vary (Region) grid.
async fn pick_region(
    w: &World,
    user: serenity::all::UserId,
    menu: &serenity::all::Message,
    values: &[&str],
) -> serenity::all::Message {
    let pick = w
        .sim
        .select_values(user, menu.id, &select_id(menu), values)
        .unwrap();
    let cb = w.sim.wait_callback(&pick, WAIT).await.unwrap();
    assert_eq!(cb.kind, 4, "a new message for the new job: {}", cb.data);
    finished(&w.sim, &[original_path(&w.sim, &pick.token)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_region_repaints_only_the_picked_cells_and_works_after_a_restart() {
    let w = world().await;
    let dir = w.dir.path();
    let bot = start_bot(&w.sim, dir, &[]).await;
    let grid = imagine(
        &w,
        w.alice,
        w.channel,
        "a cottage in a field --seed 5 --steps 3",
    )
    .await;
    let u1 = click(&w, w.alice, &grid, "U1").await;
    let picture = png_of(&w.sim, &u1);
    assert_eq!(picture.dimensions(), (64, 64));

    // Vary (Region) answers privately with the menu of areas.
    let open = w
        .sim
        .click_button(w.alice, u1.id, &button(&u1, "Vary (Region)"))
        .unwrap();
    let cb = w.sim.wait_callback(&open, WAIT).await.unwrap();
    assert_reply(&cb, "Vary (Region)", true);
    let menu = w.sim.response_message(&open).expect("the region menu");
    let select = serde_json::to_value(&menu.components).unwrap()[0]["components"][0].clone();
    assert_eq!(select["options"].as_array().unwrap().len(), 13, "{select}");
    assert_eq!(
        (select["min_values"].clone(), select["max_values"].clone()),
        (serde_json::json!(1), serde_json::json!(13))
    );
    assert!(matches!(
        w.sim
            .select_values(w.bob, menu.id, &select_id(&menu), &["c0"]),
        Err(imagine_tests::SimError::NotVisible(_))
    ));

    // The left column: repainted; everything right of it and its feather, identical.
    let left = pick_region(&w, w.alice, &menu, &["c0", "c3", "c6"]).await;
    assert!(
        left.content.contains("Variations (Region)"),
        "{}",
        left.content
    );
    let out = png_of(&w.sim, &left);
    assert_eq!(out.dimensions(), (128, 128), "four 64 px images");
    let f = region_feather((64, 64));
    for k in 0..4 {
        let q = quadrant(&out, k);
        let kept = imageops::crop_imm(&picture, 21 + f, 0, 64 - 21 - f, 64).to_image();
        assert_kept(&q, &kept, (21 + f, 0), [0; 4], "right of the left column");
        assert!(
            difference_in(&q, &picture, 0, 21) > 21 * 64 * 3,
            "image {k}: the left column was repainted"
        );
    }
    assert_ne!(
        quadrant(&out, 0),
        quadrant(&out, 1),
        "four different repaintings"
    );
    bot.stop().await;

    // After a restart the same menu still works: the right half this time.
    let bot = start_bot(&w.sim, dir, &[]).await;
    let right = pick_region(&w, w.alice, &menu, &["hr"]).await;
    let out = png_of(&w.sim, &right);
    for k in 0..4 {
        let q = quadrant(&out, k);
        let kept = imageops::crop_imm(&picture, 0, 0, 32 - f, 64).to_image();
        assert_kept(&q, &kept, (0, 0), [0; 4], "left of the right half");
        assert!(difference_in(&q, &picture, 32, 64) > 32 * 64 * 3);
    }
    // And its result has the toolbox again.
    button(&right, "U1");
    bot.stop().await;

    let jobs = all_jobs(dir).await;
    let regions: Vec<_> = jobs
        .iter()
        .filter(|j| j.request.kind == imagine::store::JobKind::VaryRegion)
        .collect();
    assert_eq!(regions.len(), 2);
    assert_eq!(
        regions[0].request.params.region.as_deref(),
        Some("c0,c3,c6")
    );
    assert_eq!(regions[1].request.params.region.as_deref(), Some("hr"));
    let u1_job = jobs
        .iter()
        .find(|j| j.request.kind == imagine::store::JobKind::Upscale)
        .unwrap();
    for job in regions {
        assert_eq!(job.status, imagine::store::JobStatus::Done);
        let parent = job.request.parent.unwrap();
        assert_eq!((parent.job, parent.index), (u1_job.id, Some(0)));
    }
}

/// A PNG of a `w` x `h` mask, white where `paint(x, y)`.
fn mask_png(w: u32, h: u32, paint: impl Fn(u32, u32) -> bool) -> Vec<u8> {
    let mask = image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([if paint(x, y) { 255 } else { 0 }])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    mask.write_to(&mut png, image::ImageFormat::Png).unwrap();
    png.into_inner()
}

fn run_region(w: &World, job: &str, mask: Vec<u8>) -> imagine_tests::Interaction {
    let options = vec![
        ("job", imagine_tests::OptionValue::from(job)),
        ("mask", imagine_tests::Upload::png("mask.png", mask).into()),
    ];
    w.sim
        .slash_command(w.alice, w.channel, "region", options)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_with_a_painted_mask_repaints_what_was_painted_and_refuses_bad_masks() {
    let w = world().await;
    let dir = w.dir.path();
    let bot = start_bot(&w.sim, dir, &[]).await;
    let grid = imagine(
        &w,
        w.alice,
        w.channel,
        "a boat on a lake --seed 8 --steps 3",
    )
    .await;
    let u2 = click(&w, w.alice, &grid, "U2").await;
    let picture = png_of(&w.sim, &u2);

    // By message link, a 20x10 mask whose top half is white: stretched to the 64x64 picture.
    let link = format!(
        "https://discord.com/channels/{}/{}/{}",
        u2.guild_id.unwrap(),
        w.channel,
        u2.id
    );
    let run = run_region(&w, &link, mask_png(20, 10, |_, y| y < 5));
    assert_eq!(w.sim.wait_callback(&run, WAIT).await.unwrap().kind, 5);
    let top = finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    assert!(
        top.content.contains("Variations (Region)"),
        "{}",
        top.content
    );
    let out = png_of(&w.sim, &top);
    let f = region_feather((64, 64));
    let below = imageops::crop_imm(&picture, 0, 32 + f, 64, 32 - f).to_image();
    for k in 0..4 {
        let q = quadrant(&out, k);
        assert_kept(&q, &below, (0, 32 + f), [0; 4], "below the painted half");
        let top_half = |img: &RgbImage| imageops::crop_imm(img, 0, 0, 64, 32).to_image();
        assert!(difference_in(&top_half(&q), &top_half(&picture), 0, 64) > 64 * 32 * 3);
    }
    // A grid is refused at once, privately: pick a U image first.
    let grid_link = format!("https://discord.com/channels/@me/{}/{}", w.channel, grid.id);
    let refused = run_region(&w, &grid_link, mask_png(8, 8, |x, _| x < 4));
    let cb = w.sim.wait_callback(&refused, WAIT).await.unwrap();
    assert_reply(&cb, "press U1-U4", true);
    bot.stop().await;

    // After a restart, by job number: a mask with nothing white is refused privately (the
    // "thinking" message goes away); a good one works.
    let bot = start_bot(&w.sim, dir, &[]).await;
    let jobs = all_jobs(dir).await;
    let u2_job = jobs
        .iter()
        .find(|j| j.request.kind == imagine::store::JobKind::Upscale)
        .unwrap()
        .id
        .0
        .to_string();
    let black = run_region(&w, &u2_job, mask_png(64, 64, |_, _| false));
    assert_eq!(w.sim.wait_callback(&black, WAIT).await.unwrap().kind, 5);
    let said = w.sim.wait_followup(&black, WAIT).await.unwrap();
    assert!(said.content.contains("no white area"), "{}", said.content);
    assert!(said
        .flags
        .unwrap()
        .contains(serenity::all::MessageFlags::EPHEMERAL));
    let not_png = run_region(&w, &u2_job, b"not an image at all".to_vec());
    w.sim.wait_callback(&not_png, WAIT).await.unwrap();
    let said = w.sim.wait_followup(&not_png, WAIT).await.unwrap();
    assert!(said.content.contains("not an image"), "{}", said.content);

    let run = run_region(&w, &u2_job, mask_png(64, 64, |x, _| x >= 48));
    let right = finished(&w.sim, &[original_path(&w.sim, &run.token)]).await;
    let out = png_of(&w.sim, &right);
    let left = imageops::crop_imm(&picture, 0, 0, 48 - f, 64).to_image();
    assert_kept(
        &quadrant(&out, 0),
        &left,
        (0, 0),
        [0; 4],
        "left of the painted strip",
    );
    bot.stop().await;

    let jobs = all_jobs(dir).await;
    let painted: Vec<_> = jobs
        .iter()
        .filter(|j| j.request.kind == imagine::store::JobKind::VaryRegion)
        .collect();
    assert_eq!(painted.len(), 2, "refusals make no job");
    for job in painted {
        assert_eq!(job.status, imagine::store::JobStatus::Done);
        let mask = job.request.params.region_mask.as_deref().unwrap();
        let saved = image::open(mask).unwrap().to_luma8();
        assert_eq!(saved.dimensions(), (64, 64), "saved fitted to the picture");
    }
}

/// Presses Custom Zoom under `msg`; the interaction its modal answers.
async fn open_custom_zoom(w: &World, msg: &serenity::all::Message) -> imagine_tests::Interaction {
    let open = w
        .sim
        .click_button(w.alice, msg.id, &button(msg, "Custom Zoom"))
        .unwrap();
    let cb = w.sim.wait_callback(&open, WAIT).await.unwrap();
    assert_eq!(cb.kind, 9, "a modal: {}", cb.data);
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_zoom_opens_a_pre_filled_modal_and_zooms_as_submitted_after_a_restart() {
    let w = world().await;
    let dir = w.dir.path();
    let bot = start_bot(&w.sim, dir, &[]).await;
    let grid = imagine(&w, w.alice, w.channel, "a windmill --seed 6 --steps 3").await;
    let u3 = click(&w, w.alice, &grid, "U3").await;
    let picture = png_of(&w.sim, &u3);

    let open = open_custom_zoom(&w, &u3).await;
    let modal = w.sim.open_modal(&open).expect("the modal is open");
    assert_eq!(modal["title"], "Custom Zoom");
    let input = &modal["components"][0]["components"][0];
    assert_eq!(input["value"], "a windmill --ar 1:1 --zoom 2");
    // A factor out of range is refused privately; nothing is queued.
    let bad = w
        .sim
        .submit_modal(w.alice, &open, &[("prompt", "a windmill --zoom 3")])
        .unwrap();
    let cb = w.sim.wait_callback(&bad, WAIT).await.unwrap();
    assert_reply(&cb, "outside 1 to 2", true);

    // Opened before a restart, submitted after it: a new prompt, 1.5x, and a 2:1 canvas.
    let open = open_custom_zoom(&w, &u3).await;
    bot.stop().await;
    let bot = start_bot(&w.sim, dir, &[]).await;
    let text = "a windmill at night --zoom 1.5 --ar 2:1";
    let submit = w
        .sim
        .submit_modal(w.alice, &open, &[("prompt", text)])
        .unwrap();
    assert_eq!(w.sim.wait_callback(&submit, WAIT).await.unwrap().kind, 4);
    let zoom = finished(&w.sim, &[original_path(&w.sim, &submit.token)]).await;
    assert!(
        zoom.content.contains("a windmill at night") && zoom.content.contains("Zoom Out 1.5x"),
        "{}",
        zoom.content
    );
    let zoomed = png_of(&w.sim, &zoom);
    assert_eq!(zoomed.dimensions(), (256, 128), "four 128x64 images");
    // The picture, shrunk to two thirds of the canvas height, in the middle.
    let shrunk = imageops::resize(&picture, 43, 43, imageops::FilterType::Lanczos3);
    for k in 0..4 {
        assert_kept(
            &quadrant(&zoomed, k),
            &shrunk,
            (42, 10),
            [10; 4],
            "custom zoom",
        );
    }
    bot.stop().await;

    let jobs = all_jobs(dir).await;
    let job = jobs
        .iter()
        .find(|j| j.request.prompt == "a windmill at night")
        .unwrap();
    assert_eq!(job.request.kind, imagine::store::JobKind::ZoomOut);
    assert_eq!(job.request.params.zoom, Some(1.5));
    assert_eq!(
        jobs.len(),
        3,
        "grid, U3, the zoom: the refused form queued nothing"
    );
}

/// The job with this prompt, from the store.
async fn job_with_prompt(dir: &std::path::Path, prompt: &str) -> imagine::store::Job {
    all_jobs(dir)
        .await
        .into_iter()
        .rev()
        .find(|j| j.request.prompt == prompt)
        .unwrap_or_else(|| panic!("no job {prompt:?}"))
}

/// Uses a control of the /settings panel; the panel as redrawn.
async fn use_panel(
    w: &World,
    panel: &serenity::all::Message,
    custom_id: &str,
    values: Option<&[&str]>,
) -> serenity::all::Message {
    let run = match values {
        Some(values) => w.sim.select_values(w.alice, panel.id, custom_id, values),
        None => w.sim.click_button(w.alice, panel.id, custom_id),
    }
    .unwrap();
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_eq!(cb.kind, 7, "the panel is redrawn in place: {}", cb.data);
    w.sim.message(panel.id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_prefer_suffix_shape_the_next_jobs_after_a_restart() {
    let w = world().await;
    let dir = w.dir.path();
    let bot = start_bot(&w.sim, dir, &[]).await;
    let run = w
        .sim
        .slash_command(w.alice, w.channel, "settings", vec![])
        .unwrap();
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_reply(&cb, "Remix mode: off", true);
    assert!(cb.data["content"]
        .as_str()
        .unwrap()
        .contains("Model: `tiny-sd15`"));
    let panel = w.sim.response_message(&run).unwrap();
    let panel = use_panel(&w, &panel, "im1:set:style", Some(&["raw"])).await;
    assert!(panel.content.contains("Stylize: raw"), "{}", panel.content);
    let panel = use_panel(&w, &panel, "im1:set:vl", None).await;
    assert!(
        panel.content.contains("Variation: low"),
        "{}",
        panel.content
    );
    let prefer = |text: &str| {
        let sub = imagine_tests::OptionValue::Subcommand(vec![("text".into(), text.into())]);
        w.sim
            .slash_command(w.alice, w.channel, "prefer", vec![("suffix", sub)])
            .unwrap()
    };
    let cb = w
        .sim
        .wait_callback(&prefer("--bogus 1"), WAIT)
        .await
        .unwrap();
    assert_reply(&cb, "does not work after a prompt", true);
    let cb = w
        .sim
        .wait_callback(&prefer("in watercolour"), WAIT)
        .await
        .unwrap();
    assert_reply(&cb, "now ends with `in watercolour`", true);
    bot.stop().await;

    // After a restart: the suffix, the preset and Low Variation Mode apply to Alice's jobs.
    let bot = start_bot(&w.sim, dir, &[]).await;
    let grid = imagine(&w, w.alice, w.channel, "a harbour --seed 3 --steps 2").await;
    let job = job_with_prompt(dir, "a harbour in watercolour").await;
    assert_eq!(job.request.params.stylize, Some(20), "the raw preset");
    assert!((job.request.params.guidance - 2.3).abs() < 1e-4);
    let v1 = click(&w, w.alice, &grid, "V1").await;
    let _ = v1;
    let variation = all_jobs(dir).await.into_iter().last().unwrap();
    assert_eq!(variation.request.kind, imagine::store::JobKind::Variation);
    assert_eq!(
        variation.request.params.strength,
        Some(0.35),
        "Low Variation Mode"
    );
    // Bob's jobs keep the bot's defaults.
    imagine(&w, w.bob, w.channel, "a lighthouse --seed 3 --steps 2").await;
    let bobs = job_with_prompt(dir, "a lighthouse").await;
    assert_eq!(bobs.request.params.stylize, None);
    bot.stop().await;
}

/// Submits `text` into the modal `open` got; the interaction of the submission.
fn submit_prompt(
    w: &World,
    open: &imagine_tests::Interaction,
    text: &str,
) -> imagine_tests::Interaction {
    w.sim
        .submit_modal(w.alice, open, &[("prompt", text)])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remix_mode_puts_the_prompt_before_v_zoom_and_region_even_across_a_restart() {
    let w = world().await;
    let dir = w.dir.path();
    let bot = start_bot(&w.sim, dir, &[]).await;
    let run = w
        .sim
        .slash_command(w.alice, w.channel, "settings", vec![])
        .unwrap();
    w.sim.wait_callback(&run, WAIT).await.unwrap();
    let panel = w.sim.response_message(&run).unwrap();
    let panel = use_panel(&w, &panel, "im1:set:remix", None).await;
    assert!(
        panel.content.contains("Remix mode: on"),
        "{}",
        panel.content
    );
    let grid = imagine(&w, w.alice, w.channel, "a red kite --seed 4 --steps 2").await;

    // V2 opens the modal, pre-filled; it is submitted after a restart.
    let open = w
        .sim
        .click_button(w.alice, grid.id, &button(&grid, "V2"))
        .unwrap();
    assert_eq!(w.sim.wait_callback(&open, WAIT).await.unwrap().kind, 9);
    let modal = w.sim.open_modal(&open).unwrap();
    assert_eq!(modal["title"], "Remix");
    assert_eq!(
        modal["components"][0]["components"][0]["value"],
        "a red kite --ar 1:1"
    );
    bot.stop().await;
    let bot = start_bot(&w.sim, dir, &[]).await;
    let submit = submit_prompt(&w, &open, "a blue kite --ar 1:1 --seed 77");
    assert_eq!(w.sim.wait_callback(&submit, WAIT).await.unwrap().kind, 4);
    let blue = finished(&w.sim, &[original_path(&w.sim, &submit.token)]).await;
    assert!(blue.content.contains("a blue kite"), "{}", blue.content);
    let job = job_with_prompt(dir, "a blue kite").await;
    assert_eq!(job.request.kind, imagine::store::JobKind::Variation);
    assert_eq!(job.request.seeds, vec![77, 78, 79, 80]);
    assert_eq!(job.request.parent.unwrap().index, Some(1));

    // U is not remixed; under it, Zoom Out asks first, and a new shape is refused.
    let u1 = click(&w, w.alice, &grid, "U1").await;
    let open = w
        .sim
        .click_button(w.alice, u1.id, &button(&u1, "Zoom Out 2x"))
        .unwrap();
    assert_eq!(w.sim.wait_callback(&open, WAIT).await.unwrap().kind, 9);
    let refused = submit_prompt(&w, &open, "a red kite --ar 2:1");
    let cb = w.sim.wait_callback(&refused, WAIT).await.unwrap();
    assert_reply(&cb, "keeps the image's shape", true);

    // Vary (Region): the menu first, then the modal for the picked cell.
    let open = w
        .sim
        .click_button(w.alice, u1.id, &button(&u1, "Vary (Region)"))
        .unwrap();
    w.sim.wait_callback(&open, WAIT).await.unwrap();
    let menu = w.sim.response_message(&open).unwrap();
    let pick = w
        .sim
        .select_values(w.alice, menu.id, &select_id(&menu), &["c4"])
        .unwrap();
    assert_eq!(w.sim.wait_callback(&pick, WAIT).await.unwrap().kind, 9);
    let submit = submit_prompt(&w, &pick, "a red kite and a sun --ar 1:1");
    let sun = finished(&w.sim, &[original_path(&w.sim, &submit.token)]).await;
    assert!(
        sun.content.contains("Variations (Region)"),
        "{}",
        sun.content
    );
    let job = job_with_prompt(dir, "a red kite and a sun").await;
    assert_eq!(job.request.kind, imagine::store::JobKind::VaryRegion);
    assert_eq!(job.request.params.region.as_deref(), Some("c4"));
    bot.stop().await;
}

/// A config file giving tiny-sd15 the inpainting variant `inpaint` (relative to assets/models).
fn inpaint_config(dir: &std::path::Path, inpaint: &str) -> std::path::PathBuf {
    let models = root().join("assets/models");
    let text = format!(
        "[models]\ntiny-sd15 = {{ path = {:?}, inpaint_model = {:?} }}\n",
        models.join("tiny-sd15").to_str().unwrap(),
        models.join(inpaint).to_str().unwrap()
    );
    let path = dir.join(format!("imagine-{}.toml", inpaint.replace('/', "_")));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_inpaint_model_paints_zoom_pan_and_region() {
    let w = world().await;
    let dir = w.dir.path();
    let config = inpaint_config(dir, "tiny-sd15-inpainting.safetensors");
    let env = [("IMAGINE_CONFIG", config.to_str().unwrap())];
    let bot = start_bot(&w.sim, dir, &env).await;
    let grid = imagine(
        &w,
        w.alice,
        w.channel,
        "a castle on a hill --seed 2 --steps 3",
    )
    .await;
    let v1 = click(&w, w.alice, &grid, "V1").await;
    let (_, text) = png_and_parameters(&w.sim, &v1);
    assert!(text.contains("Model: tiny-sd15"), "{text}");
    assert!(!text.contains("inpainting"), "V1 is no canvas job: {text}");
    let u1 = click(&w, w.alice, &grid, "U1").await;
    let picture = png_of(&w.sim, &u1);

    let zoom = click(&w, w.alice, &u1, "Zoom Out 2x").await;
    let (zoomed, text) = png_and_parameters(&w.sim, &zoom);
    assert!(text.contains("Model: tiny-sd15-inpainting"), "{text}");
    let shrunk = imageops::resize(&picture, 32, 32, imageops::FilterType::Lanczos3);
    let f = FEATHER.min(32 / 4);
    for k in 0..4 {
        let q = quadrant(&zoomed, k);
        assert_kept(
            &q,
            &shrunk,
            (16, 16),
            [f; 4],
            "zoom with the inpainting model",
        );
        // The border is painted, not left flat.
        let border: Vec<u8> = (0..64).map(|x| q.get_pixel(x, 2)[1]).collect();
        assert!(border.iter().max() > border.iter().min(), "{border:?}");
    }
    let pan = click(&w, w.alice, &u1, "➡️").await;
    let (panned, text) = png_and_parameters(&w.sim, &pan);
    assert!(text.contains("Model: tiny-sd15-inpainting"), "{text}");
    let pf = FEATHER.min(64 / 4);
    assert_kept(
        &quadrant(&panned, 0),
        &picture,
        (0, 0),
        [0, pf, 0, 0],
        "pan",
    );

    let open = w
        .sim
        .click_button(w.alice, u1.id, &button(&u1, "Vary (Region)"))
        .unwrap();
    w.sim.wait_callback(&open, WAIT).await.unwrap();
    let menu = w.sim.response_message(&open).unwrap();
    let region = pick_region(&w, w.alice, &menu, &["hb"]).await;
    let (out, text) = png_and_parameters(&w.sim, &region);
    assert!(text.contains("Model: tiny-sd15-inpainting"), "{text}");
    let rf = region_feather((64, 64));
    let top = imageops::crop_imm(&picture, 0, 0, 64, 32 - rf).to_image();
    assert_kept(
        &quadrant(&out, 0),
        &top,
        (0, 0),
        [0; 4],
        "above the bottom half",
    );
    bot.stop().await;

    // A model that is no inpainting model is refused at start, saying why.
    let bad = inpaint_config(dir, "tiny-sd15");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagine"))
        .arg("bot")
        .env("DISCORD_TOKEN", w.sim.token())
        .env("DISCORD_API_BASE", w.sim.api_base())
        .env("IMAGINE_MODEL", root().join("assets/models/tiny-sd15"))
        .env("IMAGINE_CONFIG", &bad)
        .env("IMAGINE_DB", dir.join("other.db"))
        .env("IMAGINE_DATA_DIR", dir.join("other"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not an inpainting model"), "{err}");
}
