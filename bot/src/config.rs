//! The bot's configuration: command-line flags and environment variables, over an optional
//! TOML file, over defaults that run with nothing set but a token. The Discord token is held in
//! a [`Secret`] whose `Debug` and `Display` never show it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use imagine_engine::{DeviceChoice, Precision, PrecisionChoice, Prediction};
use serde::Deserialize;

use crate::shards::ShardRange;
use crate::store::{PostgresUrl, RetentionLimits, StoreLocation};

/// A string that must never reach a log or an error message.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `imagine bot` flags. Each also reads an environment variable; flags win over variables,
/// variables over the TOML file, the file over defaults.
#[derive(Debug, Args)]
pub struct BotArgs {
    /// TOML file with any of the settings below (lower-case names, e.g. `queue_capacity = 8`)
    /// and a `[models]` table of name = folder or repo id, for `--model NAME` in prompts.
    #[arg(long, env = "IMAGINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The bot token from the Discord developer portal (never logged).
    #[arg(long, env = "DISCORD_TOKEN", hide_env_values = true)]
    pub discord_token: Option<String>,
    /// Default model: a diffusers folder or HF repo id [default: stabilityai/sd-turbo].
    #[arg(long, env = "IMAGINE_MODEL")]
    pub model: Option<String>,
    /// SQLite database file [default: ./imagine.db].
    #[arg(long, env = "IMAGINE_DB")]
    pub db: Option<PathBuf>,
    /// PostgreSQL instead of the SQLite file: postgres://USER:PASSWORD@HOST:5432/DATABASE (the
    /// database must exist; the bot makes its tables). When set, --db is not used [default:
    /// none, the SQLite file].
    #[arg(long, env = "IMAGINE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where images are kept [default: ./imagine-data].
    #[arg(long, env = "IMAGINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Jobs that may wait in the queue [default: 32].
    #[arg(long, env = "IMAGINE_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Queued or running jobs one user may have [default: 3].
    #[arg(long, env = "IMAGINE_USER_CAP")]
    pub user_cap: Option<usize>,
    /// A Discord-compatible API base URL (a proxy, or the test simulator); the gateway URL
    /// then comes from that API [default: https://discord.com].
    #[arg(long, env = "DISCORD_API_BASE")]
    pub discord_api_base: Option<String>,
    /// TAESD, the tiny autoencoder: a folder or HF repo id (madebyollin/taesd for SD 1.x/2.x
    /// models). Progress previews then look like the final image.
    #[arg(long, env = "IMAGINE_TAESD")]
    pub taesd: Option<String>,
    /// Decode grids with TAESD (much faster, slightly softer); U1-U4 still decode the chosen
    /// image with the model's full VAE. Needs --taesd [default: false].
    #[arg(long, env = "IMAGINE_FAST_GRID_DECODE", num_args = 0..=1, default_missing_value = "true")]
    pub fast_grid_decode: Option<bool>,
    /// What the models compute in: auto (fp16 on a GPU, bf16 on a CPU with AVX512_BF16,
    /// else fp32), fp32 (exactly diffusers' pixels), bf16 or fp16 [default: auto].
    #[arg(long, env = "IMAGINE_PRECISION")]
    pub precision: Option<String>,
    /// Where the models run: auto (a CUDA or Metal GPU when the binary has it, else the CPU),
    /// cpu, cuda, cuda:N or metal; a comma-separated list (cuda:0,cuda:1) runs one worker per
    /// device, all fed by the one queue [default: auto].
    #[arg(long, env = "IMAGINE_DEVICE")]
    pub device: Option<String>,
    /// The longest side, in pixels, an image may reach through Upscale and Pan (256 to 2048)
    /// [default: 2048].
    #[arg(long, env = "IMAGINE_MAX_IMAGE_SIDE")]
    pub max_image_side: Option<u32>,
    /// An ESRGAN-family model (RRDBNet `.safetensors`, e.g. Real-ESRGAN x2plus or x4plus) for
    /// the first stage of Upscale (Subtle / Creative) instead of Lanczos [default: none].
    #[arg(long, env = "IMAGINE_UPSCALER")]
    pub upscaler: Option<PathBuf>,
    /// A folder of LoRA `.safetensors` files that prompts name as `<lora:NAME:SCALE>`
    /// [default: none, LoRA tags are refused].
    #[arg(long, env = "IMAGINE_LORAS")]
    pub loras: Option<PathBuf>,
    /// Seconds a stop (SIGTERM, Ctrl-C) may take: the running job finishes or is stopped
    /// between steps and resumes at the next start; finished results are delivered [default: 30].
    #[arg(long, env = "IMAGINE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<f64>,
    /// Seconds any one request to Discord may take before it is given up (and retried where
    /// that is safe) [default: 30].
    #[arg(long, env = "IMAGINE_HTTP_TIMEOUT")]
    pub http_timeout: Option<f64>,
    /// Serve Prometheus metrics at http://ADDRESS/metrics, e.g. 127.0.0.1:9100 [default: off].
    #[arg(long, env = "IMAGINE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Delete the images of jobs that finished more than this many days ago; their buttons
    /// then say the images were cleaned up [default: keep forever].
    #[arg(long, env = "IMAGINE_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Keep at most this many gigabytes (10^9 bytes; fractions allowed, e.g. 0.5) of images,
    /// deleting the oldest jobs' first [default: no limit].
    #[arg(long, env = "IMAGINE_RETENTION_MAX_GB")]
    pub retention_max_gb: Option<f64>,
    /// `bot`: one process, Discord and the models; `gateway`: Discord, queue, store and
    /// delivery only, jobs go to `imagine worker` processes through queue_url [default: bot].
    #[arg(long, env = "IMAGINE_ROLE")]
    pub role: Option<String>,
    /// The NATS server (with JetStream) between a gateway and its workers, e.g.
    /// nats://127.0.0.1:4222 [default: none, one process].
    #[arg(long, env = "IMAGINE_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// Gateway: how many jobs it hands to the workers at once; set it to the number of
    /// workers (one per device) [default: 4].
    #[arg(long, env = "IMAGINE_WORKER_SLOTS")]
    pub worker_slots: Option<usize>,
    /// Worker: the models (names of [models] entries, comma-separated) it serves; it takes
    /// only their jobs [default: every configured model].
    #[arg(long, env = "IMAGINE_WORKER_MODELS")]
    pub worker_models: Option<String>,
    /// Seconds a job may go without word from its worker (a worker reports every third of
    /// this while it runs) before another worker takes it over [default: 30].
    #[arg(long, env = "IMAGINE_JOB_ACK_WAIT")]
    pub job_ack_wait: Option<f64>,
    /// How many workers may try a job whose worker died before it fails visibly [default: 3].
    #[arg(long, env = "IMAGINE_JOB_MAX_ATTEMPTS")]
    pub job_max_attempts: Option<u32>,
    /// Worker: its name in logs and results [default: host name and process id].
    #[arg(long, env = "IMAGINE_WORKER_NAME")]
    pub worker_name: Option<String>,
    /// Gateway: the Discord shards this process runs, `A-B` (or one, `A`) of shard_total;
    /// other gateways on the same database and queue run the rest [default: all].
    #[arg(long, env = "IMAGINE_SHARDS")]
    pub shards: Option<String>,
    /// How many shards all the bot's gateways run together (Discord wants one per ~1,000
    /// servers) [default: 1].
    #[arg(long, env = "IMAGINE_SHARD_TOTAL")]
    pub shard_total: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    discord_token: Option<String>,
    model: Option<String>,
    db: Option<PathBuf>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    queue_capacity: Option<usize>,
    user_cap: Option<usize>,
    discord_api_base: Option<String>,
    taesd: Option<String>,
    fast_grid_decode: Option<bool>,
    precision: Option<String>,
    device: Option<String>,
    devices: Option<Vec<String>>,
    max_image_side: Option<u32>,
    upscaler: Option<PathBuf>,
    loras: Option<PathBuf>,
    shutdown_timeout: Option<f64>,
    http_timeout: Option<f64>,
    metrics_addr: Option<String>,
    retention_days: Option<u32>,
    retention_max_gb: Option<f64>,
    role: Option<String>,
    queue_url: Option<String>,
    worker_slots: Option<usize>,
    worker_models: Option<Vec<String>>,
    job_ack_wait: Option<f64>,
    job_max_attempts: Option<u32>,
    worker_name: Option<String>,
    shards: Option<String>,
    shard_total: Option<u32>,
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
}

