//! DPM-Solver++ 2M, optionally on Karras sigmas (diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`, midpoint solver, lower-order final steps,
//! final sigma zero). A second-order multistep method: it reuses the previous step's
//! prediction, so it keeps state between steps.

use candle_core::Tensor;

use super::schedule::{
    dpm_timesteps, interp, karras_sigmas, log_sigmas, round_half_even, sigma_to_t, NoiseSchedule,
    Prediction, Spacing,
};
use super::{axpby, Sampler, StepOutput};
use crate::error::Result;
use crate::noise::LatentNoise;

pub struct DpmPp2m {
    timesteps: Vec<f64>,
    /// One per step plus the final 0.
    sigmas: Vec<f64>,
    prediction: Prediction,
    /// The denoised prediction of the previous step, if any.
    previous: Option<Tensor>,
}

/// (alpha_t, sigma_t) of the variance-preserving process at Karras sigma `s`.
fn alpha_sigma(s: f64) -> (f64, f64) {
    let alpha = 1.0 / (s * s + 1.0).sqrt();
    (alpha, s * alpha)
}

/// log(alpha) - log(sigma): the half log-SNR the solver steps in.
fn lambda(s: f64) -> f64 {
    let (a, sg) = alpha_sigma(s);
    a.ln() - sg.ln()
}

impl DpmPp2m {
    /// `karras` picks Karras sigmas; the model's `use_karras_sigmas` picks them too, as it
    /// does for diffusers' scheduler built from that config.
    pub fn new(schedule: &NoiseSchedule, steps: usize, karras: bool) -> Self {
        let train = schedule.train_steps();
        let train_sigmas = schedule.train_sigmas();
        let (timesteps, mut sigmas) = if karras || schedule.use_karras_sigmas == Some(true) {
            let cfg = &schedule.config;
            // diffusers flips the training sigmas, so its "last" is the smallest.
            let sigma_min = cfg.sigma_min.unwrap_or(train_sigmas[0]);
            let sigma_max = cfg.sigma_max.unwrap_or(train_sigmas[train - 1]);
            let sigmas = karras_sigmas(sigma_min, sigma_max, steps);
            let log_sigmas = log_sigmas(&train_sigmas);
            let timesteps = sigmas
                .iter()
                .map(|s| round_half_even(sigma_to_t(*s, &log_sigmas)))
                .collect();
            (timesteps, sigmas)
        } else {
            let spacing = schedule.spacing.unwrap_or(Spacing::Linspace);
            let timesteps = dpm_timesteps(spacing, train, steps, schedule.steps_offset);
            let sigmas = timesteps
                .iter()
                .map(|t| interp(*t, &train_sigmas))
                .collect();
            (timesteps, sigmas)
        };
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas: sigmas.into_iter().map(|s| s as f32 as f64).collect(),
            prediction: schedule.prediction,
            previous: None,
        }
    }

    fn denoised(&self, model_output: &Tensor, sigma: f64, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        match self.prediction {
            Prediction::Epsilon => Ok(((sample - (model_output * sigma_t)?)? / alpha_t)?),
            Prediction::VPrediction => axpby(alpha_t, sample, -sigma_t, model_output),
            // Refused by `SchedulerKind::check`; the clean latent is the output itself.
            Prediction::Sample => Ok(model_output.clone()),
        }
    }
}

impl Sampler for DpmPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
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
        let s0 = self.sigmas[step];
        let t = self.sigmas[step + 1];
        let denoised = self.denoised(model_output, s0, sample)?;
        let (alpha_t, sigma_t) = alpha_sigma(t);
        let (_, sigma_s0) = alpha_sigma(s0);
        // With the final sigma at zero, lambda_t is infinite and exp(-h) is 0: the step lands
        // exactly on the denoised prediction.
        let h = lambda(t) - lambda(s0);
        let decay = (-h).exp() - 1.0;
        let ratio = if t == 0.0 { 0.0 } else { sigma_t / sigma_s0 };
        let last = step + 1 == self.timesteps.len();
        // diffusers takes a first-order step at the start and on the final (zero-sigma) step.
        let first_order = self.previous.is_none() || last;
        let prev_sample = if first_order {
            axpby(ratio, sample, -alpha_t * decay, &denoised)?
        } else {
            let previous = self.previous.as_ref().expect("checked above");
            let s1 = self.sigmas[step - 1];
            let h0 = lambda(s0) - lambda(s1);
            let r0 = h0 / h;
            // D0 + 0.5 * D1, D1 = (m0 - m1) / r0.
            let d1 = ((&denoised - previous)? / r0)?;
            let d = (&denoised + (d1 * 0.5)?)?;
            axpby(ratio, sample, -alpha_t * decay, &d)?
        };
        self.previous = Some(denoised.clone());
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[step]);
        axpby(alpha, original, sigma, noise)
    }
}
