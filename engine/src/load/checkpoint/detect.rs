//! What model a single file holds, inferred from its tensors' names and shapes as ComfyUI's
//! `model_detection.py` does: the family (from the text encoders' layout and the UNet's
//! `label_emb`), every dimension (from shapes), and what shapes cannot say, by the family's
//! convention: attention heads (SD 1.x: 8 per block; SD 2.x and SDXL: 64-channel heads; CLIP
//! text encoders: 64-channel heads), the VAE's scaling factor, the native size and the scheduler
//! config the family's diffusers repo ships. Results are the config.json files a diffusers
//! folder of the same model would have, so the rest of the engine cannot tell the two apart.

use serde_json::{json, Value};

use super::keys::{self, KeyMap, UNetLayout};
use super::{Checkpoint, Header};
use crate::config::{SchedulerFileConfig, TextEncoderFileConfig, UNetFileConfig, VaeFileConfig};
use crate::tokenizer::ClipPadding;

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP_L: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: &str = "cond_stage_model.model.";
const SGM_OPEN_CLIP: &str = "conditioner.embedders.0.model.";
const SDXL_CLIP_L: &str = "conditioner.embedders.0.transformer.";
const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";
/// SDXL's `text_time` values (original size, crop, target size), each embedded
/// `addition_time_embed_dim` wide after the pooled text in `label_emb`'s input (SDXL: 1280 +
/// 6 x 256 = 2816).
const TIME_IDS: usize = 6;

/// The model families a single file can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: OpenAI CLIP ViT-L text encoder, 8 attention heads.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H, penultimate layer, 64-channel heads.
    Sd2,
    /// SDXL (SDXL-Turbo, SSD-1B, Vega): CLIP ViT-L + OpenCLIP bigG, `text_time` conditioning.
    Sdxl,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }
}

/// What the UNet is trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

impl Prediction {
    /// Parses `v` / `v_prediction` or `epsilon` / `eps`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "v" | "v_prediction" | "vpred" | "v_pred" => Some(Self::V),
            "epsilon" | "eps" => Some(Self::Epsilon),
            _ => None,
        }
    }

    /// The value of diffusers' `prediction_type`.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::V => "v_prediction",
        }
    }
}

