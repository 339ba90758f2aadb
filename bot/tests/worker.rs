//! The worker with TAESD: fast-decoded grids keep their latents, and U on such a grid gives
//! exactly the image the full VAE would have made, with the same parameters as without TAESD.
//! And precision: a button job computes in its parent's precision, whatever the worker's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imagine::buttons::ButtonAction;
use imagine::jobs::{button_job, imagine_job, Requester};
use imagine::params::parse_prompt;
use imagine::render::read_parameters;
use imagine::store::{ImageRecord, Job, JobId, JobStatus, NewJob};
use imagine::worker::{latents_path, run_job, Engines, JobOutput, WorkItem};
use imagine_engine::{Precision, StableDiffusion};

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
        compute: None,
    }
}

fn run_out(engines: &mut Engines, job: &Job, data: &Path) -> JobOutput {
    let item = WorkItem { job: job.clone() };
    run_job(engines, &item, data, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap()
}

fn run(engines: &mut Engines, job: &Job, data: &Path) -> Vec<ImageRecord> {
    run_out(engines, job, data).images
}

/// A grid job, then U2 under it; returns the grid's images and U2's image.
fn grid_then_u2(fast_grids: bool, data: &Path) -> (Vec<ImageRecord>, ImageRecord) {
    let mut engines = engines(fast_grids);
    let info = StableDiffusion::describe(&asset("tiny-sd15")).unwrap();
    let parsed = parse_prompt("a brown puppy on the beach --seed 42 --steps 4 --chaos 20").unwrap();
    let grid = job(1, imagine_job(&parsed, "tiny-sd15", &info, who(), None, 0));
    let images = run(&mut engines, &grid, data);
    let u2 = button_job(ButtonAction::Upscale(1), &grid, &images, who(), 0, 2048).unwrap();
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

#[test]
fn a_button_job_computes_in_its_parents_precision() {
    let specs = BTreeMap::from([(
        "tiny-sd15".to_string(),
        asset("tiny-sd15").display().to_string(),
    )]);
    let on = |p: Precision| Engines::new(specs.clone()).on(candle_core::Device::Cpu, p);
    let data = tempfile::tempdir().unwrap();
    let info = StableDiffusion::describe(&asset("tiny-sd15")).unwrap();
    let parsed = parse_prompt("a red fox in the snow --seed 7 --steps 4").unwrap();
    let grid = job(1, imagine_job(&parsed, "tiny-sd15", &info, who(), None, 0));
    let out = run_out(&mut on(Precision::Fp16), &grid, data.path());
    assert_eq!(
        (out.compute.precision.as_str(), out.compute.device.as_str()),
        ("fp16", "cpu")
    );
    assert!(png(&out.images[0])
        .1
        .contains(", Precision: fp16, Device: cpu"));

    // The grid as stored after it finished, then V2 under it, on workers whose own
    // precision differs: both run it in fp16 and make the same pixels.
    let mut parent = grid.clone();
    parent.compute = Some(out.compute.clone());
    let v2 = button_job(
        ButtonAction::Variation(1),
        &parent,
        &out.images,
        who(),
        3,
        2048,
    )
    .unwrap();
    assert_eq!(v2.params.precision.as_deref(), Some("fp16"));
    let on_fp32 = run_out(&mut on(Precision::Fp32), &job(2, v2.clone()), data.path());
    assert_eq!(on_fp32.compute.precision, "fp16");
    let first = png(&on_fp32.images[0]);
    let on_fp16 = run_out(&mut on(Precision::Fp16), &job(3, v2), data.path());
    assert_eq!(png(&on_fp16.images[0]).0, first.0, "same job, same pixels");
    assert!(first.1.contains("Precision: fp16"), "{}", first.1);

    // A precision the worker cannot offer (an unknown name here) falls back to its own.
    let mut odd = grid.clone();
    odd.request.params.precision = Some("fp8".into());
    let out = run_out(&mut on(Precision::Fp32), &job(4, odd.request), data.path());
    assert_eq!(out.compute.precision, "fp32");
}
