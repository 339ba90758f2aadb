//! A 9-channel inpainting UNet (latents, mask, masked-image latents) loads from its config and
//! runs. The tiny model is derived from tiny-sd15 by widening conv_in with zero weights for the
//! five extra channels, so its output must equal the 4-channel model's exactly: proof that the
//! extra inputs are wired in the order diffusers uses without changing the latent path.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use common::*;
use imagine_engine::{
    GenerateRequest, InitImage, LoadOptions, SchedulerKind, StableDiffusion, UNetKind,
};

fn widen_to_inpainting(dir: &std::path::Path) {
    let cfg_path = dir.join("unet/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["in_channels"] = 9.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let w_path = dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&w_path, &Device::Cpu).unwrap();
    let w = tensors["conv_in.weight"].clone();
    let (o, _, kh, kw) = w.dims4().unwrap();
    let zeros = Tensor::zeros((o, 5, kh, kw), DType::F32, &Device::Cpu).unwrap();
    tensors.insert(
        "conv_in.weight".into(),
        Tensor::cat(&[&w, &zeros], 1).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &w_path).unwrap();
}

#[test]
fn a_nine_channel_inpainting_unet_loads_and_uses_its_mask_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(tmp.path().join(sub)).unwrap();
        for f in std::fs::read_dir(model_dir("tiny-sd15").join(sub)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), tmp.path().join(sub).join(f.file_name())).unwrap();
        }
    }
    std::fs::copy(
        model_dir("tiny-sd15").join("model_index.json"),
        tmp.path().join("model_index.json"),
    )
    .unwrap();
    widen_to_inpainting(tmp.path());

    let inpaint = StableDiffusion::load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(inpaint.info().unet_kind, UNetKind::Inpainting);
    let plain = load("tiny-sd15");

    let init = image::open(assets().join("reference/init_64.png"))
        .unwrap()
        .to_rgb8();
    let mask =
        image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 32 { 0 } else { 255 }]));
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![11]);
    req.steps = 4;
    req.scheduler = Some(SchedulerKind::Euler);
    req.init = Some(InitImage {
        image: init,
        strength: 1.0,
        mask: Some(mask),
    });
    let ours = inpaint
        .generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .images;

    // Same noise, plain text-to-image on the 4-channel model: identical, since the extra
    // channels carry zero weights and strength 1 starts from pure noise.
    let mut txt = req.clone();
    txt.init = None;
    let reference = plain
        .generate(&txt, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .images;
    assert_eq!(ours, reference);

    // Text to image on the inpainting model also works (full mask, blank image).
    let blank = inpaint
        .generate(&txt, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .images;
    assert_eq!(blank, reference);
}
