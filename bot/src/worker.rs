//! The worker: one dedicated thread that owns the loaded models (candle work is blocking and
//! memory-heavy, so exactly one job diffuses at a time) and turns a stored job into images on
//! disk. It knows the engine and files, not Discord; progress goes back through a callback.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use imagine_engine::noise::LatentNoise;
use imagine_engine::{
    device_name, GenerateRequest, InitImage, Precision, Prediction, SchedulerKind, StableDiffusion,
    Taesd,
};
use sha2::{Digest, Sha256};

use imagine_engine::esrgan::Esrgan;
use imagine_engine::outpaint::{Direction, Outpaint};
use imagine_engine::upscale::UpscaleRequest;

use crate::loras::JobLoras;
use crate::region::{fit_mask, Region};
use crate::render::{grid_2x2, png_bytes, read_parameters, without_vae, PngParameters};
use crate::store::{Compute, ImageRecord, Job, JobKind, JobParams};

/// How often a running job may report a new preview.
pub const PREVIEW_INTERVAL: Duration = Duration::from_millis(2500);
/// The most of a job's time previews may take: a TAESD preview of four 512 px images costs
/// seconds on a CPU (the linear latent preview costs nothing), so costly previews come less
/// often.
pub const PREVIEW_SHARE: f64 = 0.15;

/// When the next preview is due: [`PREVIEW_INTERVAL`] after the last one started, or longer
/// when it was costly, so that previews take at most [`PREVIEW_SHARE`] of the time.
#[derive(Debug, Default)]
pub struct PreviewClock {
    next: Option<Instant>,
}

impl PreviewClock {
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// Records a preview that started at `started` and took `cost`.
    pub fn made(&mut self, started: Instant, cost: Duration) {
        self.next = Some(started + PREVIEW_INTERVAL.max(cost.div_f64(PREVIEW_SHARE)));
    }
}

/// Models by name, loaded on first use and kept, on one device.
pub struct Engines {
    specs: BTreeMap<String, String>,
    /// Prediction types set in the config, by model name (`[models]` tables).
    predictions: BTreeMap<String, Prediction>,
    /// Model name → its inpainting variant's display name (`inpaint_model`).
    inpaint: BTreeMap<String, String>,
    /// Each model in one precision at a time (a job asking for another reloads it).
    loaded: HashMap<String, (Precision, StableDiffusion)>,
    tiny: Option<TinyDecoder>,
    /// The ESRGAN file upscales start from, loaded on first use.
    upscaler: Option<(PathBuf, Option<Arc<Esrgan>>)>,
    /// The folder `<lora:NAME:SCALE>` tags name files in.
    loras: Option<PathBuf>,
    device: Device,
    /// What jobs compute in unless they ask for another precision this device offers.
    precision: Precision,
}

/// Where `model`'s inpainting variant sits among the specs: a key no `[models]` name can be
/// (names are TOML keys that `/` never starts).
fn inpaint_key(model: &str) -> String {
    format!("/inpaint/{model}")
}

/// Whether the job paints on a canvas (Zoom Out, Pan, Vary (Region)), where a model's
/// inpainting variant does better than masked-latent blending.
fn paints_on_canvas(p: &JobParams) -> bool {
    p.zoom.is_some() || p.pan.is_some() || p.region.is_some() || p.region_mask.is_some()
}

/// TAESD, attached to every model the worker loads.
struct TinyDecoder {
    dir: PathBuf,
    /// Shown in PNG parameters (`VAE: taesd`).
    name: String,
    /// Decode grids with it (U images are then decoded again with the full VAE).
    grids: bool,
}

impl Engines {
    pub fn new(specs: BTreeMap<String, String>) -> Self {
        Self {
            specs,
            predictions: BTreeMap::new(),
            inpaint: BTreeMap::new(),
            loaded: HashMap::new(),
            tiny: None,
            upscaler: None,
            loras: None,
            device: Device::Cpu,
            precision: Precision::Fp32,
        }
    }

    /// Models whose prediction type the config sets (`{ path = ..., prediction = "v" }`).
    pub fn with_predictions(mut self, predictions: BTreeMap<String, Prediction>) -> Self {
        self.predictions = predictions;
        self
    }

