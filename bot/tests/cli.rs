//! `imagine generate` as a user runs it: on the committed tiny models, writing PNGs that carry
//! their parameters, deterministic across runs and thread counts, and reproducing the diffusers
//! reference from `--init-latents`. Bad input fails with a message, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model(name: &str) -> String {
    root()
        .join("assets/models")
        .join(name)
        .display()
        .to_string()
}

fn imagine(args: &[&str], threads: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imagine"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run imagine")
}

fn generate(out: &Path, extra: &[&str], threads: &str) -> Vec<u8> {
    let sd = model("tiny-sd15");
    let out_s = out.display().to_string();
    let mut args = vec![
        "generate",
        "a brown puppy on the beach",
        "--model",
        &sd,
        "--out",
        &out_s,
    ];
    args.extend_from_slice(extra);
    let o = imagine(&args, threads);
    assert!(
        o.status.success(),
        "imagine failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

fn testdata(name: &str) -> String {
    let path = root().join("assets/testdata/images").join(name);
    path.display().to_string()
}

fn parameters(png: &[u8]) -> String {
    imagine::render::read_parameters(png)
        .unwrap()
        .expect("a parameters chunk")
}

#[test]
fn a_grid_png_carries_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let png = generate(
        &dir.path().join("g.png"),
        &[
            "--grid",
            "--seed",
            "42",
            "--negative",
            "blurry",
            "--steps",
            "6",
            "--precision",
            "fp32",
        ],
        "2",
    );
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (128, 128));
    assert_eq!(
        parameters(&png),
        "a brown puppy on the beach\nNegative prompt: blurry\nSteps: 6, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny-sd15, Precision: fp32, Device: cpu"
    );
}

#[test]
fn a_prompt_in_any_language_is_written_into_the_png_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "un café — à Paris ☕ 東京 Москва";
    let out = dir.path().join("u.png");
    let (sd, out_s) = (model("tiny-sd15"), out.display().to_string());
    let o = imagine(
        &[
            "generate", prompt, "--model", &sd, "--steps", "2", "--out", &out_s,
        ],
        "2",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = parameters(&std::fs::read(&out).unwrap());
    assert_eq!(text.lines().next(), Some(prompt), "{text}");
}

#[test]
fn a_rotated_jpeg_photo_and_an_animated_gif_are_init_images() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["photo_exif_orientation_6.jpg", "animated.gif"] {
        let init = testdata(name);
        let png = generate(
            &dir.path().join("i.png"),
            &["--init-image", &init, "--strength", "0.5", "--steps", "4"],
            "2",
        );
        assert!(
            parameters(&png).contains(", Denoising strength: 0.5, "),
            "{name}: {}",
            parameters(&png)
        );
    }
}

#[test]
fn the_same_seed_gives_a_byte_identical_png_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let seed = ["--seed", "7", "--scheduler", "euler-a", "--steps", "6"];
    let a = generate(&dir.path().join("a.png"), &seed, "1");
    let b = generate(&dir.path().join("b.png"), &seed, "2");
    let c = generate(&dir.path().join("c.png"), &seed, "2");
    assert!(a == b && b == c, "same seed, different bytes");
    let other = generate(
        &dir.path().join("d.png"),
        &["--seed", "8", "--scheduler", "euler-a", "--steps", "6"],
        "2",
    );
    assert_ne!(a, other);
}

#[test]
fn init_latents_reproduce_the_diffusers_reference() {
    let dir = tempfile::tempdir().unwrap();
    let latents = root()
        .join("assets/reference/latents_2x4x8x8.safetensors")
        .display()
        .to_string();
    let png = generate(
        &dir.path().join("r.png"),
        &reference_ddim_args(&latents),
        "2",
    );
    let worst = max_diff_from_reference(&png, "tiny-sd15");
    assert!(
        worst <= 2,
        "max pixel diff {worst}/255 from the diffusers reference"
    );
}

/// The arguments that reproduce the references' DDIM text-to-image run of two images.
fn reference_ddim_args(latents: &str) -> Vec<&str> {
    vec![
        "--init-latents",
        latents,
        "--grid",
        "--steps",
        "8",
        "--scheduler",
        "ddim",
        "--negative",
        "blurry, low quality",
        "--guidance",
        "7.5",
    ]
}

