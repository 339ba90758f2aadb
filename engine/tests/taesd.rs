//! TAESD, the tiny autoencoder, against diffusers' `AutoencoderTiny` on the committed tiny
//! random-weight decoder (tools/make_taesd_reference.py): the decode itself, under every
//! activation diffusers offers, the whole tiny-sd15 pipeline with it as the vae, previews and
//! fast decodes through `generate`, and the errors a broken folder gets.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use imagine_engine::{
    EngineError, GenerateRequest, LoadOptions, SchedulerKind, StableDiffusion, Taesd,
};

fn taesd_dir() -> std::path::PathBuf {
    model_dir("tiny-taesd")
}

fn load_taesd(dir: &Path) -> imagine_engine::Result<Taesd> {
    Taesd::load(dir, &LoadOptions::default())
}

/// A copy of tiny-taesd whose config.json has `edit` applied.
fn edited_copy(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(taesd_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    tmp
}

fn txt2img_ddim(sd: &StableDiffusion, fast_decode: bool) -> imagine_engine::Generation {
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![0, 1]);
    req.negative_prompt = NEGATIVE.into();
    req.steps = 8;
    req.guidance = 7.5;
    req.scheduler = Some(SchedulerKind::Ddim);
    req.initial_noise = Some(reference_latents());
    req.fast_decode = fast_decode;
    sd.generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
}

fn with_taesd(model: &str) -> StableDiffusion {
    load(model)
        .with_tiny_decoder(load_taesd(&taesd_dir()).unwrap())
        .unwrap()
}

#[test]
fn decode_matches_autoencoder_tiny() {
    let r = reference("tiny-taesd");
    let taesd = load_taesd(&taesd_dir()).unwrap();
    let got = taesd.decode(&r["latents"]).unwrap();
    assert_eq!(got.dims(), &[2, 3, 64, 64]);
    let diff = max_abs_diff(&got, &r["decoded"]);
    eprintln!("tiny-taesd decode: max abs difference {diff:e} (output in [-1, 1])");
    assert!(diff < 1e-5, "max diff {diff}");
}

#[test]
fn every_activation_and_the_scaling_factor_match_autoencoder_tiny() {
    let r = reference("tiny-taesd");
    let cases = [
        ("decoded_silu", "act_fn", serde_json::json!("silu")),
        ("decoded_gelu", "act_fn", serde_json::json!("gelu")),
        ("decoded_mish", "act_fn", serde_json::json!("mish")),
        (
            "decoded_scaling_0.5",
            "scaling_factor",
            serde_json::json!(0.5),
        ),
    ];
    for (want, key, value) in cases {
        let dir = edited_copy(|cfg| cfg[key] = value);
        let got = load_taesd(dir.path())
            .unwrap()
            .decode(&r["latents_small"])
            .unwrap();
        assert_eq!(got.dims(), &[1, 3, 32, 48]);
        let diff = max_abs_diff(&got, &r[want]);
        eprintln!("{want}: max abs difference {diff:e}");
        assert!(diff < 1e-5, "{want}: max diff {diff}");
    }
}

#[test]
fn fast_decode_matches_the_pipeline_with_autoencoder_tiny_as_its_vae() {
    let r = reference("tiny-taesd");
    let sd = with_taesd("tiny-sd15");
    let out = txt2img_ddim(&sd, true);
    let diff = max_pixel_diff(&out.images, &r["image_ddim_u8"]);
    eprintln!("tiny-sd15 + tiny-taesd, DDIM: max pixel difference {diff}/255");
    assert!(diff <= 2, "max pixel diff {diff}/255");
}

#[test]
fn the_full_vae_stays_the_default_and_the_latents_decode_again_either_way() {
    let sd = with_taesd("tiny-sd15");
    let full = txt2img_ddim(&sd, false);
    let plain = txt2img_ddim(&load("tiny-sd15"), false);
    assert_eq!(
        full.images, plain.images,
        "a tiny decoder changes nothing by itself"
    );
    assert_eq!(full.latents.dims(), &[2, 4, 8, 8]);
    assert_eq!(sd.decode_images(&full.latents, false).unwrap(), full.images);
    let fast = txt2img_ddim(&sd, true);
    assert_eq!(sd.decode_images(&fast.latents, true).unwrap(), fast.images);
    assert_eq!(
        sd.decode_images(&fast.latents, false).unwrap(),
        full.images,
        "the full VAE on a fast job's latents gives the full job's images"
    );
}

