//! LCM (diffusers' `LCMScheduler`): the consistency-model sampler that latent consistency
//! models and LCM-LoRAs were distilled for. Each step maps the sample straight to a clean
//! estimate (boundary-condition scalings `c_skip`, `c_out`), then noises that estimate again
//! to the next timestep with fresh noise; 2 to 8 steps make an image. Timesteps are picked
//! from the distillation schedule (`original_inference_steps`, 50) as diffusers picks them.

use candle_core::Tensor;

use super::schedule::{NoiseSchedule, Prediction};
use super::{axpby, Sampler, StepOutput};
use crate::error::{EngineError, Result};
use crate::noise::LatentNoise;

/// diffusers' `sigma_data` for the boundary condition.
const SIGMA_DATA: f32 = 0.5;

pub struct Lcm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    timestep_scaling: f32,
    prediction: Prediction,
}

impl Lcm {
    /// The sampler for `steps` steps; `strength` below 1 (image-to-image) shortens the
    /// distillation schedule the steps are picked from, as diffusers' LCM pipelines do.
    pub fn new(schedule: &NoiseSchedule, steps: usize, strength: f64) -> Result<Self> {
        let cfg = &schedule.config;
        let original = cfg.original_inference_steps.unwrap_or(50);
        let timesteps = lcm_timesteps(schedule.train_steps(), original, steps, strength)?;
        Ok(Self {
            timesteps,
            alphas_cumprod: schedule.alphas_cumprod.clone(),
            timestep_scaling: cfg.timestep_scaling.unwrap_or(10.0) as f32,
            prediction: schedule.prediction,
        })
    }

    /// `alphas_cumprod[t]` as diffusers indexes it (integer timesteps in range).
    fn alpha_at(&self, t: f64) -> f32 {
        self.alphas_cumprod[(t.max(0.0) as usize).min(self.alphas_cumprod.len() - 1)] as f32
    }

    /// `(c_skip, c_out)` at timestep `t`, in float32 as diffusers computes them.
    fn boundary_scalings(&self, t: f64) -> (f32, f32) {
        let scaled = t as f32 * self.timestep_scaling;
        let denom = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
        (SIGMA_DATA * SIGMA_DATA / denom, scaled / denom.sqrt())
    }
}

/// diffusers' `LCMScheduler.set_timesteps`: the distillation schedule `k - 1, 2k - 1, ...`
/// (`k = train / original`, `original * strength` of them), reversed, then `steps` of them at
/// the floored indices of `np.linspace(0, len, steps, endpoint=False)`. Step counts that do
/// not fit in that schedule are refused, with what would fit.
pub fn lcm_timesteps(
    train: usize,
    original: usize,
    steps: usize,
    strength: f64,
) -> Result<Vec<f64>> {
    if original == 0 || original > train {
        return Err(EngineError::invalid(format!(
            "LCM original_inference_steps {original} must be between 1 and the model's {train} training steps"
        )));
    }
    let k = train / original;
    // Python's int(original * strength) truncates.
    let len = (original as f64 * strength) as usize;
    if steps > original {
        return Err(EngineError::invalid(format!(
            "LCM runs at most {original} steps (its original_inference_steps); asked for {steps}"
        )));
    }
    if steps == 0 || len / steps < 1 {
        return Err(EngineError::invalid(format!(
            "LCM with strength {strength} picks its {steps} steps from {len} distillation steps: use at most {len} steps or a higher strength"
        )));
    }
    let origin: Vec<usize> = (1..=len).rev().map(|i| i * k - 1).collect();
    let stride = len as f64 / steps as f64;
    Ok((0..steps)
        .map(|i| origin[(i as f64 * stride).floor() as usize] as f64)
        .collect())
}

impl Sampler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        None
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut LatentNoise,
    ) -> Result<StepOutput> {
        let t = self.timesteps[step];
        let alpha = self.alpha_at(t);
        let beta = 1.0 - alpha;
        let (a, b) = (alpha.sqrt() as f64, beta.sqrt() as f64);
        let predicted = match self.prediction {
            Prediction::Epsilon => ((sample - (model_output * b)?)? / a)?,
            Prediction::VPrediction => axpby(a, sample, -b, model_output)?,
            Prediction::Sample => model_output.clone(),
        };
        let (c_skip, c_out) = self.boundary_scalings(t);
        let denoised = axpby(c_out as f64, &predicted, c_skip as f64, sample)?;
        // The last step returns the clean estimate; every other one noises it to the next
        // timestep (a one-step image takes no noise).
        let prev_sample = match self.timesteps.get(step + 1) {
            Some(next) => {
                let alpha_prev = self.alpha_at(*next);
                let beta_prev = 1.0 - alpha_prev;
                axpby(
                    alpha_prev.sqrt() as f64,
                    &denoised,
                    beta_prev.sqrt() as f64,
                    &noise.draw()?,
                )?
            }
            None => denoised.clone(),
        };
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let alpha = self.alpha_at(self.timesteps[step]);
        axpby(
            alpha.sqrt() as f64,
            original,
            (1.0 - alpha).sqrt() as f64,
            noise,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_steps_pick_from_the_fifty_step_distillation_schedule() {
        assert_eq!(
            lcm_timesteps(1000, 50, 4, 1.0).unwrap(),
            [999.0, 759.0, 499.0, 259.0]
        );
        assert_eq!(lcm_timesteps(1000, 50, 1, 1.0).unwrap(), [999.0]);
        // Image to image at 0.6 picks from the first 30 distillation steps.
        assert_eq!(
            lcm_timesteps(1000, 50, 4, 0.6).unwrap(),
            [599.0, 459.0, 299.0, 159.0]
        );
    }

    #[test]
    fn step_counts_beyond_the_distillation_schedule_are_refused() {
        let msg = lcm_timesteps(1000, 50, 51, 1.0).unwrap_err().to_string();
        assert!(msg.contains("at most 50 steps"), "{msg}");
        let msg = lcm_timesteps(1000, 50, 20, 0.25).unwrap_err().to_string();
        assert!(msg.contains("at most 12 steps"), "{msg}");
    }
}
