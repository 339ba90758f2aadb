//! Group normalisation over NCHW (each group is one contiguous run), with SiLU fused in:
//! a ResNet block's `silu(group_norm(x))` becomes two passes over memory instead of eight.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::contiguous;
use super::simd::{multiversion, silu};

/// `group_norm(x [B, C, ...], gamma [C], beta [C])`, optionally followed by SiLU.
pub struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "imagine-group-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (
            contiguous(xs, xl)?,
            contiguous(gs, gl)?,
            contiguous(bs, bl)?,
        );
        let dims = xl.shape().dims();
        if dims.len() < 2 {
            candle_core::bail!("group_norm: expected [B, C, ...], got {dims:?}");
        }
        let channels = dims[1];
        if self.groups == 0
            || !channels.is_multiple_of(self.groups)
            || gamma.len() != channels
            || beta.len() != channels
        {
            candle_core::bail!(
                "group_norm: {channels} channels do not fit {} groups / affine params",
                self.groups
            );
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups * spatial;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(per_group.max(1))
            .zip(x.par_chunks(per_group.max(1)))
            .enumerate()
            .for_each(|(i, (dst, src))| {
                let first_channel = (i % self.groups) * (channels / self.groups);
                normalize_group(
                    src,
                    dst,
                    spatial,
                    &gamma[first_channel..],
                    &beta[first_channel..],
                    self.eps,
                    self.silu,
                )
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

multiversion! {
fn normalize_group(
    src: &[f32],
    dst: &mut [f32],
    spatial: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    fuse_silu: bool,
) {
    // One pass for both moments in f64 lanes (a VAE group is 4 MiB, beyond L2: each pass
    // is a trip to memory). In f64, E[x²] - mean² loses nothing measurable for activations
    // (it would need |mean| / std near 1e6).
    let n = src.len() as f64;
    let (sum, squares) = moments(src);
    let mean = sum / n;
    let var = (squares / n - mean * mean).max(0.0);
    let rstd = 1.0 / (var + eps).sqrt();
    for ((dst, src), (g, b)) in dst
        .chunks_mut(spatial)
        .zip(src.chunks(spatial))
        .zip(gamma.iter().zip(beta))
    {
        let scale = (rstd * *g as f64) as f32;
        let shift = (*b as f64 - mean * rstd * *g as f64) as f32;
        if fuse_silu {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = silu(s * scale + shift);
            }
        } else {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s * scale + shift;
            }
        }
    }
}
}

/// Sum and sum of squares, in eight independent f64 accumulators each so the loop
/// vectorises.
#[inline(always)]
fn moments(src: &[f32]) -> (f64, f64) {
    let (mut sum, mut squares) = ([0f64; 8], [0f64; 8]);
    let mut chunks = src.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            let v = c[l] as f64;
            sum[l] += v;
            squares[l] += v * v;
        }
    }
    let tail = chunks.remainder().iter().map(|v| *v as f64);
    (
        sum.iter().sum::<f64>() + tail.clone().sum::<f64>(),
        squares.iter().sum::<f64>() + tail.map(|v| v * v).sum::<f64>(),
    )
}
