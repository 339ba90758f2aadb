//! Single-file checkpoints: the one `.safetensors` file model sites distribute, holding the
//! UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`) and the text encoder(s)
//! (`cond_stage_model.*` or `conditioner.embedders.*`) in Stable Diffusion's original layout.
//!
//! [`Checkpoint::open`] reads the header (never the weights), refuses pickles and files that
//! are not a whole model, and [`detect`] infers the family and every config value from the
//! tensors' names and shapes. Components then load through [`backend::RenamedWeights`], which
//! serves diffusers names from the memory-mapped file, so nothing is converted on disk.

pub mod backend;
pub mod detect;
pub mod keys;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};

pub use detect::{Detected, Family, Prediction};

/// A header larger than this is not a model's (SDXL's is ~200 KB).
const MAX_HEADER: u64 = 100 << 20;
/// Tensors in one file; SDXL checkpoints hold ~2,500.
const MAX_TENSORS: usize = 100_000;

/// Name, dtype and shape of one tensor in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// A safetensors header: tensors by name and the free-form `__metadata__` strings.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// The shape of `name`, if the file has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Whether any tensor name starts with `prefix`.
    pub fn any_under(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// Reads and checks a safetensors header without touching the tensor data.
    pub fn read(path: &Path) -> Result<Self> {
        crate::model::check_safetensors(path)?;
        let bad = |why: String| {
            EngineError::bad_file(path, format!("not a valid safetensors file: {why}"))
        };
        let mut file = std::fs::File::open(path).map_err(|e| EngineError::bad_file(path, e))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER {
            return Err(bad(format!("a header of {header_len} bytes")));
        }
        let mut text = vec![0u8; header_len as usize];
        file.read_exact(&mut text).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if json.len() > MAX_TENSORS {
            return Err(bad(format!("{} tensors", json.len())));
        }
        let mut header = Header::default();
        for (name, value) in json {
            if name == "__metadata__" {
                let map = value
                    .as_object()
                    .ok_or_else(|| bad("__metadata__ is not an object".into()))?;
                for (k, v) in map {
                    if let Some(s) = v.as_str() {
                        header.metadata.insert(k.clone(), s.to_string());
                    }
                }
                continue;
            }
            let dtype = value
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad(format!("{name} has no dtype")))?;
            let shape = value
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad(format!("{name} has no shape")))?;
            if shape.len() > 8 {
                return Err(bad(format!("{name} has {} dimensions", shape.len())));
            }
            let shape = shape
                .iter()
                .map(|d| d.as_u64().filter(|d| *d <= 1 << 32).map(|d| d as usize))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| bad(format!("{name} has a malformed shape")))?;
            header.tensors.insert(
                name,
                TensorInfo {
                    dtype: dtype.to_string(),
                    shape,
                },
            );
        }
        Ok(header)
    }
}

/// An opened single-file checkpoint: its header, and its data mapped (not read) into memory.
pub struct Checkpoint {
    path: PathBuf,
    header: Header,
    file: Arc<MmapedSafetensors>,
}

impl Checkpoint {
    /// Opens `path` if it is a whole Stable Diffusion checkpoint in safetensors format; says
    /// what it is instead when it is a pickle, a LoRA, a lone VAE or something else.
    pub fn open(path: &Path) -> Result<Self> {
        if is_pickle_name(path) {
            return Err(pickle_refusal(path));
        }
        // A pickle under another name is told by its first bytes, but only once the file has
        // failed as safetensors: a safetensors header length can start with the same bytes.
        let header = Header::read(path).map_err(|e| {
            if starts_like_a_pickle(path) {
                pickle_refusal(path)
            } else {
                e
            }
        })?;
        if let Some(what) = not_a_checkpoint(&header) {
            return Err(EngineError::bad_file(path, what));
        }
        // SAFETY: the file is mapped read-only and we never write to it while it is mapped.
        let file =
            unsafe { MmapedSafetensors::new(path) }.map_err(|e| EngineError::bad_file(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            header,
            file: Arc::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Infers the model's family and configs (see [`detect`]).
    pub fn detect(&self, prediction: Option<Prediction>) -> Result<Detected> {
        detect::detect(self, prediction)
            .and_then(|d| d.require_builtin_vocabulary().map(|()| d))
            .map_err(|e| EngineError::bad_file(&self.path, e))
    }

    /// A f32 copy of one tensor, for the few values detection looks at.
    pub(crate) fn tensor_values(&self, name: &str) -> Option<Vec<f32>> {
        self.file
            .load(name, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1())
            .ok()
    }

    /// The weights of one component (`unet`, `vae`, `text_encoder`, `text_encoder_2`) under
    /// their diffusers names.
    pub fn weights(
        &self,
        detected: &Detected,
        component: &'static str,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        let names = detected.key_map(&self.header, component).ok_or_else(|| {
            EngineError::bad_file(&self.path, format!("this checkpoint has no {component}"))
        })?;
        let backend = backend::RenamedWeights::new(self.file.clone(), names, component);
        Ok(VarBuilder::from_backend(
            Box::new(backend),
            dtype,
            device.clone(),
        ))
    }
}

/// The extensions PyTorch's pickled checkpoints go by.
fn is_pickle_name(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    matches!(ext.as_str(), "ckpt" | "pt" | "pth" | "bin")
}

/// A zip archive (`torch.save`'s format) or a bare pickle (protocol 2+ starts with 0x80).
fn starts_like_a_pickle(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"PK\x03\x04" || magic[0] == 0x80)
}