/// One `[models]` entry: `name = "folder, file or repo id"`, or
/// `name = { path = "model.safetensors", prediction = "v" }` for a file whose prediction type
/// the engine cannot tell, and/or `inpaint_model = "..."`: the model's inpainting variant
/// (a 9-channel UNet), which Zoom Out, Pan and Vary (Region) then use.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModelEntry {
    Path(String),
    Table(ModelTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelTable {
    path: String,
    #[serde(default)]
    prediction: Option<String>,
    #[serde(default)]
    inpaint_model: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub token: Secret,
    /// Name of the default model (a key of `models`).
    pub default_model: String,
    /// Model name → folder, single file or repo id.
    pub models: BTreeMap<String, String>,
    /// Models whose prediction type is set in the config (else the model's own).
    pub predictions: BTreeMap<String, Prediction>,
    /// Model name → its inpainting variant (folder, file or repo id), for outpainting and
    /// Vary (Region).
    pub inpaint_models: BTreeMap<String, String>,
    /// The SQLite file, when `database_url` is not set.
    pub db: PathBuf,
    /// PostgreSQL instead of the SQLite file (never shows its password).
    pub database_url: Option<PostgresUrl>,
    pub data_dir: PathBuf,
    pub queue_capacity: usize,
    pub user_cap: usize,
    pub api_base: Option<String>,
    /// TAESD folder or repo id, for previews (and grids with `fast_grid_decode`).
    pub taesd: Option<String>,
    /// Grids decoded with TAESD; U images always with the full VAE.
    pub fast_grid_decode: bool,
    /// What the models compute in (`auto`: the best each device offers).
    pub precision: PrecisionChoice,
    /// The compute devices, one worker each (at least one).
    pub devices: Vec<DeviceChoice>,
    /// The longest side an Upscale or Pan may make.
    pub max_image_side: u32,
    /// The ESRGAN model upscales start from, if any.
    pub upscaler: Option<PathBuf>,
    /// The folder `<lora:NAME:SCALE>` names are looked up in, if any.
    pub loras: Option<PathBuf>,
    /// How long a graceful stop may take.
    pub shutdown_timeout: Duration,
    /// How long one HTTP request may take.
    pub http_timeout: Duration,
    /// Where Prometheus metrics are served; `None`: not at all.
    pub metrics_addr: Option<SocketAddr>,
    /// How much of the stored images to keep; off (keep everything) by default.
    pub retention: RetentionLimits,
    /// Which part of the bot this process is.
    pub role: Role,
    /// The JetStream queue between a gateway and its workers; `None` in one process.
    pub queue: Option<crate::jetstream::QueueSettings>,
    /// The Discord shards this process runs (all of them unless sharded over gateways).
    pub shards: ShardRange,
}

/// Which part of the bot a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything in one process (`imagine bot`).
    Bot,
    /// Discord, admission, store and delivery; jobs run on workers (`imagine bot --role gateway`).
    Gateway,
    /// Models and engine only, jobs from the queue (`imagine worker`).
    Worker,
}

