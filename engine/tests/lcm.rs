//! LCM against diffusers: the `LCMScheduler` sampler and LCM-distilled UNets (guidance as a
//! timestep embedding, one batch, no negative prompt). References come from
//! tools/make_lcm_reference.py (diffusers 0.42.1): `LatentConsistencyModelPipeline` on the
//! tiny LCM-distilled model, and `StableDiffusionPipeline` with `LCMScheduler` on tiny-sd15 at
//! guidance 1.0 and 1.5, as LCM-LoRAs are run. LCM adds fresh noise between steps: the
//! parity runs replay the noise diffusers drew, the seeded runs check determinism.

mod common;

use std::ops::ControlFlow;

use common::*;
use imagine_engine::time_embedding::guidance_scale_embedding;
use imagine_engine::{EngineError, GenerateRequest, SchedulerKind, StableDiffusion};

const LCM_MODEL: &str = "tiny-lcm";

fn run(sd: &StableDiffusion, req: &GenerateRequest) -> Vec<image::RgbImage> {
    sd.generate(req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .images
}

/// The reference run `key`: 4 steps from the reference latents with diffusers' step noise.
fn replayed(key: &str, guidance: f64, scheduler: Option<SchedulerKind>) -> GenerateRequest {
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![0, 1]);
    req.negative_prompt = NEGATIVE.into();
    req.steps = 4;
    req.guidance = guidance;
    req.scheduler = scheduler;
    req.initial_noise = Some(reference_latents());
    req.step_noise = Some(reference(LCM_MODEL)[&format!("{key}_step_noise")].clone());
    req
}

#[test]
fn a_model_whose_scheduler_is_lcm_defaults_to_lcm() {
    let sd = load(LCM_MODEL);
    assert_eq!(sd.info().default_scheduler, SchedulerKind::Lcm);
    assert!(!sd.info().scheduler_fallback);
    assert_eq!("lcm".parse::<SchedulerKind>().unwrap(), SchedulerKind::Lcm);
    assert_eq!(SchedulerKind::Lcm.webui_name(), "LCM");
}

#[test]
fn lcm_timesteps_match_diffusers() {
    let r = reference(LCM_MODEL);
    for (model, key) in [(LCM_MODEL, "lcm"), ("tiny-sd15", "sd15_g1")] {
        let got: Vec<f32> = load(model)
            .sampler_timesteps(SchedulerKind::Lcm, 4)
            .unwrap()
            .iter()
            .map(|t| *t as f32)
            .collect();
        let want = r[&format!("{key}_timesteps")].to_vec1::<f32>().unwrap();
        assert_eq!(got, want, "{model}");
    }
}

#[test]
fn the_guidance_embedding_and_one_unet_forward_match_diffusers() {
    let sd = load(LCM_MODEL);
    let r = reference(LCM_MODEL);
    let ours = guidance_scale_embedding(8.0 - 1.0, 32, 2, &candle_core::Device::Cpu).unwrap();
    let diff = max_abs_diff(&ours, &r["unet_timestep_cond"]);
    eprintln!("guidance embedding: max abs difference {diff:e}");
    assert!(diff < 1e-5, "guidance embedding differs by {diff}");
    let t = r["unet_t"].to_vec1::<f32>().unwrap()[0] as f64;
    let cond = r["unet_timestep_cond"].clone();
    let got = sd
        .unet_forward_with_timestep_cond(&r["unet_in"], t, &r["unet_ctx"], Some(&cond))
        .unwrap();
    let diff = max_abs_diff(&got, &r["unet_out"]);
    eprintln!("LCM UNet: max abs difference {diff:e}");
    assert!(diff < 1e-4, "LCM UNet max diff {diff}");
}

#[test]
fn an_lcm_model_at_4_steps_matches_diffusers_within_2_levels() {
    let sd = load(LCM_MODEL);
    // The negative prompt is set and ignored, as diffusers' pipelines ignore it for a UNet
    // that takes its guidance as an embedding.
    let out = sd
        .generate(&replayed("lcm", 8.0, None), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.scheduler, SchedulerKind::Lcm);
    let diff = max_pixel_diff(&out.images, &reference(LCM_MODEL)["lcm_image_u8"]);
    eprintln!("tiny-lcm, 4 steps, guidance 8: max pixel difference {diff}/255");
    assert!(diff <= 2, "max pixel diff {diff}/255");
}

