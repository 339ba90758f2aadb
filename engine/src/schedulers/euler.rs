//! Euler and Euler-ancestral (diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler`): first-order steps in sigma space. With trailing spacing
//! and one step this is the schedule SD-Turbo was distilled for.

use candle_core::Tensor;

use super::schedule::{
    interp, karras_sigmas, log_sigmas, sigma_to_t, spaced_timesteps, NoiseSchedule, Prediction,
    Spacing,
};
use super::{axpby, Sampler, StepOutput};
use crate::error::Result;
use crate::noise::LatentNoise;

pub struct Euler {
    timesteps: Vec<f64>,
    /// One per step plus the final 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: Prediction,
    ancestral: bool,
}

impl Euler {
    pub fn new(schedule: &NoiseSchedule, steps: usize, ancestral: bool) -> Self {
        let spacing = schedule.spacing.unwrap_or(Spacing::Linspace);
        let train = schedule.train_steps();
        // diffusers holds these as float32 and interpolates sigmas at the float32 values.
        let mut timesteps: Vec<f64> =
            spaced_timesteps(spacing, train, steps, schedule.steps_offset)
                .into_iter()
                .map(|t| t as f32 as f64)
                .collect();
        let train_sigmas = schedule.train_sigmas();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|t| interp(*t, &train_sigmas))
            .collect();
        // Euler-ancestral has no Karras option in diffusers.
        if !ancestral && schedule.use_karras_sigmas == Some(true) {
            let cfg = &schedule.config;
            let sigma_min = cfg.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = cfg.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, steps);
            let log_sigmas = log_sigmas(&train_sigmas);
            timesteps = sigmas
                .iter()
                .map(|s| sigma_to_t(*s, &log_sigmas) as f32 as f64)
                .collect();
        }
        sigmas.push(0.0);
        let sigmas: Vec<f64> = sigmas.into_iter().map(|s| s as f32 as f64).collect();
        let max_sigma = sigmas.iter().cloned().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max_sigma,
            Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction: schedule.prediction,
            ancestral,
        }
    }

    fn denoised(&self, model_output: &Tensor, sigma: f64, sample: &Tensor) -> Result<Tensor> {
        match self.prediction {
            Prediction::Epsilon => axpby(1.0, sample, -sigma, model_output),
            Prediction::VPrediction => {
                let c = sigma * sigma + 1.0;
                axpby(-sigma / c.sqrt(), model_output, 1.0 / c, sample)
            }
            // Refused by `SchedulerKind::check`; the clean latent is the output itself.
            Prediction::Sample => Ok(model_output.clone()),
        }
    }
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        Ok((sample / (sigma * sigma + 1.0).sqrt())?)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut LatentNoise,
    ) -> Result<StepOutput> {
        let sigma = self.sigmas[step];
        let sigma_next = self.sigmas[step + 1];
        let denoised = self.denoised(model_output, sigma, sample)?;
        let derivative = ((sample - &denoised)? / sigma)?;
        let prev_sample = if self.ancestral {
            let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
                / (sigma * sigma))
                .sqrt();
            let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
            let moved = (sample + (derivative * (sigma_down - sigma))?)?;
            if sigma_up > 0.0 {
                (moved + (noise.draw()? * sigma_up)?)?
            } else {
                moved
            }
        } else {
            (sample + (derivative * (sigma_next - sigma))?)?
        };
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        axpby(1.0, original, self.sigmas[step], noise)
    }
}
