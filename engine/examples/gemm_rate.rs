//! GEMM throughput at the UNet's and VAE's shapes: our kernel vs the gemm crate (what candle
//! uses), and one core's FMA peak. Run with `PEAK=1` for the peak alone:
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p imagine-engine --example gemm_rate
//! ```
use imagine_engine::kernels::{gemm_f32, Mat, MatMut};
use std::time::Instant;
fn main() {
    if std::env::var("PEAK").is_ok() {
        println!("peak one core: {:.1} GFLOP/s", unsafe { peak() });
        return;
    }
    for &(m, n, k) in &[
        (320usize, 4096usize, 2880usize),
        (640, 1024, 5760),
        (1280, 256, 11520),
        (128, 7168, 1152),
        (4096, 2560, 320),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let mut best = f64::MAX;
        for _ in 0..4 {
            let t = Instant::now();
            gemm_f32(
                MatMut::new(&mut c, m, n, n),
                Mat {
                    data: &a,
                    rows: m,
                    cols: k,
                    row_stride: k,
                    col_stride: 1,
                },
                Mat {
                    data: &b,
                    rows: k,
                    cols: n,
                    row_stride: n,
                    col_stride: 1,
                },
                1.0,
                false,
            );
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mut best2 = f64::MAX;
        for _ in 0..4 {
            let t = Instant::now();
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(rayon::current_num_threads()),
                );
            }
            best2 = best2.min(t.elapsed().as_secs_f64());
        }
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        println!(
            "m{m} n{n} k{k}: ours {:.1} GFLOP/s, gemm crate {:.1}",
            f / best,
            f / best2
        );
    }
}

/// Twelve independent FMA chains on one core, in GFLOP/s.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn peak() -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999);
    let b = _mm512_set1_ps(0.001);
    let (
        mut c0,
        mut c1,
        mut c2,
        mut c3,
        mut c4,
        mut c5,
        mut c6,
        mut c7,
        mut c8,
        mut c9,
        mut c10,
        mut c11,
    ) = (a, b, a, b, a, b, a, b, a, b, a, b);
    let iters = 100_000_000usize;
    let t = Instant::now();
    for _ in 0..iters {
        c0 = _mm512_fmadd_ps(a, c0, b);
        c1 = _mm512_fmadd_ps(a, c1, b);
        c2 = _mm512_fmadd_ps(a, c2, b);
        c3 = _mm512_fmadd_ps(a, c3, b);
        c4 = _mm512_fmadd_ps(a, c4, b);
        c5 = _mm512_fmadd_ps(a, c5, b);
        c6 = _mm512_fmadd_ps(a, c6, b);
        c7 = _mm512_fmadd_ps(a, c7, b);
        c8 = _mm512_fmadd_ps(a, c8, b);
        c9 = _mm512_fmadd_ps(a, c9, b);
        c10 = _mm512_fmadd_ps(a, c10, b);
        c11 = _mm512_fmadd_ps(a, c11, b);
    }
    let s = t.elapsed().as_secs_f64();
    let sum = [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11]
        .iter()
        .map(|x| _mm512_reduce_add_ps(*x))
        .sum::<f32>();
    std::hint::black_box(sum);
    (iters * 12 * 32) as f64 / s / 1e9
}
