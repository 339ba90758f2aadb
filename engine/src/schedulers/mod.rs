//! Samplers: how a noisy latent moves from one inference step to the next. Each mirrors the
//! diffusers scheduler of the same name, formula for formula, but draws any noise it needs from
//! the request's seeded [`LatentNoise`] instead of a global RNG.

mod ddim;
mod dpmpp;
mod euler;
pub mod schedule;

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

pub use schedule::{NoiseSchedule, Prediction, Spacing};

use crate::error::{EngineError, Result};
use crate::noise::LatentNoise;

/// The samplers users can choose, by their CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Euler,
    EulerAncestral,
    Ddim,
    DpmPp2m,
    DpmPp2mKarras,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 5] = [
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Ddim,
        SchedulerKind::DpmPp2m,
        SchedulerKind::DpmPp2mKarras,
    ];

    /// The name used on the command line and in the bot.
    pub fn cli_name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmPp2m => "dpmpp-2m",
            SchedulerKind::DpmPp2mKarras => "dpmpp-2m-karras",
        }
    }

    /// The name Stable Diffusion web UIs write in a PNG's `parameters` chunk.
    pub fn webui_name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "Euler",
            SchedulerKind::EulerAncestral => "Euler a",
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::DpmPp2m => "DPM++ 2M",
            SchedulerKind::DpmPp2mKarras => "DPM++ 2M Karras",
        }
    }

    /// The sampler a diffusers `scheduler_config.json` names, if we implement it.
    pub fn from_diffusers_class(class: &str, karras: bool) -> Option<Self> {
        match class {
            "EulerDiscreteScheduler" => Some(SchedulerKind::Euler),
            "EulerAncestralDiscreteScheduler" => Some(SchedulerKind::EulerAncestral),
            "DDIMScheduler" => Some(SchedulerKind::Ddim),
            "DPMSolverMultistepScheduler" if karras => Some(SchedulerKind::DpmPp2mKarras),
            "DPMSolverMultistepScheduler" => Some(SchedulerKind::DpmPp2m),
            _ => None,
        }
    }

    /// Builds the sampler for `steps` inference steps on the model's noise schedule.
    pub fn build(self, schedule: &NoiseSchedule, steps: usize) -> Result<Box<dyn Sampler + Send>> {
        if steps == 0 {
            return Err(EngineError::invalid("steps must be at least 1"));
        }
        if steps > schedule.train_steps() {
            return Err(EngineError::invalid(format!(
                "steps must be at most {} for this model",
                schedule.train_steps()
            )));
        }
        Ok(match self {
            SchedulerKind::Euler => Box::new(euler::Euler::new(schedule, steps, false)),
            SchedulerKind::EulerAncestral => Box::new(euler::Euler::new(schedule, steps, true)),
            SchedulerKind::Ddim => Box::new(ddim::Ddim::new(schedule, steps)),
            SchedulerKind::DpmPp2m => Box::new(dpmpp::DpmPp2m::new(schedule, steps, false)),
            SchedulerKind::DpmPp2mKarras => Box::new(dpmpp::DpmPp2m::new(schedule, steps, true)),
        })
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

impl FromStr for SchedulerKind {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.cli_name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = SchedulerKind::ALL.iter().map(|k| k.cli_name()).collect();
                EngineError::invalid(format!(
                    "unknown scheduler {s:?}; choose one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// What one sampler step produced.
pub struct StepOutput {
    /// The latent for the next step.
    pub prev_sample: Tensor,
    /// The model's current guess of the clean latent (what previews show).
    pub denoised: Tensor,
}

/// One generation's sampler state. `step` indices count from the start of the full schedule,
/// so image-to-image simply starts at a later index.
pub trait Sampler {
    /// The model timestep of each inference step.
    fn timesteps(&self) -> &[f64];
    /// How much to scale unit-variance noise to start from pure noise.
    fn init_noise_sigma(&self) -> f64;
    /// Input scaling the UNet expects at `step`.
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;
    /// Advances `sample` by one step given the (guided) model output.
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut LatentNoise,
    ) -> Result<StepOutput>;
    /// Noises a clean latent to the level of `step` (image-to-image, inpainting).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;
}

/// `a * x + b * y` for f64 coefficients, computed in the tensors' dtype.
pub(crate) fn axpby(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    Ok(((x * a)? + (y * b)?)?)
}
