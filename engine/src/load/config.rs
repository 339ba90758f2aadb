//! Serde mirrors of a diffusers folder's `config.json` files, and their translation into the
//! component configs the engine builds. The folder on disk *is* the description of the model:
//! nothing here is a preset. Anything we cannot run faithfully is refused with
//! [`EngineError::UnsupportedArchitecture`] instead of being run wrongly.

use std::path::Path;

use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// Reads and parses one JSON config file, naming the file in every error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    if !path.exists() {
        return Err(EngineError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::bad_file(path, e))?;
    serde_json::from_str(&text).map_err(|e| EngineError::bad_file(path, e))
}

/// A value diffusers writes either once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    fn get(&self, index: usize) -> Option<T> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.get(index).copied(),
        }
    }
}

/// `model_index.json`: which component classes make up the pipeline.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(default)]
    pub text_encoder: Option<serde_json::Value>,
    #[serde(default)]
    pub text_encoder_2: Option<serde_json::Value>,
    /// SDXL pipelines: an empty negative prompt conditions on zeros, not on "" encoded.
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
}

impl ModelIndex {
    /// Whether the pipeline lists `name` as a component (diffusers writes absent optional
    /// components as `[null, null]`).
    pub fn has(component: &Option<serde_json::Value>) -> bool {
        match component {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Array(parts)) => parts.iter().any(|p| !p.is_null()),
            Some(_) => true,
        }
    }
}

/// `unet/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetFileConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    pub layers_per_block: PerBlock<usize>,
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default)]
    pub transformer_layers_per_block: Option<PerBlock<usize>>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// SDXL's `text_time` conditioning: width of each size/crop number's sinusoidal embedding.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL: input width of `add_embedding` (pooled text + six time embeddings).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Per-resnet transformer depths of the up blocks (SSD-1B-style pruned SDXL UNets).
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<usize>>>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub act_fn: Option<String>,
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Width of the guidance-scale embedding an LCM-distilled UNet adds to its timestep
    /// embedding (`time_embedding.cond_proj`); `None` for ordinary UNets.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Settings of diffusers' UNet that change its function; we run only their defaults and
    /// refuse other values by name (see [`UNetFileConfig::check_defaults`]).
    #[serde(flatten)]
    pub variants: UNetVariants,
}

/// The UNet settings diffusers' SD / SDXL configs leave at their defaults, read so that a
/// model which changes them is refused instead of run wrongly.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UNetVariants {
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub resnet_skip_time_act: Option<bool>,
    #[serde(default)]
    pub resnet_out_scale_factor: Option<f64>,
    #[serde(default)]
    pub conv_in_kernel: Option<usize>,
    #[serde(default)]
    pub conv_out_kernel: Option<usize>,
    #[serde(default)]
    pub class_embeddings_concat: Option<bool>,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub attention_type: Option<String>,
}

fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn yes() -> bool {
    true
}
fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}

/// Largest guidance embedding accepted; LCM-distilled UNets use 256.
const MAX_TIME_COND_PROJ_DIM: usize = 4096;

fn unsupported(what: impl Into<String>) -> EngineError {
    EngineError::UnsupportedArchitecture(what.into())
}