    /// Zoom Out, Pan and Vary (Region) of these models (by name) run on their inpainting
    /// variants (folder, file or repo id), registered under [`inpaint_key`].
    pub fn with_inpaint_models(mut self, variants: &BTreeMap<String, String>) -> Self {
        for (name, spec) in variants {
            self.specs.insert(inpaint_key(name), spec.clone());
            let shown = crate::config::short_name(spec);
            self.inpaint.insert(name.clone(), shown);
        }
        self
    }

    /// The registry key and display name of `model`'s inpainting variant, if configured.
    fn inpaint_variant(&self, model: &str) -> Option<(String, String)> {
        let shown = self.inpaint.get(model)?;
        Some((inpaint_key(model), shown.clone()))
    }

    /// Prompts' `<lora:NAME:SCALE>` tags name files in this folder.
    pub fn with_loras(mut self, dir: PathBuf) -> Self {
        self.loras = Some(dir);
        self
    }

    /// The model `name` in `precision` with the LoRAs `prompt` names applied (none: its base
    /// weights), and the prompt without its tags. Switching sets does not reload the model.
    pub fn get_with_loras(
        &mut self,
        name: &str,
        precision: Precision,
        prompt: &str,
    ) -> Result<(&StableDiffusion, JobLoras)> {
        let loras = crate::loras::for_job(self.loras.as_deref(), prompt)?;
        let files = crate::loras::open_all(&loras.choices)?;
        let model = self.get(name, precision)?;
        model.set_loras(&files)?;
        Ok((model, loras))
    }

    /// Upscales start from this ESRGAN model instead of Lanczos.
    pub fn with_upscaler(mut self, path: PathBuf) -> Self {
        self.upscaler = Some((path, None));
        self
    }

