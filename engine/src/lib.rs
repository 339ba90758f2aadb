//! imagine-engine: Stable Diffusion on candle, faithful to diffusers and deterministic.
//!
//! Load a diffusers folder, a single-file checkpoint or a Hugging Face repo id with
//! [`StableDiffusion::load`], then call [`StableDiffusion::generate`] with a plain-data
//! [`GenerateRequest`]. The engine knows tensors, configs and schedulers; it never knows
//! Discord, SQL or files beyond the weights.
//!
//! The code lives in three rooms: [`nn`] (the networks), [`pipeline`] (a request to pixels)
//! and [`load`] (files to weights in memory), beside [`schedulers`], [`kernels`] and
//! [`device`]. Each module is also re-exported at the top, by the name used below.
//!
//! - [`config`]: serde mirrors of the folder's config.json files, validated.
//! - [`device`]: which device and precision to compute in (`auto`: the best the host has).
//! - [`source`]: local folder, HF cache, or download.
//! - [`checkpoint`]: single-file checkpoints (original SD layout): what a file holds, inferred
//!   from its tensors, and its weights served under diffusers names straight from the mapped file.
//! - [`model`]: the loaded components; [`generate`]: the sampling loop.
//! - [`schedulers`]: Euler, Euler-a, DDIM, DPM++ 2M (Karras), LCM, as diffusers computes them.
//! - [`noise`]: every random number, from per-image seeds.
//! - [`outpaint`]: Zoom Out and Pan canvases: placement, pre-fill, feathered masks, compositing.
//! - [`inpaint`]: Vary (Region) canvases: a region mask feathered outwards, composited the same way.
//! - [`upscale`]: 2x with added detail: Lanczos or [`esrgan`], then image-to-image over blended tiles.
//! - [`pixels`]: image/tensor conversion and cheap latent previews.
//! - [`taesd`]: the tiny autoencoder, for previews and fast decodes.
//! - [`unet`], [`vae`], [`clip`]: the networks, built from [`blocks`] and [`layers`], which run
//!   on our CPU [`kernels`] (AVX-512 or AVX2 GEMM, implicit-GEMM convolution, tiled attention) and on
//!   candle's generic ops elsewhere; [`time_embedding`] holds the UNet's timestep embedding and
//!   the guidance embedding of LCM-distilled UNets.
//! - [`lora`]: LoRA files (kohya and diffusers/PEFT), patched into a loaded model in place.
//! - [`random_weights`]: seeded random weights for benchmarking an architecture.

// Three rooms and two shared modules; the old flat paths (`imagine_engine::unet`, ...) are
// re-exported so that callers name a module, not the room it lives in.
pub mod device;
pub mod error;
pub mod kernels;
pub mod load;
pub mod nn;
pub mod pipeline;
pub mod schedulers;

pub(crate) use load::clip_vocab;
pub use load::{checkpoint, config, lora, random_weights, source, tokenizer};
pub use nn::{blocks, clip, esrgan, layers, taesd, time_embedding, unet, vae};
pub use pipeline::{generate, inpaint, model, noise, outpaint, pixels, upscale};

pub use checkpoint::Prediction;
pub use device::{device_name, DeviceChoice, Precision, PrecisionChoice};
pub use error::{EngineError, Result};
pub use generate::{GenerateRequest, Generation, InitImage, Progress};
pub use lora::{ActiveLora, LoraFile, LoraFormat, LoraReport};
pub use model::{ComputePrecision, LoadOptions, ModelFamily, ModelInfo, StableDiffusion, UNetKind};
pub use schedulers::SchedulerKind;
pub use source::{resolve_model, resolve_taesd};
pub use taesd::Taesd;
