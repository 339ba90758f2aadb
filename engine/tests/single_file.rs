//! Single-file checkpoints (the original SD layout model sites distribute): a file loads to the
//! same model as its diffusers folder, bit for bit; its images match diffusers'
//! `from_single_file` within the parity bound; detection recovers the folder's configs; the
//! built-in CLIP tokenizer matches transformers'; pickles and files that are not whole models
//! are refused with a sentence saying what they are. References: tools/make_single_file_reference.py.

mod common;

use common::*;
use imagine_engine::checkpoint::{Checkpoint, Family, Prediction};
use imagine_engine::tokenizer::{ClipPadding, ClipTokenizer};
use imagine_engine::{LoadOptions, SchedulerKind, StableDiffusion, UNetKind};

fn file(name: &str) -> std::path::PathBuf {
    assets().join("models").join(format!("{name}.safetensors"))
}

fn open(path: &std::path::Path, prediction: Option<Prediction>) -> StableDiffusion {
    let opts = LoadOptions {
        prediction,
        ..LoadOptions::default()
    };
    StableDiffusion::load(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn single_reference() -> std::collections::HashMap<String, candle_core::Tensor> {
    reference("tiny-single")
}

#[test]
fn a_single_file_makes_the_same_pixels_as_its_diffusers_folder() {
    let folder = open(&model_dir("tiny-sd15-clip"), None);
    let single = open(&file("tiny-sd15-clip"), None);
    assert_eq!(single.info().name, "tiny-sd15-clip");
    let (a, b) = (
        reference_run(&folder, SchedulerKind::Euler),
        reference_run(&single, SchedulerKind::Euler),
    );
    assert_eq!(
        pixel_difference(&a, &b),
        (0.0, 0),
        "same weights, same images"
    );
}

#[test]
fn single_files_match_diffusers_from_single_file() {
    let r = single_reference();
    for (name, key) in [
        ("tiny-sd15-clip", "sd15_euler_u8"),
        ("tiny-sd21-v", "sd2_euler_u8"),
    ] {
        let images = euler(&open(&file(name), None));
        let diff = max_pixel_diff(&images, &r[key]);
        eprintln!("{name}: max pixel difference to diffusers {diff}/255");
        assert!(diff <= 2, "{name}: {diff}/255");
    }
}

#[test]
fn an_inpainting_file_is_a_nine_channel_model_whose_unet_matches_diffusers() {
    let r = single_reference();
    let sd = open(&file("tiny-sd15-inpainting"), None);
    assert_eq!(sd.info().unet_kind, UNetKind::Inpainting);
    let t = r["inpaint_unet_t"].to_vec1::<f32>().unwrap()[0] as f64;
    let out = sd
        .unet_forward(&r["inpaint_unet_in"], t, &r["inpaint_unet_ctx"])
        .unwrap();
    let diff = max_abs_diff(&out, &r["inpaint_unet_out"]);
    eprintln!("inpainting UNet: max abs difference {diff:e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn detection_recovers_the_folders_configs() {
    let detected = Checkpoint::open(&file("tiny-sd15-clip"))
        .unwrap()
        .detect(None)
        .unwrap();
    assert_eq!(detected.family, Family::Sd1);
    let dir = model_dir("tiny-sd15-clip");
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    let same = |ours: &serde_json::Value, theirs: &serde_json::Value, keys: &[&str], what: &str| {
        for k in keys {
            assert_eq!(ours[k], theirs[k], "{what} {k}");
        }
    };
    // sample_size is not in the weights: a single file gets its family's native size.
    same(
        &detected.unet_json,
        &read("unet/config.json"),
        &[
            "in_channels",
            "out_channels",
            "block_out_channels",
            "down_block_types",
            "up_block_types",
            "layers_per_block",
            "attention_head_dim",
            "cross_attention_dim",
            "use_linear_projection",
            "norm_num_groups",
            "flip_sin_to_cos",
            "freq_shift",
        ],
        "unet",
    );
    same(
        &detected.vae_json,
        &read("vae/config.json"),
        &[
            "block_out_channels",
            "latent_channels",
            "layers_per_block",
            "scaling_factor",
            "in_channels",
            "out_channels",
            "norm_num_groups",
        ],
        "vae",
    );
    same(
        &detected.text_encoder_json,
        &read("text_encoder/config.json"),
        &[
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "hidden_act",
        ],
        "text encoder",
    );
    let scheduler = read("scheduler/scheduler_config.json");
    same(
        &detected.scheduler_json,
        &scheduler,
        &[
            "_class_name",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "prediction_type",
            "steps_offset",
            "timestep_spacing",
            "set_alpha_to_one",
        ],
        "scheduler",
    );
}

#[test]
fn an_sd2_file_reads_as_openclip_with_the_penultimate_layer_and_v_prediction() {
    let ckpt = Checkpoint::open(&file("tiny-sd21-v")).unwrap();
    let d = ckpt.detect(None).unwrap();
    assert_eq!(d.family, Family::Sd2);
    // The file holds three OpenCLIP layers; SD 2 conditions on the one before the last.
    assert_eq!(d.text_encoder_json["num_hidden_layers"], 2);
    assert_eq!(d.text_encoder_json["hidden_act"], "gelu");
    assert_eq!(d.unet_json["use_linear_projection"], true);
    assert_eq!(d.unet_json["attention_head_dim"], serde_json::json!([1, 1]));
    assert_eq!(d.prediction, Prediction::V, "{}", d.prediction_reason);
    assert!(d.prediction_reason.contains("modelspec.prediction_type"));
    assert_eq!(d.padding, ClipPadding::Exclamation);
    assert_eq!(d.scheduler_json["prediction_type"], "v_prediction");
    let info = StableDiffusion::describe(&file("tiny-sd21-v")).unwrap();
    assert_eq!(info.native_size, 768, "SD 2.x v-models are 768 px models");

    let forced = ckpt.detect(Some(Prediction::Epsilon)).unwrap();
    assert_eq!(forced.scheduler_json["prediction_type"], "epsilon");
    assert!(forced.prediction_reason.contains("--prediction"));
    // An SD 1.x file says nothing: noise prediction.
    let sd1 = Checkpoint::open(&file("tiny-sd15-clip"))
        .unwrap()
        .detect(None)
        .unwrap();
    assert_eq!(sd1.prediction, Prediction::Epsilon);
}

#[test]
fn the_prediction_override_changes_the_images() {
    let v = euler(&open(&file("tiny-sd21-v"), None));
    let eps = euler(&open(&file("tiny-sd21-v"), Some(Prediction::Epsilon)));
    let (mean, _) = pixel_difference(&v, &eps);
    assert!(
        mean > 1.0,
        "epsilon and v read the same UNet output differently ({mean})"
    );
}

#[test]
fn the_built_in_tokenizer_matches_transformers_with_both_paddings() {
    let text = std::fs::read_to_string(assets().join("reference/tiny-single.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let eot = ClipTokenizer::embedded(ClipPadding::EndOfText, 77).unwrap();
    let bang = ClipTokenizer::embedded(ClipPadding::Exclamation, 77).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = json["tokens"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            eot.encode(prompt, 1).unwrap().chunks[0],
            ids(&case["endoftext_pad"]),
            "{prompt:?}"
        );
        assert_eq!(
            bang.encode(prompt, 1).unwrap().chunks[0],
            ids(&case["bang_pad"]),
            "{prompt:?}"
        );
        let all = ids(&case["untruncated"]);
        assert_eq!(
            eot.tokens(prompt).unwrap(),
            all[1..all.len() - 1],
            "{prompt:?}"
        );
    }
}

#[test]
fn pickles_are_refused_with_how_to_convert_them() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["model.ckpt", "model.pt", "model.bin", "model.pth"] {
        let path = tmp.path().join(name);
        std::fs::write(&path, b"\x80\x02}q\x00.").unwrap();
        let err = StableDiffusion::describe(&path).unwrap_err().to_string();
        assert!(err.contains("PyTorch pickle"), "{err}");
        assert!(err.contains("convert it to .safetensors"), "{err}");
    }
    // A pickle renamed to .safetensors is caught by its first bytes.
    let renamed = tmp.path().join("model.safetensors");
    std::fs::write(&renamed, b"PK\x03\x04rest of a torch zip").unwrap();
    let err = StableDiffusion::describe(&renamed).unwrap_err().to_string();
    assert!(err.contains("PyTorch pickle"), "{err}");
    // A safetensors header 0x180 bytes long starts with the byte a pickle starts with: it is
    // still read as safetensors (and named as what it is).
    let header = format!("{:<384}", r#"{"__metadata__":{"note":"empty"}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    assert_eq!(bytes[0], 0x80);
    std::fs::write(&renamed, bytes).unwrap();
    let err = StableDiffusion::describe(&renamed).unwrap_err().to_string();
    assert!(err.contains("not a Stable Diffusion checkpoint"), "{err}");
}

#[test]
fn a_safetensors_file_that_is_not_a_model_says_what_it_looks_like() {
    let vae = model_dir("tiny-sd15").join("vae/diffusion_pytorch_model.safetensors");
    let err = StableDiffusion::describe(&vae).unwrap_err().to_string();
    assert!(err.contains("a VAE alone"), "{err}");
    let unet = model_dir("tiny-sd15").join("unet/diffusion_pytorch_model.safetensors");
    let err = StableDiffusion::describe(&unet).unwrap_err().to_string();
    assert!(err.contains("diffusers UNet"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let lora = tmp.path().join("style.safetensors");
    let t = candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::safetensors::save(
        &[(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight".to_string(),
            t,
        )]
        .into_iter()
        .collect(),
        &lora,
    )
    .unwrap();
    let err = StableDiffusion::describe(&lora).unwrap_err().to_string();
    assert!(err.contains("a LoRA"), "{err}");
    let esrgan = assets().join("models/tiny-esrgan-x2.safetensors");
    let err = StableDiffusion::describe(&esrgan).unwrap_err().to_string();
    assert!(err.contains("ESRGAN"), "{err}");
}

/// Euler with the reference settings (see `common::reference_run`).
fn euler(sd: &StableDiffusion) -> Vec<image::RgbImage> {
    reference_run(sd, SchedulerKind::Euler)
}

/// An LCM-distilled single file (a converted LCM UNet keeps diffusers' `time_embedding.cond_proj`
/// name under the UNet prefix) loads with its guidance embedding and LCM's sampler and defaults,
/// and makes the same pixels as the diffusers folder with the same weights.
#[test]
fn an_lcm_distilled_file_gets_its_guidance_embedding_and_the_lcm_sampler() {
    use candle_core::{Device, Tensor};
    const COND: usize = 32;
    let cond_proj = Tensor::arange(0f32, (32 * COND) as f32, &Device::Cpu)
        .unwrap()
        .affine(0.37, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((32, COND))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut tensors = candle_core::safetensors::load(file("tiny-sd15-clip"), &Device::Cpu).unwrap();
    tensors.insert(
        "model.diffusion_model.time_embedding.cond_proj.weight".into(),
        cond_proj.clone(),
    );
    let single_path = dir.path().join("tiny-lcm-distilled.safetensors");
    candle_core::safetensors::save(&tensors, &single_path).unwrap();

    let folder = copy_model("tiny-sd15-clip");
    let unet = folder.path().join("unet");
    let weights = unet.join("diffusion_pytorch_model.safetensors");
    let mut unet_tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    unet_tensors.insert("time_embedding.cond_proj.weight".into(), cond_proj);
    candle_core::safetensors::save(&unet_tensors, &weights).unwrap();
    let config_path = unet.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["time_cond_proj_dim"] = COND.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    std::fs::copy(
        model_dir("tiny-lcm").join("scheduler/scheduler_config.json"),
        folder.path().join("scheduler/scheduler_config.json"),
    )
    .unwrap();

    let detected = Checkpoint::open(&single_path)
        .unwrap()
        .detect(None)
        .unwrap();
    assert_eq!(detected.unet_json["time_cond_proj_dim"], COND);
    let single = open(&single_path, None);
    let info = single.info();
    assert_eq!(info.default_scheduler, SchedulerKind::Lcm);
    assert_eq!((info.default_steps, info.default_guidance), (4, 8.0));

    let lcm = |sd: &StableDiffusion, guidance: f64| {
        let mut req = imagine_engine::GenerateRequest::text(PROMPT, 64, 64, vec![0, 1]);
        req.steps = 4;
        req.guidance = guidance;
        req.scheduler = Some(SchedulerKind::Lcm);
        req.initial_noise = Some(reference_latents());
        sd.generate(&req, &mut |_| std::ops::ControlFlow::Continue(()))
            .unwrap()
            .images
    };
    let from_file = lcm(&single, 8.0);
    let from_folder = lcm(&open(folder.path(), None), 8.0);
    assert_eq!(pixel_difference(&from_file, &from_folder), (0.0, 0));
    let (mean, _) = pixel_difference(&from_file, &lcm(&single, 2.0));
    assert!(mean > 0.5, "the guidance embedding must act: {mean}");
}