    /// The ESRGAN model and its display name, loaded on first use; `None` without one.
    fn esrgan(&mut self) -> Result<Option<(Arc<Esrgan>, String)>> {
        let device = self.device.clone();
        let Some((path, loaded)) = &mut self.upscaler else {
            return Ok(None);
        };
        if loaded.is_none() {
            let opts = Precision::Fp32.load_options(&device);
            tracing::info!(path = %path.display(), "loading the upscaler");
            *loaded =
                Some(Arc::new(Esrgan::load(path, &opts).with_context(|| {
                    format!("loading the upscaler {}", path.display())
                })?));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(loaded.clone().map(|e| (e, name)))
    }

    /// Runs the models on `device`, in `precision` unless a job asks for another.
    pub fn on(mut self, device: Device, precision: Precision) -> Self {
        self.device = device;
        self.precision = precision;
        self
    }

    /// The precision a job computes in: the one it asks for (its parent's, so that buttons
    /// reproduce their image) where this device offers it, else this worker's.
    pub fn precision_for(&self, asked: Option<&str>) -> Precision {
        match asked.map(|a| (a, Precision::parse(a))) {
            None => self.precision,
            Some((_, Some(p))) if p.check_on(&self.device).is_ok() => p,
            Some((name, _)) => {
                tracing::info!(
                    asked = name,
                    using = self.precision.name(),
                    "the job's precision is not offered here; using this worker's"
                );
                self.precision
            }
        }
    }

    /// What a job computed in, as recorded with it.
    fn compute(&self, precision: Precision) -> Compute {
        Compute {
            precision: precision.name().into(),
            device: device_name(&self.device),
        }
    }

    /// Attaches the TAESD folder `dir` to every model: previews come from it, and with
    /// `fast_grids` grids are decoded with it too.
    pub fn with_taesd(mut self, dir: PathBuf, name: String, fast_grids: bool) -> Self {
        self.tiny = Some(TinyDecoder {
            dir,
            name,
            grids: fast_grids,
        });
        self
    }

    /// The name of the decoder grids are decoded with, when it is TAESD.
    fn fast_grid_decoder(&self) -> Option<String> {
        self.tiny
            .as_ref()
            .filter(|t| t.grids)
            .map(|t| t.name.clone())
    }

    /// The model `name` in `precision`, loaded on first use.
    pub fn get(&mut self, name: &str, precision: Precision) -> Result<&StableDiffusion> {
        if self.loaded.get(name).is_none_or(|(p, _)| *p != precision) {
            // The other precision's copy goes first: two copies may not fit.
            self.loaded.remove(name);
            let spec = self
                .specs
                .get(name)
                .ok_or_else(|| anyhow!("the model {name:?} is no longer configured"))?;
            let dir = imagine_engine::resolve_model(spec)?;
            let device = device_name(&self.device);
            let precision_name = precision.name();
            tracing::info!(model = name, dir = %dir.display(), device, precision = precision_name, "loading model");
            let load = imagine_engine::LoadOptions {
                prediction: self.predictions.get(name).copied(),
                ..precision.load_options(&self.device)
            };
            let mut model = StableDiffusion::load(&dir, &load)?;
            if let Some(tiny) = &self.tiny {
                let taesd = Taesd::load(&tiny.dir, &load)
                    .with_context(|| format!("loading TAESD from {}", tiny.dir.display()))?;
                model = model.with_tiny_decoder(taesd)?;
            }
            self.loaded.insert(name.to_string(), (precision, model));
        }
        Ok(&self.loaded[name].1)
    }
}

/// What a running job reports: percent done and, at most every [`PREVIEW_INTERVAL`] (less
/// often when previews are costly, see [`PreviewClock`]), a preview grid PNG.
pub struct JobProgress {
    pub percent: u8,
    pub preview_png: Option<Vec<u8>>,
}

/// A job to run, as stored. Its `params.init_image` is the image it starts from (the image
/// prompt, or the parent's image for U/V/Vary), resolved when the job was created.
pub struct WorkItem {
    pub job: Job,
}

/// What a finished job made, and what it computed in.
#[derive(Debug)]
pub struct JobOutput {
    pub images: Vec<ImageRecord>,
    pub compute: Compute,
}

/// Runs one job to completion, writing `<data_dir>/jobs/<id>/<idx>.png`. `progress` returning
/// `ControlFlow::Break` stops the job at its next step (the error is then
/// [`imagine_engine::EngineError::Cancelled`], see [`was_stopped`]).
pub fn run_job(
    engines: &mut Engines,
    item: &WorkItem,
    data_dir: &Path,
    progress: &mut dyn FnMut(JobProgress) -> ControlFlow<()>,
) -> Result<JobOutput> {
    let job = &item.job;
    let dir = data_dir.join("jobs").join(job.id.0.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let precision = engines.precision_for(job.request.params.precision.as_deref());
    let compute = engines.compute(precision);
    if job.request.kind == JobKind::Upscale {
        let images = upscale(engines, item, &dir, precision)?;
        return Ok(JobOutput { images, compute });
    }
    if matches!(
        job.request.kind,
        JobKind::UpscaleSubtle | JobKind::UpscaleCreative
    ) {
        let images = tiled_upscale(engines, item, &dir, precision, &compute, progress)?;
        return Ok(JobOutput { images, compute });
    }
    let mut fast_decoder = engines.fast_grid_decoder();
    let variant = paints_on_canvas(&job.request.params)
        .then(|| engines.inpaint_variant(&job.request.model))
        .flatten();
    let (model_key, model_shown) =
        variant.unwrap_or_else(|| (job.request.model.clone(), job.request.model.clone()));
    let (model, loras) = engines
        .get_with_loras(&model_key, precision, &job.request.prompt)
        .with_context(|| format!("the model {model_shown} could not be loaded"))?;
    let (mut req, canvas) = build_request(model, item)?;
    req.prompt = loras.text.clone();
    let lora_hashes = crate::loras::hashes(&loras.choices)?;
    if canvas.is_some() {
        // Outpainted images are composited over their canvas: no latents decode to them.
        fast_decoder = None;
    }
    req.fast_decode = fast_decoder.is_some();
    let mut clock = PreviewClock::default();
    let mut report = |p: &imagine_engine::Progress| {
        let percent = (p.step * 100 / p.total.max(1)) as u8;
        let started = Instant::now();
        let preview_png = if clock.due(started) && p.step < p.total {
            let png = p.previews().ok().and_then(|imgs| preview_png(&imgs).ok());
            clock.made(started, started.elapsed());
            png
        } else {
            None
        };
        progress(JobProgress {
            percent,
            preview_png,
        })
    };
    let out = model.generate(&req, &mut report)?;
    let p = &job.request.params;
    let mut records = Vec::with_capacity(out.images.len());
    let images = match &canvas {
        Some(canvas) => out
            .images
            .iter()
            .map(|generated| canvas.composite(generated))
            .collect::<imagine_engine::Result<Vec<_>>>()?,
        None => out.images.clone(),
    };
    for (idx, (img, seed)) in images.iter().zip(&job.request.seeds).enumerate() {
        let params = PngParameters {
            prompt: job.request.prompt.clone(),
            negative_prompt: job.request.negative_prompt.clone(),
            steps: req.steps,
            sampler: out.scheduler.webui_name().into(),
            guidance: p.guidance as f64,
            seed: *seed as u64,
            width: p.width as usize,
            height: p.height as usize,
            model: model_shown.clone(),
            strength: req.init.as_ref().map(|i| i.strength),
            precision: compute.precision.clone(),
            device: compute.device.clone(),
            upscaler: None,
            vae: fast_decoder.clone(),
            loras: lora_hashes.clone(),
        };
        let path = dir.join(format!("{idx}.png"));
        let bytes = png_bytes(img, &params.to_text())?;
        if fast_decoder.is_some() {
            // Kept for U: the full VAE decodes these latents into the image at full quality.
            // Written before the PNG, so a PNG on disk always has its latents.
            let latents = latents_path(&path);
            let part = partial_path(&latents);
            out.latents
                .narrow(0, idx, 1)?
                .save_safetensors("latents", &part)
                .and_then(|()| Ok(std::fs::rename(&part, &latents)?))
                .with_context(|| format!("cannot write {}", latents.display()))?;
        }
        write_atomically(&path, &bytes)?;
        records.push(ImageRecord {
            idx: idx as u8,
            seed: *seed,
            path,
            sha256: hex_sha256(&bytes),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(JobOutput {
        images: records,
        compute,
    })
}

/// Whether a job's error means it was stopped between steps (cancel or graceful stop) rather
/// than failed.
pub fn was_stopped(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<imagine_engine::EngineError>())
        .any(|e| matches!(e, imagine_engine::EngineError::Cancelled))
}

/// Writes `bytes` to `path` so that a reader (or a restart after a crash) sees either the
/// whole file or none: a temporary file beside it, then a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let part = partial_path(path);
    std::fs::write(&part, bytes)
        .and_then(|()| std::fs::rename(&part, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `<file>.part`, beside it (same file system, so the rename is atomic).
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Where the latents of a fast-decoded image are kept: `<idx>.latents.safetensors` beside
/// `<idx>.png`, one f32 tensor `latents` `[1, C, H/8, W/8]` (the `--init-latents` format).
pub fn latents_path(png: &Path) -> PathBuf {
    png.with_extension("latents.safetensors")
}

/// U buttons: the chosen image alone, at the full resolution it was made at. An image of a
/// fast-decoded grid (its latents kept beside it) is decoded again with the full VAE.
fn upscale(
    engines: &mut Engines,
    item: &WorkItem,
    dir: &Path,
    precision: Precision,
) -> Result<Vec<ImageRecord>> {
    let parent = item
        .job
        .request
        .params
        .init_image
        .as_ref()
        .context("the image this button refers to is gone")?;
    let mut bytes = std::fs::read(parent).with_context(|| format!("cannot read {parent}"))?;
    let mut img = image::load_from_memory(&bytes)?.to_rgb8();
    let latents = latents_path(Path::new(parent));
    if latents.exists() {
        match engines.get(&item.job.request.model, precision) {
            Ok(model) => {
                img = full_decode(model, &latents)?;
                let text = read_parameters(&bytes)?.unwrap_or_default();
                bytes = png_bytes(&img, &without_vae(&text))?;
            }
            Err(e) => tracing::warn!(
                "cannot decode {} with the full VAE ({e:#}); using the fast-decoded image",
                latents.display()
            ),
        }
    }
    let path = dir.join("0.png");
    write_atomically(&path, &bytes)?;
    Ok(vec![ImageRecord {
        idx: 0,
        seed: item.job.request.seeds.first().copied().unwrap_or(0),
        path,
        sha256: hex_sha256(&bytes),
        width: img.width(),
        height: img.height(),
    }])
}

/// Upscale (Subtle / Creative): the parent image at twice the size, repainted tile by tile
/// with the job's model (see [`imagine_engine::upscale`]).
fn tiled_upscale(
    engines: &mut Engines,
    item: &WorkItem,
    dir: &Path,
    precision: Precision,
    compute: &Compute,
    progress: &mut dyn FnMut(JobProgress) -> ControlFlow<()>,
) -> Result<Vec<ImageRecord>> {
    let job = &item.job.request;
    let first_stage = engines.esrgan()?;
    let (model, loras) = engines
        .get_with_loras(&job.model, precision, &job.prompt)
        .with_context(|| format!("the model {} could not be loaded", job.model))?;
    let (img, bytes) = upscale_with(model, &loras, first_stage, item, compute, progress)?;
    let path = dir.join("0.png");
    write_atomically(&path, &bytes)?;
    Ok(vec![ImageRecord {
        idx: 0,
        seed: job.seeds.first().copied().unwrap_or(0),
        path,
        sha256: hex_sha256(&bytes),
        width: img.width(),
        height: img.height(),
    }])
}

/// The upscaled image of a job and its PNG bytes.
fn upscale_with(
    model: &StableDiffusion,
    loras: &JobLoras,
    first_stage: Option<(Arc<Esrgan>, String)>,
    item: &WorkItem,
    compute: &Compute,
    progress: &mut dyn FnMut(JobProgress) -> ControlFlow<()>,
) -> Result<(RgbImage, Vec<u8>)> {
    let (esrgan, upscaler) = first_stage.unzip();
    let job = &item.job.request;
    let p = &job.params;
    let parent = p
        .init_image
        .as_ref()
        .context("the image this button refers to is gone")?;
    let image = image::open(parent)
        .with_context(|| format!("cannot read {parent}"))?
        .to_rgb8();
    let strength = p.strength.unwrap_or(0.25) as f64;
    let seed = job.seeds.first().copied().unwrap_or(0);
    let scheduler = match p.scheduler.as_str() {
        "" => None,
        name => Some(name.parse::<SchedulerKind>()?),
    };
    let req = UpscaleRequest {
        image,
        factor: 2,
        prompt: loras.text.clone(),
        negative_prompt: job.negative_prompt.clone(),
        steps: p.steps as usize,
        guidance: p.guidance as f64,
        scheduler,
        strength,
        seed: seed as u64,
    };
    let img = model.upscale(&req, esrgan.as_deref(), &mut |done, total| {
        progress(JobProgress {
            percent: (done * 100 / total.max(1)) as u8,
            preview_png: None,
        })
    })?;
    let params = PngParameters {
        prompt: job.prompt.clone(),
        negative_prompt: job.negative_prompt.clone(),
        steps: req.steps,
        sampler: scheduler
            .unwrap_or(model.info().default_scheduler)
            .webui_name()
            .into(),
        guidance: req.guidance,
        seed: seed as u64,
        width: img.width() as usize,
        height: img.height() as usize,
        model: job.model.clone(),
        strength: Some(strength),
        precision: compute.precision.clone(),
        device: compute.device.clone(),
        upscaler,
        vae: None,
        loras: crate::loras::hashes(&loras.choices)?,
    };
    let bytes = png_bytes(&img, &params.to_text())?;
    Ok((img, bytes))
}

/// The full VAE's image of latents kept by [`run_job`] after a fast decode.
fn full_decode(model: &StableDiffusion, latents: &Path) -> Result<RgbImage> {
    let tensors = candle_core::safetensors::load(latents, &Device::Cpu)
        .with_context(|| format!("cannot read {}", latents.display()))?;
    let latents = tensors
        .get("latents")
        .with_context(|| format!("{} holds no latents", latents.display()))?;
    let mut images = model.decode_images(latents, false)?;
    anyhow::ensure!(images.len() == 1, "expected the latents of one image");
    Ok(images.remove(0))
}

/// The engine request of a stored job and, for Zoom Out, Pan and Vary (Region), the canvas
/// its images are composited over.
fn build_request(
    model: &StableDiffusion,
    item: &WorkItem,
) -> Result<(GenerateRequest, Option<Outpaint>)> {
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
    let mut canvas = None;
    if let Some(path) = p.init_image.as_ref().map(PathBuf::from) {
        let img = image::open(&path)
            .with_context(|| format!("cannot read the start image {}", path.display()))?
            .to_rgb8();
        let seed = req.seeds[0];
        canvas = match (p.zoom, p.pan.as_deref()) {
            (Some(zoom), _) => Some(Outpaint::zoom_out(
                &img,
                zoom as f64,
                (p.width, p.height),
                seed,
            )?),
            (None, Some(pan)) => {
                let direction = Direction::parse(pan)
                    .with_context(|| format!("the stored pan direction {pan:?} is unknown"))?;
                Some(Outpaint::pan(&img, direction, seed)?)
            }
            (None, None) => region_canvas(p, &img)?,
        };
        let img = if let Some(c) = &canvas {
            c.image.clone()
        } else if img.dimensions() == (p.width, p.height) {
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
            mask: canvas.as_ref().map(|c| c.mask.clone()),
        });
    }
    req.initial_noise = Some(chaos_noise(model, &req, p.chaos)?);
    Ok((req, canvas))
}

/// Vary (Region)'s canvas: the picture, and its region (picked areas or a painted mask, fitted
/// to the picture) as a feathered mask; `None` for jobs without a region.
fn region_canvas(p: &JobParams, picture: &RgbImage) -> Result<Option<Outpaint>> {
    let size = picture.dimensions();
    let mask = match (&p.region, &p.region_mask) {
        (Some(areas), _) => Region::parse(areas)
            .with_context(|| format!("the stored region {areas:?} is not one I write"))?
            .mask(size),
        (None, Some(path)) => {
            let painted = image::open(path)
                .with_context(|| format!("cannot read the region mask {path}"))?
                .to_luma8();
            fit_mask(&painted, size)
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Outpaint::region(picture, &mask)?))
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

/// Longest side of a preview grid.
const PREVIEW_SIDE: u32 = 512;

/// Previews are latent-sized (scaled up, so that Discord shows more than a thumbnail) or, from
/// TAESD, full-sized (scaled down: a preview need not be a full-size upload).
fn preview_png(images: &[RgbImage]) -> Result<Vec<u8>> {
    let grid = grid_2x2(images)?;
    let (w, h) = grid.dimensions();
    let side = w.max(h);
    let sized = if side > PREVIEW_SIDE {
        let (w, h) = (
            (w * PREVIEW_SIDE / side).max(1),
            (h * PREVIEW_SIDE / side).max(1),
        );
        image::imageops::resize(&grid, w, h, image::imageops::FilterType::Triangle)
    } else {
        let scale = PREVIEW_SIDE / side;
        image::imageops::resize(
            &grid,
            w * scale,
            h * scale,
            image::imageops::FilterType::Nearest,
        )
    };
    png_bytes(&sized, "preview")
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_whole_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.png");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn costly_previews_come_less_often() {
        let t0 = Instant::now();
        let mut clock = PreviewClock::default();
        assert!(clock.due(t0), "the first preview is due at once");
        clock.made(t0, Duration::from_millis(1));
        assert!(!clock.due(t0 + Duration::from_secs(2)));
        assert!(clock.due(t0 + PREVIEW_INTERVAL));
        // A 9 s TAESD preview: the next one 60 s after it started.
        clock.made(t0, Duration::from_secs(9));
        assert!(!clock.due(t0 + Duration::from_secs(59)));
        assert!(clock.due(t0 + Duration::from_secs(61)));
    }

    #[test]
    fn previews_are_scaled_to_a_512_pixel_grid() {
        let small = vec![RgbImage::new(8, 8); 4];
        let big = vec![RgbImage::new(512, 384); 4];
        for (images, want) in [(small, (512, 512)), (big, (512, 384))] {
            let png = preview_png(&images).unwrap();
            let img = image::load_from_memory(&png).unwrap();
            assert_eq!((img.width(), img.height()), want);
        }
    }
}
