//! SDXL and SDXL-Turbo against diffusers on the committed tiny models (tools/make_sdxl_reference.py,
//! diffusers 0.42.1): both text encoders' penultimate states and the pooled projection, one
//! UNet forward with the added size conditioning, and final pixels for Euler and DPM++ 2M
//! Karras with guidance and a negative prompt, an empty negative prompt (zeros), a non-square
//! size, and SDXL-Turbo at 1 and 2 steps without guidance.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, Tensor};
use common::*;
use imagine_engine::unet::AddedConditioning;
use imagine_engine::{GenerateRequest, ModelFamily, SchedulerKind, StableDiffusion};

fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn generate(
    sd: &StableDiffusion,
    latents: Tensor,
    size: (usize, usize),
    steps: usize,
    guidance: f64,
    negative: &str,
    kind: SchedulerKind,
) -> Vec<image::RgbImage> {
    let n = latents.dim(0).unwrap();
    let mut req = GenerateRequest::text(PROMPT, size.0, size.1, (0..n as u64).collect());
    req.negative_prompt = negative.into();
    req.steps = steps;
    req.guidance = guidance;
    req.scheduler = Some(kind);
    req.initial_noise = Some(latents);
    sd.generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .images
}

fn assert_within_2_levels(what: &str, images: &[image::RgbImage], reference: &Tensor) {
    let diff = max_pixel_diff(images, reference);
    eprintln!("{what}: max pixel difference {diff}/255");
    assert!(diff <= 2, "{what}: max pixel difference {diff}/255");
}

#[test]
fn sdxl_folders_load_as_sdxl_with_their_native_size_and_sampler() {
    let sd = load("tiny-sdxl");
    let info = sd.info();
    assert_eq!(info.family, ModelFamily::Sdxl);
    assert_eq!(info.native_size, 64);
    assert_eq!(info.default_scheduler, SchedulerKind::Euler);
    assert!(!info.distilled);
    assert!(info.zeros_for_empty_negative);
    let turbo = StableDiffusion::describe(&model_dir("tiny-sdxl-turbo")).unwrap();
    assert_eq!(turbo.family, ModelFamily::Sdxl);
    assert_eq!(turbo.default_scheduler, SchedulerKind::EulerAncestral);
    assert!(turbo.distilled, "trailing spacing: one step, no guidance");
    assert_eq!(load("tiny-sd15").info().family, ModelFamily::Sd1);
    assert_eq!(load("tiny-sd2-v").info().family, ModelFamily::Sd2);
}

#[test]
fn both_text_encoders_and_the_pooled_projection_match_diffusers() {
    let sd = load("tiny-sdxl");
    let r = reference("tiny-sdxl");
    let got = sd
        .encode_tokens_xl(&[ids(&r["input_ids"])], &[ids(&r["input_ids_2"])])
        .unwrap();
    let hidden = max_abs_diff(&got.hidden, &r["prompt_embeds"]);
    let pooled = max_abs_diff(&got.pooled.unwrap(), &r["pooled"]);
    eprintln!("prompt embeds {hidden:e}, pooled {pooled:e}");
    assert!(hidden < 1e-4 && pooled < 1e-4, "{hidden} {pooled}");
    // The second tokenizer pads with "!" (id 0), the first with the end token.
    let first = ids(&r["input_ids"]);
    let second = ids(&r["input_ids_2"]);
    assert_eq!(sd.tokenizer().encode(PROMPT, 1).unwrap().chunks[0], first);
    assert_eq!(*second.last().unwrap(), 0);
    assert_ne!(first, second);
}

#[test]
fn one_unet_forward_with_added_conditioning_matches_diffusers() {
    let sd = load("tiny-sdxl");
    let r = reference("tiny-sdxl");
    let t = r["unet_t"].to_vec1::<f32>().unwrap()[0] as f64;
    let added = AddedConditioning {
        text_embeds: r["unet_text_embeds"].clone(),
        time_ids: r["unet_time_ids"].clone(),
    };
    let got = sd
        .unet_forward_added(&r["unet_in"], t, &r["unet_ctx"], Some(&added))
        .unwrap();
    let diff = max_abs_diff(&got, &r["unet_out"]);
    eprintln!("SDXL UNet: max abs difference {diff:e}");
    assert!(diff < 1e-4, "SDXL UNet max diff {diff}");
    let refused = sd.unet_forward(&r["unet_in"], t, &r["unet_ctx"]);
    assert!(refused.is_err(), "an SDXL UNet without sizes must refuse");
}

#[test]
fn sdxl_images_match_diffusers_within_2_levels() {
    let sd = load("tiny-sdxl");
    let r = reference("tiny-sdxl");
    let latents = reference_latents();
    for (kind, key) in [
        (SchedulerKind::Euler, "euler"),
        (SchedulerKind::DpmPp2mKarras, "dpmpp_2m_karras"),
    ] {
        let images = generate(&sd, latents.clone(), (64, 64), 8, 7.5, NEGATIVE, kind);
        assert_within_2_levels(&format!("SDXL {kind}"), &images, &r[key]);
    }
}

#[test]
fn an_empty_negative_prompt_is_zeros_as_in_diffusers() {
    let sd = load("tiny-sdxl");
    let r = reference("tiny-sdxl");
    let images = generate(
        &sd,
        reference_latents(),
        (64, 64),
        8,
        7.5,
        "",
        SchedulerKind::Euler,
    );
    assert_within_2_levels("SDXL empty negative", &images, &r["euler_zero_negative"]);
    // The zeros make a real difference (this is not the encoding of "").
    let (mean, _) = pixel_difference(
        &images,
        &generate(
            &sd,
            reference_latents(),
            (64, 64),
            8,
            7.5,
            NEGATIVE,
            SchedulerKind::Euler,
        ),
    );
    assert!(mean > 1.0, "mean difference {mean}");
}

#[test]
fn a_non_square_sdxl_image_conditions_on_its_own_size() {
    let sd = load("tiny-sdxl");
    let r = reference("tiny-sdxl");
    let images = generate(
        &sd,
        r["wide_latents"].clone(),
        (96, 64),
        8,
        7.5,
        NEGATIVE,
        SchedulerKind::Euler,
    );
    assert_eq!(images[0].dimensions(), (96, 64));
    assert_within_2_levels("SDXL 96x64", &images, &r["euler_96x64"]);
}

#[test]
fn sdxl_turbo_in_one_and_two_steps_matches_diffusers() {
    let sd = load("tiny-sdxl-turbo");
    let r = reference("tiny-sdxl-turbo");
    let one = generate(
        &sd,
        reference_latents(),
        (64, 64),
        1,
        0.0,
        "",
        SchedulerKind::EulerAncestral,
    );
    assert_within_2_levels("SDXL-Turbo 1 step", &one, &r["euler_a_1_step"]);
    let two = generate(
        &sd,
        reference_latents(),
        (64, 64),
        2,
        0.0,
        "",
        SchedulerKind::Euler,
    );
    assert_within_2_levels("SDXL-Turbo 2 steps", &two, &r["euler_2_steps"]);
}