impl UNetFileConfig {
    /// Checks that the UNet is one the engine runs exactly, and builds candle's config.
    pub fn to_candle(&self) -> Result<UNet2DConditionModelConfig> {
        self.text_time()?;
        self.check_defaults()?;
        if let Some(kind) = &self.class_embed_type {
            return Err(unsupported(format!(
                "UNet class_embed_type {kind:?} (upscaler-style conditioning)"
            )));
        }
        if self.encoder_hid_dim.is_some() || self.dual_cross_attention {
            return Err(unsupported(
                "UNet with encoder_hid_dim or dual cross-attention",
            ));
        }
        if self.only_cross_attention.as_bool() == Some(true) || self.only_cross_attention.is_array()
        {
            return Err(unsupported("UNet with only_cross_attention"));
        }
        if let Some(dim) = self.time_cond_proj_dim {
            if dim == 0 || dim > MAX_TIME_COND_PROJ_DIM {
                return Err(unsupported(format!(
                    "UNet time_cond_proj_dim {dim} (expected 1 to {MAX_TIME_COND_PROJ_DIM})"
                )));
            }
        }
        let named = |field: &str, value: &Option<String>, want: &str| match value {
            Some(v) if v != want => Err(unsupported(format!("UNet {field} {v:?}"))),
            _ => Ok(()),
        };
        named(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            "default",
        )?;
        named("act_fn", &self.act_fn, "silu")?;
        named(
            "time_embedding_type",
            &self.time_embedding_type,
            "positional",
        )?;
        named(
            "mid_block_type",
            &self.mid_block_type,
            "UNetMidBlock2DCrossAttn",
        )?;

        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(unsupported(
                "UNet block lists (block_out_channels, down_block_types, up_block_types) differ in length",
            ));
        }
        let layers = self.uniform(&self.layers_per_block, "layers_per_block")?;
        let cross_attention_dim = self.uniform(&self.cross_attention_dim, "cross_attention_dim")?;
        // diffusers names the head *count* `attention_head_dim` in SD 1/2 configs.
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        let mut blocks = Vec::with_capacity(n);
        for (i, down) in self.down_block_types.iter().enumerate() {
            let up = &self.up_block_types[n - 1 - i];
            let cross = match (down.as_str(), up.as_str()) {
                ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") => true,
                ("DownBlock2D", "UpBlock2D") => false,
                _ => {
                    return Err(unsupported(format!(
                        "UNet block pair {down:?} / {up:?} (expected CrossAttnDownBlock2D/CrossAttnUpBlock2D or DownBlock2D/UpBlock2D, mirrored)"
                    )))
                }
            };
            let transformer_layers = match &self.transformer_layers_per_block {
                None => 1,
                Some(t) => t.get(i).ok_or_else(|| {
                    unsupported("UNet transformer_layers_per_block shorter than the block list")
                })?,
            };
            let head_count = heads.get(i).ok_or_else(|| {
                unsupported("UNet attention_head_dim shorter than the block list")
            })?;
            let out = self.block_out_channels[i];
            if head_count == 0
                || !out.is_multiple_of(head_count)
                || !out.is_multiple_of(self.norm_num_groups)
            {
                return Err(unsupported(format!(
                    "UNet block {i}: {out} channels do not divide into {head_count} heads and {} groups",
                    self.norm_num_groups
                )));
            }
            blocks.push(BlockConfig {
                out_channels: out,
                use_cross_attn: cross.then_some(transformer_layers),
                attention_head_dim: head_count,
            });
        }
        Ok(UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks,
            layers_per_block: layers,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        })
    }

    /// Refuses the UNet variants we do not implement, naming the key and its value.
    fn check_defaults(&self) -> Result<()> {
        let v = &self.variants;
        let temb = self.block_out_channels.first().map(|c| c * 4);
        let refused: Option<String> = if v.time_embedding_dim.is_some_and(|d| Some(d) != temb) {
            Some(format!("time_embedding_dim {:?}", v.time_embedding_dim))
        } else if v.time_embedding_act_fn.is_some() {
            Some(format!(
                "time_embedding_act_fn {:?}",
                v.time_embedding_act_fn
            ))
        } else if v.timestep_post_act.is_some() {
            Some(format!("timestep_post_act {:?}", v.timestep_post_act))
        } else if v.resnet_skip_time_act == Some(true) {
            Some("resnet_skip_time_act true".into())
        } else if v.resnet_out_scale_factor.is_some_and(|f| f != 1.0) {
            Some(format!(
                "resnet_out_scale_factor {:?}",
                v.resnet_out_scale_factor
            ))
        } else if v.conv_in_kernel.is_some_and(|k| k != 3) {
            Some(format!("conv_in_kernel {:?}", v.conv_in_kernel))
        } else if v.conv_out_kernel.is_some_and(|k| k != 3) {
            Some(format!("conv_out_kernel {:?}", v.conv_out_kernel))
        } else if v.class_embeddings_concat == Some(true) {
            Some("class_embeddings_concat true".into())
        } else if v.mid_block_only_cross_attention == Some(true) {
            Some("mid_block_only_cross_attention true".into())
        } else if v.cross_attention_norm.is_some() {
            Some(format!("cross_attention_norm {:?}", v.cross_attention_norm))
        } else if v.attention_type.as_deref().is_some_and(|t| t != "default") {
            Some(format!("attention_type {:?}", v.attention_type))
        } else {
            None
        };
        match refused {
            Some(what) => Err(unsupported(format!("UNet {what}"))),
            None => Ok(()),
        }
    }

    /// SDXL's added conditioning (`addition_embed_type: "text_time"`), if the UNet has it:
    /// `(addition_time_embed_dim, projection_class_embeddings_input_dim)`.
    pub fn text_time(&self) -> Result<Option<TextTimeConfig>> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => match (
                self.addition_time_embed_dim,
                self.projection_class_embeddings_input_dim,
            ) {
                (Some(time_dim), Some(input_dim)) if time_dim > 0 && input_dim > 6 * time_dim => {
                    Ok(Some(TextTimeConfig {
                        time_embed_dim: time_dim,
                        pooled_dim: input_dim - 6 * time_dim,
                    }))
                }
                _ => Err(unsupported(
                    "UNet text_time conditioning without a valid addition_time_embed_dim and \
                     projection_class_embeddings_input_dim",
                )),
            },
            Some(kind) => Err(unsupported(format!("UNet addition_embed_type {kind:?}"))),
        }
    }

    /// Transformer depth of each resnet of each up block (outermost up block first), where the
    /// config overrides the mirror of the down blocks' depths.
    pub fn up_depths(&self, blocks: &[BlockConfig], layers: usize) -> Result<Vec<Vec<usize>>> {
        let n = blocks.len();
        match &self.reverse_transformer_layers_per_block {
            None => Ok((0..n)
                .map(|i| vec![blocks[n - 1 - i].use_cross_attn.unwrap_or(0); layers + 1])
                .collect()),
            Some(rev) => {
                let fits = rev.len() == n
                    && rev.iter().enumerate().all(|(i, d)| {
                        d.len() == layers + 1
                            && (blocks[n - 1 - i].use_cross_attn.is_some()
                                || d.iter().all(|x| *x == 0))
                    });
                if !fits {
                    return Err(unsupported(
                        "UNet reverse_transformer_layers_per_block does not match its up blocks",
                    ));
                }
                Ok(rev.clone())
            }
        }
    }

    fn uniform(&self, value: &PerBlock<usize>, name: &str) -> Result<usize> {
        match value {
            PerBlock::One(v) => Ok(*v),
            PerBlock::Each(v) if !v.is_empty() && v.iter().all(|x| *x == v[0]) => Ok(v[0]),
            PerBlock::Each(_) => Err(unsupported(format!("UNet {name} that varies by block"))),
        }
    }
}

