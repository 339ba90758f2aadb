//! Reading a LoRA `.safetensors` file: the header and tensors are checked with limits, every
//! tensor is sorted into a module's `down`/`up`/`alpha`, and formats we do not implement
//! (LoHa, LoKr, DoRA, ...) are refused by name before anything touches a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::{kohya, peft};
use crate::error::{EngineError, Result};

/// The largest LoRA file we read (full-rank extractions of SDXL reach ~1.7 GB).
const MAX_FILE_BYTES: u64 = 4 << 30;
/// The largest header: safetensors' own limit.
const MAX_HEADER_BYTES: u64 = 100 << 20;
/// SDXL LoRAs with every layer hold ~2,200 modules of 3 tensors.
const MAX_TENSORS: usize = 50_000;

/// Which naming a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// kohya sd-scripts / the web UIs: `lora_unet_*`, `lora_te*_*`, `.lora_down/.lora_up/.alpha`.
    Kohya,
    /// diffusers / PEFT: `unet.*`, `text_encoder*.*`, `.lora_A/.lora_B` (or the older
    /// attention-processor names).
    Peft,
}

/// Which tensor of a module a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Down,
    Up,
    Alpha,
}

/// One low-rank update: `ΔW = (alpha / rank) · up · down`.
#[derive(Debug)]
pub(crate) struct LoraModule {
    /// The module's name in the file's own naming, without the part suffix (kohya:
    /// `lora_unet_..._to_q`; PEFT: `unet.down_blocks....to_q` after the older names are mapped).
    pub key: String,
    /// `[rank, in]` or `[rank, in, k, k]`, f32 on the CPU.
    pub down: Tensor,
    /// `[out, rank]` or `[out, rank, 1, 1]`, f32 on the CPU.
    pub up: Tensor,
    /// The file's alpha; `None` means alpha = rank (a scale of 1), as diffusers reads it.
    pub alpha: Option<f32>,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }
}

/// A LoRA file, read and validated; apply it with [`crate::StableDiffusion::set_loras`].
#[derive(Debug)]
pub struct LoraFile {
    path: PathBuf,
    format: LoraFormat,
    pub(crate) modules: Vec<LoraModule>,
    fingerprint: u64,
}

