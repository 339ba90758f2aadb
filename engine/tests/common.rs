//! Shared helpers for the engine's integration tests: paths to the committed tiny models and
//! diffusers references, and loading them through the real loading code.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use imagine_engine::{LoadOptions, StableDiffusion};

pub const MODELS: [&str; 2] = ["tiny-sd15", "tiny-sd2-v"];
pub const PROMPT: &str = "a brown puppy on the beach";
pub const NEGATIVE: &str = "blurry, low quality";

pub fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

pub fn model_dir(name: &str) -> PathBuf {
    assets().join("models").join(name)
}

/// A scratch copy of a committed model folder, for tests that edit its files.
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir(name), tmp.path());
    tmp
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Set (by the parity tests' child runs) to compute with denormals flushed on every compute
/// thread, as `imagine generate`, `imagine bench` and the bot do.
pub const FLUSH: &str = "IMAGINE_TEST_FLUSH_DENORMALS";

pub fn load(name: &str) -> StableDiffusion {
    if std::env::var_os(FLUSH).is_some() {
        assert!(imagine_engine::kernels::denormals::flush_on_compute_threads());
    }
    StableDiffusion::load(&model_dir(name), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = assets()
        .join("reference")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).expect("reference tensors")
}

pub fn reference_latents() -> Tensor {
    let path = assets().join("reference/latents_2x4x8x8.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()["latents"].clone()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(candle_core::DType::F32).unwrap() - b.to_dtype(candle_core::DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest per-channel difference between our images and a `[N, H, W, 3]` u8 reference.
pub fn max_pixel_diff(ours: &[image::RgbImage], reference: &Tensor) -> u8 {
    let want = reference.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let got: Vec<u8> = ours
        .iter()
        .flat_map(|i| i.as_raw().iter().copied())
        .collect();
    assert_eq!(got.len(), want.len(), "image sizes differ");
    got.iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap()
}

/// The mean and the largest per-channel difference between two sets of images, in levels.
pub fn pixel_difference(a: &[image::RgbImage], b: &[image::RgbImage]) -> (f64, u8) {
    let (mut total, mut worst, mut count) = (0u64, 0u8, 0u64);
    for (a, b) in a.iter().zip(b) {
        for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
            let d = x.abs_diff(*y);
            total += d as u64;
            worst = worst.max(d);
            count += 1;
        }
    }
    (total as f64 / count.max(1) as f64, worst)
}

/// The reference pipeline call of the diffusers scripts: `PROMPT` with `NEGATIVE`, 64x64, two
/// images from the committed latents, 8 steps, guidance 7.5, sampler `kind`.
pub fn reference_run(
    sd: &StableDiffusion,
    kind: imagine_engine::SchedulerKind,
) -> Vec<image::RgbImage> {
    let mut req = imagine_engine::GenerateRequest::text(PROMPT, 64, 64, vec![0, 1]);
    req.negative_prompt = NEGATIVE.into();
    req.steps = 8;
    req.guidance = 7.5;
    req.scheduler = Some(kind);
    req.initial_noise = Some(reference_latents());
    sd.generate(&req, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap()
        .images
}
