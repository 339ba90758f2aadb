//! Flush-to-zero and denormals-are-zero on the threads that compute.
//!
//! Subnormal floats take a slow microcode path on x86: one SD-1.5 UNet step with random
//! weights took 25 s with them and 13 s flushed (DESIGN.md). Inference runtimes
//! (PyTorch's `set_flush_denormal`, OpenVINO, oneDNN) flush them, and so do we: `imagine bench`,
//! `imagine generate` and the bot's worker call [`flush_on_compute_threads`] before they
//! compute. The mode is per thread, so it is set on the caller and on every thread of rayon's
//! global pool (where our kernels, candle's and gemm's run). Values that small never change
//! an 8-bit pixel. On x86-64 that is MXCSR's FTZ and DAZ bits; on aarch64 FPCR.FZ, which does
//! both (subnormal inputs and results of single and double precision become zero).

/// MXCSR bits: FTZ (flush results to zero, bit 15) and DAZ (denormal inputs are zero, bit 6).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

/// Sets flush-to-zero and denormals-are-zero on the calling thread.
#[cfg(target_arch = "x86_64")]
#[allow(deprecated)] // _mm_setcsr is deprecated in favour of inline asm; it still does this job.
pub fn flush_on_this_thread() {
    use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
    // SAFETY: only changes this thread's floating-point mode, which we own.
    unsafe { _mm_setcsr(_mm_getcsr() | FTZ_DAZ) }
}

/// Whether the calling thread flushes denormals (both FTZ and DAZ set).
#[cfg(target_arch = "x86_64")]
#[allow(deprecated)]
pub fn flushes_on_this_thread() -> bool {
    // SAFETY: reads this thread's MXCSR.
    unsafe { std::arch::x86_64::_mm_getcsr() & FTZ_DAZ == FTZ_DAZ }
}

/// FPCR bit 24: FZ, flush-to-zero (AArch64 has no separate denormals-are-zero bit: FZ
/// treats subnormal inputs as zero too).
#[cfg(target_arch = "aarch64")]
const FZ: u64 = 1 << 24;

#[cfg(target_arch = "aarch64")]
fn fpcr() -> u64 {
    let fpcr: u64;
    // SAFETY: reads this thread's floating-point control register.
    unsafe {
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags))
    };
    fpcr
}

/// Sets flush-to-zero on the calling thread.
#[cfg(target_arch = "aarch64")]
pub fn flush_on_this_thread() {
    // SAFETY: only changes this thread's floating-point mode, which we own.
    unsafe {
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr() | FZ, options(nomem, nostack, preserves_flags))
    }
}

/// Whether the calling thread flushes denormals (FZ set).
#[cfg(target_arch = "aarch64")]
pub fn flushes_on_this_thread() -> bool {
    fpcr() & FZ != 0
}

/// Elsewhere the mode stays as it is.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn flush_on_this_thread() {}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn flushes_on_this_thread() -> bool {
    false
}

/// Sets the mode on the calling thread and on every thread of rayon's global pool (building
/// the pool with its defaults if nobody has yet). Returns whether all of them flush now.
pub fn flush_on_compute_threads() -> bool {
    flush_on_this_thread();
    let pool = rayon::broadcast(|_| {
        flush_on_this_thread();
        flushes_on_this_thread()
    });
    flushes_on_this_thread() && pool.iter().all(|&flushes| flushes)
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    #[test]
    fn every_compute_thread_flushes_subnormal_results() {
        assert!(flush_on_compute_threads());
        // The smallest normal float halved is subnormal; flushed, it is zero.
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        assert_eq!(std::hint::black_box(tiny * 0.5), 0.0);
        let results = rayon::broadcast(|_| std::hint::black_box(tiny) * 0.5);
        assert!(results.iter().all(|&r| r == 0.0), "{results:?}");
        // A subnormal input counts as zero (DAZ on x86, FZ's input half on aarch64).
        let subnormal = std::hint::black_box(f32::from_bits(1));
        assert_eq!(std::hint::black_box(subnormal * 2.0f32.powi(30)), 0.0);
    }
}