/// How a text encoder is stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextLayout {
    /// transformers' CLIPTextModel names under a prefix (OpenAI CLIP ViT-L).
    Clip(&'static str),
    /// OpenCLIP's names under a prefix (fused in_proj, `resblocks`).
    OpenClip(&'static str),
}

/// Everything inferred from one checkpoint.
#[derive(Debug, Clone)]
pub struct Detected {
    pub family: Family,
    /// The configs a diffusers folder would hold (`unet/config.json`, ...), as JSON.
    pub unet_json: Value,
    pub vae_json: Value,
    pub text_encoder_json: Value,
    /// SDXL's second text encoder (`CLIPTextModelWithProjection`), with `projection_dim`.
    pub text_encoder_2_json: Option<Value>,
    pub scheduler_json: Value,
    pub prediction: Prediction,
    /// Why that prediction (logged at load).
    pub prediction_reason: String,
    /// Padding of the (first) tokenizer; SDXL's second pads with `!`.
    pub padding: ClipPadding,
    /// SDXL-Turbo / SD-Turbo: told from the file name or title, never from weights.
    pub turbo: bool,
    layout: UNetLayout,
    vae_levels: usize,
    text: TextLayout,
    text_2: Option<TextLayout>,
}

impl Detected {
    pub fn unet_config(&self) -> crate::Result<UNetFileConfig> {
        from_json(&self.unet_json, "UNet")
    }
    pub fn vae_config(&self) -> crate::Result<VaeFileConfig> {
        from_json(&self.vae_json, "VAE")
    }
    pub fn text_encoder_config(&self) -> crate::Result<TextEncoderFileConfig> {
        from_json(&self.text_encoder_json, "text encoder")
    }
    /// SDXL's second text encoder, if the file has one.
    pub fn text_encoder_2_config(&self) -> crate::Result<Option<TextEncoderFileConfig>> {
        self.text_encoder_2_json
            .as_ref()
            .map(|json| from_json(json, "second text encoder"))
            .transpose()
    }
    pub fn scheduler_config(&self) -> crate::Result<SchedulerFileConfig> {
        from_json(&self.scheduler_json, "scheduler")
    }

    /// Refuses text encoders whose vocabulary is not CLIP's: a single file carries no
    /// tokenizer, so its token ids must be the built-in vocabulary's.
    pub fn require_builtin_vocabulary(&self) -> Found<()> {
        for cfg in std::iter::once(&self.text_encoder_json).chain(&self.text_encoder_2_json) {
            let vocab = cfg["vocab_size"].as_u64().unwrap_or(0) as usize;
            if vocab != crate::clip_vocab::VOCAB_SIZE {
                return Err(format!(
                    "a text encoder with {vocab} tokens: single files load with CLIP's built-in vocabulary of {}",
                    crate::clip_vocab::VOCAB_SIZE
                ));
            }
        }
        Ok(())
    }

    /// Diffusers name -> file tensor, for one component.
    pub fn key_map(&self, header: &Header, component: &str) -> Option<KeyMap> {
        let names = header.tensors.keys().map(String::as_str);
        let text = |layout: TextLayout| match layout {
            TextLayout::Clip(prefix) => keys::clip(names.clone(), prefix),
            TextLayout::OpenClip(prefix) => keys::open_clip(names.clone(), prefix),
        };
        match component {
            "unet" => Some(keys::unet(names.clone(), UNET, self.layout)),
            "vae" => Some(keys::vae(names.clone(), VAE, self.vae_levels)),
            "text_encoder" => Some(text(self.text)),
            "text_encoder_2" => self.text_2.map(text),
            _ => None,
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> crate::Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| {
        crate::EngineError::UnsupportedArchitecture(format!(
            "the {what} config inferred from the checkpoint does not parse: {e}"
        ))
    })
}

type Found<T> = Result<T, String>;

fn shape<'a>(h: &'a Header, name: &str, rank: usize) -> Found<&'a [usize]> {
    match h.shape(name) {
        Some(s) if s.len() == rank => Ok(s),
        Some(s) => Err(format!(
            "{name} has shape {s:?}, expected {rank} dimensions"
        )),
        None => Err(format!("the checkpoint has no {name}")),
    }
}

/// Counts `prefix{i}suffix` for i = 0, 1, ... until one is missing.
fn count(h: &Header, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| h.has(&format!("{prefix}{i}{suffix}")))
        .count()
}

/// Infers the model in `ckpt`; `prediction` overrides what the file says.
pub fn detect(ckpt: &Checkpoint, prediction: Option<Prediction>) -> Found<Detected> {
    let stem = ckpt
        .path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    detect_in(
        ckpt.header(),
        &stem,
        &|name| ckpt.tensor_values(name),
        prediction,
    )
}

