//! Imagine's product crate: the command line today, the Discord bot on top of it.
//!
//! - [`cli`]: argument parsing and dispatch (`imagine generate`).
//! - [`generate_cmd`]: the offline `generate` subcommand.
//! - [`bench_cmd`]: `imagine bench`, timings of the engine's pieces on a model folder.
//! - [`hardware`]: the compute device and precision (`auto`: the best the host has).
//! - [`image_input`]: every image a user hands us, checked and decoded (PNG, JPEG, WebP, GIF).
//! - [`loras`]: `--lora FILE[:SCALE]`, and LoRAs recorded in PNGs as the web UIs do.
//! - [`custom_zoom`]: the Custom Zoom modal's text: `--zoom X` and the prompt.
//! - [`render`]: grids and PNG files with their `parameters` text chunk.
//! - [`logging`]: tracing setup.
//! - [`params`]: Midjourney-style prompt parameters (`--ar 3:2 --seed 42`) and image sizes.
//! - [`buttons`]: the `custom_id` codec of result buttons (U1..U4, V1..V4, reroll, vary).
//! - [`store`]: the SQLite store of jobs and images, the single source of truth.
//! - [`metrics`]: the Prometheus series (off unless `metrics_addr` is set).
//! - [`health`]: `/health` (503 naming the database or queue that is down) beside `/metrics`.
//! - [`region`]: Vary (Region): the areas a user picks, and painted masks, as masks.
//! - [`remix`]: Remix mode: the modal before a button, its custom_id, and applying it.
//! - [`jetstream`]: the queue between a gateway and `imagine worker` processes (NATS JetStream).
//! - [`retention`]: deleting the images of old jobs to stay within age and size limits.
//! - [`shards`]: `--shards A-B --shard-total N`, and which guilds' jobs a gateway owns.

pub mod bench_cmd;
pub mod buttons;
pub mod cli;
pub mod config;
pub mod custom_zoom;
pub mod discord;
pub mod generate_cmd;
pub mod hardware;
pub mod health;
pub mod image_input;
pub mod jetstream;
pub mod jobs;
pub mod logging;
pub mod loras;
pub mod metrics;
pub mod params;
pub mod queue;
pub mod region;
pub mod remix;
pub mod render;
pub mod retention;
pub mod shards;
pub mod store;
pub mod worker;
