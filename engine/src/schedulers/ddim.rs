//! DDIM (diffusers' `DDIMScheduler`, eta = 0): deterministic steps in alpha space.

use candle_core::Tensor;

use super::schedule::{
    linspace, round_half_even, spaced_timesteps, NoiseSchedule, Prediction, Spacing,
};
use super::{axpby, Sampler, StepOutput};
use crate::error::Result;
use crate::noise::LatentNoise;

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    step_ratio: usize,
    prediction: Prediction,
}

impl Ddim {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        let train = schedule.train_steps();
        let spacing = schedule.spacing.unwrap_or(Spacing::Leading);
        let timesteps = match spacing {
            Spacing::Linspace => linspace(0.0, (train - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(round_half_even)
                .collect(),
            other => spaced_timesteps(other, train, steps, schedule.steps_offset),
        };
        let final_alpha_cumprod = if schedule.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Self {
            timesteps,
            alphas_cumprod: schedule.alphas_cumprod.clone(),
            final_alpha_cumprod,
            step_ratio: train / steps,
            prediction: schedule.prediction,
        }
    }

    fn alpha_at(&self, t: f64) -> f64 {
        self.alphas_cumprod[(t.max(0.0) as usize).min(self.alphas_cumprod.len() - 1)]
    }
}

impl Sampler for Ddim {
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
        _noise: &mut LatentNoise,
    ) -> Result<StepOutput> {
        let t = self.timesteps[step];
        let prev_t = t - self.step_ratio as f64;
        let alpha = self.alpha_at(t);
        let alpha_prev = if prev_t >= 0.0 {
            self.alpha_at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
        let beta = 1.0 - alpha;
        let (denoised, eps) = match self.prediction {
            Prediction::Epsilon => {
                let x0 = ((sample - (model_output * beta.sqrt())?)? / alpha.sqrt())?;
                (x0, model_output.clone())
            }
            Prediction::VPrediction => (
                axpby(alpha.sqrt(), sample, -beta.sqrt(), model_output)?,
                axpby(alpha.sqrt(), model_output, beta.sqrt(), sample)?,
            ),
            // Refused by `SchedulerKind::check`; the clean latent is the output itself.
            Prediction::Sample => (
                model_output.clone(),
                axpby(
                    1.0 / beta.sqrt(),
                    sample,
                    -alpha.sqrt() / beta.sqrt(),
                    model_output,
                )?,
            ),
        };
        let prev_sample = axpby(
            alpha_prev.sqrt(),
            &denoised,
            (1.0 - alpha_prev).sqrt(),
            &eps,
        )?;
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let alpha = self.alpha_at(self.timesteps[step]);
        axpby(alpha.sqrt(), original, (1.0 - alpha).sqrt(), noise)
    }
}
