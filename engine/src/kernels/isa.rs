//! Which instruction set the kernels run on, decided once per process.
//!
//! The best level this CPU has is used, unless the hidden setting `IMAGINE_KERNELS`
//! (`avx512`, `avx2`, `neon`, `generic` or `candle`) asks for a lower one: that is how a machine
//! with AVX-512 checks the AVX2 and generic paths against its own and against the parity tests,
//! and how CI runs the parity tests through candle's own ops alone (`candle`), the path a GPU
//! takes. x86-64 lowers AVX-512 -> AVX2 -> generic -> candle, aarch64 NEON -> generic -> candle
//! ([`Isa::includes`]). Every
//! dispatch (whether weights are packed, which GEMM micro-kernel and which compilation of
//! [`super::simd::multiversion`]'s kernels runs) follows [`isa`], so a process never mixes paths.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level. The two architectures' levels are not comparable with each
/// other: [`Isa::includes`] says which levels a CPU at a given level also runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// No kernels of ours at all: every layer runs candle's ops, as on a GPU.
    Candle,
    /// No vector kernels: our scalar kernels, candle's convolutions and the gemm crate.
    Generic,
    /// aarch64 NEON (Advanced SIMD, part of every aarch64 CPU): 4-wide vectors with fused
    /// multiply-add, 32 registers.
    Neon,
    /// AVX2 + FMA: 8-wide vectors, 16 registers.
    Avx2,
    /// AVX-512 F/BW/DQ/VL: 16-wide vectors, 32 registers (and bf16 where the CPU has it).
    Avx512,
}

/// Every level, in `from_u8` order.
const ALL: [Isa; 5] = [Isa::Candle, Isa::Generic, Isa::Neon, Isa::Avx2, Isa::Avx512];

impl Isa {
    /// The `IMAGINE_KERNELS` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Generic => "generic",
            Self::Neon => "neon",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Parses an `IMAGINE_KERNELS` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let wanted = s.trim().to_ascii_lowercase();
        ALL.into_iter().find(|l| l.name() == wanted).ok_or_else(|| {
            format!(
                "IMAGINE_KERNELS={s:?} is not a kernel path: use avx512, avx2, neon, generic or \
                 candle"
            )
        })
    }

    /// Whether a CPU at this level can run `other`: itself, the levels below it on the same
    /// architecture, and the architecture-neutral generic and candle paths.
    pub fn includes(self, other: Isa) -> bool {
        match other {
            Self::Candle => true,
            Self::Generic => self != Self::Candle,
            Self::Neon => self == Self::Neon,
            Self::Avx2 => matches!(self, Self::Avx2 | Self::Avx512),
            Self::Avx512 => self == Self::Avx512,
        }
    }

    /// Whether this level runs vector kernels of ours (our GEMM, convolution and attention).
    pub fn has_vector_kernels(self) -> bool {
        matches!(self, Self::Neon | Self::Avx2 | Self::Avx512)
    }

    /// The paths below this one that a CPU at this level can be lowered to, best first.
    pub fn lower_paths(self) -> Vec<Isa> {
        [Self::Avx2, Self::Generic, Self::Candle]
            .into_iter()
            .filter(|&l| l != self && self.includes(l))
            .collect()
    }

    fn from_u8(v: u8) -> Option<Self> {
        ALL.get(v as usize).copied()
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
        Ok(wanted) if best.includes(wanted) => wanted,
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
    // NEON is part of the aarch64 targets' baseline (Rust enables it on every one of them).
    if cfg!(all(target_arch = "aarch64", target_feature = "neon")) {
        return Isa::Neon;
    }
    Isa::Generic
}

/// For a test of a kernel path this machine may lack (`avx512`, `avx2`, `bf16`, `neon`):
/// whether it `runs` here. A test that cannot run its path says so on stderr, and fails
/// instead when the comma-separated `IMAGINE_REQUIRE_KERNELS` names the path: CI lists what
/// the CPU has (from /proc/cpuinfo, independently of [`detected`]), so a path the machine has
/// is never skipped silently.
#[doc(hidden)]
pub fn test_path_runs(path: &str, runs: bool) -> bool {
    if runs {
        return true;
    }
    let required = std::env::var("IMAGINE_REQUIRE_KERNELS").unwrap_or_default();
    assert!(
        !required.split(',').any(|p| p.trim() == path),
        "IMAGINE_REQUIRE_KERNELS lists {path}, but this process cannot run it \
         (detected {}, running {})",
        detected().name(),
        isa().name()
    );
    eprintln!("skipped: the {path} kernels cannot run here");
    false
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

/// Runs `f` with the micro-kernels and element-wise kernels compiled for `level` (NEON, AVX2
/// or AVX-512, which the CPU must have), one such test at a time. Only the vector code changes,
/// not what is available (packed weights, bf16), so tests running meanwhile stay valid: they
/// may run on either path, and both compute the same results.
#[cfg(test)]
pub(crate) fn with_vectors<T>(level: Isa, f: impl FnOnce() -> T) -> T {
    use std::sync::Mutex;
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    assert!(
        level.has_vector_kernels() && isa().includes(level),
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
    let this_arch: &[Isa] = if cfg!(target_arch = "x86_64") {
        &[Isa::Avx2, Isa::Avx512]
    } else if cfg!(target_arch = "aarch64") {
        &[Isa::Neon]
    } else {
        &[]
    };
    this_arch
        .iter()
        .copied()
        .filter(|&l| test_path_runs(l.name(), isa().includes(l)))
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
    fn neon_and_x86_levels_never_stand_in_for_each_other() {
        assert_eq!(chosen(Isa::Neon, None), Isa::Neon);
        assert_eq!(chosen(Isa::Neon, Some("neon")), Isa::Neon);
        assert_eq!(chosen(Isa::Neon, Some("generic")), Isa::Generic);
        assert_eq!(chosen(Isa::Neon, Some("candle")), Isa::Candle);
        assert_eq!(chosen(Isa::Neon, Some("avx2")), Isa::Neon);
        assert_eq!(chosen(Isa::Neon, Some("avx512")), Isa::Neon);
        assert_eq!(chosen(Isa::Avx512, Some("neon")), Isa::Avx512);
        assert_eq!(chosen(Isa::Avx2, Some("neon")), Isa::Avx2);
        assert_eq!(chosen(Isa::Generic, Some("neon")), Isa::Generic);
        assert_eq!(Isa::Neon.lower_paths(), [Isa::Generic, Isa::Candle]);
        assert_eq!(
            Isa::Avx512.lower_paths(),
            [Isa::Avx2, Isa::Generic, Isa::Candle]
        );
        assert_eq!(Isa::Generic.lower_paths(), [Isa::Candle]);
        assert!(Isa::Candle.lower_paths().is_empty());
    }

    /// The path this build's architecture detects is one with vector kernels wherever it has
    /// them: an aarch64 build always runs NEON, so the NEON kernels are what its tests check.
    #[test]
    fn this_architecture_detects_its_vector_path() {
        #[cfg(target_arch = "aarch64")]
        assert_eq!(detected(), Isa::Neon);
        #[cfg(target_arch = "x86_64")]
        assert!(matches!(detected(), Isa::Avx2 | Isa::Avx512 | Isa::Generic));
        assert!(!vector_levels().is_empty() || !isa().has_vector_kernels());
    }

    #[test]
    fn bad_settings_say_what_is_accepted() {
        let e = Isa::parse("avx-512").unwrap_err();
        assert!(e.contains("avx512, avx2, neon, generic or candle"), "{e}");
        for isa in ALL {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
    }
}
