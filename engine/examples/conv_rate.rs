//! 3x3 convolution speed at the VAE decoder's and the SD UNet's shapes: the direct (implicit
//! GEMM) convolution against Winograd's F(2x2, 3x3), both on packed weights, in seconds per
//! call and in "direct-equivalent" GFLOP/s (2·Cout·Cin·9·H·W per image, for both, so the
//! rates compare the time).
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p imagine-engine --example conv_rate
//! ```
use std::time::Instant;

use candle_core::{Device, Tensor};
use imagine_engine::kernels::conv::{pack_weights, PackedConv, PackedConv2dOp};
use imagine_engine::kernels::matmul::{Bf16, Precision, F32};
use imagine_engine::kernels::winograd::WinogradWeights;

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn time(
    runs: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    f()?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn row<P: Precision>(
    name: &str,
    (batch, cin, h, w, cout): (usize, usize, usize, usize, usize),
    runs: usize,
) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (batch, cin, h, w), &dev)?;
    let wt = Tensor::randn(0f32, 0.05, (cout, cin, 3, 3), &dev)?;
    let bias = Tensor::zeros(cout, candle_core::DType::F32, &dev)?;
    let data = wt.flatten_all()?.to_vec1::<f32>()?;
    let direct = pack_weights::<P>(&data, cout);
    let wino = WinogradWeights::<P>::pack(&data, cout, cin);
    let op = PackedConv2dOp {
        weights: PackedConv::Direct(&direct, (cout, cin, 3, 3)),
        stride: 1,
        padding: 1,
    };
    let d = time(runs, || x.apply_op2_no_bwd(&bias, &op))?;
    let wop = PackedConv2dOp {
        weights: PackedConv::Winograd(&wino),
        stride: 1,
        padding: 1,
    };
    let wg = time(runs, || x.apply_op2_no_bwd(&bias, &wop))?;
    let a = x.apply_op2_no_bwd(&bias, &op)?;
    let b = x.apply_op2_no_bwd(&bias, &wop)?;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let gflop = 2.0 * (batch * cout * cin * 9 * h * w) as f64 / 1e9;
    println!(
        "{name:<22} {batch}x{cin}x{h}x{w} -> {cout}: direct {d:8.4} s ({:6.1} GF/s), winograd {wg:8.4} s ({:6.1}), {:.2}x, max diff {diff:.2e}",
        gflop / d,
        gflop / wg,
        d / wg
    );
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let shapes = [
        ("vae 64 (512 px)", (1, 512, 64, 64, 512)),
        ("vae 128", (1, 512, 128, 128, 512)),
        ("vae 256, 512->256", (1, 512, 256, 256, 256)),
        ("vae 256", (1, 256, 256, 256, 256)),
        ("vae 512, 256->128", (1, 256, 512, 512, 128)),
        ("vae 512", (1, 128, 512, 512, 128)),
        ("unet 64 (512 px)", (1, 320, 64, 64, 320)),
        ("unet 32", (1, 640, 32, 32, 640)),
        ("unet 16", (1, 1280, 16, 16, 1280)),
        ("unet 8", (1, 1280, 8, 8, 1280)),
        ("unet 8, batch 4", (4, 1280, 8, 8, 1280)),
    ];
    let only = std::env::var("ONLY").unwrap_or_default();
    for (name, dims) in shapes {
        if !only.is_empty() && !name.contains(&only) {
            continue;
        }
        row::<F32>(name, dims, runs)?;
        if std::env::var("BF16").is_ok() && Bf16::available() {
            row::<Bf16>(&format!("{name} bf16"), dims, runs)?;
        }
    }
    Ok(())
}
