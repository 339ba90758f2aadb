//! The Discord bot: `imagine bot`. poise serves `/imagine`; buttons and DMs arrive through the
//! event handler; the dispatcher runs the queue; the outbox delivers every ended job exactly
//! once; the store remembers everything, so a restart resumes unfinished jobs, delivers what
//! was not delivered, and every old button still works.
//!
//! - [`imagine_cmd`]: `/imagine` and DM prompts; [`events`]: buttons (❌ cancel too), the Vary
//!   (Region) menu, and DMs; [`region_cmd`]: `/region` with a painted mask.
//! - [`admission`]: queue slot, store, first message, then the line; [`orphans`]: first
//!   replies that never reached Discord.
//! - [`dispatcher`]: queue → [`engine_thread`] (supervised) → store.
//! - [`updates`]: live edits (positions, progress) off the engine's path, through [`courier`];
//!   [`positions`]: each waiting job's place (across gateways when sharded).
//! - [`delivery`]: the outbox of ended jobs, over [`rest`]; [`place`]: where the bot may post.
//! - [`shutdown`]: SIGTERM / Ctrl-C, bounded graceful stop.
//! - [`recovery`]: the interrupted jobs a start takes back (only its own shards' when sharded).
//! - [`image_prompt`]: the attached image, downloaded with limits and checked.
//! - [`messages`]: the text and buttons of each job state.

pub mod admission;
pub mod courier;
pub mod delivery;
pub mod dispatcher;
pub mod engine_thread;
pub mod envelope;
pub mod events;
pub mod forms;
pub mod image_prompt;
pub mod imagine_cmd;
pub mod info_cmd;
pub mod messages;
pub mod orphans;
pub mod place;
pub mod positions;
pub mod recovery;
pub mod region_cmd;
pub mod rest;
pub mod runner;
pub mod settings_cmd;
pub mod shutdown;
pub mod updates;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use imagine_engine::ModelInfo;
use poise::serenity_prelude::{self as serenity, GatewayIntents, HttpBuilder};

use crate::config::{short_name, Config, Role};
use crate::jetstream::gateway::Remote;
use crate::jetstream::shared_images::SharedImages;
use crate::queue::JobQueue;
use crate::store::{Store, StoreLocation};
use crate::worker::Engines;
use courier::Courier;
use delivery::Outbox;
use engine_thread::{EngineThread, EnginesFactory, TestFaults};
use rest::Rest;
use shutdown::Shutdown;
use updates::LiveUpdates;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Context<'a> = poise::Context<'a, Data, Error>;

/// Shared state of the bot. Cheap to clone: the tasks (dispatcher, outbox, graceful stop)
/// each hold one.
#[derive(Clone)]
pub struct Data(Arc<BotState>);

impl Deref for Data {
    type Target = BotState;
    fn deref(&self) -> &BotState {
        &self.0
    }
}

pub struct BotState {
    pub store: Store,
    pub queue: JobQueue,
    pub config: Config,
    /// Configured models by name.
    pub models: BTreeMap<String, ModelInfo>,
    /// Absolute (resolved at start), so stored paths do not depend on where the bot started.
    pub data_dir: PathBuf,
    /// A sharded gateway's view of the finished images the other gateways recorded.
    pub shared_images: Option<SharedImages>,
    pub rest: Rest,
    pub updates: LiveUpdates,
    pub outbox: Outbox,
    pub shutdown: Shutdown,
    /// A sharded gateway's view of the line all gateways share.
    pub line: positions::SharedLine,
    http_client: reqwest::Client,
    courier: Courier,
}

impl BotState {
    pub fn courier(&self) -> &Courier {
        &self.courier
    }
}

/// Every HTTP client of the bot gives up on a connection after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP client with timeouts, so one slow request never stalls anything for long.
fn http_client(config: &Config) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        // Discord asks every client for a `DiscordBot (url, version)` agent; serenity sets its
        // own on its calls, this one covers delivery and downloads.
        .user_agent(concat!(
            "DiscordBot (https://github.com/imagine-bot/imagine, ",
            env!("CARGO_PKG_VERSION"),
            ")"
        ))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(config.http_timeout)
        .build()
        .context("building the HTTP client")
}