/// SDXL's added conditioning, from the UNet config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimeConfig {
    /// Sinusoidal embedding width of each of the six size/crop numbers (256).
    pub time_embed_dim: usize,
    /// Width of the pooled text embedding it expects (1280: OpenCLIP bigG's projection).
    pub pooled_dim: usize,
}

/// `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeFileConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    pub latent_channels: usize,
    #[serde(default = "one_usize")]
    pub layers_per_block: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default)]
    pub act_fn: Option<String>,
    /// Decode and encode in f32 when the model runs in fp16 (diffusers' default: true; SD's
    /// VAE overflows in fp16).
    #[serde(default = "yes")]
    pub force_upcast: bool,
}

fn three() -> usize {
    3
}
fn default_scaling() -> f64 {
    0.18215
}

impl VaeFileConfig {
    /// Refuses VAEs whose blocks are not the plain KL autoencoder's.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        let plain = |types: &[String], want: &str| {
            types.is_empty() || (types.len() == n && types.iter().all(|t| t == want))
        };
        if n == 0
            || !plain(&self.down_block_types, "DownEncoderBlock2D")
            || !plain(&self.up_block_types, "UpDecoderBlock2D")
        {
            return Err(unsupported(format!(
                "VAE blocks {:?} / {:?}",
                self.down_block_types, self.up_block_types
            )));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(unsupported("VAE with a shift_factor (SD3/Flux latents)"));
        }
        if matches!(&self.act_fn, Some(a) if a != "silu") {
            return Err(unsupported(format!("VAE act_fn {:?}", self.act_fn)));
        }
        if self
            .block_out_channels
            .iter()
            .any(|c| c % self.norm_num_groups != 0)
        {
            return Err(unsupported("VAE channels not divisible by norm_num_groups"));
        }
        Ok(())
    }

    /// How many pixels one latent cell covers along each side.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `text_encoder/config.json` (a transformers `CLIPTextModel`).