#[test]
fn the_lcm_sampler_on_sd15_matches_diffusers_at_guidance_1_and_1_5() {
    let sd = load("tiny-sd15");
    let r = reference(LCM_MODEL);
    let mut images = Vec::new();
    for (key, guidance) in [("sd15_g1", 1.0), ("sd15_g15", 1.5)] {
        let ours = run(&sd, &replayed(key, guidance, Some(SchedulerKind::Lcm)));
        let diff = max_pixel_diff(&ours, &r[&format!("{key}_image_u8")]);
        eprintln!("tiny-sd15 + LCM, guidance {guidance}: max pixel difference {diff}/255");
        assert!(diff <= 2, "guidance {guidance}: max pixel diff {diff}/255");
        images.push(ours);
    }
    assert_ne!(images[0], images[1], "guidance 1.5 changed nothing");
}

/// The LCM-LoRA workflow end to end: a LoRA in lcm-lora-sdv1-5's layout (web-UI keys spelled
/// from diffusers paths, on every layer kind it trains: 117 layers of the tiny UNet) on
/// tiny-sd15 with the LCM sampler at 4 steps, against diffusers' `load_lora_weights` +
/// `fuse_lora` + `LCMScheduler` (tools/make_lcm_lora_reference.py).
#[test]
fn an_lcm_lora_on_sd15_matches_diffusers_at_4_steps() {
    let sd = load("tiny-sd15");
    let file = imagine_engine::LoraFile::open(
        &assets().join("models/loras/tiny-sd15-lcm-lora.safetensors"),
    )
    .unwrap();
    assert_eq!(file.module_count(), 117);
    let report = sd
        .set_loras(&[imagine_engine::ActiveLora::new(
            std::sync::Arc::new(file),
            1.0,
        )])
        .unwrap();
    assert_eq!(report.layers_patched, 117);
    let r = reference("tiny-sd15-lcm-lora");
    for (key, guidance) in [("g1", 1.0), ("g15", 1.5)] {
        let mut req = replayed("sd15_g1", guidance, Some(SchedulerKind::Lcm));
        req.step_noise = Some(r[&format!("{key}_step_noise")].clone());
        let diff = max_pixel_diff(&run(&sd, &req), &r[&format!("{key}_image_u8")]);
        eprintln!("tiny-sd15 + LCM-LoRA, guidance {guidance}: max pixel difference {diff}/255");
        assert!(diff <= 2, "LCM-LoRA at guidance {guidance}: {diff}/255");
    }
}

#[test]
fn the_same_seed_gives_the_same_lcm_image_and_the_guidance_scale_matters() {
    let sd = load(LCM_MODEL);
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![42]);
    req.steps = 4;
    req.guidance = 8.0;
    let first = run(&sd, &req);
    assert_eq!(first, run(&sd, &req), "same seed, different image");
    req.seeds = vec![43];
    assert_ne!(first, run(&sd, &req), "another seed gave the same image");
    req.seeds = vec![42];
    req.guidance = 2.0;
    assert_ne!(
        first,
        run(&sd, &req),
        "the guidance embedding changed nothing"
    );
}

#[test]
fn lcm_refuses_more_steps_than_its_distillation_schedule_and_misshapen_step_noise() {
    let sd = load(LCM_MODEL);
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![1]);
    req.steps = 51;
    let msg = match sd.generate(&req, &mut |_| ControlFlow::Continue(())) {
        Err(e @ EngineError::InvalidRequest(_)) => e.to_string(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("ran 51 LCM steps"),
    };
    assert!(msg.contains("at most 50 steps"), "{msg}");
    req.steps = 4;
    req.step_noise = Some(reference(LCM_MODEL)["lcm_step_noise"].clone());
    let msg = match sd.generate(&req, &mut |_| ControlFlow::Continue(())) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("took step noise for two images in a one-image job"),
    };
    assert!(msg.contains("step noise has shape"), "{msg}");
}
