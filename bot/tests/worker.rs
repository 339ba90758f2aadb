//! The worker with TAESD: fast-decoded grids keep their latents, and U on such a grid gives
//! exactly the image the full VAE would have made, with the same parameters as without TAESD.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imagine::buttons::ButtonAction;
use imagine::jobs::{button_job, imagine_job, Requester};
use imagine::params::parse_prompt;
use imagine::render::read_parameters;
use imagine::store::{ImageRecord, Job, JobId, JobStatus, NewJob};
use imagine::worker::{latents_path, run_job, Engines, WorkItem};
use imagine_engine::StableDiffusion;

fn asset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models")
        .join(name)
}

fn engines(fast_grids: bool) -> Engines {
    let specs = BTreeMap::from([(
        "tiny-sd15".to_string(),
        asset("tiny-sd15").display().to_string(),
    )]);
    Engines::new(specs).with_taesd(asset("tiny-taesd"), "tiny-taesd".into(), fast_grids)
}

fn who() -> Requester {
    Requester {
        user_id: 1,
        channel_id: 2,
        guild_id: None,
        is_dm: true,
        interaction_token: None,
        application_id: None,
        bot_in_place: true,
    }
}

fn job(id: i64, request: NewJob) -> Job {
    Job {
        id: JobId(id),
        request,
        message_id: None,
        status: JobStatus::Running,
        error: None,
        created_at: 0,
        started_at: None,
        finished_at: None,
        delivery: Default::default(),
    }
}

fn run(engines: &mut Engines, job: &Job, data: &Path) -> Vec<ImageRecord> {
    let item = WorkItem { job: job.clone() };
    run_job(engines, &item, data, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap()
}

/// A grid job, then U2 under it; returns the grid's images and U2's image.
fn grid_then_u2(fast_grids: bool, data: &Path) -> (Vec<ImageRecord>, ImageRecord) {
    let mut engines = engines(fast_grids);
    let info = StableDiffusion::describe(&asset("tiny-sd15")).unwrap();
    let parsed = parse_prompt("a brown puppy on the beach --seed 42 --steps 4 --chaos 20").unwrap();
    let grid = job(1, imagine_job(&parsed, "tiny-sd15", &info, who(), None, 0));
    let images = run(&mut engines, &grid, data);
    let u2 = button_job(ButtonAction::Upscale(1), &grid, &images, who(), 0).unwrap();
    let single = run(&mut engines, &job(2, u2), data).remove(0);
    (images, single)
}

fn png(record: &ImageRecord) -> (image::RgbImage, String) {
    let bytes = std::fs::read(&record.path).unwrap();
    let text = read_parameters(&bytes).unwrap().expect("parameters");
    (image::load_from_memory(&bytes).unwrap().to_rgb8(), text)
}

#[test]
fn u_under_a_fast_grid_is_the_full_vae_image() {
    let (fast_dir, full_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (fast_grid, fast_u) = grid_then_u2(true, fast_dir.path());
    let (full_grid, full_u) = grid_then_u2(false, full_dir.path());

    let (fast_img, fast_text) = png(&fast_grid[1]);
    let (full_img, full_text) = png(&full_grid[1]);
    assert!(fast_text.ends_with(", VAE: tiny-taesd"), "{fast_text}");
    assert!(!full_text.contains("VAE:"), "{full_text}");
    assert_ne!(fast_img, full_img, "the grid was decoded by TAESD");
    assert!(latents_path(&fast_grid[1].path).exists());
    assert!(!latents_path(&full_grid[1].path).exists());

    let (u_fast, u_fast_text) = png(&fast_u);
    let (u_full, u_full_text) = png(&full_u);
    assert_eq!(
        u_fast, u_full,
        "U decodes the kept latents with the full VAE"
    );
    assert_eq!(u_fast, full_img);
    assert_eq!(u_fast_text, u_full_text);
    assert_eq!(fast_u.seed, full_u.seed);
}
