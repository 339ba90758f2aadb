//! Which instruction set the kernels run on, decided once per process.
//!
//! The best level this CPU has is used, unless the hidden setting `IMAGINE_KERNELS`
//! (`avx512`, `avx2`, `generic` or `candle`) asks for a lower one: that is how a machine with
//! AVX-512 checks the AVX2 and generic paths against its own and against the parity tests, and
//! how CI runs the parity tests through candle's own ops alone (`candle`), the path a GPU takes. Every
//! dispatch (whether weights are packed, which GEMM micro-kernel and which compilation of
//! [`super::simd::multiversion`]'s kernels runs) follows [`isa`], so a process never mixes paths.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level, ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No kernels of ours at all: every layer runs candle's ops, as on a GPU.
    Candle,
    /// No vector kernels: our scalar kernels, candle's convolutions and the gemm crate.
    Generic,
    /// AVX2 + FMA: 8-wide vectors, 16 registers.
    Avx2,
    /// AVX-512 F/BW/DQ/VL: 16-wide vectors, 32 registers (and bf16 where the CPU has it).
    Avx512,
}

impl Isa {
    /// The `IMAGINE_KERNELS` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Generic => "generic",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Parses an `IMAGINE_KERNELS` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "candle" => Ok(Self::Candle),
            "generic" => Ok(Self::Generic),
            "avx2" => Ok(Self::Avx2),
            "avx512" => Ok(Self::Avx512),
            _ => Err(format!(
                "IMAGINE_KERNELS={s:?} is not a kernel path: use avx512, avx2, generic or candle"
            )),
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        [Self::Candle, Self::Generic, Self::Avx2, Self::Avx512]
            .get(v as usize)
            .copied()
    }
}

const UNSET: u8 = u8::MAX;
static LEVEL: AtomicU8 = AtomicU8::new(UNSET);

/// The level the kernels run on in this process.
#[inline]
pub fn isa() -> Isa {
    match Isa::from_u8(LEVEL.load(Ordering::Relaxed)) {
        Some(isa) => isa,
        None => {
            let chosen = chosen(detected(), std::env::var("IMAGINE_KERNELS").ok().as_deref());
            // Racing first callers all compute the same value.
            LEVEL.store(chosen as u8, Ordering::Relaxed);
            chosen
        }
    }
}

/// The level `IMAGINE_KERNELS` asks for, where the CPU has it; otherwise the best it has
/// (with a warning saying why the setting was not followed).
fn chosen(best: Isa, setting: Option<&str>) -> Isa {
    let Some(setting) = setting else {
        return best;
    };
    match Isa::parse(setting) {
        Ok(wanted) if wanted <= best => wanted,
        Ok(wanted) => {
            tracing::warn!(
                "IMAGINE_KERNELS={} needs instructions this CPU lacks; using {}",
                wanted.name(),
                best.name()
            );
            best
        }
        Err(e) => {
            tracing::warn!("{e}; using {}", best.name());
            best
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("bmi2");
        if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

/// Which vector code runs: [`isa`], except inside a unit test's [`with_vectors`].
#[inline]
pub(crate) fn vector_isa() -> Isa {
    #[cfg(test)]
    if let Some(forced) = Isa::from_u8(FORCED.load(Ordering::Relaxed)) {
        return forced;
    }
    isa()
}

#[cfg(test)]
static FORCED: AtomicU8 = AtomicU8::new(UNSET);

/// Runs `f` with the micro-kernels and element-wise kernels compiled for `level` (AVX2 or
/// AVX-512, which the CPU must have), one such test at a time. Only the vector code changes,
/// not what is available (packed weights, bf16), so tests running meanwhile stay valid: they
/// may run on either path, and both compute the same results.
#[cfg(test)]
pub(crate) fn with_vectors<T>(level: Isa, f: impl FnOnce() -> T) -> T {
    use std::sync::Mutex;
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    assert!(
        level >= Isa::Avx2 && level <= isa(),
        "{level:?} cannot run here"
    );
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.store(UNSET, Ordering::Relaxed);
        }
    }
    let _restore = Restore;
    FORCED.store(level as u8, Ordering::Relaxed);
    f()
}

/// The levels with vector kernels of ours that this process runs, for tests that check each.
#[cfg(test)]
pub(crate) fn vector_levels() -> Vec<Isa> {
    [Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&l| l <= isa())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_picks_a_lower_level_but_never_a_missing_one() {
        assert_eq!(chosen(Isa::Avx512, None), Isa::Avx512);
        assert_eq!(chosen(Isa::Avx512, Some("avx2")), Isa::Avx2);
        assert_eq!(chosen(Isa::Avx512, Some(" Generic ")), Isa::Generic);
        assert_eq!(chosen(Isa::Avx2, Some("avx512")), Isa::Avx2);
        assert_eq!(chosen(Isa::Avx2, Some("sse9")), Isa::Avx2);
        assert_eq!(chosen(Isa::Generic, Some("candle")), Isa::Candle);
    }

    #[test]
    fn bad_settings_say_what_is_accepted() {
        let e = Isa::parse("avx-512").unwrap_err();
        assert!(e.contains("avx512, avx2, generic or candle"), "{e}");
        for isa in [Isa::Candle, Isa::Generic, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
    }
}
