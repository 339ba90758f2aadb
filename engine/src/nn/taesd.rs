//! TAESD, the tiny autoencoder (diffusers' `AutoencoderTiny`, madebyollin/taesd and taesdxl):
//! a decoder of plain 3x3 convolutions that turns latents into pixels for a few percent of the
//! full VAE's cost. It gives previews that look like the final image, and an optional fast
//! decode of grids; the full VAE stays the decoder of record.
//!
//! Only the decoder is built (`DecoderTiny`, formula for formula): `tanh(z / 3) * 3`, a conv
//! to the first stage's channels and the activation, then per stage its residual blocks, a
//! nearest upsampling (all but the last stage) and a conv (no bias, except the last one, which
//! makes RGB), and finally `x * 2 - 1`. A block is `relu(conv(act(conv(act(conv(x))))) + x)`.
//! `latent_magnitude` / `latent_shift` only serve the encoder's 8-bit round trip in
//! `AutoencoderTiny.forward`; `decode` ignores them, and so do we.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{self, Conv2d};
use image::RgbImage;
use serde::Deserialize;

use crate::config::read_json;
use crate::error::{EngineError, Result};
use crate::model::{check_safetensors, weight_files, LoadOptions, StableDiffusion};
use crate::pixels::tensor_to_images;

/// `config.json` of an `AutoencoderTiny` folder. Absent keys take `AutoencoderTiny`'s own
/// defaults, as diffusers' `from_config` does. Encoder keys are not read.
#[derive(Debug, Clone, Deserialize)]
pub struct TaesdConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "default_blocks_out")]
    pub decoder_block_out_channels: Vec<usize>,
    #[serde(default = "default_decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "default_act")]
    pub act_fn: String,
    #[serde(default = "default_upsample")]
    pub upsample_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "two")]
    pub upsampling_scaling_factor: usize,
    #[serde(default = "one")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn default_blocks_out() -> Vec<usize> {
    vec![64; 4]
}
fn default_decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn default_act() -> String {
    "relu".into()
}
fn default_upsample() -> String {
    "nearest".into()
}

fn unsupported(what: impl Into<String>) -> EngineError {
    EngineError::UnsupportedArchitecture(what.into())
}

/// The activations diffusers' `get_activation` knows (it lower-cases the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Relu,
    Silu,
    /// PyTorch's `nn.GELU()`: the exact, erf-based GELU.
    Gelu,
    Mish,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            "gelu" => Some(Self::Gelu),
            "mish" => Some(Self::Mish),
            _ => None,
        }
    }

    fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Relu => xs.relu(),
            Self::Silu => xs.silu(),
            Self::Gelu => xs.gelu_erf(),
            Self::Mish => candle_nn::ops::mish(xs),
        }
    }
}

impl TaesdConfig {
    /// Refuses anything `DecoderTiny` would not build, or would build and then fail to run,
    /// and the options we do not implement.
    pub fn validate(&self) -> Result<()> {
        if let Some(class) = &self.class_name {
            if class != "AutoencoderTiny" {
                return Err(unsupported(format!(
                    "tiny autoencoder class {class:?} (expected AutoencoderTiny, the diffusers layout of madebyollin/taesd)"
                )));
            }
        }
        if Activation::parse(&self.act_fn).is_none() {
            return Err(unsupported(format!(
                "TAESD act_fn {:?} (expected relu, silu, swish, gelu or mish)",
                self.act_fn
            )));
        }
        // With an integer factor, "nearest-exact" picks the same source pixels as "nearest".
        if !matches!(self.upsample_fn.as_str(), "nearest" | "nearest-exact") {
            return Err(unsupported(format!(
                "TAESD upsample_fn {:?} (only nearest upsampling is implemented)",
                self.upsample_fn
            )));
        }
        let ch = &self.decoder_block_out_channels;
        if ch.is_empty() || ch.len() != self.num_decoder_blocks.len() {
            return Err(unsupported(format!(
                "TAESD decoder_block_out_channels {ch:?} and num_decoder_blocks {:?} differ in length",
                self.num_decoder_blocks
            )));
        }
        // Each stage's conv keeps its channels, so the next stage's blocks only fit when every
        // stage has the same width (diffusers builds other configs, then fails in forward).
        if ch.contains(&0) || ch.iter().any(|c| *c != ch[0]) {
            return Err(unsupported(format!(
                "TAESD decoder_block_out_channels {ch:?}: every stage must have the same, non-zero width"
            )));
        }
        if self.latent_channels == 0 || self.out_channels != 3 {
            return Err(unsupported(format!(
                "TAESD with {} latent channels and {} output channels (expected RGB output)",
                self.latent_channels, self.out_channels
            )));
        }
        if !(1..=8).contains(&self.upsampling_scaling_factor) {
            return Err(unsupported(format!(
                "TAESD upsampling_scaling_factor {}",
                self.upsampling_scaling_factor
            )));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(unsupported(format!(
                "TAESD scaling_factor {}",
                self.scaling_factor
            )));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(unsupported(
                "TAESD with a shift_factor (a tiny autoencoder for SD3/Flux latents)",
            ));
        }
        Ok(())
    }