/// Builds serenity's REST client: Discord itself, or the configured API base (a proxy or the
/// simulator), whose rate limits are then its own business. Both with timeouts.
fn build_http(config: &Config) -> Result<Http> {
    let mut builder = HttpBuilder::new(config.token.expose()).client(http_client(config)?);
    if let Some(base) = &config.api_base {
        builder = builder.proxy(base.as_str()).ratelimiter_disabled(true);
    }
    Ok(builder.build())
}

type Http = serenity::Http;

/// Everything the first READY needs, handed over once.
struct Startup {
    store: Store,
    queue: JobQueue,
    models: BTreeMap<String, ModelInfo>,
    /// One per compute device: each worker builds its models with its own (none on a gateway).
    engines: Vec<EnginesFactory>,
    /// A gateway's queue to its workers.
    remote: Option<Remote>,
    rest: Rest,
    http_client: reqwest::Client,
}

/// Runs the bot until SIGTERM, Ctrl-C or a fatal gateway error.
pub async fn run(mut config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    config.data_dir = std::path::absolute(&config.data_dir)
        .with_context(|| format!("cannot resolve {}", config.data_dir.display()))?;
    let location = config.store_location();
    let store = Store::open_location(&location)
        .await
        .with_context(|| match &location {
            StoreLocation::Postgres(_) => format!(
                "cannot open {location} (is the server running, the database created with \
                 createdb, and the user allowed to connect?)"
            ),
            StoreLocation::SqliteFile(_) => format!("cannot open {location}"),
        })?;
    tracing::info!(store = %location, "database open");
    let requeued = recovery::requeue_interrupted(&store, config.shards).await?;
    let health = crate::metrics::install(config.metrics_addr).await?;
    health.watch_store(store.clone());
    let models = describe_models(&config).await?;
    // A gateway loads no model: its jobs run on `imagine worker` processes.
    let (engines, remote) = match (&config.role, &config.queue) {
        (Role::Gateway, Some(queue)) => {
            // A gateway of several keeps the images it records for the others.
            let share_into = (!config.shards.is_whole()).then_some(config.data_dir.as_path());
            let remote = Remote::connect(queue, store.clone(), share_into).await?;
            health.watch_queue(remote.client());
            tracing::info!(
                url = queue.url,
                slots = queue.slots,
                "gateway: jobs go to the workers through the queue"
            );
            (Vec::new(), Some(remote))
        }
        _ => (engines_factories(&config).await?, None),
    };
    let runners = match &remote {
        Some(_) => config.queue.as_ref().map_or(1, |q| q.slots),
        None => engines.len(),
    };
    let http_client = http_client(&config)?;
    let rest = Rest::new(
        http_client.clone(),
        config.api_base.as_deref(),
        config.token.expose(),
    );
    let (kept, abandoned) = orphans::resolve_at_start(&store, &rest, config.shards).await?;
    if kept + abandoned > 0 {
        tracing::info!(
            kept,
            abandoned,
            "resolved jobs whose first reply was unconfirmed"
        );
    }
    let queue = JobQueue::new(config.queue_capacity, config.user_cap).with_workers(runners);
    let unfinished = recovery::unfinished_jobs(&store, config.shards).await?;
    if !unfinished.is_empty() {
        tracing::info!(
            jobs = unfinished.len(),
            requeued,
            "resuming unfinished jobs"
        );
    }
    for job in &unfinished {
        queue.resume(job.id, job.request.user_id);
    }
    let store_for_retention = store.clone();
    let shared_for_retention = remote.as_ref().and_then(Remote::shared_images);
    if let Some(shared) = shared_for_retention.clone() {
        let store = store.clone();
        tokio::spawn(async move {
            match shared.backfill(&store).await {
                Ok(0) => {}
                Ok(files) => tracing::info!(files, "shared the images recorded before sharding"),
                Err(e) => tracing::warn!("cannot share the images recorded before sharding: {e:#}"),
            }
        });
    }
    let shutdown = Shutdown::new(config.shutdown_timeout);
    let pending = Mutex::new(Some(Startup {
        store,
        queue,
        models,
        engines,
        remote,
        rest,
        http_client,
    }));
    let framework = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        poise::Framework::builder()
            .options(poise::FrameworkOptions {
                commands: vec![
                    imagine_cmd::imagine(),
                    info_cmd::info(),
                    region_cmd::region(),
                    settings_cmd::settings(),
                    settings_cmd::prefer(),
                ],
                event_handler: |framework, event| Box::pin(events::on_event(framework, event)),
                on_error: |error| Box::pin(on_error(error)),
                // Replies that set none ping no one.
                allowed_mentions: Some(messages::no_mentions()),
                ..Default::default()
            })
            .setup(move |ctx, ready, framework| {
                let pending = pending.lock().ok().and_then(|mut p| p.take());
                Box::pin(async move {
                    let startup = pending.ok_or("setup ran twice")?;
                    ctx.http.set_application_id(ready.application.id);
                    poise::builtins::register_globally(ctx, &framework.options().commands).await?;
                    tracing::info!(user = %ready.user.name, "connected; /imagine registered");
                    Ok(serve(ctx, startup, config, shutdown))
                })
            })
            .build()
    };
    let intents = GatewayIntents::non_privileged();
    let mut client = serenity::ClientBuilder::new_with_http(build_http(&config)?, intents)
        .framework(framework)
        .await
        .context("building the Discord client")?;
    crate::retention::spawn(
        store_for_retention,
        config.data_dir.clone(),
        config.retention,
        shared_for_retention,
    );
    shutdown::on_signal(shutdown, client.shard_manager.clone());
    let shards = config.shards;
    tracing::info!(%shards, "connecting to Discord");
    // serenity's range includes its end: `first..last` starts shards first to last.
    client
        .start_shard_range(shards.first()..shards.last(), shards.total())
        .await
        .map_err(|e| anyhow::anyhow!("the Discord connection ended: {e}"))
}

