//! The Discord bot: `imagine bot`. poise serves `/imagine`; buttons and DMs arrive through the
//! event handler; the dispatcher runs the queue; the store remembers everything, so a restart
//! resumes unfinished jobs and every old button still works.
//!
//! - [`imagine_cmd`]: `/imagine` and DM prompts; [`events`]: buttons and DMs.
//! - [`admission`]: queue slot, store, first message, then the line.
//! - [`dispatcher`]: queue → worker thread → store → Discord.
//! - [`courier`]: editing or posting messages (late delivery after 15 minutes).
//! - [`image_prompt`]: the attached image, downloaded with limits and checked.
//! - [`messages`]: the text and buttons of each job state.

pub mod admission;
pub mod courier;
pub mod dispatcher;
pub mod events;
pub mod image_prompt;
pub mod imagine_cmd;
pub mod messages;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context as _, Result};
use imagine_engine::ModelInfo;
use poise::serenity_prelude::{self as serenity, GatewayIntents, HttpBuilder};

use crate::config::{short_name, Config};
use crate::queue::JobQueue;
use crate::store::Store;
use crate::worker::Engines;
use courier::Courier;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Context<'a> = poise::Context<'a, Data, Error>;

/// Shared state of the bot.
pub struct Data {
    pub store: Store,
    pub queue: JobQueue,
    pub config: Config,
    /// Configured models by name.
    pub models: BTreeMap<String, ModelInfo>,
    pub data_dir: PathBuf,
    http_client: reqwest::Client,
    courier: Courier,
}

impl Data {
    pub fn courier(&self) -> &Courier {
        &self.courier
    }
}

/// Builds the REST client: Discord itself, or the configured API base (a proxy or the
/// simulator), whose rate limits are then its own business.
fn build_http(config: &Config) -> Result<Http> {
    let mut builder = HttpBuilder::new(config.token.expose());
    if let Some(base) = &config.api_base {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        builder = builder
            .client(client)
            .proxy(base.as_str())
            .ratelimiter_disabled(true);
    }
    Ok(builder.build())
}

type Http = serenity::Http;

/// Runs the bot until Ctrl-C or a fatal gateway error.
pub async fn run(config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let store = Store::open(&config.db)
        .await
        .with_context(|| format!("cannot open the database {}", config.db.display()))?;
    let requeued = store.requeue_running().await?;
    let mut models = BTreeMap::new();
    for (name, spec) in &config.models {
        let dir = tokio::task::spawn_blocking({
            let spec = spec.clone();
            move || imagine_engine::resolve_model(&spec)
        })
        .await??;
        let info = imagine_engine::StableDiffusion::describe(&dir)
            .with_context(|| format!("model {name} ({spec})"))?;
        models.insert(name.clone(), info);
    }
    let queue = JobQueue::new(config.queue_capacity, config.user_cap);
    let unfinished = store.unfinished_jobs().await?;
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

    let http_client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the download client")?;
    let mut engines = Engines::new(config.models.clone()).with_precision(config.precision);
    if let Some(spec) = &config.taesd {
        let dir = tokio::task::spawn_blocking({
            let spec = spec.clone();
            move || imagine_engine::resolve_taesd(&spec)
        })
        .await??;
        imagine_engine::Taesd::describe(&dir).with_context(|| format!("TAESD ({spec})"))?;
        engines = engines.with_taesd(dir, short_name(spec), config.fast_grid_decode);
    }
    // Everything the first READY needs, handed over once.
    let pending = Mutex::new(Some((
        store,
        queue,
        config.clone(),
        models,
        http_client,
        engines,
    )));
    let framework = poise::Framework::builder()
        .options(poise::FrameworkOptions {
            commands: vec![imagine_cmd::imagine()],
            event_handler: |framework, event| Box::pin(events::on_event(framework, event)),
            on_error: |error| Box::pin(on_error(error)),
            ..Default::default()
        })
        .setup(move |ctx, ready, framework| {
            let pending = pending.lock().ok().and_then(|mut p| p.take());
            Box::pin(async move {
                let (store, queue, config, models, http_client, engines) =
                    pending.ok_or("setup ran twice")?;
                ctx.http.set_application_id(ready.application.id);
                poise::builtins::register_globally(ctx, &framework.options().commands).await?;
                tracing::info!(user = %ready.user.name, "connected; /imagine registered");
                let courier = Courier {
                    http: ctx.http.clone(),
                };
                tokio::spawn(dispatcher::run(
                    queue.clone(),
                    store.clone(),
                    courier.clone(),
                    engines,
                    config.data_dir.clone(),
                ));
                Ok(Data {
                    store,
                    queue,
                    data_dir: config.data_dir.clone(),
                    config,
                    models,
                    http_client,
                    courier,
                })
            })
        })
        .build();
    let intents = GatewayIntents::non_privileged();
    let mut client = serenity::ClientBuilder::new_with_http(build_http(&config)?, intents)
        .framework(framework)
        .await
        .context("building the Discord client")?;
    let shards = client.shard_manager.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutting down; unfinished jobs resume at the next start");
            shards.shutdown_all().await;
        }
    });
    client
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("the Discord connection ended: {e}"))
}

async fn on_error(error: poise::FrameworkError<'_, Data, Error>) {
    tracing::error!("{error}");
}
