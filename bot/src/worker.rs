//! The worker: one dedicated thread that owns the loaded models (candle work is blocking and
//! memory-heavy, so exactly one job diffuses at a time) and turns a stored job into images on
//! disk. It knows the engine and files, not Discord; progress goes back through a callback.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use imagine_engine::noise::LatentNoise;
use imagine_engine::{GenerateRequest, InitImage, LoadOptions, SchedulerKind, StableDiffusion};
use sha2::{Digest, Sha256};

use crate::render::{grid_2x2, png_bytes, PngParameters};
use crate::store::{ImageRecord, Job, JobKind};

/// How often a running job may report a new preview.
pub const PREVIEW_INTERVAL: Duration = Duration::from_millis(2500);

/// Models by name, loaded on first use and kept.
pub struct Engines {
    specs: BTreeMap<String, String>,
    loaded: HashMap<String, StableDiffusion>,
}

impl Engines {
    pub fn new(specs: BTreeMap<String, String>) -> Self {
        Self {
            specs,
            loaded: HashMap::new(),
        }
    }

    pub fn get(&mut self, name: &str) -> Result<&StableDiffusion> {
        if !self.loaded.contains_key(name) {
            let spec = self
                .specs
                .get(name)
                .ok_or_else(|| anyhow!("the model {name:?} is no longer configured"))?;
            let dir = imagine_engine::resolve_model(spec)?;
            tracing::info!(model = name, dir = %dir.display(), "loading model");
            let model = StableDiffusion::load(&dir, &LoadOptions::default())?;
            self.loaded.insert(name.to_string(), model);
        }
        Ok(&self.loaded[name])
    }
}

/// What a running job reports: percent done and, at most every [`PREVIEW_INTERVAL`], a
/// preview grid PNG.
pub struct JobProgress {
    pub percent: u8,
    pub preview_png: Option<Vec<u8>>,
}

/// A job to run, as stored. Its `params.init_image` is the image it starts from (the image
/// prompt, or the parent's image for U/V/Vary), resolved when the job was created.
pub struct WorkItem {
    pub job: Job,
}

