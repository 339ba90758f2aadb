//! `imagine generate`: one offline job from the command line, written as a PNG that carries its
//! parameters. The same code path the bot's worker uses, minus Discord.

use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use imagine_engine::{GenerateRequest, InitImage, LoadOptions, StableDiffusion, Taesd};

use crate::hardware::Hardware;

use crate::cli::GenerateArgs;
use crate::config::short_name;
use crate::image_input;
use crate::render::{grid_2x2, write_png, PngParameters};

/// Largest image file we read from the command line.
const MAX_INPUT_BYTES: u64 = 64 << 20;

pub fn run(args: &GenerateArgs) -> Result<()> {
    imagine_engine::kernels::denormals::flush_on_compute_threads();
    let dir = imagine_engine::resolve_model(&args.model)?;
    let hw = Hardware::choose(args.device, args.precision)?;
    let load = LoadOptions {
        prediction: args.prediction,
        ..hw.load_options()
    };
    let mut model = StableDiffusion::load(&dir, &load)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    if let Some(spec) = &args.taesd {
        model = model.with_tiny_decoder(load_taesd(spec, &load)?)?;
    }
    if !args.loras.is_empty() {
        let report = model.set_loras(&crate::loras::open_all(&args.loras)?)?;
        eprintln!("LoRA: {} layers patched", report.layers_patched);
    }
    let info = model.info().clone();
    if info.scheduler_fallback {
        eprintln!(
            "note: the model's scheduler (or one of its settings) is not one we implement; using {}",
            info.default_scheduler
        );
    }
    let initial_noise = args.init_latents.as_deref().map(load_latents).transpose()?;
    // With --init-latents the file decides how many images (a grid shows all of them).
    let count = match &initial_noise {
        Some(latents) => {
            let n = latents.dim(0)?;
            if n == 0 || n > 4 || (n > 1 && !args.grid) {
                bail!(
                    "{} holds {n} latents: use 1 latent, or 2 to 4 with --grid",
                    args.init_latents.as_ref().expect("set").display()
                );
            }
            n as u64
        }
        None if args.grid => 4,
        None => 1,
    };
    let seed = args.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    let seeds: Vec<u64> = (0..count).map(|i| seed.wrapping_add(i)).collect();
    let (width, height) = args.size.unwrap_or((info.native_size, info.native_size));

    let mut req = GenerateRequest::text(&args.prompt, width, height, seeds);
    req.negative_prompt = args.negative.clone();
    req.steps = args.steps.unwrap_or(info.default_steps);
    req.guidance = args.guidance.unwrap_or(info.default_guidance);
    req.scheduler = args.scheduler;
    if let Some(path) = &args.init_image {
        req.init = Some(load_init(
            path,
            args.mask.as_deref(),
            args.strength,
            width,
            height,
        )?);
    }
    req.initial_noise = initial_noise;
    req.fast_decode = args.fast_decode;

    let mut report = |p: &imagine_engine::Progress| {
        eprintln!("step {}/{}", p.step, p.total);
        ControlFlow::Continue(())
    };
    let out = model.generate(&req, &mut report)?;
    if out.prompt_chunks > 1 {
        eprintln!(
            "note: the prompt has {} tokens; it was encoded as {} windows of 75",
            out.prompt_tokens, out.prompt_chunks
        );
    }
    let image = if args.grid {
        grid_2x2(&out.images)?
    } else {
        out.images[0].clone()
    };
    let params = PngParameters {
        prompt: crate::loras::prompt_with_tags(&req.prompt, &args.loras),
        negative_prompt: req.negative_prompt.clone(),
        steps: req.steps,
        sampler: out.scheduler.webui_name().into(),
        guidance: req.guidance,
        seed,
        width,
        height,
        model: info.name.clone(),
        strength: req.init.as_ref().map(|i| i.strength),
        precision: hw.precision.name().into(),
        device: hw.device_name(),
        upscaler: None,
        vae: args
            .fast_decode
            .then(|| args.taesd.as_deref().map(short_name))
            .flatten(),
        loras: crate::loras::hashes(&args.loras)?,
    };
    write_png(&args.out, &image, &params.to_text())?;
    eprintln!("wrote {} (seed {seed})", args.out.display());
    Ok(())
}

/// Resolves and loads `--taesd` (a folder or HF repo id).
pub fn load_taesd(spec: &str, load: &LoadOptions) -> Result<Taesd> {
    let dir = imagine_engine::resolve_taesd(spec)?;
    Taesd::load(&dir, load).with_context(|| format!("loading TAESD from {}", dir.display()))
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > MAX_INPUT_BYTES {
        bail!(
            "{} is {size} bytes; the limit is {MAX_INPUT_BYTES}",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads an image the user named, through the same checks as a Discord image prompt.
fn load_image<T>(
    path: &Path,
    decode: impl FnOnce(&[u8]) -> Result<T, image_input::InputError>,
) -> Result<T> {
    let bytes = read_limited(path)?;
    decode(&bytes).with_context(|| format!("cannot use {}", path.display()))
}

/// Loads the init image (and mask), checks they match, and scales both to the output size.
fn load_init(
    path: &Path,
    mask: Option<&Path>,
    strength: f64,
    w: usize,
    h: usize,
) -> Result<InitImage> {
    let image = load_image(path, image_input::decode_rgb)?;
    let mask: Option<GrayImage> = match mask {
        Some(m) => {
            let m = load_image(m, image_input::decode_mask)?;
            if m.dimensions() != image.dimensions() {
                bail!(
                    "the mask is {}x{} but the init image is {}x{}: they must be the same size",
                    m.width(),
                    m.height(),
                    image.width(),
                    image.height()
                );
            }
            Some(m)
        }
        None => None,
    };
    let fit = |img: RgbImage| -> RgbImage {
        if img.dimensions() == (w as u32, h as u32) {
            img
        } else {
            image::imageops::resize(
                &img,
                w as u32,
                h as u32,
                image::imageops::FilterType::Lanczos3,
            )
        }
    };
    let mask = mask.map(|m| {
        if m.dimensions() == (w as u32, h as u32) {
            m
        } else {
            image::imageops::resize(&m, w as u32, h as u32, image::imageops::FilterType::Nearest)
        }
    });
    Ok(InitImage {
        image: fit(image),
        strength,
        mask,
    })
}

/// Reads `--init-latents`: one f32 tensor named `latents`.
fn load_latents(path: &Path) -> Result<Tensor> {
    read_limited(path)?;
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let latents = tensors
        .remove("latents")
        .with_context(|| format!("{} has no tensor named `latents`", path.display()))?;
    if latents.dtype() != DType::F32 || latents.rank() != 4 {
        bail!(
            "`latents` in {} must be f32 of shape [N, 4, H/8, W/8], found {:?} {:?}",
            path.display(),
            latents.dtype(),
            latents.dims()
        );
    }
    Ok(latents)
}
