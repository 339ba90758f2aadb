//! Seeded Gaussian noise. candle's CPU `randn` cannot be seeded, so every random number the
//! engine uses is drawn here, from one ChaCha stream per image: image `i`'s noise depends only
//! on its own seed, never on the batch it shares or on thread counts.

use std::collections::VecDeque;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{EngineError, Result};

/// One independent noise stream per image in a batch.
pub struct LatentNoise {
    streams: Vec<ChaCha12Rng>,
    shape: (usize, usize, usize),
    device: Device,
    /// Given draws, returned before any seeded one (see [`LatentNoise::replay`]).
    given: VecDeque<Tensor>,
}

impl LatentNoise {
    /// `shape` is one image's latent shape (channels, height, width).
    pub fn new(seeds: &[u64], shape: (usize, usize, usize), device: &Device) -> Self {
        Self {
            streams: seeds
                .iter()
                .map(|s| ChaCha12Rng::seed_from_u64(*s))
                .collect(),
            shape,
            device: device.clone(),
            given: VecDeque::new(),
        }
    }

    /// Makes the next draws return `draws [K, N, C, H, W]`, one `[N, C, H, W]` slice per draw,
    /// before the seeded streams continue: to reproduce another implementation's random
    /// numbers (a reference run) exactly.
    pub fn replay(&mut self, draws: &Tensor) -> Result<()> {
        let (c, h, w) = self.shape;
        let want = [self.streams.len(), c, h, w];
        if draws.rank() != 5 || draws.dims()[1..] != want {
            return Err(EngineError::invalid(format!(
                "step noise has shape {:?}, expected [steps, {}, {c}, {h}, {w}]",
                draws.dims(),
                want[0]
            )));
        }
        for k in 0..draws.dim(0)? {
            let draw = draws.get(k)?.to_dtype(candle_core::DType::F32)?;
            self.given.push_back(draw.to_device(&self.device)?);
        }
        Ok(())
    }

    /// Draws the next `[N, C, H, W]` standard normal tensor, one image per stream.
    pub fn draw(&mut self) -> Result<Tensor> {
        if let Some(given) = self.given.pop_front() {
            return Ok(given);
        }
        let (c, h, w) = self.shape;
        let per = c * h * w;
        let mut data = Vec::with_capacity(per * self.streams.len());
        for rng in &mut self.streams {
            data.extend((0..per).map(|_| -> f32 { StandardNormal.sample(rng) }));
        }
        Ok(Tensor::from_vec(
            data,
            (self.streams.len(), c, h, w),
            &self.device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_images_noise_does_not_depend_on_its_batch() {
        let dev = Device::Cpu;
        let alone = LatentNoise::new(&[7], (4, 2, 2), &dev).draw().unwrap();
        let batched = LatentNoise::new(&[3, 7], (4, 2, 2), &dev).draw().unwrap();
        let second = batched.get(1).unwrap().unsqueeze(0).unwrap();
        let diff = (alone - second).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn replayed_draws_come_first_then_the_seeded_stream_continues_where_it_was() {
        let dev = Device::Cpu;
        let given = Tensor::ones((2, 1, 4, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let mut noise = LatentNoise::new(&[7], (4, 2, 2), &dev);
        noise.replay(&given).unwrap();
        for _ in 0..2 {
            let d = noise.draw().unwrap().flatten_all().unwrap();
            assert_eq!(d.to_vec1::<f32>().unwrap(), vec![1.0; 16]);
        }
        let seeded = LatentNoise::new(&[7], (4, 2, 2), &dev).draw().unwrap();
        let diff = (noise.draw().unwrap() - seeded).unwrap().abs().unwrap();
        assert_eq!(diff.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let wrong = Tensor::ones((2, 2, 4, 2, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(
            noise.replay(&wrong).is_err(),
            "two images' noise for one image"
        );
    }

    #[test]
    fn different_seeds_give_different_noise() {
        let dev = Device::Cpu;
        let a = LatentNoise::new(&[1], (4, 2, 2), &dev).draw().unwrap();
        let b = LatentNoise::new(&[2], (4, 2, 2), &dev).draw().unwrap();
        let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 0.1);
    }
}
