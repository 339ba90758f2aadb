//! Half precision as a GPU runs it (fp16 tensors through candle's ops), checked on the CPU:
//! the pixels stay within a few levels of fp32, the VAE decodes in f32 where its config says
//! `force_upcast` (as diffusers does), and the same seed gives the same image.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, Device};
use common::*;
use imagine_engine::{GenerateRequest, Precision, SchedulerKind, StableDiffusion};

fn load_in(model: &str, precision: Precision) -> StableDiffusion {
    StableDiffusion::load(&model_dir(model), &precision.load_options(&Device::Cpu)).unwrap()
}

fn request() -> GenerateRequest {
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![3, 4]);
    req.negative_prompt = NEGATIVE.into();
    req.steps = 8;
    req.guidance = 7.5;
    req.scheduler = Some(SchedulerKind::DpmPp2mKarras);
    req
}

fn generate(sd: &StableDiffusion, req: &GenerateRequest) -> imagine_engine::Generation {
    sd.generate(req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
}

#[test]
fn fp16_images_stay_within_a_few_levels_of_fp32() {
    for model in MODELS {
        let fp32 = generate(&load_in(model, Precision::Fp32), &request()).images;
        let fp16_model = load_in(model, Precision::Fp16);
        assert_eq!(fp16_model.dtype(), DType::F16);
        let fp16 = generate(&fp16_model, &request()).images;
        assert_ne!(
            fp32, fp16,
            "{model}: fp16 gave the fp32 pixels; is it running?"
        );
        let (mean, worst) = pixel_difference(&fp32, &fp16);
        eprintln!("{model}: fp16 vs fp32: mean {mean:.3} levels, max {worst}");
        assert!(
            mean < 1.0 && worst <= 12,
            "{model}: fp16 differs from fp32 by {mean:.2} levels on average, {worst} at most"
        );
    }
}

#[test]
fn an_fp16_model_decodes_with_its_vae_upcast_to_f32() {
    // The committed VAEs keep diffusers' default `force_upcast: true`: the same latents then
    // decode to exactly the fp32 model's pixels.
    let latents = reference_latents();
    let fp32 = load_in("tiny-sd15", Precision::Fp32);
    let fp16 = load_in("tiny-sd15", Precision::Fp16);
    assert_eq!(
        fp32.decode_images(&latents, false).unwrap(),
        fp16.decode_images(&latents, false).unwrap()
    );
}

#[test]
fn fp16_is_deterministic() {
    let sd = load_in("tiny-sd15", Precision::Fp16);
    assert_eq!(
        generate(&sd, &request()).images,
        generate(&sd, &request()).images
    );
}