impl Config {
    pub fn resolve(args: &BotArgs) -> Result<Config> {
        Config::resolve_as(args, false)
    }

    /// The settings of `imagine worker`: no Discord token, and a queue_url.
    pub fn resolve_worker(args: &BotArgs) -> Result<Config> {
        Config::resolve_as(args, true)
    }

    fn resolve_as(args: &BotArgs, worker: bool) -> Result<Config> {
        let text = match &args.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        let file = args.config.as_deref().zip(text.as_deref());
        Config::resolve_with_file_as(args, file, worker)
    }

    /// [`Config::resolve`] with the config file (its path and text) already read: no I/O, so
    /// tests and the fuzzer can feed it any text.
    pub fn resolve_with_file(args: &BotArgs, file: Option<(&Path, &str)>) -> Result<Config> {
        Config::resolve_with_file_as(args, file, false)
    }

    /// [`Config::resolve_with_file`], for a worker (`worker`) or the bot.
    pub fn resolve_with_file_as(
        args: &BotArgs,
        file: Option<(&Path, &str)>,
        worker: bool,
    ) -> Result<Config> {
        let mut file = match file {
            Some((path, text)) => parse_file(path, text)?,
            None => FileConfig::default(),
        };
        let role = match (worker, args.role.clone().or(file.role.take())) {
            (true, _) => Role::Worker,
            (false, None) => Role::Bot,
            (false, Some(r)) => match r.trim() {
                "bot" => Role::Bot,
                "gateway" => Role::Gateway,
                other => bail!("role {other:?} is not bot or gateway (--role, IMAGINE_ROLE); workers run `imagine worker`"),
            },
        };
        let queue = crate::jetstream::QueueSettings::resolve(
            role,
            crate::jetstream::settings::QueueInputs {
                url: args.queue_url.clone().or(file.queue_url.take()),
                slots: args.worker_slots.or(file.worker_slots),
                models: args
                    .worker_models
                    .as_deref()
                    .map(|m| m.split(',').map(|s| s.trim().to_string()).collect())
                    .or(file.worker_models.take()),
                ack_wait: args.job_ack_wait.or(file.job_ack_wait),
                max_attempts: args.job_max_attempts.or(file.job_max_attempts),
                name: args.worker_name.clone().or(file.worker_name.take()),
            },
        )?;
        let token = args
            .discord_token
            .clone()
            .or(file.discord_token.take())
            .filter(|t| !t.trim().is_empty());
        // Workers never talk to Discord.
        let token = match (role, token) {
            (Role::Worker, t) => t.unwrap_or_default(),
            (_, t) => t.context("no Discord token: set DISCORD_TOKEN (Discord developer portal → your application → Bot → Reset Token)")?,
        };
        let spec = args
            .model
            .clone()
            .or(file.model)
            .unwrap_or_else(|| "stabilityai/sd-turbo".into());
        let ModelEntries {
            mut models,
            predictions,
            inpaint_models,
        } = model_entries(file.models)?;
        let default_model = short_name(&spec);
        models.insert(default_model.clone(), spec);
        let queue_capacity = args.queue_capacity.or(file.queue_capacity).unwrap_or(32);
        let user_cap = args.user_cap.or(file.user_cap).unwrap_or(3);
        if queue_capacity == 0 || user_cap == 0 {
            bail!("queue capacity and per-user cap must be at least 1");
        }
        let api_base = args.discord_api_base.clone().or(file.discord_api_base);
        if let Some(base) = &api_base {
            // A scheme alone ("http://") would pass a prefix check and fail much later.
            let url = reqwest::Url::parse(base).ok();
            let web = url.as_ref().is_some_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
            if !web {
                bail!("DISCORD_API_BASE must be an http(s) URL with a host, such as https://discord.com; got {base:?}");
            }
        }
        let taesd = args
            .taesd
            .clone()
            .or(file.taesd)
            .filter(|t| !t.trim().is_empty());
        let fast_grid_decode = args
            .fast_grid_decode
            .or(file.fast_grid_decode)
            .unwrap_or(false);
        if fast_grid_decode && taesd.is_none() {
            bail!("fast_grid_decode decodes grids with TAESD: set taesd too (IMAGINE_TAESD, e.g. madebyollin/taesd)");
        }
        let precision = match args.precision.clone().or(file.precision) {
            None => PrecisionChoice::Auto,
            Some(p) => PrecisionChoice::parse(&p)
                .map_err(|e| anyhow::anyhow!("{e} (IMAGINE_PRECISION)"))?,
        };
        let devices = devices(args.device.as_deref(), file.device, file.devices)?;
        let max_image_side = args.max_image_side.or(file.max_image_side).unwrap_or(2048);
        if !(256..=imagine_engine::generate::MAX_SIDE as u32).contains(&max_image_side) {
            bail!("max_image_side must be between 256 and 2048 pixels, got {max_image_side} (IMAGINE_MAX_IMAGE_SIDE)");
        }
        if precision == PrecisionChoice::Exactly(Precision::Bf16)
            && devices.iter().all(|d| *d == DeviceChoice::Cpu)
        {
            Precision::Bf16.check_on(&candle_core::Device::Cpu)?;
        }
        let shutdown_timeout = seconds(
            "shutdown_timeout (IMAGINE_SHUTDOWN_TIMEOUT)",
            args.shutdown_timeout.or(file.shutdown_timeout),
            30.0,
            0.0..=3600.0,
        )?;
        let http_timeout = seconds(
            "http_timeout (IMAGINE_HTTP_TIMEOUT)",
            args.http_timeout.or(file.http_timeout),
            30.0,
            1.0..=600.0,
        )?;
        let metrics_addr = args
            .metrics_addr
            .clone()
            .or(file.metrics_addr)
            .map(|a| parse_metrics_addr(&a))
            .transpose()?;
        let database_url = database_url(args.database_url.clone().or(file.database_url))?;
        let retention = retention_limits(
            args.retention_days.or(file.retention_days),
            args.retention_max_gb.or(file.retention_max_gb),
        )?;
        let shards = ShardRange::resolve(
            args.shards.as_deref().or(file.shards.as_deref()),
            args.shard_total.or(file.shard_total),
        )?;
        if role != Role::Worker {
            check_shared_for_shards(shards, role, queue.is_some(), database_url.is_some())?;
        }
        Ok(Config {
            token: Secret::new(token.trim()),
            default_model,
            models,
            predictions,
            inpaint_models,
            db: args
                .db
                .clone()
                .or(file.db)
                .unwrap_or_else(|| "imagine.db".into()),
            database_url,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| "imagine-data".into()),
            queue_capacity,
            user_cap,
            api_base: api_base.map(|b| b.trim_end_matches('/').to_string()),
            taesd,
            fast_grid_decode,
            precision,
            devices,
            max_image_side,
            upscaler: args
                .upscaler
                .clone()
                .or(file.upscaler)
                .filter(|p| !p.as_os_str().is_empty()),
            loras: args
                .loras
                .clone()
                .or(file.loras)
                .filter(|p| !p.as_os_str().is_empty()),
            shutdown_timeout,
            http_timeout,
            metrics_addr,
            retention,
            role,
            queue,
            shards,
        })
        .and_then(Config::check_models_served)
    }

    /// A worker serves only configured models, each reachable by a queue subject.
    fn check_models_served(self) -> Result<Config> {
        if let Some(queue) = &self.queue {
            queue.check_models(&self.models, self.role)?;
        }
        Ok(self)
    }
}

