//! The UNet's timestep embedding (diffusers `TimestepEmbedding`), with the optional
//! `cond_proj` input that LCM-distilled UNets use, and the guidance-scale embedding they feed
//! it. candle-transformers' embedding has no `cond_proj`. The layers are our [`Linear`], so a
//! LoRA that trains the time or SDXL size embeddings patches them like any other layer.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::nn::layers::Linear;

type Result<T> = candle_core::Result<T>;

/// `linear_2(silu(linear_1(sample + cond_proj(condition))))`.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    /// LCM-distilled UNets: projects the guidance embedding onto the sinusoidal timestep
    /// embedding (no bias), with the embedding's width.
    cond_proj: Option<(Linear, usize)>,
}

impl TimestepEmbedding {
    /// `channels` in, `embed_dim` out; `cond_proj_dim` is the UNet's `time_cond_proj_dim`.
    pub fn load(
        vb: VarBuilder,
        channels: usize,
        embed_dim: usize,
        cond_proj_dim: Option<usize>,
    ) -> Result<Self> {
        let cond_proj = cond_proj_dim
            .map(|dim| {
                Ok::<_, candle_core::Error>((
                    Linear::load_no_bias(vb.pp("cond_proj"), dim, channels)?,
                    dim,
                ))
            })
            .transpose()?;
        Ok(Self {
            linear_1: Linear::load(vb.pp("linear_1"), channels, embed_dim)?,
            linear_2: Linear::load(vb.pp("linear_2"), embed_dim, embed_dim)?,
            cond_proj,
        })
    }

    /// The width of the condition this embedding takes, if it takes one.
    pub fn cond_proj_dim(&self) -> Option<usize> {
        self.cond_proj.as_ref().map(|(_, dim)| *dim)
    }

    /// Embeds `sample [B, channels]`, adding the projected `condition [B, cond_proj_dim]` when
    /// given. A condition for an embedding without `cond_proj` is an error, not ignored.
    pub fn forward(&self, sample: &Tensor, condition: Option<&Tensor>) -> Result<Tensor> {
        let sample = match (condition, &self.cond_proj) {
            (None, _) => sample.clone(),
            (Some(c), Some((proj, _))) => (sample + proj.forward(c)?)?,
            (Some(_), None) => {
                candle_core::bail!("a timestep condition was given to a UNet without cond_proj")
            }
        };
        let x = candle_nn::ops::silu(&self.linear_1.forward(&sample)?)?;
        self.linear_2.forward(&x)
    }
}

/// diffusers' `get_guidance_scale_embedding(w, embedding_dim)` for `batch` copies of the scale
/// `w`: sinusoids of `1000 w` at `dim / 2` frequencies, sines then cosines, in float32 as
/// diffusers computes them (`[batch, dim]`, zero-padded when `dim` is odd). The pipelines pass
/// `w = guidance_scale - 1`.
pub fn guidance_scale_embedding(
    w: f64,
    dim: usize,
    batch: usize,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    // torch: log(10000) / (half - 1) in float32; half = 1 divides by zero (inf), as there.
    let rate = 10000f32.ln() / (half as f32 - 1.0);
    let scaled = w as f32 * 1000.0;
    let angles: Vec<f32> = (0..half)
        .map(|i| scaled * (i as f32 * -rate).exp())
        .collect();
    let mut row: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    row.extend(angles.iter().map(|a| a.cos()));
    row.resize(dim, 0.0);
    let one = Tensor::from_vec(row, (1, dim), device)?;
    one.repeat((batch, 1))?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_embedding_is_sines_then_cosines_of_the_scaled_weight() {
        let e = guidance_scale_embedding(0.5, 4, 2, &Device::Cpu).unwrap();
        assert_eq!(e.dims(), [2, 4]);
        let row = e.get(1).unwrap().to_vec1::<f32>().unwrap();
        // Frequencies 1 and 1/10000 for two per half.
        let want = [500f32.sin(), 0.05f32.sin(), 500f32.cos(), 0.05f32.cos()];
        for (g, w) in row.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{row:?} vs {want:?}");
        }
        let odd = guidance_scale_embedding(0.0, 5, 1, &Device::Cpu).unwrap();
        assert_eq!(odd.to_vec2::<f32>().unwrap()[0], [0.0, 0.0, 1.0, 1.0, 0.0]);
    }
}
