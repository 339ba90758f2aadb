//! Bad input gets a typed error, never a panic: broken model folders and impossible requests.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::*;
use imagine_engine::{EngineError, GenerateRequest, InitImage, LoadOptions, StableDiffusion};

fn load_err(dir: &Path) -> EngineError {
    match StableDiffusion::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn a_missing_weight_file_is_named() {
    let tmp = copy_model("tiny-sd15");
    std::fs::remove_file(tmp.path().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    match load_err(tmp.path()) {
        EngineError::MissingFile { path } => {
            assert!(path.ends_with("unet/diffusion_pytorch_model.safetensors"))
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn a_truncated_weight_file_is_reported_not_loaded() {
    let tmp = copy_model("tiny-sd15");
    let path = tmp.path().join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(tmp.path());
    assert!(matches!(err, EngineError::BadFile { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn garbage_in_a_weight_file_is_reported() {
    let tmp = copy_model("tiny-sd15");
    std::fs::write(
        tmp.path().join("text_encoder/model.safetensors"),
        b"not safetensors at all",
    )
    .unwrap();
    assert!(matches!(load_err(tmp.path()), EngineError::BadFile { .. }));
}

#[test]
fn an_unknown_architecture_is_refused_by_name() {
    let tmp = copy_model("tiny-sd15");
    let cfg = tmp.path().join("unet/config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"CrossAttnDownBlock2D\"", "\"SimpleCrossAttnDownBlock2D\"");
    std::fs::write(&cfg, text).unwrap();
    match load_err(tmp.path()) {
        EngineError::UnsupportedArchitecture(msg) => {
            assert!(msg.contains("SimpleCrossAttnDownBlock2D"), "{msg}")
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn a_corrupt_config_names_its_file() {
    let tmp = copy_model("tiny-sd2-v");
    std::fs::write(tmp.path().join("vae/config.json"), "{ not json").unwrap();
    match load_err(tmp.path()) {
        EngineError::BadFile { path, .. } => assert!(path.ends_with("vae/config.json")),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn fp16_weight_files_load_and_generate() {
    let tmp = copy_model("tiny-sd15");
    for (dir, name) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ] {
        let src = tmp.path().join(dir).join(format!("{name}.safetensors"));
        let tensors = candle_core::safetensors::load(&src, &candle_core::Device::Cpu).unwrap();
        let half: std::collections::HashMap<String, candle_core::Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(candle_core::DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(
            &half,
            tmp.path()
                .join(dir)
                .join(format!("{name}.fp16.safetensors")),
        )
        .unwrap();
        std::fs::remove_file(src).unwrap();
    }
    let sd = StableDiffusion::load(tmp.path(), &LoadOptions::default()).unwrap();
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![1]);
    req.steps = 2;
    let out = sd
        .generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(out.images[0].dimensions(), (64, 64));
}

fn gen_err(req: &GenerateRequest) -> String {
    match load("tiny-sd15").generate(req, &mut |_| ControlFlow::Continue(())) {
        Err(EngineError::InvalidRequest(msg)) => msg,
        Err(other) => panic!("expected an invalid-request error, got {other}"),
        Ok(_) => panic!("request should be refused"),
    }
}

#[test]
fn impossible_requests_are_refused_with_the_reason() {
    let base = GenerateRequest::text(PROMPT, 64, 64, vec![1]);
    let mut r = base.clone();
    r.width = 60;
    assert!(gen_err(&r).contains("multiples of 8"));
    let mut r = base.clone();
    r.steps = 0;
    assert!(gen_err(&r).contains("steps"));
    let init = image::RgbImage::new(64, 64);
    for strength in [-0.1, 1.5, f64::NAN] {
        let mut r = base.clone();
        r.init = Some(InitImage {
            image: init.clone(),
            strength,
            mask: None,
        });
        assert!(gen_err(&r).contains("strength"), "{strength}");
    }
    let mut r = base.clone();
    r.init = Some(InitImage {
        image: init.clone(),
        strength: 0.5,
        mask: Some(image::GrayImage::new(32, 64)),
    });
    assert!(gen_err(&r).contains("mask"));
    let mut r = base.clone();
    r.initial_noise = Some(
        candle_core::Tensor::zeros(
            (2, 4, 8, 8),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap(),
    );
    assert!(gen_err(&r).contains("shape"));
    let mut r = base;
    r.seeds.clear();
    assert!(gen_err(&r).contains("seeds"));
}