    /// Pixels per latent cell along each side.
    pub fn scale_factor(&self) -> usize {
        let stages = self.num_decoder_blocks.len() as u32;
        self.upsampling_scaling_factor.pow(stages.saturating_sub(1))
    }
}

/// `AutoencoderTinyBlock` with equal input and output widths (the decoder's only kind): no
/// skip conv, the input is added back.
struct Block {
    convs: [Conv2d; 3],
    act: Activation,
}

impl Block {
    fn new(vb: VarBuilder, channels: usize, act: Activation) -> candle_core::Result<Self> {
        let conv = |i: usize| Conv2d::load(vb.pp("conv").pp(i), channels, channels, 3, 1, 1);
        Ok(Self {
            convs: [conv(0)?, conv(2)?, conv(4)?],
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.act.forward(&self.convs[0].forward(xs)?)?;
        let h = self.act.forward(&self.convs[1].forward(&h)?)?;
        // The skip is added as the last conv's starting value (fused on the CPU fast path).
        self.convs[2].forward_add(&h, xs)?.relu()
    }
}

/// One entry of `DecoderTiny.layers` (an `nn.Sequential`, so every entry takes an index in the
/// weight names, parameter-free ones included).
enum Layer {
    Conv(Conv2d),
    Act(Activation),
    Block(Block),
    Upsample(usize),
}

impl Layer {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Layer::Conv(c) => c.forward(xs),
            Layer::Act(a) => a.forward(xs),
            Layer::Block(b) => b.forward(xs),
            Layer::Upsample(s) => upsample_nearest(xs, *s),
        }
    }
}

/// Nearest-neighbour upsampling by an integer factor: output pixel `i` is input pixel `i / s`,
/// computed by repetition rather than by floating-point source indices.
fn upsample_nearest(xs: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    if s == 2 {
        return layers::upsample_nearest(xs, None);
    }
    let (n, c, h, w) = xs.dims4()?;
    xs.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, s, w, s))?
        .reshape((n, c, h * s, w * s))
}

/// A loaded TAESD decoder.
pub struct Taesd {
    layers: Vec<Layer>,
    scaling_factor: f64,
    latent_channels: usize,
    scale: usize,
    /// (input channels, output channels, pixels per latent cell) of every conv, for costing.
    convs: Vec<(usize, usize, usize, usize)>,
    dtype: DType,
    device: candle_core::Device,
    dir: PathBuf,
}

