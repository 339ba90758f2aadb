//! The training noise schedule every sampler derives from (betas, cumulative alphas, sigmas),
//! and the numeric helpers diffusers uses to place inference steps on it. Each helper repeats
//! the numpy or torch operation diffusers calls, with the same rounding points (float32
//! betas and sigmas, numpy's `arange` fill, half-to-even rounding), so that every step count
//! gives diffusers' timesteps (`tests/schedules.rs` checks 1 to 50 against its table).

use crate::config::SchedulerFileConfig;
use crate::error::{EngineError, Result};

/// What the UNet was trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    /// The clean latent itself (`prediction_type = "sample"`); only LCM runs it.
    Sample,
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
    /// The whole config, for the settings only some samplers read (see
    /// `SchedulerKind::check`).
    pub config: SchedulerFileConfig,
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
            (_, None | Some("linear")) => torch_linspace_f32(start, end, n),
            (_, Some("scaled_linear")) => torch_linspace_f32(start.sqrt(), end.sqrt(), n)
                .into_iter()
                .map(|x| x * x)
                .collect(),
            (_, Some(other)) => return Err(bad(format!("beta_schedule {other:?}"))),
        };
        if cfg.rescale_betas_zero_snr == Some(true) {
            return Err(bad("rescale_betas_zero_snr is not supported yet".into()));
        }
        // torch's CPU cumprod multiplies in float64 and rounds each product to float32.
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0f64;
        for b in &betas {
            acc *= (1.0 - b) as f64;
            alphas_cumprod.push(acc as f32 as f64);
        }
        let prediction = match cfg.prediction_type.as_deref() {
            None | Some("epsilon") => Prediction::Epsilon,
            Some("v_prediction") => Prediction::VPrediction,
            Some("sample") => Prediction::Sample,
            Some(other) => return Err(bad(format!("prediction_type {other:?}"))),
        };
        let spacing = match cfg.timestep_spacing.as_deref() {
            None => None,
            Some("linspace") => Some(Spacing::Linspace),
            Some("leading") => Some(Spacing::Leading),
            Some("trailing") => Some(Spacing::Trailing),
            Some(other) => return Err(bad(format!("timestep_spacing {other:?}"))),
        };
        Ok(Self {
            alphas_cumprod,
            prediction,
            spacing,
            steps_offset: cfg.steps_offset.unwrap_or(0),
            set_alpha_to_one: cfg.set_alpha_to_one,
            use_karras_sigmas: cfg.use_karras_sigmas,
            config: cfg.clone(),
        })
    }

    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Half log-SNR, log(alpha_t) - log(sigma_t), of every training timestep, in float32 as
    /// diffusers' DPM-Solver holds it.
    pub fn lambdas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|a| {
                let a = *a as f32;
                (a.sqrt().ln() - (1.0 - a).sqrt().ln()) as f64
            })
            .collect()
    }

    /// Karras-style sigma of every training timestep: sqrt((1 - a) / a), as float32.
    pub fn train_sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|a| (((1.0 - *a as f32) / *a as f32).sqrt()) as f64)
            .collect()
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` as torch computes it on x86-64 CPUs: in
/// float32, the first half counted up from `start` and the second half down from `end`, each
/// with one fused multiply-add (torch's AVX2 and AVX-512 kernels are compiled with FMA).
/// diffusers makes its betas this way, and every sigma inherits their last bits.
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `np.linspace(start, end, n)`: element i is `i * step + start`, the last exactly `end`.
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
                        i as f64 * step + start
                    }
                })
                .collect()
        }
    }
}

/// `np.arange(start, stop, step)` for a float step, value for value. numpy takes the length
/// as `ceil((stop - start) / step)` and fills element i >= 2 as `start + i * delta` with
/// `delta = (start + step) - start`. Stepping a running total instead drifts: from 1000 in
/// steps of -1000/3 it reaches 5.7e-14 > 0 and yields a fourth element numpy does not.
pub fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    // A zero step divides to NaN (numpy raises): nothing.
    if len.is_nan() || len < 1.0 {
        return vec![];
    }
    let len = len as usize;
    let next = start + step;
    let delta = next - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => next,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, arange(len(ys)), ys)`: `slope * (x - j) + ys[j]` on the segment holding x.
pub fn interp(x: f64, ys: &[f64]) -> f64 {
    if x <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if x >= last as f64 {
        return ys[last];
    }
    let j = x.floor() as usize;
    (ys[j + 1] - ys[j]) * (x - j as f64) + ys[j]
}

