//! Where a model's files come from: a local diffusers folder, a single-file checkpoint
//! (`.safetensors` in the original SD layout), or a Hugging Face repo id resolved through the
//! local HF cache (downloading, with a progress bar, when online). [`ModelSource`] is the seam
//! the loader reads configs, weights and the tokenizer through, whichever of these it is.

use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, Detected, Prediction};
use crate::error::{EngineError, Result};
use crate::tokenizer::ClipTokenizer;

/// An opened model: a diffusers folder, or a single file with what was inferred from it.
pub enum ModelSource {
    Folder {
        dir: PathBuf,
        /// `--prediction`, applied over the folder's scheduler config.
        prediction: Option<Prediction>,
    },
    SingleFile {
        checkpoint: Checkpoint,
        detected: Box<Detected>,
    },
}

impl ModelSource {
    /// Opens a folder as it is, or a file as a single-file checkpoint (reading its header
    /// only); `prediction` overrides what the model says it predicts.
    pub fn open(path: &Path, prediction: Option<Prediction>) -> Result<Self> {
        if path.is_dir() {
            return Ok(Self::Folder {
                dir: path.to_path_buf(),
                prediction,
            });
        }
        let checkpoint = Checkpoint::open(path)?;
        let detected = checkpoint.detect(prediction)?;
        tracing::info!(
            "{}: a {} single-file checkpoint{}, {} prediction ({})",
            path.display(),
            detected.family.name(),
            if detected.turbo {
                " (Turbo, by its name)"
            } else {
                ""
            },
            detected.prediction.config_name(),
            detected.prediction_reason
        );
        Ok(Self::SingleFile {
            checkpoint,
            detected: Box::new(detected),
        })
    }

    /// The folder's tokenizer, or CLIP's built-in one with the family's padding.
    pub fn tokenizer(&self, window: usize) -> Result<ClipTokenizer> {
        match self {
            Self::Folder { dir, .. } => ClipTokenizer::load(&dir.join("tokenizer"), window),
            Self::SingleFile { detected, .. } => ClipTokenizer::embedded(detected.padding, window),
        }
    }

    /// SDXL's second tokenizer: the folder's `tokenizer_2`, or the built-in one padding with
    /// `!` (OpenCLIP's convention).
    pub fn tokenizer_2(&self, window: usize) -> Result<ClipTokenizer> {
        match self {
            Self::Folder { dir, .. } => ClipTokenizer::load(&dir.join("tokenizer_2"), window),
            Self::SingleFile { .. } => {
                ClipTokenizer::embedded(crate::tokenizer::ClipPadding::Exclamation, window)
            }
        }
    }
}

/// The files of each component the engine reads, beside the weights.
const CONFIG_FILES: &[&str] = &[
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
];
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
];
/// SDXL's second text encoder and tokenizer: fetched and required when `model_index.json`
/// lists `text_encoder_2`.
const SECOND_ENCODER_CONFIGS: &[&str] = &["text_encoder_2/config.json"];
const SECOND_TOKENIZER_FILES: &[&str] = &[
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/tokenizer.json",
];

/// Weight file names in order of preference for a component folder.
pub fn weight_candidates(component: &str) -> &'static [&'static str] {
    match component {
        "text_encoder" | "text_encoder_2" => &["model.safetensors", "model.fp16.safetensors"],
        _ => &[
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ],
    }
}

/// What a folder must hold to be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// A Stable Diffusion pipeline: `model_index.json` and one folder per component.
    Pipeline,
    /// A lone `AutoencoderTiny` (TAESD): `config.json` and its weights at the root.
    TinyAutoencoder,
}

impl Layout {
    /// The file whose presence marks a snapshot of this kind in the HF cache.
    fn marker(self) -> &'static str {
        match self {
            Layout::Pipeline => "model_index.json",
            Layout::TinyAutoencoder => "config.json",
        }
    }

    fn configs(self) -> &'static [&'static str] {
        match self {
            Layout::Pipeline => CONFIG_FILES,
            Layout::TinyAutoencoder => &["config.json"],
        }
    }

    /// Optional files fetched when the repo lists them.
    fn extras(self) -> Vec<&'static str> {
        match self {
            Layout::Pipeline => TOKENIZER_FILES
                .iter()
                .copied()
                .chain(["tokenizer/tokenizer.json"])
                .collect(),
            Layout::TinyAutoencoder => Vec::new(),
        }
    }

    /// Folders holding weights ("" is the root).
    fn weight_folders(self) -> &'static [&'static str] {
        match self {
            Layout::Pipeline => &["unet", "vae", "text_encoder"],
            Layout::TinyAutoencoder => &[""],
        }
    }

    /// The command-line flag that names such a folder, and a repo id to show as an example.
    fn flag_and_example(self) -> (&'static str, &'static str) {
        match self {
            Layout::Pipeline => ("--model", "stabilityai/sd-turbo"),
            Layout::TinyAutoencoder => ("--taesd", "madebyollin/taesd"),
        }
    }
}

/// `folder/file`, or `file` for the root folder "".
fn in_folder(folder: &str, file: &str) -> String {
    if folder.is_empty() {
        file.to_string()
    } else {
        format!("{folder}/{file}")
    }
}

/// Turns `--model` into a local folder or file: an existing directory or file is used as it
/// is (a file must be a `.safetensors` checkpoint; pickles are refused when it is opened);
/// anything else is taken as a Hugging Face repo id (`org/name`).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    resolve(spec, Layout::Pipeline)
}

/// Turns `--taesd` into a local `AutoencoderTiny` folder (`config.json` and
/// `diffusion_pytorch_model.safetensors` at its root), like [`resolve_model`]: a directory,
/// or a repo id such as `madebyollin/taesd` looked up in (or fetched into) the HF cache.
pub fn resolve_taesd(spec: &str) -> Result<PathBuf> {
    resolve(spec, Layout::TinyAutoencoder)
}

