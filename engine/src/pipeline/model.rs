//! A loaded Stable Diffusion model: tokenizer, text encoder, UNet, VAE and noise schedule,
//! each built from its folder's own config.json. Weights are memory-mapped safetensors
//! (fp32 or fp16 files; computation runs in the dtype the caller asks for).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::Prediction;
use crate::clip::{ClipTextModel, TextEncoding};
use crate::config::{
    read_json, ModelIndex, SchedulerFileConfig, TextEncoderFileConfig, UNetFileConfig,
    VaeFileConfig,
};
use crate::error::{EngineError, Result};
use crate::lora::{LoraLayers, PatchableComponent};
use crate::schedulers::{NoiseSchedule, SchedulerKind, Spacing};
use crate::source::{weight_candidates, ModelSource};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{AddedConditioning, UNet, UNetExtras};
use crate::vae::Autoencoder;

/// Where and how to run a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Ignore the weight files and make seeded random weights instead (benchmarks of an
    /// architecture given by its config files alone).
    pub random_weights: Option<u64>,
    /// What the convolutions, linear layers and attention products compute in on the CPU.
    pub precision: ComputePrecision,
    /// Overrides what the model says it predicts (`--prediction`); see
    /// [`crate::checkpoint::detect`] for how a single file's default is decided.
    pub prediction: Option<Prediction>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            random_weights: None,
            precision: ComputePrecision::Fp32,
            prediction: None,
        }
    }
}

/// The precision of the matrix products (convolutions, linear layers, attention) on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputePrecision {
    /// f32 throughout: the reference, within the diffusers parity bounds.
    #[default]
    Fp32,
    /// Product inputs rounded to bf16, products summed in f32, everything else f32 (norms,
    /// softmax, activations, the sampler). Weights take half the memory. Needs AVX512_BF16.
    Bf16,
}

impl ComputePrecision {
    /// Parses `fp32`/`f32` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Some(Self::Fp32),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        }
    }

    /// Whether this CPU can compute in bf16 (AVX512_BF16).
    pub fn bf16_available() -> bool {
        <crate::kernels::matmul::Bf16 as crate::kernels::matmul::Precision>::available()
    }
}