#[derive(Debug, Clone, Deserialize)]
pub struct TextEncoderFileConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// `CLIPTextModelWithProjection`: width of the pooled output's projection.
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// Pooling reads the first position of this id (legacy configs say 2: the largest id).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_positions() -> usize {
    77
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_ln_eps() -> f64 {
    1e-5
}

impl TextEncoderFileConfig {
    /// Whether the encoder carries a `text_projection` of its pooled output (SDXL's second).
    pub fn with_projection(&self) -> bool {
        self.architectures
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == "CLIPTextModelWithProjection"))
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(arch) = &self.architectures {
            if !arch
                .iter()
                .any(|a| a == "CLIPTextModel" || a == "CLIPTextModelWithProjection")
            {
                return Err(unsupported(format!(
                    "text encoder {arch:?} (expected CLIPTextModel or CLIPTextModelWithProjection)"
                )));
            }
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(unsupported(format!(
                "text encoder activation {:?}",
                self.hidden_act
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(unsupported(
                "text encoder hidden size not divisible by its heads",
            ));
        }
        Ok(())
    }
}

/// `scheduler/scheduler_config.json`. Absent keys take the scheduler's own default, as
/// diffusers' `from_config` does. Keys no sampler here reads are ignored (configs carry many
/// harmless ones from other scheduler classes); the settings a sampler does read but does not
/// implement are refused when that sampler is built (`SchedulerKind::check`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct SchedulerFileConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    #[serde(default)]
    pub beta_start: Option<f64>,
    #[serde(default)]
    pub beta_end: Option<f64>,
    #[serde(default)]
    pub beta_schedule: Option<String>,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default)]
    pub prediction_type: Option<String>,
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub steps_offset: Option<usize>,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    #[serde(default)]
    pub rescale_betas_zero_snr: Option<bool>,
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    #[serde(default)]
    pub interpolation_type: Option<String>,
    /// Karras sigma range overrides (Euler and DPM-Solver read them when present).
    #[serde(default, deserialize_with = "json_float")]
    pub sigma_min: Option<f64>,
    #[serde(default, deserialize_with = "json_float")]
    pub sigma_max: Option<f64>,
    // Settings only some samplers read; see `SchedulerKind::check` for what each refuses.
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default)]
    pub thresholding: Option<bool>,
    #[serde(default)]
    pub timestep_type: Option<String>,
    #[serde(default)]
    pub use_exponential_sigmas: Option<bool>,
    #[serde(default)]
    pub use_beta_sigmas: Option<bool>,
    #[serde(default)]
    pub use_lu_lambdas: Option<bool>,
    #[serde(default)]
    pub use_flow_sigmas: Option<bool>,
    #[serde(default)]
    pub use_dynamic_shifting: Option<bool>,
    #[serde(default)]
    pub algorithm_type: Option<String>,
    #[serde(default)]
    pub solver_order: Option<usize>,
    #[serde(default)]
    pub solver_type: Option<String>,
    #[serde(default)]
    pub variance_type: Option<String>,
    #[serde(default, deserialize_with = "json_float")]
    pub lambda_min_clipped: Option<f64>,
    /// LCM: the distillation schedule's step count (50) and the boundary-condition scale (10).
    #[serde(default)]
    pub original_inference_steps: Option<usize>,
    #[serde(default, deserialize_with = "json_float")]
    pub timestep_scaling: Option<f64>,
}

