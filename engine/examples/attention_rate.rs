//! Attention throughput at the shapes SD and SDXL run: our tiled kernel on `[1, S, heads·64]`
//! self-attention (SDXL at 1024: 4,096 tokens at 640 channels, 1,024 at 1280) and
//! cross-attention over 77 tokens, in GFLOP/s (4·Sq·Sk·width per call: both products).
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p imagine-engine --example attention_rate
//! ```
//!
//! `tools/attention_rate.py` times torch's `scaled_dot_product_attention` at the same shapes.
//! Both report the process's CPU time per call divided by the thread count (from
//! `/proc/self/stat`), which a busy machine disturbs less than wall time does.
use candle_core::{Device, Tensor};
use imagine_engine::layers::attention;
use imagine_engine::ComputePrecision;

/// CPU seconds this process has used (user + system), from `/proc/self/stat` (10 ms ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name's closing parenthesis: utime and stime are the 12th and
    // 13th of them.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> candle_core::Result<()> {
    let threads = rayon::current_num_threads() as f64;
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    println!("shape (Sq, Sk, width, heads) | median CPU s per thread | GFLOP/s per thread-second");
    for &(sq, sk, width, heads) in &[
        (4096usize, 4096usize, 640usize, 10usize),
        (1024, 1024, 1280, 20),
        (4096, 77, 640, 10),
        (1024, 1024, 640, 10),
        (256, 256, 1280, 20),
    ] {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, sq, width), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, sk, width), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, sk, width), &dev)?;
        let scale = 1.0 / ((width / heads) as f64).sqrt();
        attention(&q, &k, &v, heads, scale, ComputePrecision::Fp32)?;
        let mut times = Vec::new();
        for _ in 0..runs {
            let start = cpu_seconds();
            attention(&q, &k, &v, heads, scale, ComputePrecision::Fp32)?;
            times.push((cpu_seconds() - start) / threads);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let gflop = 4.0 * (sq * sk * width) as f64 / 1e9;
        println!(
            "({sq}, {sk}, {width}, {heads}) | {median:.4} | {:.1}",
            gflop / median
        );
    }
    Ok(())
}