/// Karras et al. (2022) sigmas from `sigma_max` down to `sigma_min`, as diffusers'
/// `_convert_to_karras` computes them (float64, rho = 7).
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, interpolating in log space, as
/// diffusers' `_sigma_to_t`. `log_sigmas` are float32 values (numpy takes the log of the
/// float32 sigmas), so the difference of two neighbours is taken in float32 too.
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
    let span = (lo as f32 - hi as f32) as f64;
    let w = ((lo - log_sigma) / span).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// float32 log of float32 sigmas, as `np.log` of diffusers' float32 sigma array (correctly
/// rounded; numpy's vectorised float32 log can differ in the last place, which moves a
/// fractional Karras timestep by about 1e-4 of a training step).
pub fn log_sigmas(sigmas: &[f64]) -> Vec<f64> {
    sigmas.iter().map(|s| s.ln() as f32 as f64).collect()
}

/// numpy's `round` (half to even), which every diffusers spacing uses.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// Inference timesteps of diffusers' Euler, Euler-ancestral and DDIM schedulers for `n`
/// steps, before any float32 cast. Linspace timesteps stay fractional here: Euler keeps
/// them so, DDIM rounds them. Trailing spacing can give `n + 1` timesteps
/// for some `n` (61, 103, ... of 1000 training steps), exactly as diffusers does.
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
        Spacing::Trailing => trailing(train as f64, train, n),
    }
}

/// `np.arange(last, 0, -train / n).round() - 1`: trailing spacing starting at `last`.
fn trailing(last: f64, train: usize, n: usize) -> Vec<f64> {
    arange(last, 0.0, -(train as f64 / n as f64))
        .into_iter()
        .map(|t| round_half_even(t) - 1.0)
        .collect()
}

/// Inference timesteps of diffusers' `DPMSolverMultistepScheduler` for `n` steps (integers):
/// it spaces `n + 1` points and drops the last, so its linspace and leading spacings differ
/// from the other samplers'.
pub fn dpm_timesteps(spacing: Spacing, train: usize, n: usize, offset: usize) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut t: Vec<f64> = linspace(0.0, (train - 1) as f64, n + 1)
                .into_iter()
                .map(round_half_even)
                .rev()
                .collect();
            t.pop();
            t
        }
        Spacing::Leading => {
            let ratio = train / (n + 1);
            (1..=n).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        Spacing::Trailing => trailing(train as f64, train, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers' SD `alphas_cumprod` at timesteps 0, 1, 499, 500, 998 and 999.
    const ALPHAS_CUMPROD_BITS: [u32; 6] = [
        0x3f7fc84b, 0x3f7f9054, 0x3e8e2ab0, 0x3e8d7b73, 0x3b9a8e83, 0x3b98b3b6,
    ];

    #[test]
    fn trailing_single_step_is_the_last_training_timestep() {
        assert_eq!(spaced_timesteps(Spacing::Trailing, 1000, 1, 1), vec![999.0]);
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 1000, 4, 1),
            vec![999.0, 749.0, 499.0, 249.0]
        );
    }

    #[test]
    fn trailing_three_steps_are_three_timesteps() {
        // A running total of -1000/3 ends at 5.7e-14 > 0 and gave a fourth step at -1.
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 1000, 3, 1),
            vec![999.0, 666.0, 332.0]
        );
        assert_eq!(
            dpm_timesteps(Spacing::Trailing, 1000, 3, 1),
            vec![999.0, 666.0, 332.0]
        );
    }

    #[test]
    fn arange_has_numpys_length_and_values() {
        assert_eq!(arange(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
        // numpy's own length for 1000 / 61 is 62 (ceil of 61.000000000000007); diffusers then
        // runs 62 steps, and so do we.
        assert_eq!(arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(arange(0.0, 1.0, 0.25), vec![0.0, 0.25, 0.5, 0.75]);
        assert!(arange(0.0, 1.0, -0.5).is_empty());
    }

    #[test]
    fn torch_linspace_counts_up_then_down_to_exact_ends() {
        let v = torch_linspace_f32(0.1, 0.7, 7);
        assert_eq!(v.len(), 7);
        assert_eq!(v[0], 0.1f32);
        assert_eq!(v[6], 0.7f32);
        assert!(v.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn sd_betas_and_cumulative_alphas_match_torch() {
        // torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=float32)**2 and its cumprod,
        // printed by torch 2.15 (float32 bit patterns).
        let cfg = SchedulerFileConfig {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some("scaled_linear".into()),
            ..Default::default()
        };
        let s = NoiseSchedule::from_config(&cfg).unwrap();
        let bits: Vec<u32> = [0, 1, 499, 500, 998, 999]
            .iter()
            .map(|i| (s.alphas_cumprod[*i] as f32).to_bits())
            .collect();
        assert_eq!(bits, ALPHAS_CUMPROD_BITS);
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
