//! Samplers: how a noisy latent moves from one inference step to the next. Each mirrors the
//! diffusers scheduler of the same name, formula for formula, but draws any noise it needs from
//! the request's seeded [`LatentNoise`] instead of a global RNG.

mod ddim;
mod dpmpp;
mod euler;
mod lcm;
pub mod schedule;

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

pub use lcm::lcm_timesteps;
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
    Lcm,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Ddim,
        SchedulerKind::DpmPp2m,
        SchedulerKind::DpmPp2mKarras,
        SchedulerKind::Lcm,
    ];

    /// The name used on the command line and in the bot.
    pub fn cli_name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmPp2m => "dpmpp-2m",
            SchedulerKind::DpmPp2mKarras => "dpmpp-2m-karras",
            SchedulerKind::Lcm => "lcm",
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
            SchedulerKind::Lcm => "LCM",
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
            "LCMScheduler" => Some(SchedulerKind::Lcm),
            _ => None,
        }
    }

    /// Builds the sampler for `steps` inference steps on the model's noise schedule.
    pub fn build(self, schedule: &NoiseSchedule, steps: usize) -> Result<Box<dyn Sampler + Send>> {
        self.build_for_strength(schedule, steps, 1.0)
    }

    /// [`SchedulerKind::build`] for image-to-image at `strength` (1: from pure noise). Only
    /// LCM places its steps by strength, as diffusers' LCM pipelines do; the others start
    /// later on the same schedule (the caller skips its first steps either way).
    pub fn build_for_strength(
        self,
        schedule: &NoiseSchedule,
        steps: usize,
        strength: f64,
    ) -> Result<Box<dyn Sampler + Send>> {
        if steps == 0 {
            return Err(EngineError::invalid("steps must be at least 1"));
        }
        if steps > schedule.train_steps() {
            return Err(EngineError::invalid(format!(
                "steps must be at most {} for this model",
                schedule.train_steps()
            )));
        }
        self.check(schedule)?;
        Ok(match self {
            SchedulerKind::Euler => Box::new(euler::Euler::new(schedule, steps, false)),
            SchedulerKind::EulerAncestral => Box::new(euler::Euler::new(schedule, steps, true)),
            SchedulerKind::Ddim => Box::new(ddim::Ddim::new(schedule, steps)),
            SchedulerKind::DpmPp2m => Box::new(dpmpp::DpmPp2m::new(schedule, steps, false)),
            SchedulerKind::DpmPp2mKarras => Box::new(dpmpp::DpmPp2m::new(schedule, steps, true)),
            SchedulerKind::Lcm => Box::new(lcm::Lcm::new(schedule, steps, strength)?),
        })
    }

    /// Refuses the model's scheduler settings that this sampler's diffusers class reads but we
    /// do not implement, so that nothing runs differently from what the config asks for.
    /// Absent keys pass: each class's default is what we implement, except DDIM's
    /// `clip_sample` (true), which SD configs always write as false and other classes' configs
    /// leave out. Settings only other classes read are ignored, as `from_config` ignores them.
    pub fn check(self, schedule: &NoiseSchedule) -> Result<()> {
        let cfg = &schedule.config;
        let refuse = |setting: String, supported: &str| {
            Err(EngineError::UnsupportedSchedulerSetting {
                sampler: self.cli_name(),
                setting,
                supported: supported.to_owned(),
            })
        };
        let on = |flag: Option<bool>| flag == Some(true);
        let euler = self == SchedulerKind::Euler;
        let dpm = matches!(self, SchedulerKind::DpmPp2m | SchedulerKind::DpmPp2mKarras);
        if euler || dpm {
            for (key, flag) in [
                ("use_exponential_sigmas", cfg.use_exponential_sigmas),
                ("use_beta_sigmas", cfg.use_beta_sigmas),
            ] {
                if on(flag) {
                    return refuse(format!("{key} = true"), "false");
                }
            }
            if let Some(kind) = cfg.final_sigmas_type.as_deref().filter(|k| *k != "zero") {
                return refuse(format!("final_sigmas_type = {kind:?}"), "\"zero\"");
            }
        }
        if euler {
            if let Some(kind) = cfg.interpolation_type.as_deref().filter(|k| *k != "linear") {
                return refuse(format!("interpolation_type = {kind:?}"), "\"linear\"");
            }
            // diffusers only acts on continuous timesteps for v-prediction models.
            if cfg.timestep_type.as_deref() == Some("continuous")
                && schedule.prediction == Prediction::VPrediction
            {
                return refuse(
                    "timestep_type = \"continuous\" with v-prediction".into(),
                    "\"discrete\"",
                );
            }
        }
        let lcm = self == SchedulerKind::Lcm;
        if schedule.prediction == Prediction::Sample && !lcm {
            return refuse(
                "prediction_type = \"sample\"".into(),
                "\"epsilon\" or \"v_prediction\"",
            );
        }
        if (lcm || self == SchedulerKind::Ddim) && on(cfg.clip_sample) {
            return refuse("clip_sample = true".into(), "false");
        }
        if (lcm || dpm || self == SchedulerKind::Ddim) && on(cfg.thresholding) {
            return refuse("thresholding = true".into(), "false");
        }
        if dpm {
            // diffusers itself runs "deis" as dpmsolver++ and the UniPC solver types as midpoint.
            if let Some(kind) = cfg
                .algorithm_type
                .as_deref()
                .filter(|k| !matches!(*k, "dpmsolver++" | "deis"))
            {
                return refuse(format!("algorithm_type = {kind:?}"), "\"dpmsolver++\"");
            }
            if let Some(order) = cfg.solver_order.filter(|o| *o != 2) {
                return refuse(format!("solver_order = {order}"), "2");
            }
            if let Some(kind) = cfg
                .solver_type
                .as_deref()
                .filter(|k| !matches!(*k, "midpoint" | "logrho" | "bh1" | "bh2"))
            {
                return refuse(format!("solver_type = {kind:?}"), "\"midpoint\"");
            }
            for (key, flag) in [
                ("use_lu_lambdas", cfg.use_lu_lambdas),
                ("use_flow_sigmas", cfg.use_flow_sigmas),
                ("use_dynamic_shifting", cfg.use_dynamic_shifting),
            ] {
                if on(flag) {
                    return refuse(format!("{key} = true"), "false");
                }
            }
            if let Some(kind) = &cfg.variance_type {
                return refuse(format!("variance_type = {kind:?}"), "null");
            }
            // Clipping drops the timesteps whose log-SNR is below the bound; on the schedules
            // SD uses, the usual bound (-5.1) drops none, and then it changes nothing.
            if let Some(bound) = cfg.lambda_min_clipped {
                if schedule.lambdas().iter().any(|l| *l < bound) {
                    return refuse(format!("lambda_min_clipped = {bound}"), "-inf");
                }
            }
        }
        Ok(())
    }

    /// The sampler a model gets when no request names one: the one its config names when we
    /// implement it with the config's settings, else the first of these that accepts them.
    /// The flag is true when it is not the config's own.
    pub fn default_for(class: &str, schedule: &NoiseSchedule) -> (SchedulerKind, bool) {
        let karras = schedule.use_karras_sigmas == Some(true);
        if let Some(kind) = Self::from_diffusers_class(class, karras) {
            match kind.check(schedule) {
                Ok(()) => return (kind, false),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        // Euler-ancestral reads no setting we refuse, so the search always ends.
        let kind = [
            SchedulerKind::DpmPp2mKarras,
            SchedulerKind::Euler,
            SchedulerKind::EulerAncestral,
        ]
        .into_iter()
        .find(|k| k.check(schedule).is_ok())
        .unwrap_or(SchedulerKind::EulerAncestral);
        (kind, true)
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
    /// The noise level of each step and the final one, for samplers that step in sigma.
    fn sigmas(&self) -> Option<&[f64]>;
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

#[cfg(test)]
mod tests {
    use super::SchedulerKind::*;
    use super::*;
    use crate::config::SchedulerFileConfig;

    /// SD's noise schedule plus `extra` (JSON members, possibly none).
    fn with(extra: &str) -> NoiseSchedule {
        let sd = r#""beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012"#;
        let sep = if extra.is_empty() { "" } else { ", " };
        let cfg = SchedulerFileConfig::parse(&format!("{{{sd}{sep}{extra}}}")).unwrap();
        NoiseSchedule::from_config(&cfg).unwrap()
    }

    const DPM: [SchedulerKind; 2] = [DpmPp2m, DpmPp2mKarras];

    #[test]
    fn settings_we_do_not_implement_are_refused_by_the_samplers_that_read_them() {
        let cases: &[(&str, &[SchedulerKind])] = &[
            (r#""clip_sample": true"#, &[Ddim, Lcm]),
            (
                r#""thresholding": true"#,
                &[Ddim, DpmPp2m, DpmPp2mKarras, Lcm],
            ),
            (
                r#""prediction_type": "sample""#,
                &[Euler, EulerAncestral, Ddim, DpmPp2m, DpmPp2mKarras],
            ),
            (r#""algorithm_type": "sde-dpmsolver++""#, &DPM),
            (r#""algorithm_type": "dpmsolver""#, &DPM),
            (r#""solver_order": 3"#, &DPM),
            (r#""solver_order": 1"#, &DPM),
            (r#""solver_type": "heun""#, &DPM),
            (r#""use_lu_lambdas": true"#, &DPM),
            (r#""use_flow_sigmas": true"#, &DPM),
            (r#""use_dynamic_shifting": true"#, &DPM),
            (r#""variance_type": "learned_range""#, &DPM),
            // SD's smallest log-SNR is about -2.7: this bound would drop timesteps.
            (r#""lambda_min_clipped": -2.0"#, &DPM),
            (
                r#""use_exponential_sigmas": true"#,
                &[Euler, DpmPp2m, DpmPp2mKarras],
            ),
            (
                r#""use_beta_sigmas": true"#,
                &[Euler, DpmPp2m, DpmPp2mKarras],
            ),
            (
                r#""final_sigmas_type": "sigma_min""#,
                &[Euler, DpmPp2m, DpmPp2mKarras],
            ),
            (r#""interpolation_type": "log_linear""#, &[Euler]),
            (
                r#""timestep_type": "continuous", "prediction_type": "v_prediction""#,
                &[Euler],
            ),
        ];
        for (setting, refused_by) in cases {
            let schedule = with(setting);
            let key = setting.split('"').nth(1).unwrap();
            for kind in SchedulerKind::ALL {
                match kind.build(&schedule, 4) {
                    Err(e @ EngineError::UnsupportedSchedulerSetting { .. }) => {
                        assert!(refused_by.contains(&kind), "{kind} refused {setting}: {e}");
                        let msg = e.to_string();
                        for part in [key, kind.cli_name(), "scheduler_config.json", "--scheduler"] {
                            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
                        }
                    }
                    Err(e) => panic!("{kind} with {setting}: unexpected error {e}"),
                    Ok(_) => assert!(!refused_by.contains(&kind), "{kind} ran {setting}"),
                }
            }
        }
    }

    #[test]
    fn values_that_change_nothing_and_unknown_keys_are_accepted() {
        for setting in [
            // SD 2.1's DDIM config.
            r#""clip_sample": false, "thresholding": false, "clip_sample_range": 1.0,
               "sample_max_value": 1.0, "dynamic_thresholding_ratio": 0.995"#,
            // diffusers runs these as DPM++ 2M itself; the final step is first order anyway.
            r#""algorithm_type": "deis", "solver_type": "bh2", "solver_order": 2,
               "lower_order_final": false, "euler_at_final": true"#,
            r#""lambda_min_clipped": -Infinity"#,
            r#""lambda_min_clipped": -5.1"#,
            // Continuous timesteps only change v-prediction models.
            r#""timestep_type": "continuous""#,
            r#""final_sigmas_type": "zero", "interpolation_type": "linear", "variance_type": null"#,
            r#""skip_prk_steps": true, "a_future_key": [1, {"x": "Infinity"}]"#,
            // LCM_Dreamshaper_v7's LCM settings.
            r#""original_inference_steps": 50, "timestep_scaling": 10.0, "clip_sample": false,
               "clip_sample_range": 1.0, "rescale_betas_zero_snr": false"#,
        ] {
            let schedule = with(setting);
            for kind in SchedulerKind::ALL {
                if let Err(e) = kind.build(&schedule, 4) {
                    panic!("{kind} refused {setting}: {e}");
                }
            }
        }
    }

    #[test]
    fn a_model_whose_sampler_refuses_its_settings_defaults_to_one_that_accepts_them() {
        let plain = with("");
        assert_eq!(
            SchedulerKind::default_for("EulerDiscreteScheduler", &plain),
            (Euler, false)
        );
        assert_eq!(
            SchedulerKind::default_for("PNDMScheduler", &plain),
            (DpmPp2mKarras, true)
        );
        let karras = with(r#""use_karras_sigmas": true"#);
        assert_eq!(
            SchedulerKind::default_for("DPMSolverMultistepScheduler", &karras),
            (DpmPp2mKarras, false)
        );
        let thresholding = with(r#""thresholding": true"#);
        assert_eq!(
            SchedulerKind::default_for("DDIMScheduler", &thresholding),
            (Euler, true)
        );
        let log_linear = with(r#""interpolation_type": "log_linear""#);
        assert_eq!(
            SchedulerKind::default_for("EulerDiscreteScheduler", &log_linear),
            (DpmPp2mKarras, true)
        );
        let both = with(r#""thresholding": true, "use_beta_sigmas": true"#);
        assert_eq!(
            SchedulerKind::default_for("DPMSolverMultistepScheduler", &both),
            (EulerAncestral, true)
        );
    }

    #[test]
    fn dpmpp_2m_honours_the_models_karras_setting() {
        let karras = with(r#""use_karras_sigmas": true"#);
        let plain = with("");
        let by_config = DpmPp2m.build(&karras, 10).unwrap();
        let by_name = DpmPp2mKarras.build(&plain, 10).unwrap();
        assert_eq!(by_config.timesteps(), by_name.timesteps());
        assert_eq!(by_config.sigmas(), by_name.sigmas());
        let without = DpmPp2m.build(&plain, 10).unwrap();
        assert_ne!(without.timesteps(), by_name.timesteps());
    }

    #[test]
    fn karras_sigmas_span_the_configs_sigma_min_and_sigma_max() {
        let schedule = with(r#""use_karras_sigmas": true, "sigma_min": 0.1, "sigma_max": 10.0"#);
        for kind in [Euler, DpmPp2mKarras] {
            let sampler = kind.build(&schedule, 5).unwrap();
            let sigmas = sampler.sigmas().unwrap();
            assert_eq!(sigmas[0], 10.0, "{kind}");
            assert_eq!(sigmas[4], 0.1f32 as f64, "{kind}");
            assert_eq!(sigmas[5], 0.0, "{kind}");
        }
    }
}
