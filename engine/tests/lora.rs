//! LoRAs on the tiny SD 1.5 and SDXL models: a kohya-format and a PEFT-format LoRA give
//! diffusers' pixels (`load_lora_weights` + `fuse_lora`) within 2/255 at scales 0.5 and 1.0,
//! alone and together; removing them restores the base model bit for bit; switching reads only the
//! layers the LoRAs patch; files that do not fit the model, or use formats we do not
//! implement, are refused with messages that name the problem. References from
//! tools/make_lora_reference.py and tools/make_sdxl_lora_reference.py (diffusers 0.42.1).

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use common::*;
use imagine_engine::{
    ActiveLora, GenerateRequest, LoraFile, LoraFormat, SchedulerKind, StableDiffusion,
};

fn lora_path(name: &str) -> PathBuf {
    assets().join("models/loras").join(name)
}

fn kohya() -> Arc<LoraFile> {
    Arc::new(LoraFile::open(&lora_path("tiny-sd15-kohya.safetensors")).unwrap())
}

fn peft() -> Arc<LoraFile> {
    Arc::new(LoraFile::open(&lora_path("tiny-sd15-peft.safetensors")).unwrap())
}

fn lora_reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        assets().join("reference/tiny-sd15-lora.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn assert_matches(sd: &StableDiffusion, key: &str) {
    let diff = max_pixel_diff(
        &reference_run(sd, SchedulerKind::Euler),
        &lora_reference()[key],
    );
    eprintln!("{key}: max pixel difference {diff}/255");
    assert!(diff <= 2, "{key}: max pixel difference {diff}/255");
}

#[test]
fn kohya_lora_matches_diffusers_at_half_and_full_scale() {
    let sd = load("tiny-sd15");
    let file = kohya();
    assert_eq!(file.format(), LoraFormat::Kohya);
    for (scale, key) in [(0.5, "image_kohya_0.5_u8"), (1.0, "image_kohya_1.0_u8")] {
        sd.set_loras(&[ActiveLora::new(file.clone(), scale)])
            .unwrap();
        assert_matches(&sd, key);
    }
}

#[test]
fn peft_lora_matches_diffusers_at_half_and_full_scale() {
    let sd = load("tiny-sd15");
    let file = peft();
    assert_eq!(file.format(), LoraFormat::Peft);
    for (scale, key) in [(0.5, "image_peft_0.5_u8"), (1.0, "image_peft_1.0_u8")] {
        sd.set_loras(&[ActiveLora::new(file.clone(), scale)])
            .unwrap();
        assert_matches(&sd, key);
    }
}

#[test]
fn two_loras_at_once_match_diffusers() {
    let sd = load("tiny-sd15");
    sd.set_loras(&[ActiveLora::new(kohya(), 0.5), ActiveLora::new(peft(), 1.0)])
        .unwrap();
    assert_matches(&sd, "image_both_u8");
}

