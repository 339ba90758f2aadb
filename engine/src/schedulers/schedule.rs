//! The training noise schedule every sampler derives from (betas, cumulative alphas, sigmas),
//! and the numeric helpers diffusers uses to place inference steps on it. Kept in f64 with the
//! same rounding points as diffusers (float32 betas and sigmas) so schedules match its numbers.

use crate::config::SchedulerFileConfig;
use crate::error::{EngineError, Result};

/// What the UNet was trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// How inference timesteps are spread over the training timesteps (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

/// The model's noise schedule, read from `scheduler_config.json`.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// Cumulative product of (1 - beta), one per training timestep, rounded as float32.
    pub alphas_cumprod: Vec<f64>,
    pub prediction: Prediction,
    /// `None` when the config does not say: each sampler then uses diffusers' own default.
    pub spacing: Option<Spacing>,
    pub steps_offset: usize,
    pub set_alpha_to_one: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
}

impl NoiseSchedule {
    pub fn from_config(cfg: &SchedulerFileConfig) -> Result<Self> {
        let bad =
            |msg: String| EngineError::UnsupportedArchitecture(format!("scheduler config: {msg}"));
        let n = cfg.num_train_timesteps.unwrap_or(1000);
        if n < 2 {
            return Err(bad(format!("num_train_timesteps {n}")));
        }
        let start = cfg.beta_start.unwrap_or(0.0001);
        let end = cfg.beta_end.unwrap_or(0.02);
        let betas: Vec<f32> = match (&cfg.trained_betas, cfg.beta_schedule.as_deref()) {
            (Some(b), _) if !b.is_empty() => b.iter().map(|x| *x as f32).collect(),
            (_, None | Some("linear")) => {
                linspace(start, end, n).iter().map(|x| *x as f32).collect()
            }
            (_, Some("scaled_linear")) => linspace(start.sqrt(), end.sqrt(), n)
                .iter()
                .map(|x| (*x as f32) * (*x as f32))
                .collect(),
            (_, Some(other)) => return Err(bad(format!("beta_schedule {other:?}"))),
        };
        if cfg.rescale_betas_zero_snr == Some(true) {
            return Err(bad("rescale_betas_zero_snr is not supported yet".into()));
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0f32;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc as f64);
        }
        let prediction = match cfg.prediction_type.as_deref() {
            None | Some("epsilon") => Prediction::Epsilon,
            Some("v_prediction") => Prediction::VPrediction,
            Some(other) => return Err(bad(format!("prediction_type {other:?}"))),
        };
        let spacing = match cfg.timestep_spacing.as_deref() {
            None => None,
            Some("linspace") => Some(Spacing::Linspace),
            Some("leading") => Some(Spacing::Leading),
            Some("trailing") => Some(Spacing::Trailing),
            Some(other) => return Err(bad(format!("timestep_spacing {other:?}"))),
        };
        if let Some(kind) = cfg.final_sigmas_type.as_deref() {
            if kind != "zero" {
                return Err(bad(format!("final_sigmas_type {kind:?}")));
            }
        }
        if let Some(kind) = cfg.interpolation_type.as_deref() {
            if kind != "linear" {
                return Err(bad(format!("interpolation_type {kind:?}")));
            }
        }
        Ok(Self {
            alphas_cumprod,
            prediction,
            spacing,
            steps_offset: cfg.steps_offset.unwrap_or(0),
            set_alpha_to_one: cfg.set_alpha_to_one,
            use_karras_sigmas: cfg.use_karras_sigmas,
        })
    }

    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Karras-style sigma of every training timestep: sqrt((1 - a) / a), as float32.
    pub fn train_sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|a| (((1.0 - *a as f32) / *a as f32).sqrt()) as f64)
            .collect()
    }
}

/// `np.linspace(start, end, n)`.
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n)
                .map(|i| {
                    if i == n - 1 {
                        end
                    } else {
                        start + step * i as f64
                    }
                })
                .collect()
        }
    }
}

/// `np.interp(x, arange(len(ys)), ys)`.
pub fn interp(x: f64, ys: &[f64]) -> f64 {
    if x <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if x >= last as f64 {
        return ys[last];
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    ys[i] + (ys[i + 1] - ys[i]) * w
}

/// Karras et al. (2022) sigmas between the largest and smallest of `in_sigmas` (descending).
pub fn karras_sigmas(in_sigmas: &[f64], n: usize) -> Vec<f64> {
    let sigma_min = in_sigmas[in_sigmas.len() - 1];
    let sigma_max = in_sigmas[0];
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, interpolating in log space.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // Last index whose log sigma is <= ours (0 when none is), kept below the end.
    let low = log_sigmas
        .iter()
        .rposition(|l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// Rounds like numpy's `round` (half to even) for the timestep arithmetic.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Inference timesteps as diffusers' DDIM/Euler compute them for `n` steps.
pub fn spaced_timesteps(spacing: Spacing, train: usize, n: usize, offset: usize) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .rev()
            .collect(),
        Spacing::Leading => {
            let ratio = train / n;
            (0..n).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        Spacing::Trailing => {
            let ratio = train as f64 / n as f64;
            let mut out = Vec::with_capacity(n);
            let mut t = train as f64;
            while t > 0.0 {
                out.push(round_half_even(t) - 1.0);
                t -= ratio;
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_single_step_is_the_last_training_timestep() {
        assert_eq!(spaced_timesteps(Spacing::Trailing, 1000, 1, 1), vec![999.0]);
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 1000, 4, 1),
            vec![999.0, 749.0, 499.0, 249.0]
        );
    }

    #[test]
    fn leading_spacing_adds_the_offset() {
        assert_eq!(
            spaced_timesteps(Spacing::Leading, 1000, 4, 1),
            vec![751.0, 501.0, 251.0, 1.0]
        );
    }

    #[test]
    fn interp_matches_numpy_at_the_ends_and_between() {
        let ys = [0.0, 10.0, 20.0];
        assert_eq!(interp(-1.0, &ys), 0.0);
        assert_eq!(interp(0.5, &ys), 5.0);
        assert_eq!(interp(5.0, &ys), 20.0);
    }

    #[test]
    fn sigma_to_t_inverts_training_sigmas() {
        let ls: Vec<f64> = (1..=10).map(|i| (i as f64).ln()).collect();
        assert!((sigma_to_t(3.0, &ls) - 2.0).abs() < 1e-9);
        assert!((sigma_to_t(100.0, &ls) - 9.0).abs() < 1e-9);
    }
}
