//! The engine's error type: every way loading or generating can fail, each with a sentence a
//! user can act on. Nothing in the engine panics on bad input; it returns one of these.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file the model folder must contain is absent.
    #[error("missing model file {path}: the model folder is incomplete (download it again, or point --model at a complete diffusers folder)")]
    MissingFile { path: PathBuf },

    /// A file exists but could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },

    /// The model's config names an architecture this engine does not implement.
    #[error("unsupported model architecture: {0}")]
    UnsupportedArchitecture(String),

    /// The model's `scheduler_config.json` sets something the chosen sampler reads but does
    /// not implement: running it anyway would give other images than diffusers does.
    #[error("the model's scheduler/scheduler_config.json sets {setting}, which the {sampler} sampler does not implement (it supports {supported}); choose another sampler with --scheduler, or change that key in the config")]
    UnsupportedSchedulerSetting {
        sampler: &'static str,
        setting: String,
        supported: String,
    },

    /// A LoRA file that cannot be read, or that does not fit the loaded model.
    #[error("LoRA {path}: {reason}")]
    Lora { path: PathBuf, reason: String },

    /// The model could not be found locally or in the Hugging Face cache.
    #[error("model not found: {0}")]
    ModelNotFound(String),

    /// A request that can never succeed (size, steps, strength, mask ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The load options ask for something this machine cannot do (e.g. bf16 without
    /// AVX512_BF16).
    #[error("not possible on this machine: {0}")]
    Unsupported(String),

    /// The caller asked to stop between steps.
    #[error("generation cancelled")]
    Cancelled,

    /// A tensor operation failed (shape mismatch in weights, out of memory ...).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Shorthand used across the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        EngineError::BadFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        EngineError::InvalidRequest(reason.into())
    }
}