/// [`detect`] on a header; `values` reads a tensor (only the SD 2 heuristic needs one).
pub fn detect_in(
    h: &Header,
    stem: &str,
    values: &dyn Fn(&str) -> Option<Vec<f32>>,
    prediction: Option<Prediction>,
) -> Found<Detected> {
    let adm = h.shape(&format!("{UNET}label_emb.0.0.weight"));
    let (family, text, text_2) = if h.any_under(SDXL_OPEN_CLIP) || adm.is_some() {
        if !h.any_under(SDXL_OPEN_CLIP) || !h.any_under(SDXL_CLIP_L) {
            return Err(
                "a UNet with extra conditioning inputs (label_emb) without SDXL's two text \
                        encoders: the SDXL refiner and class-conditioned models are not supported"
                    .into(),
            );
        }
        if adm.is_none() {
            return Err("SDXL's text encoders without SDXL's UNet conditioning (label_emb)".into());
        }
        (
            Family::Sdxl,
            TextLayout::Clip(SDXL_CLIP_L),
            Some(TextLayout::OpenClip(SDXL_OPEN_CLIP)),
        )
    } else if h.any_under(OPEN_CLIP) {
        (Family::Sd2, TextLayout::OpenClip(OPEN_CLIP), None)
    } else if h.any_under(SGM_OPEN_CLIP) {
        (Family::Sd2, TextLayout::OpenClip(SGM_OPEN_CLIP), None)
    } else if h.any_under(CLIP_L) {
        (Family::Sd1, TextLayout::Clip(CLIP_L), None)
    } else {
        return Err(
            "no text encoder this engine knows (cond_stage_model.transformer.*, \
                    cond_stage_model.model.* or conditioner.embedders.*)"
                .into(),
        );
    };
    let turbo = is_turbo(h, stem);
    let (mut unet_json, layout, in_channels) = unet(h, family, turbo)?;
    let lcm = lcm_guidance_embedding(h, &mut unet_json)?;
    let (vae_json, vae_levels) = vae(h, family)?;
    let text_encoder_json = text_encoder(h, text, family == Family::Sd2, None)?;
    let text_encoder_2_json = match text_2 {
        Some(layout) => Some(text_encoder(h, layout, false, Some(SDXL_OPEN_CLIP))?),
        None => None,
    };
    if let (Some(adm), Some(text_2)) = (adm, &text_encoder_2_json) {
        // label_emb takes the pooled text and the six embedded size/crop values.
        let pooled = text_2["projection_dim"].as_u64().unwrap_or(0) as usize;
        let adm = adm.get(1).copied().unwrap_or(0);
        if adm <= pooled || !(adm - pooled).is_multiple_of(TIME_IDS) {
            return Err(format!(
                "label_emb takes {adm} inputs, not {pooled} pooled text values plus six size/crop embeddings"
            ));
        }
        unet_json["addition_embed_type"] = json!("text_time");
        unet_json["addition_time_embed_dim"] = json!((adm - pooled) / TIME_IDS);
        unet_json["projection_class_embeddings_input_dim"] = json!(adm);
    }
    let (prediction, prediction_reason) = match prediction {
        Some(p) => (
            p,
            "set for this model (--prediction or the bot's [models] entry)".into(),
        ),
        None => default_prediction(h, values, family, in_channels),
    };
    if family == Family::Sd2 && prediction == Prediction::V && !turbo && in_channels == 4 {
        // SD 2.x v-models are the 768 px ones (stable-diffusion-2(-1)).
        unet_json["sample_size"] = json!(96);
    }
    Ok(Detected {
        family,
        unet_json,
        vae_json,
        text_encoder_json,
        text_encoder_2_json,
        scheduler_json: scheduler(family, prediction, turbo, lcm),
        prediction,
        prediction_reason,
        padding: match family {
            Family::Sd2 => ClipPadding::Exclamation,
            _ => ClipPadding::EndOfText,
        },
        turbo,
        layout,
        vae_levels,
        text,
        text_2,
    })
}

/// LCM-distilled UNets embed the guidance scale (`time_cond_proj_dim`); converted files keep
/// diffusers' name for that layer under the UNet prefix. Returns whether the file has one.
fn lcm_guidance_embedding(h: &Header, unet_json: &mut Value) -> Found<bool> {
    let Some(cond) = h.shape(&format!("{UNET}time_embedding.cond_proj.weight")) else {
        return Ok(false);
    };
    let channels = unet_json["block_out_channels"][0].as_u64().unwrap_or(0) as usize;
    match cond {
        [out, dim] if *out == channels && *dim > 0 => {
            unet_json["time_cond_proj_dim"] = json!(dim);
            Ok(true)
        }
        _ => Err(format!(
            "time_embedding.cond_proj.weight is {cond:?}, not [{channels}, guidance embedding size]"
        )),
    }
}

/// SD-Turbo and SDXL-Turbo have their base's weights' shapes; only the name can tell.
fn is_turbo(h: &Header, stem: &str) -> bool {
    let stem = stem.to_ascii_lowercase();
    let title = h
        .metadata
        .get("modelspec.title")
        .map(|t| t.to_ascii_lowercase())
        .unwrap_or_default();
    stem.contains("turbo") || title.contains("turbo")
}

