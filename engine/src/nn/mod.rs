//! The networks, as plain structs built with `load(vb, cfg)` and run with `forward`: the
//! UNet, the VAE, the CLIP text encoders, TAESD and ESRGAN, made of [`blocks`] and [`layers`]
//! (which run on our CPU kernels, and on candle's generic ops elsewhere).

pub mod blocks;
pub mod clip;
pub mod esrgan;
pub mod layers;
pub mod taesd;
pub mod time_embedding;
pub mod unet;
pub mod vae;