/// SDXL: a kohya LoRA under the original UNet's block names (`input_blocks_4_1_...`, LoCon on
/// `in_layers_2`) and both text encoders' MLPs (`lora_te1_`, `lora_te2_`), and a PEFT LoRA on
/// both text encoders' attention, against `StableDiffusionXLPipeline` with the same files
/// (tools/make_sdxl_lora_reference.py).
#[test]
fn sdxl_loras_match_diffusers_at_half_and_full_scale_and_together() {
    let sd = load("tiny-sdxl");
    let reference: HashMap<String, Tensor> = candle_core::safetensors::load(
        assets().join("reference/tiny-sdxl-lora.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let open = |name: &str| Arc::new(LoraFile::open(&lora_path(name)).unwrap());
    let (kohya, peft) = (
        open("tiny-sdxl-kohya.safetensors"),
        open("tiny-sdxl-peft.safetensors"),
    );
    assert_eq!(
        (kohya.format(), peft.format()),
        (LoraFormat::Kohya, LoraFormat::Peft)
    );
    let check = |sd: &StableDiffusion, key: &str| {
        let diff = max_pixel_diff(&reference_run(sd, SchedulerKind::Euler), &reference[key]);
        eprintln!("SDXL {key}: max pixel difference {diff}/255");
        assert!(diff <= 2, "SDXL {key}: max pixel difference {diff}/255");
    };
    check(&sd, "image_base_u8");
    for (file, name) in [(&kohya, "kohya"), (&peft, "peft")] {
        for scale in [0.5, 1.0] {
            sd.set_loras(&[ActiveLora::new(file.clone(), scale)])
                .unwrap();
            check(&sd, &format!("image_{name}_{scale:.1}_u8"));
        }
    }
    sd.set_loras(&[ActiveLora::new(kohya, 0.5), ActiveLora::new(peft, 1.0)])
        .unwrap();
    check(&sd, "image_both_u8");
}

#[test]
fn removing_loras_restores_the_base_model_bit_for_bit() {
    let sd = load("tiny-sd15");
    let base = reference_run(&sd, SchedulerKind::Euler);
    let diff = max_pixel_diff(&base, &lora_reference()["image_base_u8"]);
    assert!(diff <= 2, "base model: {diff}/255 from diffusers");

    sd.set_loras(&[ActiveLora::new(kohya(), 1.0), ActiveLora::new(peft(), -0.7)])
        .unwrap();
    let patched = reference_run(&sd, SchedulerKind::Euler);
    assert!(
        pixel_difference(&base, &patched).1 > 20,
        "the LoRAs changed nothing"
    );

    sd.set_loras(&[]).unwrap();
    let restored = reference_run(&sd, SchedulerKind::Euler);
    for (a, b) in base.iter().zip(&restored) {
        assert!(
            a.as_raw() == b.as_raw(),
            "the base model did not come back exactly"
        );
    }
}

#[test]
fn switching_loras_reads_only_the_layers_they_patch() {
    let sd = load("tiny-sd15");
    let (kohya, peft) = (kohya(), peft());
    let layers = sd.lora_layer_count();

    let report = sd
        .set_loras(&[ActiveLora::new(kohya.clone(), 1.0)])
        .unwrap();
    assert_eq!(report.layers_patched, kohya.module_count());
    assert_eq!(
        (report.layers_restored, report.weights_read),
        (0, kohya.module_count())
    );
    assert!(
        report.weights_read * 4 < layers,
        "{report:?} of {layers} layers"
    );

    // The same set again: nothing to do.
    let again = sd
        .set_loras(&[ActiveLora::new(kohya.clone(), 1.0)])
        .unwrap();
    assert_eq!(again.weights_read, 0);

    // Another set: its layers patched, the old set's other layers restored, nothing else.
    let switched = sd.set_loras(&[ActiveLora::new(peft.clone(), 1.0)]).unwrap();
    assert_eq!(switched.layers_patched, peft.module_count());
    assert!(switched.layers_restored > 0 && switched.layers_restored <= kohya.module_count());
    assert_eq!(
        switched.weights_read,
        switched.layers_patched + switched.layers_restored
    );

    let cleared = sd.set_loras(&[]).unwrap();
    assert_eq!(
        (cleared.layers_patched, cleared.layers_restored),
        (0, peft.module_count())
    );
}

/// Writes a LoRA file of `tensors` (name, shape) filled with 0.01.
fn write_lora(dir: &Path, name: &str, tensors: &[(String, Vec<usize>)]) -> PathBuf {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, shape)| {
            let ones = Tensor::ones(shape.as_slice(), candle_core::DType::F32, &Device::Cpu);
            (n.clone(), (ones.unwrap() * 0.01).unwrap())
        })
        .collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn refusal(sd: &StableDiffusion, path: &Path) -> String {
    let file = match LoraFile::open(path) {
        Ok(file) => Arc::new(file),
        Err(e) => return e.to_string(),
    };
    sd.set_loras(&[ActiveLora::new(file, 1.0)])
        .expect_err("the LoRA should have been refused")
        .to_string()
}

#[test]
fn a_lora_for_another_model_is_refused_naming_the_tensor_or_the_shapes() {
    let sd = load("tiny-sd15");
    let dir = tempfile::tempdir().unwrap();
    // SDXL's second text encoder: no such layer here.
    let te2 = "lora_te2_text_model_encoder_layers_0_mlp_fc1";
    let path = write_lora(
        dir.path(),
        "sdxl.safetensors",
        &[
            (format!("{te2}.lora_down.weight"), vec![4, 32]),
            (format!("{te2}.lora_up.weight"), vec![37, 4]),
        ],
    );
    let err = refusal(&sd, &path);
    assert!(
        err.contains(te2) && err.contains("matches no layer"),
        "{err}"
    );

    // A layer that exists, sized for SD 1.5 proper (320 channels, 768-wide text).
    let to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
    let path = write_lora(
        dir.path(),
        "sd15-full-size.safetensors",
        &[
            (format!("{to_k}.lora_down.weight"), vec![4, 768]),
            (format!("{to_k}.lora_up.weight"), vec![320, 4]),
        ],
    );
    let err = refusal(&sd, &path);
    assert!(
        err.contains("attn2.to_k") && err.contains("[32, 32]") && err.contains("[4, 768]"),
        "{err}"
    );

    // A refused set leaves the model as it was: still the base model.
    let base = load("tiny-sd15");
    assert_eq!(
        reference_run(&sd, SchedulerKind::Euler),
        reference_run(&base, SchedulerKind::Euler)
    );
}

#[test]
fn loha_lokr_and_dora_files_are_refused_by_name() {
    let sd = load("tiny-sd15");
    let dir = tempfile::tempdir().unwrap();
    let module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    for (part, variant) in [
        ("hada_w1_a", "LoHa"),
        ("lokr_w1", "LoKr"),
        ("dora_scale", "DoRA"),
    ] {
        let path = write_lora(
            dir.path(),
            &format!("{part}.safetensors"),
            &[
                (format!("{module}.{part}"), vec![4, 32]),
                (format!("{module}.alpha"), vec![]),
            ],
        );
        let err = refusal(&sd, &path);
        assert!(err.contains(variant) && err.contains(part), "{err}");
    }
}

#[test]
fn pickles_and_damaged_files_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("style.ckpt");
    std::fs::write(&ckpt, b"not read").unwrap();
    let err = LoraFile::open(&ckpt).unwrap_err().to_string();
    assert!(err.contains("convert it to .safetensors"), "{err}");

    let whole = std::fs::read(lora_path("tiny-sd15-kohya.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let err = LoraFile::open(&cut).unwrap_err().to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");
}

/// kohya's SDXL names: `lora_te1_`/`lora_te2_` for the two text encoders, the original UNet's
/// block numbers (`input_blocks_4_1` = down_blocks.1.attentions.0), LoCon on a ResNet's
/// `in_layers_2`, the timestep and size embeddings (`time_embed_0`, `label_emb_0_2`): every
/// name reaches its layer, changes the image, and comes off exactly. (Parity with diffusers:
/// `sdxl_loras_match_diffusers_at_half_and_full_scale_and_together`.)
#[test]
fn sdxl_kohya_names_reach_both_text_encoders_and_the_original_unet_blocks() {
    let sd = load("tiny-sdxl");
    // (name, up shape, down shape): rank 4 everywhere.
    let modules: [(&str, Vec<usize>, Vec<usize>); 7] = [
        (
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            vec![32, 4],
            vec![4, 32],
        ),
        (
            "lora_te2_text_model_encoder_layers_2_mlp_fc1",
            vec![37, 4],
            vec![4, 32],
        ),
        (
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
            vec![64, 4],
            vec![4, 64],
        ),
        (
            "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_out_0",
            vec![64, 4],
            vec![4, 64],
        ),
        (
            "lora_unet_input_blocks_4_0_in_layers_2",
            vec![64, 4, 1, 1],
            vec![4, 32, 3, 3],
        ),
        // The timestep embedding's first layer and the size embedding's second.
        ("lora_unet_time_embed_0", vec![128, 4], vec![4, 32]),
        ("lora_unet_label_emb_0_2", vec![128, 4], vec![4, 128]),
    ];
    let fill = |shape: &[usize]| {
        (Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu).unwrap() * 0.2).unwrap()
    };
    let mut tensors = HashMap::new();
    for (name, up, down) in &modules {
        tensors.insert(format!("{name}.lora_up.weight"), fill(up));
        tensors.insert(format!("{name}.lora_down.weight"), fill(down));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdxl-kohya.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();

    let images = |sd: &StableDiffusion| {
        let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![0]);
        req.steps = 2;
        sd.generate(&req, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .images
    };
    let base = images(&sd);
    let file = Arc::new(LoraFile::open(&path).unwrap());
    let report = sd.set_loras(&[ActiveLora::new(file, 1.0)]).unwrap();
    assert_eq!(report.layers_patched, modules.len());
    assert!(
        pixel_difference(&base, &images(&sd)).1 > 2,
        "the LoRA changed nothing"
    );
    sd.set_loras(&[]).unwrap();
    assert!(
        images(&sd) == base,
        "the base model did not come back exactly"
    );
}
