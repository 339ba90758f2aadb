//! GEMM throughput at the UNet's and VAE's shapes: our kernel in fp32 and bf16 vs the gemm
//! crate (what candle uses), and one core's fp32 FMA peak at each vector width the CPU has
//! (AVX-512, AVX2; NEON on aarch64) and its bf16 dot-product peak. Run with `PEAK=1` for the peaks alone:
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p imagine-engine --example gemm_rate
//! ```
//!
//! `IMAGINE_KERNELS=avx2` times the AVX2 kernel on an AVX-512 machine.
use imagine_engine::kernels::isa::isa;
use imagine_engine::kernels::matmul::{self, AOperand, Bf16, PackedA, Precision, F32};
use imagine_engine::kernels::{Mat, MatMut};
use std::time::Instant;

fn main() {
    if std::env::var("PEAK").is_ok() {
        print_peaks();
        return;
    }
    println!("our fp32 kernel: {}", isa().name());
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
        let fp32 = if matmul::available() {
            format!("{:.1}", f / best_of(4, || ours(&mut c, &packed, b_mat)))
        } else {
            "-".into()
        };
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
            "m{m} n{n} k{k}: ours fp32 {fp32} GFLOP/s, ours bf16 {bf16}, gemm crate fp32 {crate_rate:.1}"
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

/// One core's peaks, at each width this CPU has.
#[cfg(target_arch = "x86_64")]
fn print_peaks() {
    use imagine_engine::kernels::isa::{detected, Isa};
    if detected().includes(Isa::Avx512) {
        // SAFETY: the CPU has AVX-512F.
        let rate = unsafe { peak_avx512() };
        println!("peak one core: fp32 FMA AVX-512 {rate:.1} GFLOP/s");
    }
    if detected().includes(Isa::Avx2) {
        // SAFETY: the CPU has AVX2 and FMA.
        let rate = unsafe { peak_avx2() };
        println!("peak one core: fp32 FMA AVX2 {rate:.1} GFLOP/s");
    }
    if Bf16::available() {
        // SAFETY: the CPU has AVX512_BF16.
        let rate = unsafe { peak_bf16() };
        println!("peak one core: bf16 dot {rate:.1} GFLOP/s");
    }
}

/// One core's NEON fp32 FMA peak (never measured by us yet: no ARM machine so far).
#[cfg(target_arch = "aarch64")]
fn print_peaks() {
    // SAFETY: NEON is part of every aarch64 target.
    let rate = unsafe { peak_neon() };
    println!("peak one core: fp32 FMA NEON {rate:.1} GFLOP/s");
}

/// Sixteen independent 4-wide FMA chains on one core (four FMA pipes of latency 4 on the
/// widest current cores), in GFLOP/s.
///
/// # Safety
/// The CPU must support NEON (every aarch64 CPU does).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn peak_neon() -> f64 {
    use std::arch::aarch64::*;
    let (a, b) = (vdupq_n_f32(0.999), vdupq_n_f32(0.001));
    let mut c = [a; 16];
    let iters = 100_000_000usize;
    let t = Instant::now();
    for _ in 0..iters {
        for v in c.iter_mut() {
            *v = vfmaq_f32(b, a, *v);
        }
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(c.iter().map(|x| vaddvq_f32(*x)).sum::<f32>());
    (iters * 16 * 8) as f64 / s / 1e9
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn print_peaks() {
    println!("no peak measurement for this architecture yet");
}

/// Twelve independent FMA chains on one core, in GFLOP/s.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn peak_avx512() -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(0.001));
    let mut c = [a; 12];
    let iters = 100_000_000usize;
    let t = Instant::now();
    for _ in 0..iters {
        for v in c.iter_mut() {
            *v = _mm512_fmadd_ps(a, *v, b);
        }
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(c.iter().map(|x| _mm512_reduce_add_ps(*x)).sum::<f32>());
    (iters * 12 * 32) as f64 / s / 1e9
}

/// Twelve independent 8-wide FMA chains on one core (enough to cover two FMA pipes of latency
/// 4 or 5), in GFLOP/s.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_avx2() -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999), _mm256_set1_ps(0.001));
    let mut c = [a; 12];
    let iters = 100_000_000usize;
    let t = Instant::now();
    for _ in 0..iters {
        for v in c.iter_mut() {
            *v = _mm256_fmadd_ps(a, *v, b);
        }
    }
    let s = t.elapsed().as_secs_f64();
    let mut sum = [0f32; 8];
    for v in c {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
        for (s, l) in sum.iter_mut().zip(lanes) {
            *s += l;
        }
    }
    std::hint::black_box(sum);
    (iters * 12 * 16) as f64 / s / 1e9
}

/// Twelve independent `vdpbf16ps` chains on one core, in GFLOP/s (64 per instruction).
///
/// # Safety
/// The CPU must support AVX512_BF16.
#[cfg(target_arch = "x86_64")]
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