impl Config {
    /// The database the store opens: PostgreSQL when `database_url` is set, else the SQLite
    /// file.
    pub fn store_location(&self) -> StoreLocation {
        match &self.database_url {
            Some(url) => StoreLocation::Postgres(url.clone()),
            None => StoreLocation::SqliteFile(self.db.clone()),
        }
    }
}

/// A process that runs only some of the shards has neighbours: the gateways running the others.
/// They see one another's jobs (buttons, caps, recovery, delivery) only through a shared store
/// and queue, so those must be PostgreSQL and JetStream, not a local file and threads.
fn check_shared_for_shards(
    shards: ShardRange,
    role: Role,
    has_queue: bool,
    has_database: bool,
) -> Result<()> {
    if shards.is_whole() {
        return Ok(());
    }
    let missing = match (role == Role::Gateway && has_queue, has_database) {
        (true, true) => return Ok(()),
        (false, false) => "a shared queue and database",
        (false, true) => "a shared queue",
        (true, false) => "a shared database",
    };
    bail!(
        "shards {shards}: this process would run only part of the bot's shards, and the \
         gateways running the rest need {missing} to see one another's jobs: run `imagine bot \
         --role gateway` with queue_url (NATS JetStream, IMAGINE_QUEUE_URL) and database_url \
         (PostgreSQL, IMAGINE_DATABASE_URL), or drop --shards to run every shard here"
    )
}