#[test]
fn previews_come_from_taesd_when_one_is_attached() {
    let previews = |sd: &StableDiffusion| {
        let mut req = GenerateRequest::text(PROMPT, 64, 48, vec![3, 4]);
        req.steps = 3;
        let mut sizes = Vec::new();
        sd.generate(&req, &mut |p| {
            let imgs = p.previews().unwrap();
            sizes.push((imgs.len(), imgs[0].dimensions()));
            ControlFlow::Continue(())
        })
        .unwrap();
        sizes
    };
    assert_eq!(previews(&load("tiny-sd15")), vec![(2, (8, 6)); 3]);
    assert_eq!(previews(&with_taesd("tiny-sd15")), vec![(2, (64, 48)); 3]);
}

#[test]
fn fp16_weights_load_and_decode_close_to_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        taesd_dir().join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let tensors = candle_core::safetensors::load(
        taesd_dir().join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let half: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(
        &half,
        tmp.path().join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    let r = reference("tiny-taesd");
    let got = load_taesd(tmp.path())
        .unwrap()
        .decode(&r["latents"])
        .unwrap();
    let diff = max_abs_diff(&got, &r["decoded"]);
    eprintln!("fp16 weights: max abs difference {diff:e}");
    assert!(diff < 2e-2, "max diff {diff}");
}

#[test]
fn a_missing_file_is_named() {
    let dir = edited_copy(|_| {});
    std::fs::remove_file(dir.path().join("diffusion_pytorch_model.safetensors")).unwrap();
    match load_taesd(dir.path()) {
        Err(EngineError::MissingFile { path }) => {
            assert!(path.ends_with("diffusion_pytorch_model.safetensors"))
        }
        other => panic!("unexpected {:?}", other.err()),
    }
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    match load_taesd(dir.path()) {
        Err(EngineError::MissingFile { path }) => assert!(path.ends_with("config.json")),
        other => panic!("unexpected {:?}", other.err()),
    }
}

#[test]
fn configs_we_cannot_run_faithfully_are_refused() {
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("act_fn", serde_json::json!("tanh"), "act_fn"),
        ("upsample_fn", serde_json::json!("bilinear"), "upsample_fn"),
        (
            "_class_name",
            serde_json::json!("AutoencoderKL"),
            "AutoencoderTiny",
        ),
        (
            "num_decoder_blocks",
            serde_json::json!([3, 3, 1]),
            "differ in length",
        ),
        (
            "decoder_block_out_channels",
            serde_json::json!([16, 16, 16, 32]),
            "same",
        ),
        ("shift_factor", serde_json::json!(0.1), "shift_factor"),
    ];
    for (key, value, needle) in cases {
        let dir = edited_copy(|cfg| cfg[key] = value.clone());
        match load_taesd(dir.path()) {
            Err(e @ EngineError::UnsupportedArchitecture(_)) => {
                assert!(e.to_string().contains(needle), "{key}: {e}")
            }
            other => panic!("{key} = {value}: unexpected {:?}", other.err()),
        }
    }
}

#[test]
fn weights_that_do_not_fit_the_config_are_a_bad_file() {
    let dir =
        edited_copy(|cfg| cfg["decoder_block_out_channels"] = serde_json::json!([32, 32, 32, 32]));
    let err = load_taesd(dir.path()).err().expect("must fail");
    assert!(
        matches!(err, EngineError::BadFile { .. }) && err.to_string().contains("do not match"),
        "{err}"
    );
}

#[test]
fn a_decoder_for_other_latents_is_refused_by_the_model() {
    // Upsampling 3x per stage: 27 pixels per latent cell, not the SD VAE's 8.
    let dir = edited_copy(|cfg| cfg["upsampling_scaling_factor"] = serde_json::json!(3));
    let taesd = load_taesd(dir.path()).unwrap();
    assert_eq!(taesd.scale_factor(), 27);
    let err = load("tiny-sd15").with_tiny_decoder(taesd).err().unwrap();
    assert!(
        matches!(err, EngineError::UnsupportedArchitecture(_)),
        "{err}"
    );
}

#[test]
fn fast_decode_without_a_tiny_decoder_is_an_invalid_request() {
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![1]);
    req.fast_decode = true;
    let err = load("tiny-sd15")
        .generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
}