/// Starts the bot's tasks once connected; returns the state commands and events share.
fn serve(ctx: &serenity::Context, s: Startup, config: Config, shutdown: Shutdown) -> Data {
    let courier = Courier {
        http: ctx.http.clone(),
    };
    let updates = LiveUpdates::start(s.store.clone(), courier.clone());
    let shared_images = s.remote.as_ref().and_then(Remote::shared_images);
    let outbox = Outbox::new(
        s.store.clone(),
        s.rest.clone(),
        updates.clone(),
        config.data_dir.clone(),
        shared_images.clone(),
        config.http_timeout,
        config.shards,
    );
    let faults = TestFaults::from_env();
    let runners: Vec<Arc<dyn runner::JobRunner>> = match &s.remote {
        Some(remote) => remote.runners(config.queue.as_ref().map_or(1, |q| q.slots)),
        None => s
            .engines
            .into_iter()
            .map(|factory| {
                Arc::new(EngineThread::new(
                    factory,
                    config.data_dir.clone(),
                    faults.clone(),
                )) as Arc<dyn runner::JobRunner>
            })
            .collect(),
    };
    let data = Data(Arc::new(BotState {
        store: s.store,
        queue: s.queue,
        data_dir: config.data_dir.clone(),
        shared_images,
        config,
        models: s.models,
        rest: s.rest,
        updates,
        outbox,
        shutdown,
        line: positions::SharedLine::default(),
        http_client: s.http_client,
        courier,
    }));
    // Delivers at once what ended before a restart and was never confirmed.
    data.outbox.start();
    if let Some(remote) = &s.remote {
        remote.start(data.clone());
    }
    dispatcher::start(data.clone(), runners);
    positions::start(data.clone());
    shutdown::drain(data.clone());
    data
}

/// Reads each configured model's description (not its weights).
async fn describe_models(config: &Config) -> Result<BTreeMap<String, ModelInfo>> {
    let mut models = BTreeMap::new();
    for (name, spec) in &config.models {
        let dir = tokio::task::spawn_blocking({
            let spec = spec.clone();
            move || imagine_engine::resolve_model(&spec)
        })
        .await??;
        let prediction = config.predictions.get(name).copied();
        let info = imagine_engine::StableDiffusion::describe_with(&dir, prediction)
            .with_context(|| format!("model {name} ({spec})"))?;
        models.insert(name.clone(), info);
    }
    for (name, spec) in &config.inpaint_models {
        let base = models
            .get(name)
            .with_context(|| format!("[models] {name}: inpaint_model for an unknown model"))?;
        check_inpaint_model(name, spec, base).await?;
    }
    Ok(models)
}

