//! GEMM throughput at the UNet's and VAE's shapes: our kernel in fp32 and bf16 vs the gemm
//! crate (what candle uses), and one core's fp32 FMA and bf16 dot-product peaks. Run with `PEAK=1` for the peak alone:
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p imagine-engine --example gemm_rate
//! ```
use imagine_engine::kernels::matmul::{self, AOperand, Bf16, PackedA, Precision, F32};
use imagine_engine::kernels::{Mat, MatMut};
use std::time::Instant;

fn main() {
    if std::env::var("PEAK").is_ok() {
        println!("peak one core: fp32 FMA {:.1} GFLOP/s", unsafe { peak() });
        if Bf16::available() {
            println!("peak one core: bf16 dot {:.1} GFLOP/s", unsafe {
                peak_bf16()
            });
        }
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
        let a_mat = Mat {
            data: &a,
            rows: m,
            cols: k,
            row_stride: k,
            col_stride: 1,
        };
        let b_mat = Mat {
            data: &b,
            rows: k,
            cols: n,
            row_stride: n,
            col_stride: 1,
        };
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        let packed = PackedA::<F32>::pack(a_mat);
        let fp32 = f / best_of(4, || ours(&mut c, &packed, b_mat));
        let bf16 = if Bf16::available() {
            let packed = PackedA::<Bf16>::pack(a_mat);
            format!("{:.1}", f / best_of(4, || ours(&mut c, &packed, b_mat)))
        } else {
            "-".into()
        };
        let crate_rate = f / best_of(4, || unsafe {
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
            )
        });
        println!(
            "m{m} n{n} k{k}: ours fp32 {fp32:.1} GFLOP/s, ours bf16 {bf16}, gemm crate fp32 {crate_rate:.1}"
        );
    }
}

/// The convolution's product: A (the weights) packed once, B packed per call.
fn ours<P: Precision>(c: &mut [f32], a: &PackedA<P>, b: Mat) {
    let (m, n) = (a.rows(), b.cols);
    matmul::gemm(MatMut::new(c, m, n, n), AOperand::Packed(a), &b, 1.0, false);
}

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
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

/// Twelve independent `vdpbf16ps` chains on one core, in GFLOP/s (64 per instruction).
///
/// # Safety
/// The CPU must support AVX512_BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn peak_bf16() -> f64 {
    use std::arch::x86_64::*;
    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
    let mut c = [_mm512_setzero_ps(); 12];
    let iters = 100_000_000usize;
    let t = Instant::now();
    for _ in 0..iters {
        for v in c.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, x, x);
        }
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(c.iter().map(|x| _mm512_reduce_add_ps(*x)).sum::<f32>());
    (iters * 12 * 64) as f64 / s / 1e9
}