impl Taesd {
    /// Reads and validates a folder's `config.json` without loading weights.
    pub fn describe(dir: &Path) -> Result<TaesdConfig> {
        let cfg: TaesdConfig = read_json(&dir.join("config.json"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads an `AutoencoderTiny` folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (or `.fp16.safetensors`) at its root. See [`crate::resolve_taesd`] for repo ids.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        opts.check()?;
        let cfg = Self::describe(dir)?;
        let files = weight_files(dir, "taesd")?;
        for f in &files {
            check_safetensors(f)?;
        }
        // SAFETY: the files are memory-mapped read-only; we never write to them while mapped.
        let vb = unsafe { crate::load::mapped::var_builder(&files, opts.dtype, &opts.device) }
            .map_err(|e| EngineError::bad_file(dir, e))?;
        crate::layers::loading_with(opts.precision, || {
            Self::new(vb.pp("decoder"), &cfg, dir, opts.dtype, &opts.device)
        })
        .map_err(|e| {
            EngineError::bad_file(dir, format!("the weights do not match config.json ({e})"))
        })
    }

    fn new(
        vb: VarBuilder,
        cfg: &TaesdConfig,
        dir: &Path,
        dtype: DType,
        device: &candle_core::Device,
    ) -> candle_core::Result<Self> {
        let act = Activation::parse(&cfg.act_fn).expect("validated");
        let vb = vb.pp("layers");
        let width = cfg.decoder_block_out_channels[0];
        let (up, stages) = (cfg.upsampling_scaling_factor, cfg.num_decoder_blocks.len());
        let mut layers = Vec::new();
        let mut convs = Vec::new();
        // Pixels per latent cell at the current layer.
        let mut at = 1;
        layers.push(Layer::Conv(Conv2d::load(
            vb.pp(layers.len()),
            cfg.latent_channels,
            width,
            3,
            1,
            1,
        )?));
        convs.push((cfg.latent_channels, width, at, 9));
        layers.push(Layer::Act(act));
        for (i, &blocks) in cfg.num_decoder_blocks.iter().enumerate() {
            let last = i + 1 == stages;
            for _ in 0..blocks {
                layers.push(Layer::Block(Block::new(vb.pp(layers.len()), width, act)?));
                convs.extend([(width, width, at, 9); 3]);
            }
            if !last {
                layers.push(Layer::Upsample(up));
                at *= up;
            }
            let out = if last { cfg.out_channels } else { width };
            // Only the last conv has a bias; `Conv2d::load` uses zeros where the file has none.
            let conv = Conv2d::load(vb.pp(layers.len()), width, out, 3, 1, 1)?;
            layers.push(Layer::Conv(conv));
            convs.push((width, out, at, 9));
        }
        Ok(Self {
            layers,
            scaling_factor: cfg.scaling_factor,
            latent_channels: cfg.latent_channels,
            scale: cfg.scale_factor(),
            convs,
            dtype,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// UNet-space latents `[N, C, h, w]` (what the sampler holds) to pixels `[N, 3, h*8, w*8]`
    /// in [-1, 1] (unclamped), as `AutoencoderTiny.decode(latents / scaling_factor)`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = latents.dims4()?;
        if c != self.latent_channels {
            return Err(EngineError::invalid(format!(
                "TAESD decodes {} latent channels, got {c}",
                self.latent_channels
            )));
        }
        let z = (latents.to_device(&self.device)?.to_dtype(self.dtype)? / self.scaling_factor)?;
        let mut xs = ((z / 3.0)?.tanh()? * 3.0)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs.affine(2.0, -1.0)?.to_dtype(DType::F32)?)
    }

    /// UNet-space latents to 8-bit images, decoded one at a time (a batch of 512 px images
    /// would hold every image's activations at once).
    pub fn decode_images(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let n = latents.dim(0)?;
        let mut images = Vec::with_capacity(n);
        for i in 0..n {
            images.extend(tensor_to_images(&self.decode(&latents.narrow(0, i, 1)?)?)?);
        }
        Ok(images)
    }

    /// Channels of the latents it decodes.
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// Pixels per latent cell along each side.
    pub fn scale_factor(&self) -> usize {
        self.scale
    }

    /// The folder it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Work of one decode of a `h` x `w` latent in GFLOP (multiply-add = 2; convolutions
    /// only, which are all but a fraction of a percent of it).
    pub fn decode_gflop(&self, h: usize, w: usize) -> f64 {
        self.convs
            .iter()
            .map(|&(cin, cout, at, k)| 2.0 * (cin * cout * k * h * w * at * at) as f64)
            .sum::<f64>()
            / 1e9
    }
}

impl StableDiffusion {
    /// Attaches a TAESD decoder: progress previews then come from it, and requests with
    /// `fast_decode` use it for the final images. It must decode this model's latents (same
    /// channels and scale); TAESD for SD 1.x/2.x is madebyollin/taesd, taesdxl is for SDXL.
    pub fn with_tiny_decoder(mut self, taesd: Taesd) -> Result<Self> {
        let info = self.info();
        if taesd.latent_channels != info.latent_channels || taesd.scale != info.vae_scale {
            return Err(unsupported(format!(
                "the tiny decoder in {} decodes {}-channel latents at {}x, but {} has {}-channel latents at {}x",
                taesd.dir.display(),
                taesd.latent_channels,
                taesd.scale,
                info.name,
                info.latent_channels,
                info.vae_scale
            )));
        }
        self.tiny_decoder = Some(taesd);
        Ok(self)
    }

    /// The attached TAESD decoder, if any.
    pub fn tiny_decoder(&self) -> Option<&Taesd> {
        self.tiny_decoder.as_ref()
    }
}