/// Largest difference between a grid PNG of two 64x64 images and `image_ddim_u8` in
/// `assets/reference/<reference>.safetensors`.
fn max_diff_from_reference(png: &[u8], reference: &str) -> u8 {
    let grid = image::load_from_memory(png).unwrap().to_rgb8();
    assert_eq!(grid.dimensions(), (128, 64));
    let refs = candle_core::safetensors::load(
        root().join(format!("assets/reference/{reference}.safetensors")),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = refs["image_ddim_u8"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let mut worst = 0u8;
    for i in 0..2u32 {
        for y in 0..64u32 {
            for x in 0..64u32 {
                let got = grid.get_pixel(i * 64 + x, y).0;
                for c in 0..3 {
                    let w = want[(((i * 64 + y) * 64 + x) * 3 + c as u32) as usize];
                    worst = worst.max(got[c].abs_diff(w));
                }
            }
        }
    }
    worst
}

#[test]
fn bad_input_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png").display().to_string();
    let sd = model("tiny-sd15");
    let bomb = testdata("bomb_50000x50000.png");
    let random = testdata("random_bytes.png");
    let cases: &[(&[&str], &str)] = &[
        (&["--size", "60x64"], "multiples of 8"),
        (&["--size", "big"], "WxH"),
        (&["--steps", "0"], "steps"),
        (&["--scheduler", "pndm"], "euler"),
        (&["--init-image", "/nonexistent.png"], "cannot read"),
        (&["--init-image", "Cargo.toml"], "not an image"),
        (
            &["--init-image", &bomb],
            "is 50000x50000 pixels, over the limit of 4096x4096",
        ),
        (&["--init-image", &random], "it is not an image"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["generate", "p", "--model", &sd, "--out", &out];
        args.extend_from_slice(extra);
        let o = imagine(&args, "2");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} should fail");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
    }
    let o = imagine(
        &["generate", "p", "--model", "/no/such/folder", "--out", &out],
        "2",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither a folder"));
}

/// Lays out `assets/models/<name>` as the Hugging Face cache would hold repo
/// `test-org/<name>`.
fn fake_hf_cache(home: &Path, name: &str) -> PathBuf {
    let repo = home.join(format!("hub/models--test-org--{name}"));
    let snapshot = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    let src = root().join("assets/models").join(name);
    for entry in walk(&src) {
        let target = snapshot.join(entry.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, target).unwrap();
    }
    snapshot
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_sdxl_repo_id_loads_from_the_cache_and_needs_its_second_text_encoder() {
    let home = tempfile::tempdir().unwrap();
    let snapshot = fake_hf_cache(home.path(), "tiny-sdxl");
    let out = home.path().join("xl.png").display().to_string();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_imagine"))
            .args([
                "generate",
                "a lighthouse at dusk",
                "--model",
                "test-org/tiny-sdxl",
                "--steps",
                "2",
                "--out",
                &out,
            ])
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&out).unwrap();
    let params = parameters(&png);
    assert!(params.contains(", Model: test-org/tiny-sdxl, "), "{params}");
    let decoded = image::load_from_memory(&png).unwrap();
    assert_eq!(decoded.width(), 64, "the model's native size");

    std::fs::remove_file(snapshot.join("text_encoder_2/model.safetensors")).unwrap();
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("text_encoder_2/model.safetensors"), "{err}");
}

#[test]
fn a_repo_id_loads_from_the_hugging_face_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let snapshot = fake_hf_cache(home.path(), "tiny-sd15");
    let out = home.path().join("o.png").display().to_string();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_imagine"))
            .args([
                "generate",
                "a cat",
                "--model",
                "test-org/tiny-sd15",
                "--steps",
                "2",
                "--out",
                &out,
            ])
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&out).unwrap();
    assert!(
        parameters(&png).contains(", Model: test-org/tiny-sd15, "),
        "{}",
        parameters(&png)
    );

    std::fs::remove_file(snapshot.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("vae/diffusion_pytorch_model.safetensors") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn fast_decode_with_taesd_from_the_cache_reproduces_the_pipeline_with_autoencoder_tiny() {
    let home = tempfile::tempdir().unwrap();
    fake_hf_cache(home.path(), "tiny-taesd");
    let (sd, out) = (model("tiny-sd15"), home.path().join("t.png"));
    let latents = root()
        .join("assets/reference/latents_2x4x8x8.safetensors")
        .display()
        .to_string();
    let out_s = out.display().to_string();
    let mut args = vec!["generate", "a brown puppy on the beach", "--model", &sd];
    args.extend(reference_ddim_args(&latents));
    // The reference is diffusers in fp32; on a CPU with AVX512_BF16 `auto` would pick bf16,
    // which the tiny random TAESD amplifies past the parity bound (16/255 measured).
    args.extend([
        "--precision",
        "fp32",
        "--taesd",
        "test-org/tiny-taesd",
        "--fast-decode",
        "--out",
        &out_s,
    ]);
    let o = Command::new(env!("CARGO_BIN_EXE_imagine"))
        .args(&args)
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&out).unwrap();
    let worst = max_diff_from_reference(&png, "tiny-taesd");
    assert!(worst <= 2, "max pixel diff {worst}/255 from diffusers");
    assert!(
        parameters(&png).ends_with(", VAE: tiny-taesd"),
        "{}",
        parameters(&png)
    );

    let o = imagine(
        &[
            "generate",
            "p",
            "--model",
            &sd,
            "--fast-decode",
            "--out",
            &out_s,
        ],
        "2",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--taesd"), "{err}");
}

#[test]
fn a_single_file_checkpoint_generates_a_png_and_a_pickle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("single.png");
    let (file, out_s) = (model("tiny-sd21-v.safetensors"), out.display().to_string());
    let o = imagine(
        &[
            "generate",
            "a lighthouse",
            "--model",
            &file,
            "--prediction",
            "v",
            "--size",
            "64x64",
            "--steps",
            "2",
            "--seed",
            "7",
            "--out",
            &out_s,
        ],
        "2",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&out).unwrap();
    let image = image::load_from_memory(&png).unwrap();
    assert_eq!((image.width(), image.height()), (64, 64));
    assert!(
        parameters(&png).contains("Model: tiny-sd21-v"),
        "{}",
        parameters(&png)
    );

    let ckpt = tmp.path().join("model.ckpt");
    std::fs::write(&ckpt, b"\x80\x02}q\x00.").unwrap();
    let o = imagine(
        &[
            "generate",
            "p",
            "--model",
            &ckpt.display().to_string(),
            "--out",
            &out_s,
        ],
        "2",
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("convert it to .safetensors"), "{err}");
    let o = imagine(
        &[
            "generate",
            "p",
            "--model",
            &file,
            "--prediction",
            "x0",
            "--out",
            &out_s,
        ],
        "2",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("use v or epsilon"));
}