/// Runs one job to completion, writing `<data_dir>/jobs/<id>/<idx>.png`.
pub fn run_job(
    engines: &mut Engines,
    item: &WorkItem,
    data_dir: &Path,
    progress: &mut dyn FnMut(JobProgress),
) -> Result<Vec<ImageRecord>> {
    let job = &item.job;
    let dir = data_dir.join("jobs").join(job.id.0.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if job.request.kind == JobKind::Upscale {
        return upscale(item, &dir);
    }
    let model = engines.get(&job.request.model)?;
    let req = build_request(model, item)?;
    let mut last_preview: Option<Instant> = None;
    let mut report = |p: &imagine_engine::Progress| {
        let percent = (p.step * 100 / p.total.max(1)) as u8;
        let due = last_preview.is_none_or(|t| t.elapsed() >= PREVIEW_INTERVAL);
        let preview_png = if due && p.step < p.total {
            last_preview = Some(Instant::now());
            p.previews().ok().and_then(|imgs| preview_png(&imgs).ok())
        } else {
            None
        };
        progress(JobProgress {
            percent,
            preview_png,
        });
        ControlFlow::Continue(())
    };
    let out = model.generate(&req, &mut report)?;
    let p = &job.request.params;
    let mut records = Vec::with_capacity(out.images.len());
    for (idx, (img, seed)) in out.images.iter().zip(&job.request.seeds).enumerate() {
        let params = PngParameters {
            prompt: job.request.prompt.clone(),
            negative_prompt: job.request.negative_prompt.clone(),
            steps: req.steps,
            sampler: out.scheduler.webui_name().into(),
            guidance: p.guidance as f64,
            seed: *seed as u64,
            width: p.width as usize,
            height: p.height as usize,
            model: job.request.model.clone(),
            strength: req.init.as_ref().map(|i| i.strength),
        };
        let path = dir.join(format!("{idx}.png"));
        let bytes = png_bytes(img, &params.to_text())?;
        std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        records.push(ImageRecord {
            idx: idx as u8,
            seed: *seed,
            path,
            sha256: hex_sha256(&bytes),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(records)
}

/// U buttons: the chosen image alone, at the full resolution it was made at.
fn upscale(item: &WorkItem, dir: &Path) -> Result<Vec<ImageRecord>> {
    let parent = item
        .job
        .request
        .params
        .init_image
        .as_ref()
        .context("the image this button refers to is gone")?;
    let bytes = std::fs::read(parent).with_context(|| format!("cannot read {parent}"))?;
    let img = image::load_from_memory(&bytes)?.to_rgb8();
    let path = dir.join("0.png");
    std::fs::write(&path, &bytes)?;
    Ok(vec![ImageRecord {
        idx: 0,
        seed: item.job.request.seeds.first().copied().unwrap_or(0),
        path,
        sha256: hex_sha256(&bytes),
        width: img.width(),
        height: img.height(),
    }])
}

fn build_request(model: &StableDiffusion, item: &WorkItem) -> Result<GenerateRequest> {
    let job = &item.job.request;
    let p = &job.params;
    let seeds: Vec<u64> = job.seeds.iter().map(|s| *s as u64).collect();
    let mut req = GenerateRequest::text(&job.prompt, p.width as usize, p.height as usize, seeds);
    req.negative_prompt = job.negative_prompt.clone();
    req.steps = p.steps as usize;
    req.guidance = p.guidance as f64;
    req.scheduler = if p.scheduler.is_empty() {
        None
    } else {
        Some(p.scheduler.parse::<SchedulerKind>()?)
    };
    if let Some(path) = p.init_image.as_ref().map(PathBuf::from) {
        let img = image::open(&path)
            .with_context(|| format!("cannot read the start image {}", path.display()))?
            .to_rgb8();
        let img = if img.dimensions() == (p.width, p.height) {
            img
        } else {
            image::imageops::resize(
                &img,
                p.width,
                p.height,
                image::imageops::FilterType::Lanczos3,
            )
        };
        req.init = Some(InitImage {
            image: img,
            strength: p.strength.unwrap_or(0.7) as f64,
            mask: None,
        });
    }
    req.initial_noise = Some(chaos_noise(model, &req, p.chaos)?);
    Ok(req)
}

/// Starting noise with `--chaos`: each image's noise mixes a component shared by the batch
/// (30% of the variance at chaos 0, none at 100) with its own. Low chaos keeps the four
/// related; 100 makes them fully independent. Deterministic in the seeds.
fn chaos_noise(model: &StableDiffusion, req: &GenerateRequest, chaos: u32) -> Result<Tensor> {
    let info = model.info();
    let shape = (
        info.latent_channels,
        req.height / info.vae_scale,
        req.width / info.vae_scale,
    );
    let own = LatentNoise::new(&req.seeds, shape, &Device::Cpu).draw()?;
    let shared_seed = req.seeds[0] ^ 0x5eed_c4a0_5000_0000;
    let shared = LatentNoise::new(&[shared_seed], shape, &Device::Cpu)
        .draw()?
        .repeat((req.seeds.len(), 1, 1, 1))?;
    let own_weight = 0.7 + 0.3 * (chaos.min(100) as f64 / 100.0);
    Ok(((own * own_weight.sqrt())? + (shared * (1.0 - own_weight).sqrt())?)?)
}

/// Previews are latent-sized; scale them up so Discord shows more than a thumbnail.
fn preview_png(images: &[RgbImage]) -> Result<Vec<u8>> {
    let grid = grid_2x2(images)?;
    let (w, h) = grid.dimensions();
    let scale = (512 / w.max(h)).max(1);
    let big = image::imageops::resize(
        &grid,
        w * scale,
        h * scale,
        image::imageops::FilterType::Nearest,
    );
    png_bytes(&big, "preview")
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