/// The file's own evidence first, then ComfyUI's heuristic for SD 2.x, else epsilon.
fn default_prediction(
    h: &Header,
    values: &dyn Fn(&str) -> Option<Vec<f32>>,
    family: Family,
    in_channels: usize,
) -> (Prediction, String) {
    if h.has("v_pred") {
        return (Prediction::V, "the file has a v_pred key".into());
    }
    if let Some(p) = h
        .metadata
        .get("modelspec.prediction_type")
        .and_then(|v| Prediction::parse(v))
    {
        return (
            p,
            "the file's metadata says so (modelspec.prediction_type)".into(),
        );
    }
    if family == Family::Sd2 && in_channels == 4 {
        // ComfyUI's test: v-models' last attention's first norm bias has a wide spread.
        let blocks = count(h, &format!("{UNET}output_blocks."), ".0.in_layers.0.weight");
        let key = (0..blocks)
            .rev()
            .map(|i| format!("{UNET}output_blocks.{i}.1.transformer_blocks.0.norm1.bias"))
            .find(|k| h.has(k));
        if let Some(values) = key.and_then(|k| values(&k)) {
            let n = values.len().max(1) as f64;
            let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n;
            let var = values
                .iter()
                .map(|v| (*v as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let std = var.sqrt();
            let p = if std > 0.09 {
                Prediction::V
            } else {
                Prediction::Epsilon
            };
            return (
                p,
                format!(
                    "SD 2.x heuristic (ComfyUI's): the last attention's norm1 bias has std {std:.3} {} 0.09; \
                     override with --prediction if the images look wrong",
                    if std > 0.09 { ">" } else { "<=" }
                ),
            );
        }
    }
    (
        Prediction::Epsilon,
        format!(
            "{} models predict noise unless the file says otherwise",
            family.name()
        ),
    )
}

/// One resolution level of the UNet, as the input blocks show it.
#[derive(Debug, Default)]
struct Level {
    channels: usize,
    resnets: usize,
    /// Transformer depth of its attention blocks (0: no attention).
    depth: usize,
}

fn unet(h: &Header, family: Family, turbo: bool) -> Found<(Value, UNetLayout, usize)> {
    let conv_in = shape(h, &format!("{UNET}input_blocks.0.0.weight"), 4)?;
    let (model_channels, in_channels) = (conv_in[0], conv_in[1]);
    let out_channels = shape(h, &format!("{UNET}out.2.weight"), 4)?[0];
    let mut levels = vec![Level::default()];
    let mut context_dim = None;
    let mut linear = None;
    for n in 1.. {
        let block = format!("{UNET}input_blocks.{n}.");
        if h.has(&format!("{block}0.op.weight")) {
            levels.push(Level::default());
            continue;
        }
        let Some(out) = h.shape(&format!("{block}0.out_layers.3.weight")) else {
            break;
        };
        let level = levels.last_mut().expect("one level at least");
        let depth = count(h, &format!("{block}1.transformer_blocks."), ".norm1.weight");
        if level.resnets > 0 && (level.channels != out[0] || level.depth != depth) {
            return Err(format!(
                "UNet input block {n} differs from the others of its level"
            ));
        }
        level.channels = out[0];
        level.depth = depth;
        level.resnets += 1;
        if depth > 0 && context_dim.is_none() {
            let k = shape(
                h,
                &format!("{block}1.transformer_blocks.0.attn2.to_k.weight"),
                2,
            )?;
            context_dim = Some(k[1]);
            linear = h
                .shape(&format!("{block}1.proj_in.weight"))
                .map(|s| s.len() == 2);
        }
    }
    let layers_per_block = levels[0].resnets;
    if layers_per_block == 0 || levels.iter().any(|l| l.resnets != layers_per_block) {
        return Err("UNet levels with different numbers of resnets".into());
    }
    let outputs = count(h, &format!("{UNET}output_blocks."), ".0.in_layers.0.weight");
    if outputs != levels.len() * (layers_per_block + 1) {
        return Err(format!(
            "UNet with {outputs} output blocks for {} levels of {layers_per_block}",
            levels.len()
        ));
    }
    let context_dim = context_dim.ok_or("a UNet without cross-attention")?;
    let mid_depth = count(
        h,
        &format!("{UNET}middle_block.1.transformer_blocks."),
        ".norm1.weight",
    );
    if mid_depth == 0 {
        return Err("a UNet without a mid-block attention".into());
    }
    let heads: Vec<usize> = levels
        .iter()
        .map(|l| match family {
            Family::Sd1 => 8,
            _ => (l.channels / 64).max(1),
        })
        .collect();
    let down: Vec<&str> = levels
        .iter()
        .map(|l| {
            if l.depth > 0 {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = levels
        .iter()
        .rev()
        .map(|l| {
            if l.depth > 0 {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let native = match (family, turbo) {
        (Family::Sdxl, false) => 128,
        _ => 64,
    };
    let mut cfg = json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": native,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "block_out_channels": levels.iter().map(|l| l.channels).collect::<Vec<_>>(),
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": layers_per_block,
        "cross_attention_dim": context_dim,
        "use_linear_projection": linear.unwrap_or(false),
        "upcast_attention": family == Family::Sd2,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "downsample_padding": 1,
        "center_input_sample": false,
        "act_fn": "silu",
    });
    if levels[0].channels != model_channels {
        return Err("the UNet's first level is not as wide as its conv_in".into());
    }
    if family == Family::Sd1 {
        cfg["attention_head_dim"] = json!(8);
    } else {
        cfg["attention_head_dim"] = json!(heads);
    }
    if family == Family::Sdxl {
        let depths: Vec<usize> = levels.iter().map(|l| l.depth.max(1)).collect();
        cfg["transformer_layers_per_block"] = json!(depths);
    } else if levels.iter().any(|l| l.depth > 1) || mid_depth > 1 {
        return Err("an SD 1.x/2.x UNet with more than one transformer per attention block".into());
    }
    Ok((cfg, UNetLayout { layers_per_block }, in_channels))
}

fn vae(h: &Header, family: Family) -> Found<(Value, usize)> {
    let channels: Vec<usize> = (0..)
        .map_while(|i| h.shape(&format!("{VAE}encoder.down.{i}.block.0.conv1.weight")))
        .map(|s| s[0])
        .collect();
    if channels.is_empty() {
        return Err(format!(
            "the checkpoint has no {VAE}encoder.down.0.block.0.conv1.weight"
        ));
    }
    let layers = count(h, &format!("{VAE}encoder.down.0.block."), ".conv1.weight");
    let latent = shape(h, &format!("{VAE}decoder.conv_in.weight"), 4)?[1];
    let cfg = json!({
        "_class_name": "AutoencoderKL",
        "in_channels": shape(h, &format!("{VAE}encoder.conv_in.weight"), 4)?[1],
        "out_channels": shape(h, &format!("{VAE}decoder.conv_out.weight"), 4)?[0],
        "block_out_channels": channels,
        "down_block_types": vec!["DownEncoderBlock2D"; channels.len()],
        "up_block_types": vec!["UpDecoderBlock2D"; channels.len()],
        "latent_channels": latent,
        "layers_per_block": layers,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "scaling_factor": if family == Family::Sdxl { 0.13025 } else { 0.18215 },
        "use_quant_conv": h.has(&format!("{VAE}quant_conv.weight")),
        "use_post_quant_conv": h.has(&format!("{VAE}post_quant_conv.weight")),
        "force_upcast": true,
    });
    Ok((cfg, channels.len()))
}

/// `penultimate`: SD 2.x uses the layer before the last (diffusers' folder drops the last).
fn text_encoder(
    h: &Header,
    layout: TextLayout,
    penultimate: bool,
    projection: Option<&str>,
) -> Found<Value> {
    let (tokens, positions, fc1, layers, act) = match layout {
        TextLayout::Clip(prefix) => {
            let p = if h.any_under(&format!("{prefix}text_model.")) {
                format!("{prefix}text_model.")
            } else {
                prefix.to_string()
            };
            (
                shape(h, &format!("{p}embeddings.token_embedding.weight"), 2)?,
                shape(h, &format!("{p}embeddings.position_embedding.weight"), 2)?[0],
                shape(h, &format!("{p}encoder.layers.0.mlp.fc1.weight"), 2)?[0],
                count(h, &format!("{p}encoder.layers."), ".mlp.fc1.weight"),
                "quick_gelu",
            )
        }
        TextLayout::OpenClip(p) => (
            shape(h, &format!("{p}token_embedding.weight"), 2)?,
            shape(h, &format!("{p}positional_embedding"), 2)?[0],
            shape(h, &format!("{p}transformer.resblocks.0.mlp.c_fc.weight"), 2)?[0],
            count(h, &format!("{p}transformer.resblocks."), ".mlp.c_fc.weight"),
            "gelu",
        ),
    };
    let (vocab, hidden) = (tokens[0], tokens[1]);
    let layers = if penultimate {
        layers.saturating_sub(1)
    } else {
        layers
    };
    if layers == 0 {
        return Err("a text encoder without layers".into());
    }
    if hidden >= 64 && hidden % 64 != 0 {
        return Err(format!(
            "a text encoder {hidden} wide, not a multiple of CLIP's 64-channel heads"
        ));
    }
    let mut cfg = json!({
        "architectures": [if projection.is_some() { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": fc1,
        "num_hidden_layers": layers,
        "num_attention_heads": (hidden / 64).max(1),
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    });
    if let Some(p) = projection {
        cfg["projection_dim"] = json!(shape(h, &format!("{p}text_projection"), 2)?[1]);
    }
    Ok(cfg)
}

/// The scheduler config of each family's diffusers repo (SD 1.5, SD 2.1, SDXL base, the Turbos).
/// LCM-distilled files get the LCMScheduler config their diffusers repos ship
/// (SimianLuo/LCM_Dreamshaper_v7, latent-consistency/lcm-sdxl).
fn scheduler(family: Family, prediction: Prediction, turbo: bool, lcm: bool) -> Value {
    let mut cfg = json!({
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": prediction.config_name(),
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "clip_sample": false,
        "timestep_spacing": "leading",
        "trained_betas": null,
    });
    if lcm {
        cfg["_class_name"] = json!("LCMScheduler");
        cfg["set_alpha_to_one"] = json!(true);
        cfg["original_inference_steps"] = json!(50);
        cfg["timestep_scaling"] = json!(10.0);
        cfg["thresholding"] = json!(false);
        return cfg;
    }
    let class = match (family, turbo) {
        (_, true) => {
            cfg["timestep_spacing"] = json!("trailing");
            "EulerAncestralDiscreteScheduler"
        }
        (Family::Sd1, false) => "PNDMScheduler",
        (Family::Sd2, false) => "DDIMScheduler",
        (Family::Sdxl, false) => {
            // SDXL base's EulerDiscreteScheduler config has no clip_sample.
            cfg.as_object_mut().map(|c| c.remove("clip_sample"));
            cfg["interpolation_type"] = json!("linear");
            cfg["use_karras_sigmas"] = json!(false);
            "EulerDiscreteScheduler"
        }
    };
    cfg["_class_name"] = json!(class);
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TensorInfo;

    /// The tensors detection reads, with SDXL base 1.0's shapes.
    fn sdxl_header() -> Header {
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |name: String, shape: &[usize]| t.push((name, shape.to_vec()));
        let u = UNET;
        add(format!("{u}input_blocks.0.0.weight"), &[320, 4, 3, 3]);
        add(format!("{u}out.2.weight"), &[4, 320, 3, 3]);
        add(format!("{u}label_emb.0.0.weight"), &[1280, 2816]);
        let (channels, depths) = ([320, 640, 1280], [0, 2, 10]);
        let mut n = 1;
        for level in 0..3 {
            for _ in 0..2 {
                let c = channels[level];
                add(
                    format!("{u}input_blocks.{n}.0.out_layers.3.weight"),
                    &[c, c, 3, 3],
                );
                for k in 0..depths[level] {
                    let b = format!("{u}input_blocks.{n}.1.transformer_blocks.{k}.");
                    add(format!("{b}norm1.weight"), &[c]);
                    add(format!("{b}attn2.to_k.weight"), &[c, 2048]);
                }
                if depths[level] > 0 {
                    add(format!("{u}input_blocks.{n}.1.proj_in.weight"), &[c, c]);
                }
                n += 1;
            }
            if level < 2 {
                add(
                    format!("{u}input_blocks.{n}.0.op.weight"),
                    &[channels[level]; 2],
                );
                n += 1;
            }
        }
        for i in 0..9 {
            add(
                format!("{u}output_blocks.{i}.0.in_layers.0.weight"),
                &[1280],
            );
        }
        for k in 0..10 {
            add(
                format!("{u}middle_block.1.transformer_blocks.{k}.norm1.weight"),
                &[1280],
            );
        }
        for (i, c) in [128, 256, 512, 512].into_iter().enumerate() {
            for j in 0..2 {
                add(
                    format!("{VAE}encoder.down.{i}.block.{j}.conv1.weight"),
                    &[c, c, 3, 3],
                );
            }
        }
        add(format!("{VAE}encoder.conv_in.weight"), &[128, 3, 3, 3]);
        add(format!("{VAE}decoder.conv_in.weight"), &[512, 4, 3, 3]);
        add(format!("{VAE}decoder.conv_out.weight"), &[3, 128, 3, 3]);
        add(format!("{VAE}quant_conv.weight"), &[8, 8, 1, 1]);
        add(format!("{VAE}post_quant_conv.weight"), &[4, 4, 1, 1]);
        let l = format!("{SDXL_CLIP_L}text_model.");
        add(
            format!("{l}embeddings.token_embedding.weight"),
            &[49408, 768],
        );
        add(
            format!("{l}embeddings.position_embedding.weight"),
            &[77, 768],
        );
        for i in 0..12 {
            add(
                format!("{l}encoder.layers.{i}.mlp.fc1.weight"),
                &[3072, 768],
            );
        }
        let g = SDXL_OPEN_CLIP;
        add(format!("{g}token_embedding.weight"), &[49408, 1280]);
        add(format!("{g}positional_embedding"), &[77, 1280]);
        add(format!("{g}text_projection"), &[1280, 1280]);
        for i in 0..32 {
            add(
                format!("{g}transformer.resblocks.{i}.mlp.c_fc.weight"),
                &[5120, 1280],
            );
        }
        Header {
            tensors: t
                .into_iter()
                .map(|(name, shape)| {
                    let dtype = "F16".to_string();
                    (name, TensorInfo { dtype, shape })
                })
                .collect(),
            metadata: Default::default(),
        }
    }

    #[test]
    fn sdxl_base_is_detected_with_the_configs_of_its_diffusers_repo() {
        let d = detect_in(&sdxl_header(), "sd_xl_base_1.0", &|_| None, None).unwrap();
        assert_eq!(d.family, Family::Sdxl);
        let u = &d.unet_json;
        assert_eq!(u["block_out_channels"], json!([320, 640, 1280]));
        assert_eq!(u["attention_head_dim"], json!([5, 10, 20]));
        assert_eq!(u["transformer_layers_per_block"], json!([1, 2, 10]));
        assert_eq!(
            u["down_block_types"],
            json!([
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D"
            ])
        );
        assert_eq!(
            u["up_block_types"],
            json!(["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
        );
        assert_eq!(u["cross_attention_dim"], 2048);
        assert_eq!(u["use_linear_projection"], true);
        assert_eq!(u["addition_embed_type"], "text_time");
        assert_eq!(u["addition_time_embed_dim"], 256);
        assert_eq!(u["projection_class_embeddings_input_dim"], 2816);
        assert_eq!(u["sample_size"], 128);
        assert_eq!(d.vae_json["scaling_factor"], 0.13025);
        assert_eq!(
            d.vae_json["block_out_channels"],
            json!([128, 256, 512, 512])
        );
        let (t1, t2) = (
            &d.text_encoder_json,
            d.text_encoder_2_json.as_ref().unwrap(),
        );
        assert_eq!(
            (
                t1["num_hidden_layers"].clone(),
                t1["num_attention_heads"].clone()
            ),
            (json!(12), json!(12))
        );
        assert_eq!(t1["hidden_act"], "quick_gelu");
        // SDXL keeps every layer of both encoders; the pipeline takes hidden_states[-2].
        assert_eq!(
            (
                t2["num_hidden_layers"].clone(),
                t2["num_attention_heads"].clone()
            ),
            (json!(32), json!(20))
        );
        assert_eq!(t2["hidden_act"], "gelu");
        assert_eq!(t2["projection_dim"], 1280);
        assert_eq!(t2["architectures"], json!(["CLIPTextModelWithProjection"]));
        assert_eq!(d.scheduler_json["_class_name"], "EulerDiscreteScheduler");
        assert_eq!(d.padding, ClipPadding::EndOfText);
        assert!(d.require_builtin_vocabulary().is_ok());
        let names = d.key_map(&sdxl_header(), "text_encoder_2").unwrap();
        assert!(names.contains_key("text_projection.weight"));
        assert!(names.contains_key("text_model.encoder.layers.31.mlp.fc1.weight"));
    }

    #[test]
    fn turbo_is_told_by_name_and_runs_at_512_with_trailing_euler_a() {
        let d = detect_in(&sdxl_header(), "sd_xl_turbo_1.0_fp16", &|_| None, None).unwrap();
        assert!(d.turbo);
        assert_eq!(d.unet_json["sample_size"], 64);
        assert_eq!(
            d.scheduler_json["_class_name"],
            "EulerAncestralDiscreteScheduler"
        );
        assert_eq!(d.scheduler_json["timestep_spacing"], "trailing");
    }

    #[test]
    fn a_refiner_is_refused_by_name() {
        let mut h = sdxl_header();
        h.tensors.retain(|k, _| !k.starts_with(SDXL_CLIP_L));
        let err = detect_in(&h, "refiner", &|_| None, None).unwrap_err();
        assert!(err.contains("refiner"), "{err}");
    }

    #[test]
    fn the_sd2_heuristic_reads_the_last_attention_norm_bias() {
        let bias = format!("{UNET}output_blocks.11.1.transformer_blocks.0.norm1.bias");
        let h = Header {
            tensors: [
                (bias.clone(), vec![1280]),
                (
                    format!("{UNET}output_blocks.11.0.in_layers.0.weight"),
                    vec![640],
                ),
            ]
            .into_iter()
            .map(|(n, shape)| {
                (
                    n,
                    TensorInfo {
                        dtype: "F32".into(),
                        shape,
                    },
                )
            })
            .collect(),
            metadata: Default::default(),
        };
        // Blocks 0..=11 must be counted from 0: give the counter the others.
        let mut h = h;
        for i in 0..11 {
            h.tensors.insert(
                format!("{UNET}output_blocks.{i}.0.in_layers.0.weight"),
                TensorInfo {
                    dtype: "F32".into(),
                    shape: vec![640],
                },
            );
        }
        let wide = |_: &str| {
            Some(
                (0..1280)
                    .map(|i| if i % 2 == 0 { 0.2 } else { -0.2 })
                    .collect(),
            )
        };
        let narrow = |_: &str| Some(vec![0.01; 1280]);
        assert_eq!(
            default_prediction(&h, &wide, Family::Sd2, 4).0,
            Prediction::V
        );
        assert_eq!(
            default_prediction(&h, &narrow, Family::Sd2, 4).0,
            Prediction::Epsilon
        );
        // Inpainting SD 2 models are epsilon whatever the spread (ComfyUI's rule).
        assert_eq!(
            default_prediction(&h, &wide, Family::Sd2, 9).0,
            Prediction::Epsilon
        );
        h.tensors.insert(
            "v_pred".into(),
            TensorInfo {
                dtype: "F32".into(),
                shape: vec![],
            },
        );
        assert_eq!(
            default_prediction(&h, &narrow, Family::Sd2, 4).0,
            Prediction::V
        );
    }
}