impl LoadOptions {
    /// Refuses a precision this machine cannot compute in.
    pub(crate) fn check(&self) -> Result<()> {
        if self.precision == ComputePrecision::Bf16
            && !(matches!(self.device, Device::Cpu)
                && self.dtype == DType::F32
                && ComputePrecision::bf16_available())
        {
            return Err(EngineError::Unsupported(
                "bf16 compute runs on a CPU with AVX512_BF16 and f32 tensors; this machine \
                 or device cannot: use --precision fp32"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// What kind of UNet the model has, which decides how masks are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UNetKind {
    /// 4 latent channels in: inpainting blends masked latents between steps.
    Standard,
    /// 9 channels in (latents, mask, masked-image latents): a trained inpainting model.
    Inpainting,
}

/// Which Stable Diffusion family a model belongs to, from its architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// SD 1.x: CLIP ViT-L text encoder (768-wide context).
    Sd1,
    /// SD 2.x (and SD-Turbo): OpenCLIP ViT-H text encoder (1024-wide context).
    Sd2,
    /// SDXL (and SDXL-Turbo, SSD-1B, Vega): two text encoders, pooled text and sizes.
    Sdxl,
}

impl ModelFamily {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD 1.x",
            Self::Sd2 => "SD 2.x",
            Self::Sdxl => "SDXL",
        }
    }
}

/// SDXL's second text encoder (OpenCLIP bigG with its projection) and its tokenizer.
pub(crate) struct SecondEncoder {
    pub(crate) tokenizer: ClipTokenizer,
    pub(crate) model: ClipTextModel,
}

/// Everything needed to generate with one model.
pub struct StableDiffusion {
    pub(crate) tokenizer: ClipTokenizer,
    pub(crate) text_encoder: ClipTextModel,
    /// SDXL: the second encoder, whose penultimate states follow the first's on each token.
    pub(crate) text_encoder_2: Option<SecondEncoder>,
    pub(crate) unet: UNet,
    pub(crate) vae: Autoencoder,
    pub(crate) schedule: NoiseSchedule,
    pub(crate) latent_channels: usize,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    /// The VAE's dtype: f32 for an fp16 model whose VAE config sets `force_upcast`.
    pub(crate) vae_dtype: DType,
    info: ModelInfo,
    /// TAESD, for previews and fast decodes (see [`crate::taesd`]).
    pub(crate) tiny_decoder: Option<crate::taesd::Taesd>,
    /// The layers a LoRA may patch, and the set applied now (see [`crate::lora`]).
    pub(crate) loras: LoraLayers,
}

/// Facts about a loaded model that callers show or default from.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The folder the model was loaded from.
    pub dir: PathBuf,
    /// A short display name (the folder's or repo's last component).
    pub name: String,
    pub family: ModelFamily,
    pub unet_kind: UNetKind,
    /// Pixels per latent cell along each side (8 for every SD VAE).
    pub vae_scale: usize,
    /// Channels of the latent space (4 for SD 1.x/2.x).
    pub latent_channels: usize,
    /// The UNet's native resolution in pixels (`sample_size` x `vae_scale`).
    pub native_size: usize,
    /// The sampler the folder's scheduler config names, or our fallback for one we lack or
    /// whose settings we do not implement.
    pub default_scheduler: SchedulerKind,
    /// True when the config named a scheduler we do not implement (e.g. PNDM), or one with
    /// settings we do not implement (logged when the model loads).
    pub scheduler_fallback: bool,
    /// Few-step distilled (trailing timestep spacing, e.g. SD-Turbo): 1 step, no guidance.
    pub distilled: bool,
    /// SDXL: an empty negative prompt conditions on zeros (the pipeline's
    /// `force_zeros_for_empty_prompt`), not on the encoding of "".
    pub zeros_for_empty_negative: bool,
    /// The steps and guidance this kind of model is made for (callers' defaults): 1 and 0 for
    /// Turbo-style distilled models; 4 steps for LCM models (guidance 8 through an
    /// LCM-distilled UNet's embedding, 1 for an LCM-LoRA-style model); else 25 and 7.5.
    pub default_steps: usize,
    pub default_guidance: f64,
}

impl StableDiffusion {
    /// Reads a folder's configs or a single file's header (no weights) and says what model it
    /// is, or why we cannot run it.
    pub fn describe(path: &Path) -> Result<ModelInfo> {
        Self::describe_with(path, None)
    }

    /// [`StableDiffusion::describe`] with a prediction type set for the model (an SD 2.x v
    /// file is a 768 px model, an epsilon one a 512 px model).
    pub fn describe_with(path: &Path, prediction: Option<Prediction>) -> Result<ModelInfo> {
        Ok(Configs::read(&ModelSource::open(path, prediction)?)?.info)
    }

