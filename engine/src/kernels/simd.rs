//! Vectorisable scalar math and runtime CPU dispatch for the element-wise kernels.
//!
//! The crate is built for baseline x86-64 (SSE2), so loops would only ever get 4-wide vectors.
//! [`multiversion`] compiles a kernel for AVX-512 (or AVX2+FMA) too and picks one at run time;
//! the `#[inline(always)]` helpers below are written branch-free so LLVM turns the loops that
//! call them into full-width SIMD there. On aarch64 the baseline is NEON already (4-wide, as
//! wide as that architecture's vectors get), so there the body is compiled once and runs on
//! every path, `generic` included. The GEMM has its own micro-kernels.

/// Defines a function whose body is compiled three times on x86-64 (AVX-512, AVX2+FMA,
/// baseline; once on aarch64, whose baseline has NEON) and
/// dispatched at run time on [`super::isa::vector_isa`] (what the CPU has, unless lowered).
/// The body is an `#[inline(always)]` inner function, so it is always compiled with the
/// wrapper's features; a closure handed to a
/// `#[target_feature]` function is not (LLVM may leave it out of line, at SSE2 width, which
/// is how the attention softmax and group norm once ran 4-wide).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,bmi2")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            match $crate::kernels::isa::vector_isa() {
                // SAFETY: `vector_isa` is never above what the CPU has.
                $crate::kernels::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                $crate::kernels::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                $crate::kernels::isa::Isa::Generic
                | $crate::kernels::isa::Isa::Candle
                | $crate::kernels::isa::Isa::Neon => {}
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// e^x for f32, branch-free (Cephes `expf`: range reduction by ln 2 and a degree-5
/// polynomial), within 2 ulp of `f32::exp` for x in [-87, 88]; smaller x gives ~1e-38.
#[allow(clippy::excessive_precision)] // Cephes' published coefficients, kept verbatim.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    let k = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let scale = f32::from_bits(((k + 127) as u32) << 23);
    e * scale
}

/// x * sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// The exact (erf) GELU, as `torch.nn.functional.gelu` computes it by default.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::excessive_precision)] // reference values as printed by Python
    use super::*;

    #[test]
    fn exp_matches_std_within_two_ulp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, std) = (exp(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn erf_and_gelu_are_close_to_reference_values() {
        // erf values from the Python math module.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.5, 0.999_999_25),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
        assert!((gelu(1.0) - 0.841_344_74).abs() < 2e-7);
        assert!((silu(2.0) - 1.761_594_2).abs() < 2e-7);
    }

    multiversion! {
        fn exps(out: &mut [f32]) {
            for (i, v) in out.iter_mut().enumerate() {
                *v = exp(i as f32 / 10.0);
            }
        }
    }

    #[test]
    fn multiversion_runs_the_body_on_every_level() {
        let check = || {
            let mut v = vec![0f32; 100];
            exps(&mut v);
            assert!((v[10] - std::f32::consts::E).abs() < 1e-6);
            assert!((v[99] - 9.9f32.exp()).abs() < 1e-6 * 9.9f32.exp());
        };
        check();
        for level in crate::kernels::isa::vector_levels() {
            crate::kernels::isa::with_vectors(level, check);
        }
    }
}
