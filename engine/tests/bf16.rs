//! The bf16 compute mode: it really computes in bf16 (the pixels move), stays within a few
//! levels of fp32, and is as deterministic as fp32. Skipped on CPUs without AVX512_BF16.

mod common;

use std::ops::ControlFlow;

use common::*;
use imagine_engine::{
    ComputePrecision, GenerateRequest, LoadOptions, SchedulerKind, StableDiffusion,
};

fn images(model: &str, precision: ComputePrecision, req: &GenerateRequest) -> Vec<image::RgbImage> {
    let opts = LoadOptions {
        precision,
        ..LoadOptions::default()
    };
    StableDiffusion::load(&model_dir(model), &opts)
        .unwrap()
        .generate(req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .images
}

fn request() -> GenerateRequest {
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![3, 4]);
    req.negative_prompt = NEGATIVE.into();
    req.steps = 8;
    req.scheduler = Some(SchedulerKind::DpmPp2mKarras);
    req
}

#[test]
fn bf16_images_stay_within_a_few_levels_of_fp32() {
    if !imagine_engine::kernels::isa::test_path_runs("bf16", ComputePrecision::bf16_available()) {
        return;
    }
    for model in MODELS {
        let fp32 = images(model, ComputePrecision::Fp32, &request());
        let bf16 = images(model, ComputePrecision::Bf16, &request());
        assert_ne!(
            fp32, bf16,
            "{model}: bf16 gave the fp32 pixels; is it running?"
        );
        let (mean, worst) = pixel_difference(&fp32, &bf16);
        assert!(
            mean < 1.0 && worst <= 12,
            "{model}: bf16 differs from fp32 by {mean:.2} levels on average, {worst} at most"
        );
    }
}

#[test]
fn bf16_is_deterministic() {
    if !imagine_engine::kernels::isa::test_path_runs("bf16", ComputePrecision::bf16_available()) {
        return;
    }
    let req = request();
    assert_eq!(
        images("tiny-sd15", ComputePrecision::Bf16, &req),
        images("tiny-sd15", ComputePrecision::Bf16, &req)
    );
}