    /// Loads a diffusers folder or a single-file checkpoint (see [`crate::resolve_model`]).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        opts.check()?;
        crate::layers::loading_with(opts.precision, || Self::load_components(dir, opts))
    }

    fn load_components(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let source = ModelSource::open(path, opts.prediction)?;
        let Configs {
            unet_cfg,
            vae_cfg,
            text_cfg,
            text_cfg_2,
            schedule,
            info,
        } = Configs::read(&source)?;
        let unet_candle = unet_cfg.to_candle()?;
        let tokenizer = source.tokenizer(text_cfg.max_position_embeddings)?;
        let (device, dtype) = (&opts.device, opts.dtype);
        // As diffusers: an fp16 model decodes with its VAE in f32 when the VAE asks for it.
        let vae_dtype = if dtype == DType::F16 && vae_cfg.force_upcast {
            DType::F32
        } else {
            dtype
        };
        // The text encoders and UNet record their layers for LoRA patching (crate::lora).
        let (text_encoder, text_layers) = PatchableComponent::load(
            "text_encoder",
            weights(&source, "text_encoder", opts, dtype)?,
            |vb| ClipTextModel::new(vb, &text_cfg),
        );
        let text_encoder = text_encoder.map_err(|e| mismatch(&source, "text_encoder", e))?;
        let mut patchable = vec![text_layers];
        let text_encoder_2 = match &text_cfg_2 {
            None => None,
            Some(cfg) => {
                let (model, layers) = PatchableComponent::load(
                    "text_encoder_2",
                    weights(&source, "text_encoder_2", opts, dtype)?,
                    |vb| ClipTextModel::new(vb, cfg),
                );
                patchable.push(layers);
                Some(SecondEncoder {
                    tokenizer: source.tokenizer_2(cfg.max_position_embeddings)?,
                    model: model.map_err(|e| mismatch(&source, "text_encoder_2", e))?,
                })
            }
        };
        let extras = UNetExtras {
            text_time: unet_cfg.text_time()?,
            up_depths: unet_cfg.up_depths(&unet_candle.blocks, unet_candle.layers_per_block)?,
            time_cond_proj_dim: unet_cfg.time_cond_proj_dim,
        };
        let (unet, unet_layers) =
            PatchableComponent::load("unet", weights(&source, "unet", opts, dtype)?, |vb| {
                UNet::load(
                    vb,
                    unet_cfg.in_channels,
                    unet_cfg.out_channels,
                    &unet_candle,
                    &extras,
                )
            });
        let unet = unet.map_err(|e| mismatch(&source, "unet", EngineError::Tensor(e)))?;
        patchable.push(unet_layers);
        let vae = Autoencoder::new(weights(&source, "vae", opts, vae_dtype)?, &vae_cfg)
            .map_err(|e| mismatch(&source, "vae", e))?;
        Ok(Self {
            tokenizer,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            schedule,
            latent_channels: vae_cfg.latent_channels,
            device: device.clone(),
            dtype,
            vae_dtype,
            info,
            tiny_decoder: None,
            loras: LoraLayers::new(patchable),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Encodes one framed token window batch `[B, 77]` into hidden states `[B, 77, D]`.
    pub fn encode_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let width = ids.first().map_or(0, Vec::len);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (ids.len(), width), &self.device)?;
        self.text_encoder.forward(&ids)
    }

    /// SDXL's encoding of framed token windows `[B, 77]` (the same text through both
    /// tokenizers): both encoders' penultimate hidden states side by side `[B, 77, D1 + D2]`,
    /// and the second encoder's pooled, projected output `[B, P]`.
    pub fn encode_tokens_xl(&self, ids: &[Vec<u32>], ids_2: &[Vec<u32>]) -> Result<TextEncoding> {
        let second = self.text_encoder_2.as_ref().ok_or_else(|| {
            EngineError::invalid("encode_tokens_xl needs a model with two text encoders (SDXL)")
        })?;
        let tensor = |ids: &[Vec<u32>]| {
            let width = ids.first().map_or(0, Vec::len);
            let flat: Vec<u32> = ids.iter().flatten().copied().collect();
            Tensor::from_vec(flat, (ids.len(), width), &self.device)
        };
        let first = self.text_encoder.encode_penultimate(&tensor(ids)?, false)?;
        let second = second.model.encode_penultimate(&tensor(ids_2)?, true)?;
        Ok(TextEncoding {
            hidden: Tensor::cat(&[&first.hidden, &second.hidden], 2)?,
            pooled: second.pooled,
        })
    }

    /// One UNet forward: `latents [B, C, h, w]`, timestep, context `[B, S, D]`.
    pub fn unet_forward(&self, latents: &Tensor, t: f64, context: &Tensor) -> Result<Tensor> {
        Ok(self.unet.forward(latents, t, context)?)
    }

    /// One UNet forward with SDXL's pooled text and size conditioning.
    pub fn unet_forward_added(
        &self,
        latents: &Tensor,
        t: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        Ok(self
            .unet
            .forward_conditioned(latents, t, context, added, None)?)
    }

    /// [`StableDiffusion::unet_forward`] for LCM-distilled UNets, with the guidance embedding
    /// `timestep_cond [B, time_cond_proj_dim]` (see [`crate::time_embedding`]).
    pub fn unet_forward_with_timestep_cond(
        &self,
        latents: &Tensor,
        t: f64,
        context: &Tensor,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        Ok(self
            .unet
            .forward_conditioned(latents, t, context, None, timestep_cond)?)
    }

    /// Scaled latents (on any device: latents kept on disk are read to the CPU) to pixels in
    /// [-1, 1], in the VAE's dtype, on the model's device.
    pub fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        let latents = latents.to_device(&self.device)?.to_dtype(self.vae_dtype)?;
        self.vae.decode(&latents)
    }

    /// Pixels in [-1, 1] to scaled latents (the distribution's mean), in the VAE's dtype.
    pub fn vae_encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.vae_dtype)?;
        self.vae.encode_mean(&pixels)
    }

    /// The device the model computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the text encoder and UNet (the VAE may be upcast, see `force_upcast`).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The model timesteps `kind` visits in `steps` steps on this model's schedule.
    pub fn sampler_timesteps(&self, kind: SchedulerKind, steps: usize) -> Result<Vec<f64>> {
        Ok(kind.build(&self.schedule, steps)?.timesteps().to_vec())
    }

    /// The tokenizer, for callers that want to count or inspect tokens.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }
}