/// `database_url`: unset or empty keeps the SQLite file; otherwise a PostgreSQL URL.
fn database_url(text: Option<String>) -> Result<Option<PostgresUrl>> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    // The text itself may hold a password: the message never repeats it.
    PostgresUrl::parse(&text).map(Some).map_err(|why| {
        anyhow::anyhow!(
            "database_url (IMAGINE_DATABASE_URL) {why}. Write \
             postgres://USER:PASSWORD@HOST:5432/DATABASE, or leave it unset for the SQLite file"
        )
    })
}

/// The most compute devices one process drives.
const MAX_DEVICES: usize = 16;

/// The devices to run workers on: `--device`/`IMAGINE_DEVICE` (one, or a comma-separated
/// list), else the file's `device` or `devices` (not both), else `auto`.
fn devices(
    flag: Option<&str>,
    file_device: Option<String>,
    file_devices: Option<Vec<String>>,
) -> Result<Vec<DeviceChoice>> {
    let names: Vec<String> = match (flag, file_device, file_devices) {
        (Some(list), _, _) => list.split(',').map(str::to_string).collect(),
        (None, Some(_), Some(_)) => {
            bail!("the config file sets both device and devices: keep one (devices = [\"cuda:0\", \"cuda:1\"] for several)")
        }
        (None, Some(one), None) => vec![one],
        (None, None, Some(list)) => list,
        (None, None, None) => vec!["auto".into()],
    };
    if names.is_empty() || names.len() > MAX_DEVICES {
        bail!(
            "devices must list 1 to {MAX_DEVICES} devices, got {}",
            names.len()
        );
    }
    let mut devices = Vec::with_capacity(names.len());
    for name in &names {
        let device =
            DeviceChoice::parse(name).map_err(|e| anyhow::anyhow!("{e} (IMAGINE_DEVICE)"))?;
        // Two workers on one GPU would fight over its memory; `auto` names no one device.
        let gpu = matches!(device, DeviceChoice::Cuda(_) | DeviceChoice::Metal(_));
        if (gpu && devices.contains(&device)) || (device == DeviceChoice::Auto && names.len() > 1) {
            bail!("devices {names:?}: name each GPU once, and no auto in a list (cuda:0,cuda:1)");
        }
        devices.push(device);
    }
    Ok(devices)
}

/// A duration setting in seconds, within `range`.
fn seconds(
    name: &str,
    value: Option<f64>,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Duration> {
    let s = value.unwrap_or(default);
    if !range.contains(&s) {
        bail!(
            "{name} must be between {} and {} seconds, got {s}",
            range.start(),
            range.end()
        );
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_metrics_addr(text: &str) -> Result<SocketAddr> {
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "metrics_addr {text:?} is not an IP address and port such as 127.0.0.1:9100 (IMAGINE_METRICS_ADDR)"
        )
    })
}

/// Longest retention accepted: a century, far beyond any disk's life.
const MAX_RETENTION_DAYS: u32 = 36_500;
/// Largest size limit accepted, in GB: a petabyte.
const MAX_RETENTION_GB: f64 = 1e6;

/// Retention is in days (the granularity people reason about for chat history) and in
/// decimal gigabytes (how disks and quotas are sold; a fraction such as 0.5 is easier to get
/// right than a byte count in an environment variable).
fn retention_limits(days: Option<u32>, max_gb: Option<f64>) -> Result<RetentionLimits> {
    if let Some(d) = days {
        if d == 0 || d > MAX_RETENTION_DAYS {
            bail!("retention_days must be between 1 and {MAX_RETENTION_DAYS}, got {d}; leave it unset to keep images forever (IMAGINE_RETENTION_DAYS)");
        }
    }
    if let Some(gb) = max_gb {
        if !(gb.is_finite() && gb > 0.0 && gb <= MAX_RETENTION_GB) {
            bail!("retention_max_gb must be a number of gigabytes above 0 and at most {MAX_RETENTION_GB}, got {gb}; leave it unset for no size limit (IMAGINE_RETENTION_MAX_GB)");
        }
    }
    Ok(RetentionLimits {
        max_age: days.map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
        max_bytes: max_gb.map(|gb| (gb * 1e9).round() as u64),
    })
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))
}

/// Parses the config file. toml's own error quotes the offending line, which may be the
/// token's: only the line number and toml's message are shown.
fn parse_file(path: &Path, text: &str) -> Result<FileConfig> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |span| span.start.min(text.len()));
        let line = text.as_bytes()[..at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        anyhow::anyhow!(
            "invalid config file {}, line {line}: {}",
            path.display(),
            e.message().trim()
        )
    })
}

