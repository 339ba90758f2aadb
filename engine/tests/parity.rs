//! Parity with diffusers on the committed tiny models: tokens, text embeddings, one UNet
//! forward, and final pixels for DDIM, Euler and DPM++ 2M Karras with guidance, and image to
//! image at strength 0.6. References come from tools/make_reference.py (diffusers 0.42.1).
//! Each kernel path the CPU has (AVX-512, AVX2, generic) is checked against the same bounds.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, Tensor};
use common::*;
use imagine_engine::{GenerateRequest, InitImage, SchedulerKind};

fn txt2img(model: &str, kind: SchedulerKind) -> Vec<image::RgbImage> {
    let sd = load(model);
    let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![0, 1]);
    req.negative_prompt = NEGATIVE.into();
    req.steps = 8;
    req.guidance = 7.5;
    req.scheduler = Some(kind);
    req.initial_noise = Some(reference_latents());
    sd.generate(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .images
}

#[test]
fn tokenizer_matches_transformers_on_every_reference_prompt() {
    let text = std::fs::read_to_string(assets().join("reference/tokens.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for model in MODELS {
        let sd = load(model);
        let prompts = json["tokenizers"][model]["prompts"].as_array().unwrap();
        assert!(prompts.len() >= 8);
        for p in prompts {
            let prompt = p["prompt"].as_str().unwrap();
            let ids = |k: &str| -> Vec<u32> {
                p[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            };
            let untruncated = ids("untruncated_ids");
            let inner = &untruncated[1..untruncated.len() - 1];
            assert_eq!(
                sd.tokenizer().tokens(prompt).unwrap(),
                inner,
                "{model}: {prompt:?}"
            );
            // The first window is exactly what diffusers feeds the text encoder.
            let ours = sd.tokenizer().encode(prompt, 1).unwrap();
            assert_eq!(ours.chunks[0], ids("input_ids"), "{model}: {prompt:?}");
            assert_eq!(ours.chunks.len(), inner.len().div_ceil(75).max(1));
        }
    }
}

#[test]
fn text_embeddings_match_diffusers() {
    for model in MODELS {
        let sd = load(model);
        let r = reference(model);
        for (ids, want) in [
            ("input_ids_cond", "text_cond"),
            ("input_ids_uncond", "text_uncond"),
        ] {
            let ids: Vec<u32> = r[ids]
                .flatten_all()
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = sd.encode_tokens(&[ids]).unwrap();
            let diff = max_abs_diff(&got, &r[want]);
            eprintln!("{model} {want}: max abs difference {diff:e}");
            assert!(diff < 1e-4, "{model} {want}: max diff {diff}");
        }
    }
}

#[test]
fn one_unet_forward_matches_diffusers() {
    for model in MODELS {
        let sd = load(model);
        let r = reference(model);
        let t = r["unet_t"].to_vec1::<f32>().unwrap()[0] as f64;
        let got = sd.unet_forward(&r["unet_in"], t, &r["unet_ctx"]).unwrap();
        let diff = max_abs_diff(&got, &r["unet_out"]);
        eprintln!("{model} UNet: max abs difference {diff:e}");
        assert!(diff < 1e-4, "{model}: UNet max diff {diff}");
    }
}

fn assert_pixels_match(model: &str, kind: SchedulerKind, key: &str) {
    let images = txt2img(model, kind);
    let diff = max_pixel_diff(&images, &reference(model)[key]);
    eprintln!("{model} {kind}: max pixel difference {diff}/255");
    assert!(diff <= 2, "{model} {kind}: max pixel diff {diff}/255");
}

#[test]
fn ddim_images_match_diffusers_within_2_levels() {
    for model in MODELS {
        assert_pixels_match(model, SchedulerKind::Ddim, "image_ddim_u8");
    }
}

#[test]
fn euler_images_match_diffusers_within_2_levels() {
    for model in MODELS {
        assert_pixels_match(model, SchedulerKind::Euler, "image_euler_u8");
    }
}

#[test]
fn dpmpp_2m_karras_images_match_diffusers_within_2_levels() {
    for model in MODELS {
        assert_pixels_match(
            model,
            SchedulerKind::DpmPp2mKarras,
            "image_dpmpp_2m_karras_u8",
        );
    }
}

#[test]
fn scheduler_timesteps_match_diffusers() {
    for model in MODELS {
        let sd = load(model);
        let r = reference(model);
        for (kind, key) in [
            (SchedulerKind::Ddim, "timesteps_ddim"),
            (SchedulerKind::Euler, "timesteps_euler"),
            (SchedulerKind::DpmPp2mKarras, "timesteps_dpmpp_2m_karras"),
        ] {
            let want = r[key].to_vec1::<f32>().unwrap();
            let got: Vec<f32> = sd
                .sampler_timesteps(kind, 8)
                .unwrap()
                .iter()
                .map(|t| *t as f32)
                .collect();
            assert_eq!(got, want, "{model} {kind}");
        }
    }
}

#[test]
fn image_to_image_at_strength_0_6_matches_diffusers() {
    let init = image::open(assets().join("reference/init_64.png"))
        .unwrap()
        .to_rgb8();
    for model in MODELS {
        let sd = load(model);
        let r = reference(model);
        let mut req = GenerateRequest::text(PROMPT, 64, 64, vec![0, 1]);
        req.negative_prompt = NEGATIVE.into();
        req.steps = 8;
        req.scheduler = Some(SchedulerKind::Euler);
        req.initial_noise = Some(r["img2img_noise"].clone());
        req.init = Some(InitImage {
            image: init.clone(),
            strength: 0.6,
            mask: None,
        });
        let mut steps = 0;
        let out = sd
            .generate(&req, &mut |p| {
                steps = p.step;
                assert_eq!(p.total, 4);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(steps, 4, "strength 0.6 of 8 steps runs 4");
        let diff = max_pixel_diff(&out.images, &r["image_img2img_u8"]);
        eprintln!("{model} img2img: max pixel difference {diff}/255");
        assert!(diff <= 2, "{model} img2img: max pixel diff {diff}/255");
        // The encoder's mean, as diffusers computes it.
        let latents = sd
            .vae_encode(
                &imagine_engine::pixels::image_to_tensor(&init, &candle_core::Device::Cpu).unwrap(),
            )
            .unwrap();
        let want: Tensor = r["img2img_init_latents"].narrow(0, 0, 1).unwrap();
        assert!(
            max_abs_diff(&latents, &want) < 1e-4,
            "{model}: VAE mean differs"
        );
    }
}

/// The kernel path is chosen once per process (`IMAGINE_KERNELS`), so this runs every test in
/// this file again in child processes: on this CPU's own path and on each lower path it has
/// (AVX2 on an AVX-512 machine, the generic fallback (the gemm crate) everywhere, and candle's
/// own ops with none of our kernels, the path a GPU takes minus the device), each with
/// denormals flushed as the product runs (`imagine generate`, bench and the bot flush them on
/// every compute thread), while this process checks the unflushed mode. The same 2/255 bound
/// then holds for each. On aarch64 (NEON; CI runs it under qemu) the paths are NEON, generic
/// and candle.
#[test]
fn parity_holds_on_every_lower_kernel_path() {
    use imagine_engine::kernels::isa::isa;
    if std::env::var_os("IMAGINE_KERNELS").is_some() {
        return; // a child, or a run forced to one path by hand
    }
    // IMAGINE_PARITY_PATHS (comma-separated) narrows the children: CI's qemu run keeps only
    // NEON, as emulation makes each child cost minutes; the others are named, not hidden.
    let only = std::env::var("IMAGINE_PARITY_PATHS").ok();
    for level in std::iter::once(isa()).chain(isa().lower_paths()) {
        if let Some(only) = &only {
            if !only.split(',').any(|p| p.trim() == level.name()) {
                eprintln!(
                    "skipped: parity on the {} path (not in IMAGINE_PARITY_PATHS)",
                    level.name()
                );
                continue;
            }
        }
        let out = this_test_binary()
            .env("IMAGINE_KERNELS", level.name())
            .env(FLUSH, "1")
            .env_remove("IMAGINE_REQUIRE_KERNELS")
            .args(["--skip", "parity_holds_on_every_lower_kernel_path"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "parity on the {} path with denormals flushed:\n{}\n{}",
            level.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A command running this test binary again: through the emulator where this one runs under
/// user-mode emulation (the aarch64 runner, .ci/aarch64-runner, names it), since the kernel
/// cannot start a foreign binary by itself where binfmt_misc is not set up.
fn this_test_binary() -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    match std::env::var_os("IMAGINE_TEST_EMULATOR") {
        Some(emulator) => {
            let mut cmd = std::process::Command::new(emulator);
            cmd.arg(exe);
            cmd
        }
        None => std::process::Command::new(exe),
    }
}

/// A run forced to a path (see above) is on that path, where the CPU has it, and flushes
/// denormals on every compute thread when asked to.
#[test]
fn kernels_run_on_the_path_asked_for() {
    use imagine_engine::kernels::denormals::flushes_on_this_thread;
    use imagine_engine::kernels::isa::{detected, isa, Isa};
    if let Ok(asked) = std::env::var("IMAGINE_KERNELS") {
        let asked = Isa::parse(&asked).unwrap();
        let expected = if detected().includes(asked) {
            asked
        } else {
            detected()
        };
        assert_eq!(isa(), expected);
    }
    if std::env::var_os(FLUSH).is_some() {
        load(MODELS[0]);
        assert!(flushes_on_this_thread());
        assert!(rayon::broadcast(|_| flushes_on_this_thread())
            .iter()
            .all(|&f| f));
    }
}