impl SchedulerFileConfig {
    /// Reads `scheduler_config.json` the way diffusers does: Python writes infinities as bare
    /// `Infinity` / `-Infinity` (DPM-Solver's `lambda_min_clipped` defaults to `-inf`), which
    /// strict JSON parsers refuse, and keys listed in `_use_default_values` were never set by
    /// the model's author, so diffusers drops them and each scheduler uses its own default.
    pub fn read(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(EngineError::MissingFile {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::bad_file(path, e))?;
        Self::parse(&text).map_err(|e| EngineError::bad_file(path, e))
    }

    /// Parses the text of a `scheduler_config.json` (see [`SchedulerFileConfig::read`]).
    pub fn parse(text: &str) -> std::result::Result<Self, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_str(&quote_non_finite(text))?;
        if let Some(map) = value.as_object_mut() {
            let defaults: Vec<String> = map
                .get("_use_default_values")
                .and_then(|v| v.as_array())
                .map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for key in defaults {
                map.remove(&key);
            }
        }
        serde_json::from_value(value)
    }
}

/// Quotes Python's bare `NaN`, `Infinity` and `-Infinity` outside strings so that the text is
/// JSON; [`json_float`] reads them back as numbers.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push('"');
            out.push_str(word);
            out.push('"');
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// An optional float that may also be one of Python's non-finite spellings.
fn json_float<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Float {
        Number(f64),
        Word(String),
    }
    match Option::<Float>::deserialize(d)? {
        None => Ok(None),
        Some(Float::Number(x)) => Ok(Some(x)),
        Some(Float::Word(w)) => match w.as_str() {
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            "NaN" => Ok(Some(f64::NAN)),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, found {other:?}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdxl_unet() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../assets/archs/sdxl/unet/config.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn unet_variants_we_do_not_run_are_refused_by_name() {
        // The hub's SDXL config writes every one of these at its default: accepted.
        let base: UNetFileConfig = serde_json::from_value(sdxl_unet()).unwrap();
        base.to_candle().unwrap();
        for (key, value) in [
            ("time_embedding_dim", serde_json::json!(512)),
            ("time_embedding_act_fn", serde_json::json!("silu")),
            ("timestep_post_act", serde_json::json!("silu")),
            ("resnet_skip_time_act", serde_json::json!(true)),
            ("resnet_out_scale_factor", serde_json::json!(0.5)),
            ("conv_in_kernel", serde_json::json!(7)),
            ("conv_out_kernel", serde_json::json!(1)),
            ("class_embeddings_concat", serde_json::json!(true)),
            ("mid_block_only_cross_attention", serde_json::json!(true)),
            ("cross_attention_norm", serde_json::json!("group_norm")),
            ("attention_type", serde_json::json!("gated")),
        ] {
            let mut json = sdxl_unet();
            json[key] = value;
            let cfg: UNetFileConfig = serde_json::from_value(json).unwrap();
            let err = cfg.to_candle().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        // The default value written out is not a variant.
        let mut json = sdxl_unet();
        json["time_embedding_dim"] = serde_json::json!(1280);
        json["attention_type"] = serde_json::json!("default");
        let cfg: UNetFileConfig = serde_json::from_value(json).unwrap();
        cfg.to_candle().unwrap();
    }

    #[test]
    fn python_infinities_outside_strings_read_as_numbers() {
        // What diffusers writes for DPMSolverMultistepScheduler's default lambda_min_clipped.
        let cfg = SchedulerFileConfig::parse(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
                "sigma_max": Infinity, "sigma_min": NaN, "note": "a -Infinity \"NaN\" string"}"#,
        )
        .unwrap();
        assert_eq!(cfg.lambda_min_clipped, Some(f64::NEG_INFINITY));
        assert_eq!(cfg.sigma_max, Some(f64::INFINITY));
        assert!(cfg.sigma_min.unwrap().is_nan());
        assert_eq!(cfg.class_name, "DPMSolverMultistepScheduler");
    }

    #[test]
    fn keys_listed_as_default_values_are_dropped() {
        let cfg = SchedulerFileConfig::parse(
            r#"{"timestep_spacing": "linspace", "steps_offset": 1,
                "_use_default_values": ["timestep_spacing", "not_present"]}"#,
        )
        .unwrap();
        assert_eq!(cfg.timestep_spacing, None);
        assert_eq!(cfg.steps_offset, Some(1));
    }

    #[test]
    fn a_word_where_a_number_belongs_is_an_error() {
        let err = SchedulerFileConfig::parse(r#"{"sigma_min": "small"}"#).unwrap_err();
        assert!(err.to_string().contains("small"), "{err}");
    }
}