fn display_name(dir: &Path) -> String {
    // HF cache snapshots live in .../models--org--name/snapshots/<hash>.
    let parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(repo) = parts.iter().rev().find_map(|p| p.strip_prefix("models--")) {
        return repo.replacen("--", "/", 1);
    }
    if dir.is_file() {
        // A single-file checkpoint is known by its file name without the extension.
        if let Some(stem) = dir.file_stem() {
            return stem.to_string_lossy().into_owned();
        }
    }
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

fn mismatch(source: &ModelSource, component: &str, e: EngineError) -> EngineError {
    match (e, source) {
        (EngineError::Tensor(inner), ModelSource::Folder { dir, .. }) => EngineError::bad_file(
            dir.join(component),
            format!("the weights do not match {component}/config.json ({inner})"),
        ),
        (EngineError::Tensor(inner), ModelSource::SingleFile { checkpoint, .. }) => {
            EngineError::bad_file(
                checkpoint.path(),
                format!(
                    "the {component} tensors do not fit the model inferred from the file ({inner})"
                ),
            )
        }
        (other, _) => other,
    }
}

/// Memory-maps a component's safetensors weights (whole, fp16 variant, or sharded; or the
/// component's part of a single-file checkpoint).
fn weights(
    source: &ModelSource,
    component: &'static str,
    opts: &LoadOptions,
    dtype: DType,
) -> Result<VarBuilder<'static>> {
    let device = &opts.device;
    if let Some(seed) = opts.random_weights {
        let backend = crate::random_weights::RandomWeights::new(
            seed ^ crate::random_weights::fnv1a(component),
        );
        return Ok(VarBuilder::from_backend(
            Box::new(backend),
            dtype,
            device.clone(),
        ));
    }
    let dir = match source {
        ModelSource::Folder { dir, .. } => dir,
        ModelSource::SingleFile {
            checkpoint,
            detected,
        } => return checkpoint.weights(detected, component, dtype, device),
    };
    let folder = dir.join(component);
    let files = weight_files(&folder, component)?;
    for f in &files {
        check_safetensors(f)?;
    }
    // SAFETY: the files are memory-mapped read-only; we never write to them while mapped.
    unsafe { crate::load::mapped::var_builder(&files, dtype, device) }
        .map_err(|e| EngineError::bad_file(&folder, e))
}

pub(crate) fn weight_files(folder: &Path, component: &str) -> Result<Vec<PathBuf>> {
    for name in weight_candidates(component) {
        let path = folder.join(name);
        if path.exists() {
            return Ok(vec![path]);
        }
        let index = folder.join(format!("{name}.index.json"));
        if index.exists() {
            let v: serde_json::Value = read_json(&index)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| EngineError::bad_file(&index, "no weight_map"))?;
            let mut shards: Vec<PathBuf> = map
                .values()
                .filter_map(|f| f.as_str())
                .map(|f| folder.join(f))
                .collect();
            shards.sort();
            shards.dedup();
            return Ok(shards);
        }
    }
    Err(EngineError::MissingFile {
        path: folder.join(weight_candidates(component)[0]),
    })
}