/// The name a model spec is known by in prompts: its last path component.
/// `[models]`, split by what each entry sets.
struct ModelEntries {
    models: BTreeMap<String, String>,
    predictions: BTreeMap<String, Prediction>,
    inpaint_models: BTreeMap<String, String>,
}

/// Splits `[models]` into paths, the prediction types and the inpainting variants set for
/// some of them.
fn model_entries(entries: BTreeMap<String, ModelEntry>) -> Result<ModelEntries> {
    let (mut models, mut predictions) = (BTreeMap::new(), BTreeMap::new());
    let mut inpaint_models = BTreeMap::new();
    for (name, entry) in entries {
        let path = match entry {
            ModelEntry::Path(path) => path,
            ModelEntry::Table(ModelTable {
                path,
                prediction,
                inpaint_model,
            }) => {
                if let Some(inpaint) = inpaint_model.filter(|p| !p.trim().is_empty()) {
                    inpaint_models.insert(name.clone(), inpaint);
                }
                if let Some(p) = prediction {
                    let parsed = Prediction::parse(&p).with_context(|| {
                        format!("[models] {name}: prediction {p:?} is not v or epsilon")
                    })?;
                    predictions.insert(name.clone(), parsed);
                }
                path
            }
        };
        models.insert(name, path);
    }
    Ok(ModelEntries {
        models,
        predictions,
        inpaint_models,
    })
}