fn resolve(spec: &str, layout: Layout) -> Result<PathBuf> {
    let (flag, example) = layout.flag_and_example();
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(spec) {
        let file = match layout {
            Layout::Pipeline => ", a .safetensors file",
            Layout::TinyAutoencoder => "",
        };
        return Err(EngineError::ModelNotFound(format!(
            "{spec:?} is neither a folder{file} nor a Hugging Face repo id like {example}"
        )));
    }
    let cached = cached_snapshot(spec, layout);
    if let Some(Ok(dir)) = &cached {
        return Ok(dir.clone());
    }
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true") {
        let what = match cached {
            Some(Err(missing)) => format!("its cached copy lacks {}", missing.display()),
            _ => "it is not in the Hugging Face cache".to_string(),
        };
        return Err(EngineError::ModelNotFound(format!(
            "{spec}: {what}, and HF_HUB_OFFLINE is set: download it on a machine with internet access, or point {flag} at a local folder"
        )));
    }
    download(spec, layout)
}

fn looks_like_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The cached snapshot of `repo`, if one exists: `Ok` when it holds every config file and a
/// weight file for each component, else `Err` with the first file it lacks.
fn cached_snapshot(repo: &str, layout: Layout) -> Option<std::result::Result<PathBuf, PathBuf>> {
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(repo.to_string());
    let marker = repo.get(layout.marker())?;
    let dir = marker.parent()?.to_path_buf();
    Some(match first_missing(&dir, layout) {
        None => Ok(dir),
        Some(missing) => Err(missing),
    })
}

/// Whether a pipeline folder's `model_index.json` lists SDXL's second text encoder.
fn lists_second_encoder(dir: &Path) -> bool {
    crate::config::read_json::<crate::config::ModelIndex>(&dir.join("model_index.json"))
        .is_ok_and(|index| crate::config::ModelIndex::has(&index.text_encoder_2))
}

fn first_missing(dir: &Path, layout: Layout) -> Option<PathBuf> {
    let second = layout == Layout::Pipeline && lists_second_encoder(dir);
    let extra_configs = if second { SECOND_ENCODER_CONFIGS } else { &[] };
    let extra_weights: &[&str] = if second { &["text_encoder_2"] } else { &[] };
    let config = layout
        .configs()
        .iter()
        .chain(extra_configs)
        .map(|f| dir.join(f))
        .find(|p| !p.exists());
    config.or_else(|| {
        layout
            .weight_folders()
            .iter()
            .chain(extra_weights)
            .find_map(|c| {
                let present = weight_candidates(c)
                    .iter()
                    .any(|w| dir.join(c).join(w).exists());
                (!present).then(|| dir.join(c).join(weight_candidates(c)[0]))
            })
    })
}

/// Downloads the files the engine needs into the HF cache (progress bars on stderr).
fn download(repo_id: &str, layout: Layout) -> Result<PathBuf> {
    let (flag, _) = layout.flag_and_example();
    let offline = |file: &str, e: &dyn std::fmt::Display| {
        EngineError::ModelNotFound(format!(
            "cannot fetch {file} of {repo_id} from the Hugging Face hub ({e}); check the repo id and your connection, or point {flag} at a local diffusers folder"
        ))
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| offline("the repo listing", &e))?;
    let repo = api.model(repo_id.to_string());
    let info = repo.info().map_err(|e| offline("the repo listing", &e))?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    // SDXL repos: the second encoder is needed when the repo has one (the refiner, which
    // lacks the first, is refused when it loads).
    let second = layout == Layout::Pipeline && listed.contains(&"text_encoder_2/config.json");
    let mut wanted: Vec<String> = layout
        .configs()
        .iter()
        .copied()
        .chain(layout.extras())
        .chain(if second {
            [SECOND_ENCODER_CONFIGS, SECOND_TOKENIZER_FILES].concat()
        } else {
            Vec::new()
        })
        .map(|s| s.to_string())
        .filter(|f| listed.contains(&f.as_str()))
        .collect();
    let extra_weights: &[&str] = if second { &["text_encoder_2"] } else { &[] };
    for component in layout.weight_folders().iter().chain(extra_weights) {
        let weights = weight_candidates(component)
            .iter()
            .map(|w| in_folder(component, w))
            .find(|f| listed.contains(&f.as_str()))
            .ok_or_else(|| {
                let place = if component.is_empty() {
                    "at its root".to_string()
                } else {
                    format!("in {component}/")
                };
                EngineError::ModelNotFound(format!(
                    "{repo_id} has no safetensors weights {place} (only the diffusers folder layout with .safetensors files is supported)"
                ))
            })?;
        wanted.push(weights);
    }
    let mut dir = None;
    for file in &wanted {
        let path = repo.get(file).map_err(|e| offline(file, &e))?;
        if file == layout.marker() {
            dir = path.parent().map(Path::to_path_buf);
        }
    }
    dir.ok_or_else(|| EngineError::ModelNotFound(format!("{repo_id} has no {}", layout.marker())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_apart_from_paths() {
        assert!(looks_like_repo_id("stabilityai/sd-turbo"));
        assert!(!looks_like_repo_id("sd-turbo"));
        assert!(!looks_like_repo_id("./models/x/y"));
        assert!(!looks_like_repo_id("a/b/c"));
    }

    #[test]
    fn an_unknown_name_gets_an_error_that_says_what_is_accepted() {
        let err = resolve_model("no-such-model-folder")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither a folder, a .safetensors file nor a Hugging Face repo id"),
            "{err}"
        );
    }
}
