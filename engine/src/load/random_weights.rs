//! Seeded random weights for any architecture, made as they are asked for: `imagine bench
//! --arch` times full-size models without a multi-gigabyte folder. Speed does not depend on
//! weight values (with subnormals flushed), so only the shapes have to be right.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// A VarBuilder backend that answers every name with a deterministic random tensor:
/// matrices and kernels uniform in ±1/√fan_in (PyTorch's default bound), 1-D `weight`s
/// (norm scales) 1, other vectors (biases) uniform in ±0.01.
pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

/// FNV-1a: a stable hash, so a name gets the same values in every run and build.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let dims = s.dims();
        let n = s.elem_count();
        let (lo, hi) = match dims {
            [_] if name.ends_with("weight") => (1.0f32, 1.0f32),
            [_] => (-0.01, 0.01),
            _ => {
                let fan_in: usize = dims[1..].iter().product();
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                (-bound, bound)
            }
        };
        const CHUNK: usize = 1 << 20;
        let base = self.seed ^ fnv1a(name);
        let mut data = vec![0f32; n];
        data.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| {
                if lo == hi {
                    chunk.fill(lo);
                    return;
                }
                let mut rng = ChaCha8Rng::seed_from_u64(base.wrapping_add(i as u64));
                for v in chunk {
                    *v = rng.random_range(lo..hi);
                }
            });
        Tensor::from_vec(data, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        // Every optional tensor of the SD layouts (biases, new-style attention names) exists.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_sensible_ranges() {
        let a = RandomWeights::new(7);
        let get = |w: &RandomWeights, shape: &[usize], name: &str| {
            w.get(
                Shape::from(shape.to_vec()),
                name,
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        let w1 = get(&a, &[64, 16, 3, 3], "conv.weight");
        assert_eq!(
            w1,
            get(&RandomWeights::new(7), &[64, 16, 3, 3], "conv.weight")
        );
        assert_ne!(
            w1,
            get(&RandomWeights::new(8), &[64, 16, 3, 3], "conv.weight")
        );
        assert!(w1.iter().all(|v| v.abs() <= 1.0 / 12.0));
        assert!(get(&a, &[8], "norm.weight").iter().all(|v| *v == 1.0));
        assert!(get(&a, &[8], "norm.bias").iter().all(|v| v.abs() <= 0.01));
    }
}