/// PyTorch pickles can run code when loaded: refuse them, and say how to convert one.
fn pickle_refusal(path: &Path) -> EngineError {
    EngineError::bad_file(
            path,
            "this is a PyTorch pickle (.ckpt/.pt/.pth/.bin), which can run arbitrary code when \
             loaded, so Imagine does not read it: convert it to .safetensors first, e.g. \
             `python -c \"import torch,safetensors.torch as s; d=torch.load('model.ckpt',map_location='cpu',weights_only=True); \
             s.save_file({k:v.contiguous() for k,v in d.get('state_dict',d).items() if hasattr(v,'contiguous')},'model.safetensors')\"`, \
             or download the model's .safetensors version",
    )
}

/// Why a safetensors file is not a whole SD checkpoint, naming what it looks like.
fn not_a_checkpoint(h: &Header) -> Option<String> {
    let any = |needle: &str| h.tensors.keys().any(|k| k.contains(needle));
    let has_unet = h.any_under("model.diffusion_model.");
    let has_vae = h.any_under("first_stage_model.");
    let has_text = h.any_under("cond_stage_model.") || h.any_under("conditioner.embedders.");
    if has_unet && has_vae && has_text {
        return None;
    }
    let looks_like = if any("lora_unet_") || any("lora_te") || any(".lora_A.") || any(".lora_down.")
    {
        "a LoRA (a patch applied on top of a model), not a model: pass a full checkpoint to --model"
            .to_string()
    } else if has_unet {
        let missing: Vec<&str> = [
            (!has_vae).then_some("the VAE (first_stage_model.*)"),
            (!has_text)
                .then_some("the text encoder (cond_stage_model.* / conditioner.embedders.*)"),
        ]
        .into_iter()
        .flatten()
        .collect();
        format!(
            "a UNet without {}: use a full checkpoint (model sites' \"pruned\" files hold all three parts)",
            missing.join(" or ")
        )
    } else if h.has("encoder.conv_in.weight") && h.has("decoder.conv_in.weight") {
        "a VAE alone (an autoencoder's weights), not a whole model: pass a full checkpoint to --model"
            .to_string()
    } else if h.has("conv_in.weight") && any("down_blocks.") {
        "a diffusers UNet file: point --model at the whole diffusers folder instead".to_string()
    } else if any("text_model.") {
        "a text encoder alone, not a whole model".to_string()
    } else if h.has("conv_first.weight") {
        "an ESRGAN upscaler: configure it as IMAGINE_UPSCALER, not as a model".to_string()
    } else {
        let first = h.tensors.keys().next().map_or("none", String::as_str);
        format!(
            "not a Stable Diffusion checkpoint Imagine knows ({} tensors, the first named {first:?}); \
             it loads SD 1.x, SD 2.x and SDXL files with model.diffusion_model.* tensors",
            h.tensors.len()
        )
    };
    Some(format!("this safetensors file looks like {looks_like}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(names: &[&str]) -> Header {
        Header {
            tensors: names
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        TensorInfo {
                            dtype: "F32".into(),
                            shape: vec![1],
                        },
                    )
                })
                .collect(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn a_lora_a_vae_and_a_bare_unet_are_named_as_what_they_are() {
        let lora = header(&["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]);
        assert!(not_a_checkpoint(&lora).unwrap().contains("a LoRA"));
        let vae = header(&["encoder.conv_in.weight", "decoder.conv_in.weight"]);
        assert!(not_a_checkpoint(&vae).unwrap().contains("a VAE alone"));
        let unet = header(&["model.diffusion_model.input_blocks.0.0.weight"]);
        let why = not_a_checkpoint(&unet).unwrap();
        assert!(why.contains("without the VAE"), "{why}");
        let whole = header(&[
            "model.diffusion_model.input_blocks.0.0.weight",
            "first_stage_model.decoder.conv_in.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        ]);
        assert!(not_a_checkpoint(&whole).is_none());
    }
}
