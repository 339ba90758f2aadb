//! Group normalisation over NCHW (each group is one contiguous run), with SiLU fused in:
//! a ResNet block's `silu(group_norm(x))` becomes two passes over memory instead of eight.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::contiguous;
use super::simd::{silu, vectorized};

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
                vectorized(|| {
                    normalize_group(
                        src,
                        dst,
                        spatial,
                        &gamma[first_channel..],
                        &beta[first_channel..],
                        self.eps,
                        self.silu,
                    )
                })
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

#[inline(always)]
fn normalize_group(
    src: &[f32],
    dst: &mut [f32],
    spatial: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    fuse_silu: bool,
) {
    // Two passes in f64 lanes: the mean, then the centred variance (as torch's result).
    let n = src.len() as f64;
    let mean = lane_sum(src, |v| v as f64) / n;
    let var = lane_sum(src, |v| {
        let d = v as f64 - mean;
        d * d
    }) / n;
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

/// Sum of `f(x)` in eight independent accumulators, so the loop vectorises.
#[inline(always)]
fn lane_sum(src: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = src.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| f(*v)).sum();
    acc.iter().sum::<f64>() + tail
}
