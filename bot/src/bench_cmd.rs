//! `imagine bench`: times the engine's pieces on a diffusers folder, after warm-up, as the
//! median of several runs: text encoding, one UNet forward (batch 1 and 4), VAE decode, the
//! latent preview, and the whole 2x2 grid job (4 images, 1 step, no guidance: SD-Turbo's job).
//! With `--taesd DIR`, also the tiny autoencoder: one decode, and the preview of 4 images.
//!
//! The folder is usually a full-size architecture with seeded random weights written by
//! `tools/make_random_model.py`; `tools/bench_compare.py` times diffusers on the same folder.
//! Random weights produce subnormal floats, which x86 CPUs process ~2x slower, so by default
//! flush-to-zero / denormals-are-zero is set on every computing thread (the compare script
//! sets the same in PyTorch). Achieved GFLOP/s use the analytic costs in DESIGN.md §3.

mod report;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use imagine_engine::noise::LatentNoise;
use imagine_engine::pixels::latent_preview;
use imagine_engine::unet::AddedConditioning;
use imagine_engine::{
    DeviceChoice, GenerateRequest, LoadOptions, ModelFamily, PrecisionChoice, StableDiffusion,
    Taesd,
};

use crate::hardware::Hardware;
use serde_json::Value;

use report::{Measurement, Report};

/// One timed piece of work.
type Work<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// The prompt every row encodes (its token count does not matter: windows are 77 tokens).
const PROMPT: &str = "a photograph of an astronaut riding a horse on the moon, highly detailed";

