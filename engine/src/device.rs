//! Which device the engine computes on and in which precision, chosen from what the binary was
//! built with and what the host has. `auto` (the default for both) takes a CUDA GPU, then a
//! Metal one, then the CPU; and the fastest precision that device computes well: fp16 on
//! GPUs, bf16 on CPUs with AVX512_BF16, fp32 elsewhere. Every choice comes with the reason it
//! was made, for the log.

use candle_core::{DType, Device, DeviceLocation};

use crate::error::{EngineError, Result};
use crate::model::{ComputePrecision, LoadOptions};

/// A `--device` setting: `auto`, `cpu`, `cuda`, `cuda:N` or `metal` (`metal:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, index) = match s.split_once(':') {
            Some((kind, n)) => {
                let n = n.parse::<usize>().ok().filter(|n| *n < 64).ok_or_else(|| {
                    EngineError::invalid(format!(
                        "device {s:?}: the index after ':' must be a number from 0 to 63"
                    ))
                })?;
                (kind, Some(n))
            }
            None => (s.as_str(), None),
        };
        match (kind, index) {
            ("auto", None) => Ok(Self::Auto),
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda" | "gpu", n) => Ok(Self::Cuda(n.unwrap_or(0))),
            ("metal" | "mps", n) => Ok(Self::Metal(n.unwrap_or(0))),
            _ => Err(EngineError::invalid(format!(
                "device {s:?} is not one of auto, cpu, cuda, cuda:N, metal"
            ))),
        }
    }

    /// Opens the device, saying why it is the one chosen. An explicit GPU that cannot be
    /// opened is an error (the user asked for it); `auto` falls back to the CPU.
    pub fn open(self) -> Result<(Device, String)> {
        match self {
            Self::Cpu => Ok((Device::Cpu, "asked for".into())),
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(EngineError::Unsupported(
                        "this binary was built without CUDA: build it with \
                         `cargo build --release --features cuda` (or tools/build_cuda.sh), \
                         or use --device cpu"
                            .into(),
                    ));
                }
                let device = Device::new_cuda(n).map_err(|e| {
                    EngineError::Unsupported(format!("cannot open CUDA device {n}: {e}"))
                })?;
                Ok((device, "asked for".into()))
            }
            Self::Metal(n) => {
                if !cfg!(feature = "metal") {
                    return Err(EngineError::Unsupported(
                        "this binary was built without Metal: build it on macOS with \
                         `cargo build --release --features metal`, or use --device cpu"
                            .into(),
                    ));
                }
                let device = Device::new_metal(n).map_err(|e| {
                    EngineError::Unsupported(format!("cannot open Metal device {n}: {e}"))
                })?;
                Ok((device, "asked for".into()))
            }
            Self::Auto => Ok(Self::auto()),
        }
    }

    fn auto() -> (Device, String) {
        let mut why = Vec::new();
        if cfg!(feature = "cuda") {
            match Device::new_cuda(0) {
                Ok(d) => return (d, "auto: the first CUDA GPU".into()),
                Err(e) => why.push(format!("no usable CUDA GPU ({e})")),
            }
        } else {
            why.push("built without CUDA".to_string());
        }
        if cfg!(feature = "metal") {
            match Device::new_metal(0) {
                Ok(d) => return (d, "auto: the Metal GPU".into()),
                Err(e) => why.push(format!("no usable Metal GPU ({e})")),
            }
        } else {
            why.push("without Metal".to_string());
        }
        (Device::Cpu, format!("auto: {}", why.join(", ")))
    }
}

