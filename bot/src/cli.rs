//! Command-line surface of `imagine`. Every subcommand is a typed struct; parsing rejects bad
//! values with a sentence saying what is accepted.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use imagine_engine::SchedulerKind;

/// Imagine: a self-hosted, Midjourney-style image bot for Discord, running Stable Diffusion
/// locally on candle.
#[derive(Debug, Parser)]
#[command(
    name = "imagine",
    version,
    about,
    long_about = None,
    after_help = "The bot reads its settings from flags, environment variables or a TOML file:\n  \
DISCORD_TOKEN            bot token (required for `imagine bot`; never logged)\n  \
IMAGINE_MODEL            default model folder or HF repo id (stabilityai/sd-turbo)\n  \
IMAGINE_DB               SQLite file (./imagine.db)\n  \
IMAGINE_DATABASE_URL     postgres://USER:PASSWORD@HOST/DB instead of the SQLite file (none)\n  \
IMAGINE_DATA_DIR         where images are kept (./imagine-data)\n  \
IMAGINE_QUEUE_CAPACITY   jobs that may wait (32)\n  \
IMAGINE_USER_CAP         queued or running jobs per user (3)\n  \
DISCORD_API_BASE         Discord-compatible API base URL (https://discord.com)\n  \
IMAGINE_TAESD            TAESD folder or repo id: previews that look like the image (none)\n  \
IMAGINE_DEVICE           auto, cpu, cuda, cuda:N, metal; a list (cuda:0,cuda:1): a worker each (auto)\n  \
IMAGINE_PRECISION        auto (fp16 on GPUs, bf16 on AVX512_BF16 CPUs, else fp32), fp32, bf16, fp16\n  \
IMAGINE_FAST_GRID_DECODE decode grids with TAESD; U images use the full VAE (false)\n  \
IMAGINE_METRICS_ADDR     serve Prometheus metrics at ADDRESS:PORT/metrics (off)\n  \
IMAGINE_QUEUE_URL        NATS JetStream server between a gateway and its workers (none)\n  \
IMAGINE_RETENTION_DAYS   delete images of jobs finished longer ago than this (keep)\n  \
IMAGINE_RETENTION_MAX_GB keep at most this many GB of images, oldest deleted first (no limit)\n  \
IMAGINE_CONFIG           TOML file with the same settings and a [models] table\n\
See `imagine bot --help` for details."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to Discord and serve /imagine (DISCORD_TOKEN must be set). With
    /// `--role gateway` and queue_url, jobs run on `imagine worker` processes.
    Bot(crate::config::BotArgs),
    /// Run jobs for a gateway: models and engine only, jobs from the NATS JetStream queue at
    /// queue_url (IMAGINE_QUEUE_URL); no Discord token.
    Worker(crate::config::BotArgs),
    /// Generate an image (or a 2x2 grid) from a prompt, offline, and write a PNG.
    Generate(GenerateArgs),
    /// Time the engine (text encoder, UNet, VAE, preview, grid job) on a model folder.
    Bench(crate::bench_cmd::BenchArgs),
}

/// Arguments of `imagine generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt. Long prompts are split into 75-token windows, never refused.
    pub prompt: String,
    /// A diffusers model folder, a single-file checkpoint (`.safetensors` in the original SD
    /// layout, as model sites distribute them), or a Hugging Face repo id (fetched into the HF
    /// cache).
    #[arg(long, env = "IMAGINE_MODEL", default_value = "stabilityai/sd-turbo")]
    pub model: String,
    /// What the model predicts: v or epsilon. By default a single file's own evidence
    /// (a v_pred key, modelspec metadata), else a heuristic for SD 2.x, else epsilon; a
    /// folder's scheduler config.
    #[arg(long, value_parser = parse_prediction)]
    pub prediction: Option<imagine_engine::Prediction>,
    /// Negative prompt: what the image should not show.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Seed of the first image (random when omitted; the PNG records it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Denoising steps (default: 1 for distilled turbo models, else 25).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default: 0 for turbo models, else 7.5).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Image size as WxH, multiples of 8 (default: the model's native size).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// Sampler: euler, euler-a, ddim, dpmpp-2m, dpmpp-2m-karras, lcm (default: the model's).
    #[arg(long, visible_alias = "sampler")]
    pub scheduler: Option<SchedulerKind>,
    /// Start from this image (image to image).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// How much of the init image to replace, 0 to 1.
    #[arg(long, default_value_t = 0.6, requires = "init_image")]
    pub strength: f64,
    /// Inpainting mask, same size as the init image: white is repainted, black kept.
    #[arg(long, requires = "init_image")]
    pub mask: Option<PathBuf>,
    /// Starting noise from a safetensors file holding one f32 tensor `latents` [N,4,H/8,W/8]
    /// (N images: 1, or 2 to 4 with --grid).
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Make four images (seeds seed..seed+3) and write them as a 2x2 grid.
    #[arg(long)]
    pub grid: bool,
    /// TAESD, the tiny autoencoder: a diffusers AutoencoderTiny folder or HF repo id
    /// (madebyollin/taesd for SD 1.x/2.x models), for --fast-decode.
    #[arg(long)]
    pub taesd: Option<String>,
    /// Decode the final images with TAESD instead of the model's VAE: much faster, slightly
    /// softer.
    #[arg(long, requires = "taesd")]
    pub fast_decode: bool,
    /// What the model computes in: auto (fp16 on a GPU, bf16 on a CPU with AVX512_BF16, else
    /// fp32), fp32 (diffusers' pixels within 2/255), bf16, or fp16.
    #[arg(long, env = "IMAGINE_PRECISION", default_value = "auto", value_parser = crate::hardware::parse_precision)]
    pub precision: imagine_engine::PrecisionChoice,
    /// Where to compute: auto (a CUDA or Metal GPU when this binary has one, else the CPU),
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, env = "IMAGINE_DEVICE", default_value = "auto", value_parser = crate::hardware::parse_device)]
    pub device: imagine_engine::DeviceChoice,
    /// Apply a LoRA (kohya / web-UI or diffusers/PEFT .safetensors) at SCALE (default 1.0,
    /// -4 to 4); repeat for several.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = crate::loras::parse_lora_arg)]
    pub loras: Vec<crate::loras::LoraChoice>,
    /// Where to write the PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses `v` (also `v_prediction`) or `epsilon` (also `eps`).
pub fn parse_prediction(s: &str) -> std::result::Result<imagine_engine::Prediction, String> {
    imagine_engine::Prediction::parse(s)
        .ok_or_else(|| format!("{s:?} is not a prediction type: use v or epsilon"))
}

/// Parses `WxH` such as `512x768`.
pub fn parse_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WxH (for example 512x512)"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{s:?} is not WxH (for example 512x512)"))
    };
    Ok((parse(w)?, parse(h)?))
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => crate::generate_cmd::run(&args),
        Command::Bench(args) => crate::bench_cmd::run(&args),
        Command::Bot(args) => {
            let config = crate::config::Config::resolve(&args)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::discord::run(config))
        }
        Command::Worker(args) => {
            let config = crate::config::Config::resolve_worker(&args)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::jetstream::worker::run(config))
        }
    }
}
