//! Every sampler's timesteps and sigmas against the table diffusers made
//! (`assets/reference/schedules.json`, from `tools/make_schedule_table.py`): each step count
//! from 1 to 50, each timestep spacing, with `steps_offset` 1 and 0, on SD's noise schedule;
//! for LCM also image-to-image strength and a shorter distillation schedule, where diffusers
//! refuses some counts and so must we.
//! A model runs exactly the steps diffusers runs, or users get other images at some counts.

mod common;

use std::ops::ControlFlow;

use common::{assets, copy_model, PROMPT};
use imagine_engine::config::SchedulerFileConfig;
use imagine_engine::schedulers::NoiseSchedule;
use imagine_engine::{EngineError, GenerateRequest, LoadOptions, SchedulerKind, StableDiffusion};
use serde::Deserialize;

#[derive(Deserialize)]
struct Table {
    max_steps: usize,
    schedules: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    sampler: String,
    config: serde_json::Map<String, serde_json::Value>,
    /// Image-to-image strength (LCM only places its steps by it); absent: 1.
    strength: Option<f64>,
    /// One list per step count, from 1; `None` where diffusers refuses the count.
    timesteps: Vec<Option<Vec<f64>>>,
    sigmas: Option<Vec<Vec<f64>>>,
}

fn table() -> Table {
    let text = std::fs::read_to_string(assets().join("reference/schedules.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn schedule(config: &serde_json::Map<String, serde_json::Value>) -> NoiseSchedule {
    let text = serde_json::Value::Object(config.clone()).to_string();
    NoiseSchedule::from_config(&SchedulerFileConfig::parse(&text).unwrap()).unwrap()
}

/// The engine samplers that must reproduce a table entry, each with the config it runs on.
/// DPM++ 2M Karras is reached two ways: by name on a plain config, and as `dpmpp-2m` on a
/// config that sets `use_karras_sigmas` (as diffusers' scheduler built from it would).
fn runs(entry: &Entry) -> Vec<(SchedulerKind, NoiseSchedule)> {
    let plain = schedule(&entry.config);
    match entry.sampler.as_str() {
        "euler" | "euler-karras" => vec![(SchedulerKind::Euler, plain)],
        "euler-a" => vec![(SchedulerKind::EulerAncestral, plain)],
        "ddim" => vec![(SchedulerKind::Ddim, plain)],
        "dpmpp-2m" => vec![(SchedulerKind::DpmPp2m, plain)],
        "lcm" => vec![(SchedulerKind::Lcm, plain)],
        "dpmpp-2m-karras" => {
            let mut without = entry.config.clone();
            without.remove("use_karras_sigmas");
            vec![
                (SchedulerKind::DpmPp2m, plain),
                (SchedulerKind::DpmPp2mKarras, schedule(&without)),
            ]
        }
        other => panic!("unknown sampler {other:?} in the table"),
    }
}

#[test]
fn timesteps_and_sigmas_match_diffusers_for_every_step_count_and_spacing() {
    let table = table();
    assert!(
        table.max_steps >= 50,
        "the table covers 1..{}",
        table.max_steps
    );
    assert_eq!(
        table.schedules.len(),
        30,
        "7 samplers x 4 spacing settings, and 2 more LCM settings"
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut karras_drift = 0.0f64;
    for entry in &table.schedules {
        let spacing = &entry.config["timestep_spacing"];
        let offset = &entry.config["steps_offset"];
        let lcm_settings = entry
            .config
            .get("original_inference_steps")
            .map(|o| {
                let strength = entry.strength.unwrap_or(1.0);
                format!(", original steps {o}, strength {strength}")
            })
            .unwrap_or_default();
        for (kind, schedule) in runs(entry) {
            for steps in 1..=table.max_steps {
                let what = format!(
                    "{} as {kind}, {spacing} offset {offset}{lcm_settings}, {steps} steps",
                    entry.sampler
                );
                let strength = entry.strength.unwrap_or(1.0);
                let built = kind.build_for_strength(&schedule, steps, strength);
                let (sampler, want) = match (built, &entry.timesteps[steps - 1]) {
                    (Ok(sampler), Some(want)) => (sampler, want),
                    (Err(_), None) => continue,
                    (Ok(s), None) => {
                        let got = s.timesteps();
                        failures.push(format!("{what}: ran {got:?}, diffusers refuses"));
                        continue;
                    }
                    (Err(e), Some(want)) => {
                        failures.push(format!("{what}: refused ({e}), diffusers runs {want:?}"));
                        continue;
                    }
                };
                let got = sampler.timesteps();
                // Euler's Karras timesteps are fractional and pass through numpy's vectorised
                // float32 log, which is not correctly rounded (and differs between CPUs): a
                // thousandth of a training step is far below what the UNet can tell apart.
                let fractional = entry.sampler == "euler-karras";
                let same = got.len() == want.len()
                    && got.iter().zip(want).all(|(g, w)| {
                        if fractional {
                            karras_drift = karras_drift.max((g - w).abs());
                            (g - w).abs() <= 1e-3
                        } else {
                            *g as f32 == *w as f32
                        }
                    });
                if !same {
                    failures.push(format!("{what}: timesteps {got:?}, diffusers {want:?}"));
                }
                if let Some(all) = &entry.sigmas {
                    let want = &all[steps - 1];
                    let got = sampler.sigmas().expect("this sampler steps in sigma");
                    let close = got.len() == want.len()
                        && got
                            .iter()
                            .zip(want)
                            .all(|(g, w)| (g - w).abs() <= 1e-6 * w.abs());
                    if !close {
                        failures.push(format!("{what}: sigmas {got:?}, diffusers {want:?}"));
                    }
                }
                checked += 1;
            }
        }
    }
    eprintln!("Euler Karras timesteps: largest difference {karras_drift:e} training steps");
    assert!(
        failures.is_empty(),
        "{} of {checked} schedules differ from diffusers; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

#[test]
fn sd_turbo_runs_exactly_the_steps_asked_for() {
    // SD-Turbo's scheduler: Euler, trailing spacing. Three steps once ran four (the last at
    // timestep -1).
    let table = table();
    let entry = table
        .schedules
        .iter()
        .find(|e| e.sampler == "euler" && e.config["timestep_spacing"] == "trailing")
        .unwrap();
    let schedule = schedule(&entry.config);
    for steps in [1, 2, 3, 4, 6, 9, 15, 24] {
        let sampler = SchedulerKind::Euler.build(&schedule, steps).unwrap();
        assert_eq!(sampler.timesteps().len(), steps, "{steps} steps");
        assert!(
            sampler.timesteps().iter().all(|t| *t >= 0.0),
            "{steps} steps"
        );
    }
    let three = SchedulerKind::Euler.build(&schedule, 3).unwrap();
    assert_eq!(
        entry.timesteps[2].as_deref(),
        Some(&[999.0, 666.0, 332.0][..])
    );
    assert_eq!(three.timesteps(), [999.0, 666.0, 332.0]);
}

#[test]
fn a_scheduler_config_as_diffusers_writes_it_loads_and_is_read_as_diffusers_reads_it() {
    // diffusers' own save_config of DPMSolverMultistepScheduler writes `-Infinity` (not JSON)
    // and lists the keys it filled with defaults in `_use_default_values`; diffusers drops
    // those on loading, so DDIM, say, then uses its own default spacing (leading).
    let tmp = copy_model("tiny-sd15");
    std::fs::write(
        tmp.path().join("scheduler/scheduler_config.json"),
        r#"{
  "_class_name": "DPMSolverMultistepScheduler",
  "_diffusers_version": "0.42.1",
  "_use_default_values": ["timestep_spacing"],
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "lambda_min_clipped": -Infinity,
  "num_train_timesteps": 1000,
  "steps_offset": 1,
  "timestep_spacing": "linspace",
  "use_karras_sigmas": true
}"#,
    )
    .unwrap();
    let sd = StableDiffusion::load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(sd.info().default_scheduler, SchedulerKind::DpmPp2mKarras);
    assert!(!sd.info().scheduler_fallback);
    assert_eq!(
        sd.sampler_timesteps(SchedulerKind::Ddim, 4).unwrap(),
        [751.0, 501.0, 251.0, 1.0]
    );
}

#[test]
fn a_model_whose_scheduler_settings_we_lack_loads_with_another_and_refuses_them_by_name() {
    let tmp = copy_model("tiny-sd2-v");
    let path = tmp.path().join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"thresholding\": false", "\"thresholding\": true");
    std::fs::write(&path, text).unwrap();
    let sd = StableDiffusion::load(tmp.path(), &LoadOptions::default()).unwrap();
    // DDIM reads `thresholding`; Euler does not.
    assert_eq!(sd.info().default_scheduler, SchedulerKind::Euler);
    assert!(sd.info().scheduler_fallback);
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![1]);
    req.steps = 2;
    req.scheduler = Some(SchedulerKind::Ddim);
    match sd.generate(&req, &mut |_| ControlFlow::Continue(())) {
        Err(e @ EngineError::UnsupportedSchedulerSetting { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("thresholding = true") && msg.contains("ddim"),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("ddim ran with thresholding"),
    }
    req.scheduler = None;
    let out = sd
        .generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(out.images.len(), 1);
}