/// Checks a safetensors file's header and length without reading its data, so that a
/// truncated or corrupt file fails here, with its name, rather than deep inside a layer.
pub(crate) fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad =
        |why: String| EngineError::bad_file(path, format!("not a valid safetensors file: {why}"));
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::bad_file(path, e))?;
    let size = file
        .metadata()
        .map_err(|e| EngineError::bad_file(path, e))?
        .len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad("shorter than its header".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100 << 20 || 8 + header_len > size {
        return Err(bad(format!(
            "header of {header_len} bytes in a {size}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let data_end = header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    if 8 + header_len + data_end != size {
        return Err(bad(format!(
            "the header describes {} bytes but the file has {size} (truncated download?)",
            8 + header_len + data_end
        )));
    }
    Ok(())
}

/// A model's configs as read from a folder or inferred from a single file.
struct Components {
    unet_cfg: UNetFileConfig,
    vae_cfg: VaeFileConfig,
    text_cfg: TextEncoderFileConfig,
    text_cfg_2: Option<TextEncoderFileConfig>,
    sched_cfg: SchedulerFileConfig,
    /// The pipeline's `force_zeros_for_empty_prompt` (SDXL).
    zeros_for_empty_negative: bool,
}

/// A folder's parsed and cross-checked configs.
struct Configs {
    unet_cfg: UNetFileConfig,
    vae_cfg: VaeFileConfig,
    text_cfg: TextEncoderFileConfig,
    /// SDXL's second text encoder.
    text_cfg_2: Option<TextEncoderFileConfig>,
    schedule: NoiseSchedule,
    info: ModelInfo,
}

impl Configs {
    fn read(source: &ModelSource) -> Result<Self> {
        let (dir, prediction) = match source {
            ModelSource::Folder { dir, prediction } => (dir, *prediction),
            ModelSource::SingleFile {
                checkpoint,
                detected,
            } => {
                let components = Components {
                    unet_cfg: detected.unet_config()?,
                    vae_cfg: detected.vae_config()?,
                    text_cfg: detected.text_encoder_config()?,
                    text_cfg_2: detected.text_encoder_2_config()?,
                    sched_cfg: detected.scheduler_config()?,
                    // What every SDXL pipeline on the hub sets.
                    zeros_for_empty_negative: true,
                };
                return Self::check(components, checkpoint.path());
            }
        };
        let index: ModelIndex = read_json(&dir.join("model_index.json"))?;
        let two_encoders = ModelIndex::has(&index.text_encoder_2);
        if two_encoders && !ModelIndex::has(&index.text_encoder) {
            return Err(EngineError::UnsupportedArchitecture(format!(
                "{} without a first text encoder (the SDXL refiner): use a base model",
                index.class_name
            )));
        }
        let unet_cfg: UNetFileConfig = read_json(&dir.join("unet/config.json"))?;
        let vae_cfg: VaeFileConfig = read_json(&dir.join("vae/config.json"))?;
        let text_cfg: TextEncoderFileConfig = read_json(&dir.join("text_encoder/config.json"))?;
        let text_cfg_2: Option<TextEncoderFileConfig> = two_encoders
            .then(|| read_json(&dir.join("text_encoder_2/config.json")))
            .transpose()?;
        let mut sched_cfg =
            SchedulerFileConfig::read(&dir.join("scheduler/scheduler_config.json"))?;
        if let Some(p) = prediction {
            tracing::info!("prediction type {} (set for this model)", p.config_name());
            sched_cfg.prediction_type = Some(p.config_name().into());
        }
        let components = Components {
            unet_cfg,
            vae_cfg,
            text_cfg,
            text_cfg_2,
            sched_cfg,
            zeros_for_empty_negative: index.force_zeros_for_empty_prompt.unwrap_or(true),
        };
        Self::check(components, dir)
    }

    /// Cross-checks a model's configs at `path` (folder or file) and derives its info.
    fn check(components: Components, dir: &Path) -> Result<Self> {
        let Components {
            unet_cfg,
            vae_cfg,
            text_cfg,
            text_cfg_2,
            sched_cfg,
            zeros_for_empty_negative,
        } = components;
        let unet_candle = unet_cfg.to_candle()?;
        vae_cfg.validate()?;
        text_cfg.validate()?;
        let text_time = unet_cfg.text_time()?;
        let family = match (&text_cfg_2, text_time) {
            (Some(second), Some(tt)) => {
                second.validate()?;
                if second.projection_dim != Some(tt.pooled_dim) || !second.with_projection() {
                    return Err(EngineError::UnsupportedArchitecture(format!(
                        "the UNet expects pooled text of width {} but text_encoder_2 is not a \
                         CLIPTextModelWithProjection of that width",
                        tt.pooled_dim
                    )));
                }
                ModelFamily::Sdxl
            }
            // OpenCLIP's encoder (SD 2.x) uses exact GELU, OpenAI's CLIP (SD 1.x) quick GELU.
            (None, None) if text_cfg.hidden_act == "gelu" => ModelFamily::Sd2,
            (None, None) => ModelFamily::Sd1,
            _ => {
                return Err(EngineError::UnsupportedArchitecture(
                    "two text encoders need a UNet with text_time conditioning and the \
                     reverse (SDXL models have both)"
                        .into(),
                ))
            }
        };
        let context_width = text_cfg.hidden_size + text_cfg_2.as_ref().map_or(0, |c| c.hidden_size);
        let unet_kind = match (unet_cfg.in_channels, vae_cfg.latent_channels) {
            (i, l) if i == l => UNetKind::Standard,
            (i, l) if i == 2 * l + 1 => UNetKind::Inpainting,
            (i, l) => {
                return Err(EngineError::UnsupportedArchitecture(format!(
                    "UNet with {i} input channels for {l} latent channels"
                )))
            }
        };
        if unet_cfg.out_channels != vae_cfg.latent_channels {
            return Err(EngineError::UnsupportedArchitecture(
                "UNet out_channels differ from the VAE's latent_channels".into(),
            ));
        }
        if unet_candle.cross_attention_dim != context_width {
            return Err(EngineError::UnsupportedArchitecture(format!(
                "UNet cross_attention_dim {} does not match the text encoders' width {context_width}",
                unet_candle.cross_attention_dim
            )));
        }
        let schedule = NoiseSchedule::from_config(&sched_cfg)?;
        let (default_scheduler, scheduler_fallback) =
            SchedulerKind::default_for(&sched_cfg.class_name, &schedule);
        let distilled = schedule.spacing == Some(Spacing::Trailing);
        let (default_steps, default_guidance) = match default_scheduler {
            _ if distilled => (1, 0.0),
            // diffusers' LatentConsistencyModelPipeline defaults to 8.5; its model cards use 8.
            SchedulerKind::Lcm if unet_cfg.time_cond_proj_dim.is_some() => (4, 8.0),
            SchedulerKind::Lcm => (4, 1.0),
            _ => (25, 7.5),
        };
        let info = ModelInfo {
            dir: dir.to_path_buf(),
            name: display_name(dir),
            family,
            unet_kind,
            vae_scale: vae_cfg.scale_factor(),
            latent_channels: vae_cfg.latent_channels,
            native_size: unet_cfg.sample_size.unwrap_or(64) * vae_cfg.scale_factor(),
            default_scheduler,
            scheduler_fallback,
            distilled,
            zeros_for_empty_negative: family == ModelFamily::Sdxl && zeros_for_empty_negative,
            default_steps,
            default_guidance,
        };
        Ok(Self {
            unet_cfg,
            vae_cfg,
            text_cfg,
            text_cfg_2,
            schedule,
            info,
        })
    }
}