pub fn short_name(spec: &str) -> String {
    let last = spec
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(spec);
    // A single-file checkpoint is known by its name without the extension.
    last.strip_suffix(".safetensors")
        .unwrap_or(last)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BotArgs {
        BotArgs {
            config: None,
            discord_token: Some("tok".into()),
            model: None,
            db: None,
            database_url: None,
            data_dir: None,
            queue_capacity: None,
            user_cap: None,
            discord_api_base: None,
            taesd: None,
            fast_grid_decode: None,
            precision: None,
            device: None,
            max_image_side: None,
            upscaler: None,
            loras: None,
            shutdown_timeout: None,
            http_timeout: None,
            metrics_addr: None,
            retention_days: None,
            retention_max_gb: None,
            role: None,
            queue_url: None,
            worker_slots: None,
            worker_models: None,
            job_ack_wait: None,
            job_max_attempts: None,
            worker_name: None,
            shards: None,
            shard_total: None,
        }
    }

    #[test]
    fn a_part_of_the_shards_needs_the_shared_store_and_queue() {
        let mut a = args();
        a.shard_total = Some(2);
        // All shards in one process: fine on SQLite.
        let c = Config::resolve(&a).unwrap();
        assert!(c.shards.is_whole());
        assert_eq!(c.shards.total(), 2);
        a.shards = Some("0-0".into());
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(e.contains("shared queue and database"), "{e}");
        assert!(e.contains("--role gateway"), "{e}");
        a.role = Some("gateway".into());
        a.queue_url = Some("nats://127.0.0.1:4222".into());
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(e.contains("shared database"), "{e}");
        assert!(e.contains("IMAGINE_DATABASE_URL"), "{e}");
        a.database_url = Some("postgres://imagine@db/imagine".into());
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.shards.to_string(), "0-0 of 2");
        a.shards = Some("0-2".into());
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(e.contains("shard 2 does not exist"), "{e}");
        // The file spells them like the flags.
        let text = "shards = \"1-1\"\nshard_total = 2\n";
        let (mut b, path) = (args(), Path::new("imagine.toml"));
        b.role = Some("gateway".into());
        b.queue_url = a.queue_url.clone();
        b.database_url = a.database_url.clone();
        let c = Config::resolve_with_file(&b, Some((path, text))).unwrap();
        assert_eq!(c.shards.to_string(), "1-1 of 2");
    }

    #[test]
    fn a_worker_needs_a_queue_but_no_token_and_a_gateway_both() {
        let mut a = args();
        a.discord_token = None;
        a.queue_url = Some("nats://127.0.0.1:4222".into());
        let c = Config::resolve_worker(&a).unwrap();
        assert_eq!((c.role, c.token.expose()), (Role::Worker, ""));
        assert_eq!(c.queue.unwrap().url, "nats://127.0.0.1:4222");
        a.role = Some("gateway".into());
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(e.contains("DISCORD_TOKEN"), "{e}");
        a.discord_token = Some("tok".into());
        assert_eq!(Config::resolve(&a).unwrap().role, Role::Gateway);
        a.role = Some("worker".into());
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(e.contains("imagine worker"), "{e}");
        a.role = None;
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(e.contains("--role gateway"), "{e}");
        a.worker_models = Some("sd-turbo,nope".into());
        let e = Config::resolve_worker(&a).unwrap_err().to_string();
        assert!(e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn defaults_need_only_a_token() {
        let c = Config::resolve(&args()).unwrap();
        assert_eq!(c.default_model, "sd-turbo");
        assert_eq!(c.models["sd-turbo"], "stabilityai/sd-turbo");
        assert_eq!((c.queue_capacity, c.user_cap), (32, 3));
        assert_eq!(c.db, PathBuf::from("imagine.db"));
        assert_eq!((c.taesd, c.fast_grid_decode), (None, false));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn database_url_selects_postgresql_and_bad_ones_are_refused_without_the_password() {
        let mut a = args();
        assert_eq!(
            Config::resolve(&a).unwrap().store_location(),
            StoreLocation::SqliteFile("imagine.db".into())
        );
        a.database_url = Some("postgres://imagine:hunter2@db:5432/imagine".into());
        let c = Config::resolve(&a).unwrap();
        match c.store_location() {
            StoreLocation::Postgres(url) => {
                assert_eq!(url.to_string(), "postgres://imagine:***@db:5432/imagine")
            }
            other => panic!("expected PostgreSQL, got {other:?}"),
        }
        assert!(!format!("{c:?}").contains("hunter2"));
        a.database_url = Some(" ".into());
        assert!(Config::resolve(&a).unwrap().database_url.is_none());
        for bad in [
            "mysql://u:hunter2@db/imagine",
            "postgres://u:hunter2@db/imagine?sslmode=maybe",
            "imagine.db",
        ] {
            a.database_url = Some(bad.into());
            let err = format!("{:#}", Config::resolve(&a).unwrap_err());
            assert!(err.contains("IMAGINE_DATABASE_URL"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        // The TOML name.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagine.toml");
        let text = "database_url = \"postgresql://localhost/imagine\"\n";
        let c = Config::resolve_with_file(&args(), Some((&path, text))).unwrap();
        assert!(matches!(c.store_location(), StoreLocation::Postgres(_)));
    }

    #[test]
    fn timeouts_are_checked() {
        let mut a = args();
        a.shutdown_timeout = Some(5.5);
        assert_eq!(
            Config::resolve(&a).unwrap().shutdown_timeout,
            Duration::from_millis(5500)
        );
        for bad in [-1.0, f64::NAN, 1e9] {
            a.shutdown_timeout = Some(bad);
            let err = Config::resolve(&a).unwrap_err().to_string();
            assert!(err.contains("IMAGINE_SHUTDOWN_TIMEOUT"), "{err}");
        }
    }

    #[test]
    fn fast_grid_decode_needs_taesd_and_flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagine.toml");
        std::fs::write(
            &path,
            "taesd = \"madebyollin/taesd\"\nfast_grid_decode = true\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.taesd.as_deref(), Some("madebyollin/taesd"));
        assert!(c.fast_grid_decode);
        a.fast_grid_decode = Some(false);
        assert!(!Config::resolve(&a).unwrap().fast_grid_decode);
        let mut a = args();
        a.fast_grid_decode = Some(true);
        let err = Config::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("taesd"), "{err}");
    }

    #[test]
    fn the_token_never_prints() {
        let c = Config::resolve(&args()).unwrap();
        assert!(!format!("{c:?}").contains("tok\""));
        assert_eq!(c.token.to_string(), "***");
    }

    #[test]
    fn a_missing_token_says_where_to_get_one() {
        let mut a = args();
        a.discord_token = None;
        let err = Config::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("DISCORD_TOKEN"), "{err}");
    }

    #[test]
    fn an_api_base_without_a_host_is_refused() {
        for base in ["http://", "http:", "discord.com", "ftp://x"] {
            let mut a = args();
            a.discord_api_base = Some(base.into());
            let err = Config::resolve(&a).unwrap_err().to_string();
            assert!(
                err.contains("DISCORD_API_BASE must be an http(s) URL"),
                "{base}: {err}"
            );
        }
        let mut a = args();
        a.discord_api_base = Some("http://127.0.0.1:8080/".into());
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.api_base.as_deref(), Some("http://127.0.0.1:8080"));
    }

    #[test]
    fn a_broken_config_file_names_the_line_but_never_shows_the_token() {
        let text = "queue_capacity = 8\ndiscord_token = \"sekrit-123\nuser_cap = 2\n";
        let err = Config::resolve_with_file(&args(), Some((Path::new("imagine.toml"), text)))
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.starts_with("invalid config file imagine.toml, line 2: "),
            "{message}"
        );
        assert!(!message.contains("sekrit"), "{message}");
    }

    #[test]
    fn the_file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagine.toml");
        std::fs::write(
            &path,
            "queue_capacity = 8\nuser_cap = 2\n[models]\nsd15 = \"./sd15\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        a.user_cap = Some(5);
        let c = Config::resolve(&a).unwrap();
        assert_eq!((c.queue_capacity, c.user_cap), (8, 5));
        assert_eq!(c.models["sd15"], "./sd15");
        std::fs::write(dir.path().join("bad.toml"), "queue_size = 8\n").unwrap();
        a.config = Some(dir.path().join("bad.toml"));
        assert!(Config::resolve(&a).is_err());
    }

    #[test]
    fn a_model_entry_is_a_path_or_a_table_with_a_prediction_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagine.toml");
        let mut a = args();
        a.config = Some(path.clone());
        std::fs::write(
            &path,
            "[models]\nsd15 = \"./sd15\"\nsd21 = { path = \"m/sd21.safetensors\", prediction = \"v\" }\n",
        )
        .unwrap();
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.models["sd15"], "./sd15");
        assert_eq!(c.models["sd21"], "m/sd21.safetensors");
        assert_eq!(c.predictions.get("sd21"), Some(&Prediction::V));
        assert_eq!(c.predictions.get("sd15"), None);
        assert_eq!(short_name("m/sd21.safetensors"), "sd21");
        assert!(c.inpaint_models.is_empty());

        std::fs::write(
            &path,
            "[models]\nsd15 = { path = \"./sd15\", inpaint_model = \"./sd15-inpainting\" }\n",
        )
        .unwrap();
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.models["sd15"], "./sd15");
        assert_eq!(c.inpaint_models["sd15"], "./sd15-inpainting");
        std::fs::write(&path, "[models]\nx = { path = \"x\", inpaint = \"y\" }\n").unwrap();
        assert!(Config::resolve(&a).is_err(), "unknown keys are refused");

        std::fs::write(
            &path,
            "[models]\nx = { path = \"x.safetensors\", prediction = \"x0\" }\n",
        )
        .unwrap();
        let err = Config::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("not v or epsilon"), "{err}");
    }

    #[test]
    fn metrics_and_retention_are_off_by_default_and_read_from_every_source() {
        let c = Config::resolve(&args()).unwrap();
        assert_eq!(c.metrics_addr, None);
        assert!(c.retention.is_off());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagine.toml");
        std::fs::write(
            &path,
            "metrics_addr = \"127.0.0.1:9100\"\nretention_days = 30\nretention_max_gb = 0.5\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(
            c.retention.max_age,
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.retention.max_bytes, Some(500_000_000));
        a.retention_days = Some(7);
        a.metrics_addr = Some("[::1]:9200".into());
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.retention.max_age.unwrap().as_secs(), 7 * 86_400);
        assert_eq!(c.metrics_addr.unwrap().port(), 9200);
    }

    #[test]
    fn bad_metrics_and_retention_settings_say_what_is_accepted() {
        for (set, needle) in [
            ((Some("localhost"), None, None), "127.0.0.1:9100"),
            ((Some("127.0.0.1"), None, None), "IMAGINE_METRICS_ADDR"),
            ((None, Some(0), None), "between 1 and"),
            ((None, None, Some(0.0)), "above 0"),
            ((None, None, Some(-1.0)), "above 0"),
            ((None, None, Some(f64::NAN)), "above 0"),
            ((None, None, Some(1e9)), "at most"),
        ] {
            let mut a = args();
            let (addr, days, gb) = set;
            a.metrics_addr = addr.map(str::to_string);
            a.retention_days = days;
            a.retention_max_gb = gb;
            let err = Config::resolve(&a).unwrap_err().to_string();
            assert!(err.contains(needle), "{set:?}: {err}");
        }
    }

    #[test]
    fn devices_and_precision_default_to_auto_and_take_lists() {
        let c = Config::resolve(&args()).unwrap();
        assert_eq!(c.max_image_side, 2048);
        assert_eq!(c.devices, vec![DeviceChoice::Auto]);
        assert_eq!(c.precision, PrecisionChoice::Auto);
        let mut a = args();
        a.device = Some("cuda:0, cuda:1".into());
        a.precision = Some("FP16".into());
        let c = Config::resolve(&a).unwrap();
        assert_eq!(
            c.devices,
            vec![DeviceChoice::Cuda(0), DeviceChoice::Cuda(1)]
        );
        assert_eq!(c.precision, PrecisionChoice::Exactly(Precision::Fp16));
        let file =
            |text: &str| Config::resolve_with_file(&args(), Some((Path::new("c.toml"), text)));
        let c = file("devices = [\"cpu\", \"cpu\"]").unwrap();
        assert_eq!(c.devices, vec![DeviceChoice::Cpu, DeviceChoice::Cpu]);
        assert_eq!(
            file("device = \"metal\"").unwrap().devices,
            vec![DeviceChoice::Metal(0)]
        );
        for (text, needle) in [
            (
                "device = \"cpu\"\ndevices = [\"cpu\"]",
                "both device and devices",
            ),
            ("devices = []", "1 to 16"),
            ("devices = [\"cuda:0\", \"cuda:0\"]", "each GPU once"),
            ("devices = [\"auto\", \"cpu\"]", "no auto in a list"),
            ("device = \"tpu\"", "IMAGINE_DEVICE"),
            ("precision = \"int8\"", "auto, fp32, bf16, fp16"),
            ("max_image_side = 4096", "between 256 and 2048"),
        ] {
            let err = file(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