impl LoraFile {
    /// Reads and checks `path`: a `.safetensors` file of at most 4 GiB whose tensors are all
    /// parts of kohya or PEFT LoRA modules in f32, f16 or bf16.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| EngineError::Lora {
            path: path.to_path_buf(),
            reason,
        };
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(bad(
                "only .safetensors LoRA files are read (pickled .ckpt/.pt/.bin files can run \
                 code when loaded): convert it to .safetensors first"
                    .into(),
            ));
        }
        let size = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot read it ({e})")))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(bad(format!(
                "{size} bytes is more than the {MAX_FILE_BYTES} a LoRA file may have"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
        Self::parse(path, &bytes).map_err(bad)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> LoraFormat {
        self.format
    }

    /// How many layers it changes.
    pub fn module_count(&self) -> usize {
        self.modules.len()
    }

    /// A hash of the file's contents: the same LoRA at the same scale is not applied twice.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn parse(path: &Path, bytes: &[u8]) -> std::result::Result<Self, String> {
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or("shorter than a safetensors header")?;
        if header_len > MAX_HEADER_BYTES || 8 + header_len > bytes.len() as u64 {
            return Err(format!(
                "not a valid safetensors file: a header of {header_len} bytes in a {}-byte file",
                bytes.len()
            ));
        }
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a valid safetensors file ({e})"))?;
        let (_, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a valid safetensors file ({e})"))?;
        if file.len() > MAX_TENSORS {
            return Err(format!(
                "{} tensors; a LoRA file may have at most {MAX_TENSORS}",
                file.len()
            ));
        }
        let names = file.names();
        let format = detect_format(names.iter().copied())?;
        let alphas = match format {
            LoraFormat::Peft => peft::AdapterAlphas::from_metadata(metadata.metadata().as_ref())?,
            LoraFormat::Kohya => peft::AdapterAlphas::default(),
        };
        let mut parts: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
        for (name, view) in file.iter() {
            let (module, part) = match format {
                LoraFormat::Kohya => kohya::split_key(name)?,
                LoraFormat::Peft => peft::split_key(name)?,
            };
            let tensor = to_f32(name, &view)?;
            let slot = &mut parts.entry(module).or_default()[part as usize];
            if slot.is_some() {
                return Err(format!("{name}: two tensors name the same module part"));
            }
            *slot = Some(tensor);
        }
        let modules = parts
            .into_iter()
            .map(|(key, [down, up, alpha])| {
                let module = assemble(key, down, up, alpha)?;
                Ok(match (format, module.alpha) {
                    (LoraFormat::Peft, None) => LoraModule {
                        alpha: alphas.alpha_for(&module.key),
                        ..module
                    },
                    _ => module,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        if modules.is_empty() {
            return Err("it holds no LoRA tensors".into());
        }
        Ok(Self {
            path: path.to_path_buf(),
            format,
            modules,
            fingerprint: fnv1a_words(bytes),
        })
    }
}

/// Tells kohya from PEFT naming; a file that mixes them, or that uses a LyCORIS variant we do
/// not implement, is refused with the variant's name.
fn detect_format<'a>(
    names: impl Iterator<Item = &'a str>,
) -> std::result::Result<LoraFormat, String> {
    let (mut kohya, mut peft) = (None, None);
    for name in names {
        if let Some(variant) = unsupported_variant(name) {
            return Err(format!(
                "{name} belongs to a {variant}, which this engine does not apply: only plain \
                 LoRA (and LoCon) files are supported"
            ));
        }
        if kohya::is_kohya(name) {
            kohya.get_or_insert(name);
        } else {
            peft.get_or_insert(name);
        }
    }
    match (kohya, peft) {
        (Some(_), None) => Ok(LoraFormat::Kohya),
        (None, Some(_)) => Ok(LoraFormat::Peft),
        (Some(k), Some(p)) => Err(format!(
            "it mixes kohya names ({k}) with others ({p}); it is neither a kohya nor a \
             diffusers/PEFT LoRA"
        )),
        (None, None) => Err("it holds no tensors".into()),
    }
}

/// The LyCORIS and PEFT variants we refuse, recognised by their tensor names.
fn unsupported_variant(name: &str) -> Option<&'static str> {
    const VARIANTS: [(&str, &str); 11] = [
        ("hada_", "LoHa (LyCORIS Hadamard product)"),
        ("lokr_", "LoKr (LyCORIS Kronecker product)"),
        ("dora_scale", "DoRA (weight-decomposed LoRA)"),
        ("lora_magnitude_vector", "DoRA (weight-decomposed LoRA)"),
        ("lora_mid", "LoCon with a Tucker-decomposed mid weight"),
        ("oft_", "OFT (orthogonal finetuning)"),
        ("boft_", "BOFT (orthogonal finetuning)"),
        (".diff", "full weight difference (LyCORIS 'full')"),
        ("lora_embedding_", "LoRA on embeddings"),
        (".w_norm", "norm-layer patch (LyCORIS)"),
        (".b_norm", "norm-layer patch (LyCORIS)"),
    ];
    if name.ends_with(".bias") && name.contains("lora") {
        return Some("LoRA with bias terms");
    }
    VARIANTS
        .iter()
        .find(|(marker, _)| name.contains(marker))
        .map(|(_, variant)| *variant)
}

fn to_f32(
    name: &str,
    view: &safetensors::tensor::TensorView,
) -> std::result::Result<Tensor, String> {
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        other => {
            return Err(format!(
                "{name} is {other:?}; LoRA tensors must be f32, f16 or bf16"
            ))
        }
    };
    let shape = view.shape();
    if shape.len() > 4 {
        return Err(format!(
            "{name} has {} dimensions; at most 4 are allowed",
            shape.len()
        ));
    }
    Tensor::from_raw_buffer(view.data(), dtype, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(|e| format!("{name}: {e}"))
}

/// Checks one module's tensors against each other.
fn assemble(
    key: String,
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<Tensor>,
) -> std::result::Result<LoraModule, String> {
    let (Some(down), Some(up)) = (down, up) else {
        return Err(format!(
            "{key} lacks its down or up weight (a LoRA module needs both)"
        ));
    };
    let (d, u) = (down.dims(), up.dims());
    let rank = d.first().copied().unwrap_or(0);
    let shapes_fit = matches!(d.len(), 2 | 4)
        && matches!(u.len(), 2 | 4)
        && rank > 0
        && u[1] == rank
        && u[2..].iter().all(|&k| k == 1);
    if !shapes_fit {
        return Err(format!(
            "{key}: down {d:?} and up {u:?} are not the two halves of a LoRA (down [rank, in, ...], \
             up [out, rank] or [out, rank, 1, 1])"
        ));
    }
    let alpha = match alpha {
        None => None,
        Some(a) if a.elem_count() == 1 => {
            let value = a
                .flatten_all()
                .and_then(|a| a.to_vec1::<f32>())
                .map_err(|e| format!("{key}.alpha: {e}"))?[0];
            if !value.is_finite() {
                return Err(format!("{key}.alpha is {value}"));
            }
            Some(value)
        }
        Some(a) => {
            return Err(format!(
                "{key}.alpha has shape {:?}; it must be one number",
                a.dims()
            ))
        }
    };
    Ok(LoraModule {
        key,
        down,
        up,
        alpha,
    })
}

/// FNV-1a over 8-byte words: fast enough for files of hundreds of MB, and only used to tell
/// whether the LoRA set changed between jobs.
fn fnv1a_words(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut hash = chunks.by_ref().fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
        (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(0x100_0000_01b3)
    });
    for &b in chunks.remainder() {
        hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    hash ^ bytes.len() as u64
}
