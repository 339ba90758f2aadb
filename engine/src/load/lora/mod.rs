//! LoRA: low-rank updates of a loaded model's weights, in the two formats people share them
//! in (kohya / web-UI and diffusers / PEFT), for the UNet's and text encoders' linear layers
//! and convolutions (LoCon).
//!
//! - [`file`]: [`LoraFile::open`] reads and checks a `.safetensors` LoRA.
//! - [`kohya`], [`peft`]: each format's names, mapped to the model's layers.
//! - [`patch`]: applying a set of LoRAs in place, and restoring the base weights exactly.
//!
//! A model loads with no LoRA; [`StableDiffusion::set_loras`] patches it between jobs
//! (exactly as diffusers' `load_lora_weights` + `fuse_lora` at that scale) and an empty set
//! returns it to its own weights bit for bit.

mod file;
mod kohya;
mod patch;
mod peft;

use std::ops::RangeInclusive;
use std::sync::Arc;

pub use file::{LoraFile, LoraFormat};
pub(crate) use patch::{LoraLayers, PatchableComponent};

use crate::error::Result;
use crate::model::StableDiffusion;

/// The scales a LoRA may be applied at: beyond ±4 images are noise, so a larger value is a
/// typo rather than a wish.
pub const SCALE_RANGE: RangeInclusive<f32> = -4.0..=4.0;

/// A LoRA file and the scale to apply it at (1.0: as trained).
#[derive(Debug, Clone)]
pub struct ActiveLora {
    pub file: Arc<LoraFile>,
    pub scale: f32,
}

impl ActiveLora {
    pub fn new(file: Arc<LoraFile>, scale: f32) -> Self {
        Self { file, scale }
    }
}

/// What [`StableDiffusion::set_loras`] did: evidence that switching is cheap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoraReport {
    /// Layers whose weight is now base + LoRA.
    pub layers_patched: usize,
    /// Layers returned to their base weight.
    pub layers_restored: usize,
    /// Tensors read from the model's weight files (one per patched or restored layer; the
    /// model's other weights are not read again).
    pub weights_read: usize,
}

impl StableDiffusion {
    /// Applies `loras` at their scales in place of whatever set was applied before; an empty
    /// slice returns the model to its base weights, bit for bit. Only the layers either set
    /// patches are touched (their base tensors are re-read from the memory-mapped weight
    /// files); the same set again does nothing. Every file is checked against the model first:
    /// a LoRA with a tensor that matches no layer, or a layer of another shape, is refused
    /// and the model keeps its current weights. Call it between jobs, not during one.
    pub fn set_loras(&self, loras: &[ActiveLora]) -> Result<LoraReport> {
        self.loras.apply(loras)
    }

    /// How many layers of this model a LoRA can patch.
    pub fn lora_layer_count(&self) -> usize {
        self.loras.layer_count()
    }
}