/// A model's `inpaint_model` must be an inpainting UNet (9 channels in) of the same family,
/// refused at start with the reason rather than at the first Zoom Out.
async fn check_inpaint_model(name: &str, spec: &str, base: &ModelInfo) -> Result<()> {
    let dir = tokio::task::spawn_blocking({
        let spec = spec.to_string();
        move || imagine_engine::resolve_model(&spec)
    })
    .await??;
    let info = imagine_engine::StableDiffusion::describe_with(&dir, None)
        .with_context(|| format!("[models] {name}: inpaint_model {spec}"))?;
    if info.unet_kind != imagine_engine::UNetKind::Inpainting {
        anyhow::bail!(
            "[models] {name}: inpaint_model {spec} is not an inpainting model (its UNet does \
             not take the mask and masked image): name the model's inpainting variant"
        );
    }
    if info.family != base.family || info.latent_channels != base.latent_channels {
        anyhow::bail!(
            "[models] {name}: inpaint_model {spec} is a {:?} model, {name} a {:?} one: use \
             the inpainting variant of the same kind",
            info.family,
            base.family
        );
    }
    Ok(())
}

/// How each engine thread (one per configured device) builds its lazily loaded models, again
/// after a panic. The devices are opened here, once, and the choices logged.
pub(crate) async fn engines_factories(config: &Config) -> Result<Vec<EnginesFactory>> {
    let mut hardware = Vec::with_capacity(config.devices.len());
    for device in &config.devices {
        let hw = crate::hardware::Hardware::choose(*device, config.precision)
            .with_context(|| format!("device {device:?}"))?;
        hardware.push(hw);
    }
    let taesd = match &config.taesd {
        Some(spec) => {
            let dir = tokio::task::spawn_blocking({
                let spec = spec.clone();
                move || imagine_engine::resolve_taesd(&spec)
            })
            .await??;
            imagine_engine::Taesd::describe(&dir).with_context(|| format!("TAESD ({spec})"))?;
            Some((dir, short_name(spec), config.fast_grid_decode))
        }
        None => None,
    };
    if let Some(path) = &config.upscaler {
        // Refused at start, with the reason, rather than at the first upscale (the header is
        // enough; each worker loads the weights on its first upscale).
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            imagine_engine::esrgan::Esrgan::describe(&path)
                .map(drop)
                .with_context(|| format!("the upscaler {}", path.display()))
        })
        .await??;
    }
    if let Some(dir) = &config.loras {
        crate::loras::LoraFolder::open(dir)?;
    }
    let factories = hardware.into_iter().map(|hw| {
        let (specs, taesd) = (config.models.clone(), taesd.clone());
        let predictions = config.predictions.clone();
        let inpaint_models = config.inpaint_models.clone();
        let (upscaler, loras) = (config.upscaler.clone(), config.loras.clone());
        Arc::new(move || {
            let mut engines = Engines::new(specs.clone())
                .with_predictions(predictions.clone())
                .with_inpaint_models(&inpaint_models)
                .on(hw.device.clone(), hw.precision);
            if let Some(path) = &upscaler {
                engines = engines.with_upscaler(path.clone());
            }
            if let Some(dir) = &loras {
                engines = engines.with_loras(dir.clone());
            }
            match &taesd {
                Some((dir, name, fast)) => engines.with_taesd(dir.clone(), name.clone(), *fast),
                None => engines,
            }
        }) as EnginesFactory
    });
    Ok(factories.collect())
}

/// Errors poise could not hand to a command: logged, with interaction tokens cut out of any
/// URL they carry.
async fn on_error(error: poise::FrameworkError<'_, Data, Error>) {
    tracing::error!("{}", courier::redact_paths(&error.to_string()));
}