/// Arguments of `imagine bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A diffusers model folder or a single-file checkpoint (the comparison with diffusers
    /// needs a folder: run
    /// `tools/make_random_model.py --arch sd-turbo --out DIR`).
    #[arg(long, required_unless_present = "arch", conflicts_with = "arch")]
    pub model: Option<PathBuf>,
    /// A full-size architecture built in memory with seeded random weights, from the config
    /// files in `assets/archs/<arch>` (run from the repository).
    #[arg(long, value_parser = ["sd-turbo", "sd15", "sdxl"])]
    pub arch: Option<String>,
    /// The seed of --arch's random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image sides to measure, in pixels.
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    pub sizes: Vec<usize>,
    /// Timed runs per row (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Untimed runs before each row's timed runs.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs of the grid job (default: --runs). It gets no warm-up of its own: it runs
    /// after the other rows at the same size, which already warmed every kernel it uses.
    #[arg(long)]
    pub grid_runs: Option<usize>,
    /// Rows to run (default: all): text, preview, taesd, taesd-preview, unet1, vae, unet4,
    /// grid. The taesd rows need --taesd.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Row>,
    /// A TAESD folder (diffusers AutoencoderTiny, e.g. madebyollin/taesd): adds the taesd and
    /// taesd-preview rows.
    #[arg(long)]
    pub taesd: Option<PathBuf>,
    /// What the model computes in: auto (fp16 on a GPU, bf16 on a CPU with AVX512_BF16, else
    /// fp32), fp32, bf16 (on a CPU: bf16 products with f32 sums) or fp16.
    #[arg(long, env = "IMAGINE_PRECISION", default_value = "auto", value_parser = crate::hardware::parse_precision)]
    pub precision: PrecisionChoice,
    /// Where to compute: auto, cpu, cuda, cuda:N or metal.
    #[arg(long, env = "IMAGINE_DEVICE", default_value = "auto", value_parser = crate::hardware::parse_device)]
    pub device: DeviceChoice,
    /// Keep the CPU's default denormal handling instead of flushing to zero.
    #[arg(long)]
    pub keep_denormals: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A measured piece of work; the names are shared with `tools/bench_compare.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Row {
    /// Text encoder on a CFG pair (prompt + empty negative), batch 2.
    Text,
    /// `latent_preview` of 4 latents (the bot's per-step preview without TAESD).
    Preview,
    /// TAESD decode of one latent.
    Taesd,
    /// TAESD previews of 4 latents, to 8-bit images (the bot's preview with TAESD).
    TaesdPreview,
    /// One UNet forward, batch 1.
    Unet1,
    /// VAE decode of one image.
    Vae,
    /// One UNet forward, batch 4.
    Unet4,
    /// `generate`: 4 seeds, 1 step, guidance 0, decoded to images.
    Grid,
}

impl Row {
    fn needs_taesd(self) -> bool {
        matches!(self, Row::Taesd | Row::TaesdPreview)
    }

    fn name(self) -> &'static str {
        match self {
            Row::Text => "text",
            Row::Preview => "preview",
            Row::Taesd => "taesd",
            Row::TaesdPreview => "taesd-preview",
            Row::Unet1 => "unet1",
            Row::Vae => "vae",
            Row::Unet4 => "unet4",
            Row::Grid => "grid",
        }
    }
}

/// Rows in the order they run at each size: cheap first, the whole job last.
const ORDER: [Row; 8] = [
    Row::Text,
    Row::Preview,
    Row::Taesd,
    Row::TaesdPreview,
    Row::Unet1,
    Row::Vae,
    Row::Unet4,
    Row::Grid,
];

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let flush = !args.keep_denormals;
    install_thread_pool(flush)?;
    let threads = rayon::current_num_threads();
    eprintln!(
        "{threads} compute threads; flush-to-zero/denormals-are-zero {}",
        if flush { "ON on every thread" } else { "off" }
    );

    let hw = Hardware::choose(args.device, args.precision)?;
    let base = hw.load_options();
    let (dir, load) = match (&args.model, &args.arch) {
        (Some(dir), _) => (dir.clone(), base.clone()),
        (None, Some(arch)) => (
            arch_dir(arch)?,
            LoadOptions {
                random_weights: Some(args.seed),
                ..base.clone()
            },
        ),
        (None, None) => bail!("give --model DIR or --arch NAME"),
    };
    let loading = Instant::now();
    let model = StableDiffusion::load(&dir, &load)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    let taesd = match &args.taesd {
        Some(dir) => Some(
            Taesd::load(dir, &base)
                .with_context(|| format!("loading TAESD from {}", dir.display()))?,
        ),
        None if args.only.iter().any(|r| r.needs_taesd()) => {
            bail!("the taesd rows need --taesd DIR")
        }
        None => None,
    };
    // Nothing ran before the load, so the process's peak so far is the load's.
    let (load_seconds, load_peak_rss_mib) =
        (loading.elapsed().as_secs_f64(), report::peak_rss_mib());
    let cost = Cost::of(&dir)?;
    let selected = |r: Row| {
        (args.only.is_empty() || args.only.contains(&r)) && (taesd.is_some() || !r.needs_taesd())
    };
    let bench = Bench {
        model: &model,
        taesd: taesd.as_ref(),
        warmup: args.warmup,
        runs: args.runs,
        grid_runs: args.grid_runs.unwrap_or(args.runs),
        cost: &cost,
    };

    let mut rows = Vec::new();
    let mut per_row_rss = true;
    if selected(Row::Text) {
        rows.push(bench.measure(Row::Text, None, &mut per_row_rss)?);
    }
    for &size in &args.sizes {
        if size == 0 || !size.is_multiple_of(8) {
            bail!("size {size} is not a positive multiple of 8");
        }
        for row in ORDER
            .into_iter()
            .filter(|r| *r != Row::Text && selected(*r))
        {
            rows.push(bench.measure(row, Some(size), &mut per_row_rss)?);
        }
    }

    let report = Report {
        tool: "imagine",
        model: match &args.arch {
            Some(arch) => format!("{arch} (random weights, seed {})", args.seed),
            None => dir.display().to_string(),
        },
        threads,
        precision: hw.precision.name(),
        device: hw.device_name(),
        flush_denormals: flush,
        kernels: imagine_engine::kernels::isa::isa().name(),
        load_seconds,
        load_peak_rss_mib,
        warmup: args.warmup,
        runs: args.runs,
        grid_runs: bench.grid_runs,
        peak_rss_per_row: per_row_rss,
        rows,
    };
    report.print_table();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}

/// `assets/archs/<arch>`: under the current directory, or the checkout this binary was
/// built from.
fn arch_dir(arch: &str) -> Result<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [Path::new("."), built_from.as_path()]
        .iter()
        .map(|root| root.join("assets").join("archs").join(arch))
        .find(|dir| dir.join("model_index.json").exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no assets/archs/{arch} here or in {}: run imagine bench --arch from the repository",
                built_from.display()
            )
        })
}

/// Builds rayon's global pool (which candle's CPU kernels and gemm use) and, unless
/// `--keep-denormals`, sets the denormal mode on it and on the main thread.
fn install_thread_pool(flush: bool) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .build_global()
        .context("the compute thread pool was already started")?;
    if flush && !imagine_engine::kernels::denormals::flush_on_compute_threads() {
        bail!("could not set flush-to-zero on every compute thread");
    }
    Ok(())
}

/// Analytic work per call in GFLOP, for the architectures whose cost we know.
struct Cost {
    /// Text encoder, one 77-token window.
    text_per_window: f64,
    /// UNet forward, one image at 512x512 (None: not the SD 1.x/2.x UNet).
    unet_512: Option<f64>,
    /// VAE decode, one image at 512x512 (None: not the SD VAE).
    vae_512: Option<f64>,
}

impl Cost {
    fn of(dir: &Path) -> Result<Self> {
        let read = |p: &str| -> Result<Value> {
            let path = dir.join(p);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(serde_json::from_str(&text)?)
        };
        let (unet, vae) = (read("unet/config.json")?, read("vae/config.json")?);
        let mut encoders = vec![read("text_encoder/config.json")?];
        if dir.join("text_encoder_2/config.json").exists() {
            encoders.push(read("text_encoder_2/config.json")?);
        }
        let sd_unet = unet["block_out_channels"] == serde_json::json!([320, 640, 1280, 1280])
            && unet["layers_per_block"] == 2;
        let sd_vae = vae["block_out_channels"] == serde_json::json!([128, 256, 512, 512])
            && vae["layers_per_block"] == 2;
        // Per layer and token: q, k, v, out projections (4 d^2 MACs) and the MLP (2 d I MACs);
        // per layer, attention scores and weighted sum (2 S^2 d MACs). 1 MAC = 2 FLOP.
        // Embeddings, layer norms, softmax and activations are left out (< 1%).
        let text_per_window = encoders
            .iter()
            .map(|text| {
                let num = |k: &str| text[k].as_f64().unwrap_or(0.0);
                let (d, i, l, s) = (
                    num("hidden_size"),
                    num("intermediate_size"),
                    num("num_hidden_layers"),
                    77.0,
                );
                l * (2.0 * s * (4.0 * d * d + 2.0 * d * i) + 4.0 * s * s * d) / 1e9
            })
            .sum();
        Ok(Self {
            text_per_window,
            unet_512: sd_unet.then_some(800.0),
            vae_512: sd_vae.then_some(2500.0),
        })
    }

    /// UNet / VAE cost at `size`, scaled from 512 by pixel count (attention grows faster, so
    /// this slightly under-counts above 512 and over-counts below).
    fn scaled(at_512: Option<f64>, size: usize) -> Option<f64> {
        let f = (size as f64 / 512.0).powi(2);
        at_512.map(|g| g * f)
    }
}

struct Bench<'a> {
    model: &'a StableDiffusion,
    taesd: Option<&'a Taesd>,
    warmup: usize,
    runs: usize,
    grid_runs: usize,
    cost: &'a Cost,
}

impl Bench<'_> {
    fn measure(
        &self,
        row: Row,
        size: Option<usize>,
        per_row_rss: &mut bool,
    ) -> Result<Measurement> {
        let s = size.unwrap_or(512);
        let latents = |n: usize| -> Result<Tensor> {
            let seeds: Vec<u64> = (0..n as u64).collect();
            let lat = self.model.info().latent_channels;
            Ok(
                LatentNoise::new(&seeds, (lat, s / 8, s / 8), self.model.device())
                    .draw()?
                    .to_dtype(self.model.dtype())?,
            )
        };
        let model = self.model;
        let window = model.tokenizer().encode(PROMPT, 1)?.chunks.remove(0);
        let empty = model.tokenizer().encode("", 1)?.chunks.remove(0);
        // The prompt's conditioning for n images (SDXL: with pooled text and sizes).
        let conditioning = |n: usize| -> Result<(Tensor, Option<AddedConditioning>)> {
            let (ctx, added) = model.text_conditioning(PROMPT, s, s)?;
            let added = added
                .map(|a| -> Result<AddedConditioning> {
                    Ok(AddedConditioning {
                        text_embeds: a.text_embeds.repeat((n, 1))?,
                        time_ids: a.time_ids.repeat((n, 1))?,
                    })
                })
                .transpose()?;
            Ok((ctx.repeat((n, 1, 1))?, added))
        };
        let unet = |n: usize| -> Result<Work<'_>> {
            let x = latents(n)?;
            let (ctx, added) = conditioning(n)?;
            Ok(Box::new(move || {
                model.unet_forward_added(&x, 999.0, &ctx, added.as_ref())?;
                Ok(())
            }))
        };
        let c = self.cost;
        let (batch, gflop, mut work): (usize, Option<f64>, Work<'_>) = match row {
            Row::Text => {
                let pair = vec![empty.clone(), window.clone()];
                let f = move || -> Result<()> {
                    if model.info().family == ModelFamily::Sdxl {
                        // Both encoders; the token ids differ only in padding.
                        model.encode_tokens_xl(&pair, &pair)?;
                    } else {
                        model.encode_tokens(&pair)?;
                    }
                    Ok(())
                };
                (2, Some(2.0 * c.text_per_window), Box::new(f))
            }
            Row::Preview => {
                let x = latents(4)?;
                let f = move || -> Result<()> {
                    latent_preview(&x)?;
                    Ok(())
                };
                (4, None, Box::new(f))
            }
            Row::Taesd | Row::TaesdPreview => {
                let taesd = self.taesd.context("the taesd rows need --taesd DIR")?;
                let n = if row == Row::Taesd { 1 } else { 4 };
                let x = latents(n)?;
                let gflop = n as f64 * taesd.decode_gflop(s / 8, s / 8);
                let f: Work<'_> = if row == Row::Taesd {
                    Box::new(move || {
                        taesd.decode(&x)?;
                        Ok(())
                    })
                } else {
                    Box::new(move || {
                        taesd.decode_images(&x)?;
                        Ok(())
                    })
                };
                (n, Some(gflop), f)
            }
            Row::Unet1 => (1, Cost::scaled(c.unet_512, s), unet(1)?),
            Row::Unet4 => (4, Cost::scaled(c.unet_512, s).map(|g| 4.0 * g), unet(4)?),
            Row::Vae => {
                let x = latents(1)?;
                let f = move || -> Result<()> {
                    model.vae_decode(&x)?;
                    Ok(())
                };
                (1, Cost::scaled(c.vae_512, s), Box::new(f))
            }
            Row::Grid => {
                let mut req = GenerateRequest::text(PROMPT, s, s, vec![1, 2, 3, 4]);
                req.steps = 1;
                req.guidance = 0.0;
                let f = move || -> Result<()> {
                    let out = model.generate(&req, &mut |_| ControlFlow::Continue(()))?;
                    anyhow::ensure!(out.images.len() == 4, "the grid job made no 4 images");
                    Ok(())
                };
                let per_image = Cost::scaled(c.unet_512, s)
                    .zip(Cost::scaled(c.vae_512, s))
                    .map(|(u, v)| u + v);
                (
                    4,
                    per_image.map(|g| 4.0 * g + c.text_per_window),
                    Box::new(f),
                )
            }
        };

        let (warmup, runs) = match row {
            Row::Grid => (0, self.grid_runs),
            _ => (self.warmup, self.runs),
        };
        eprint!(
            "{:<13} {:>5}: ",
            row.name(),
            size.map_or_else(|| "-".into(), |s| s.to_string())
        );
        *per_row_rss &= report::reset_peak_rss();
        for _ in 0..warmup {
            work()?;
            eprint!("w ");
        }
        self.model.device().synchronize()?;
        let mut all = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            work()?;
            // A GPU returns before its queued work is done.
            self.model.device().synchronize()?;
            all.push(start.elapsed().as_secs_f64());
            eprint!("{:.3}s ", all.last().expect("pushed"));
        }
        eprintln!();
        let seconds = report::median(&all);
        Ok(Measurement {
            row: row.name(),
            size,
            batch,
            seconds,
            all_seconds: all,
            gflop,
            gflops_per_s: gflop.map(|g| g / seconds),
            peak_rss_mib: report::peak_rss_mib(),
        })
    }
}