/// A device's name as settings and records spell it: `cpu`, `cuda:0`, `metal:0`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// What a job computes in, as recorded with its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 throughout: bit-exact diffusers parity on the CPU.
    Fp32,
    /// bf16 products with f32 sums (CPU, AVX512_BF16), or bf16 tensors on a GPU.
    Bf16,
    /// fp16 tensors (GPUs; on a CPU it runs, slowly, through candle's generic ops), with the
    /// VAE upcast to f32 where its config asks (`force_upcast`), as diffusers does.
    Fp16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Some(Self::Fp32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            "fp16" | "f16" | "float16" | "half" => Some(Self::Fp16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        }
    }

    /// Whether `device` computes in this precision; `Err` says why not and what to use.
    pub fn check_on(self, device: &Device) -> Result<()> {
        match (self, device) {
            (Self::Bf16, Device::Cpu) if !ComputePrecision::bf16_available() => {
                Err(EngineError::Unsupported(
                    "bf16 on a CPU needs AVX512_BF16, which this one lacks: use --precision \
                     auto or fp32"
                        .into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// How a model is loaded on `device` in this precision.
    pub fn load_options(self, device: &Device) -> LoadOptions {
        let (dtype, compute) = match (self, device) {
            (Self::Fp32, _) => (DType::F32, ComputePrecision::Fp32),
            // Our CPU kernels keep tensors in f32 and round products' inputs to bf16.
            (Self::Bf16, Device::Cpu) => (DType::F32, ComputePrecision::Bf16),
            (Self::Bf16, _) => (DType::BF16, ComputePrecision::Fp32),
            (Self::Fp16, _) => (DType::F16, ComputePrecision::Fp32),
        };
        LoadOptions {
            device: device.clone(),
            dtype,
            precision: compute,
            random_weights: None,
            prediction: None,
        }
    }
}

/// A `--precision` setting: `auto` or a [`Precision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionChoice {
    #[default]
    Auto,
    Exactly(Precision),
}

impl PrecisionChoice {
    pub fn parse(s: &str) -> Result<Self> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        Precision::parse(s).map(Self::Exactly).ok_or_else(|| {
            EngineError::invalid(format!(
                "precision {s:?} is not one of auto, fp32, bf16, fp16"
            ))
        })
    }

    /// The precision for `device`, with the reason; a forced one the device lacks is an error.
    pub fn resolve(self, device: &Device) -> Result<(Precision, String)> {
        match self {
            Self::Exactly(p) => {
                p.check_on(device)?;
                Ok((p, "asked for".into()))
            }
            Self::Auto => Ok(match device {
                Device::Cpu if ComputePrecision::bf16_available() => {
                    (Precision::Bf16, "auto: this CPU has AVX512_BF16".into())
                }
                Device::Cpu => (
                    Precision::Fp32,
                    "auto: this CPU has no AVX512_BF16 (bf16 would be slower than fp32)".into(),
                ),
                _ => (
                    Precision::Fp16,
                    "auto: a GPU computes fastest in fp16".into(),
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_settings_parse_strictly() {
        assert_eq!(DeviceChoice::parse("auto").unwrap(), DeviceChoice::Auto);
        assert_eq!(DeviceChoice::parse(" CPU ").unwrap(), DeviceChoice::Cpu);
        assert_eq!(DeviceChoice::parse("cuda").unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(
            DeviceChoice::parse("cuda:3").unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!(
            DeviceChoice::parse("metal").unwrap(),
            DeviceChoice::Metal(0)
        );
        for bad in [
            "", "cuda:", "cuda:x", "cuda:-1", "cuda:99", "tpu", "cpu:0", "auto:1",
        ] {
            let e = DeviceChoice::parse(bad).unwrap_err().to_string();
            assert!(e.contains("device"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn auto_takes_the_cpu_on_a_build_without_gpus_and_says_why() {
        if cfg!(any(feature = "cuda", feature = "metal")) {
            return;
        }
        let (device, why) = DeviceChoice::Auto.open().unwrap();
        assert!(device.is_cpu());
        assert!(why.contains("built without CUDA"), "{why}");
        assert_eq!(device_name(&device), "cpu");
        let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }

    #[test]
    fn auto_precision_is_bf16_exactly_where_the_cpu_has_it() {
        let (p, why) = PrecisionChoice::Auto.resolve(&Device::Cpu).unwrap();
        if ComputePrecision::bf16_available() {
            assert_eq!(p, Precision::Bf16);
        } else {
            assert_eq!(p, Precision::Fp32, "{why}");
            let e = PrecisionChoice::parse("bf16")
                .unwrap()
                .resolve(&Device::Cpu)
                .unwrap_err();
            assert!(e.to_string().contains("AVX512_BF16"), "{e}");
        }
    }

    #[test]
    fn precisions_load_as_the_device_computes_them() {
        let cpu = Device::Cpu;
        let o = Precision::Bf16.load_options(&cpu);
        assert_eq!((o.dtype, o.precision), (DType::F32, ComputePrecision::Bf16));
        let o = Precision::Fp16.load_options(&cpu);
        assert_eq!(o.dtype, DType::F16);
        assert_eq!(Precision::Fp32.load_options(&cpu).dtype, DType::F32);
        for p in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
            assert_eq!(Precision::parse(p.name()), Some(p));
            assert_eq!(
                PrecisionChoice::parse(p.name()).unwrap(),
                PrecisionChoice::Exactly(p)
            );
        }
        assert!(PrecisionChoice::parse("int8").is_err());
    }
}
