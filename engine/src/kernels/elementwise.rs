//! Memory-bound passes that candle runs on one thread: GEGLU, 2-D transposes, nearest 2x
//! upsampling, and a linear layer whose bias is folded into the GEMM.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::matmul::{self, PackedB, Precision};
use super::simd::{gelu, multiversion};
use super::{contiguous, gemm_f32, par_filled, Mat, MatMut};

/// `x[..., :n] * gelu(x[..., n:])` for `x [..., 2n]` (diffusers' GEGLU, exact GELU).
pub struct GegluOp;

impl CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "imagine-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut dims = l.shape().dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("geglu: scalar input")
        };
        if *last % 2 != 0 {
            candle_core::bail!("geglu: last dimension {last} is odd");
        }
        *last /= 2;
        let n = *last;
        let mut out = vec![0f32; x.len() / 2];
        out.par_chunks_mut(n.max(1))
            .zip(x.par_chunks(2 * n.max(1)))
            .for_each(|(dst, src)| {
                let (h, gate) = src.split_at(n);
                geglu_row(dst, h, gate)
            });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

multiversion! {
/// `dst = h * gelu(gate)`, element-wise.
fn geglu_row(dst: &mut [f32], h: &[f32], gate: &[f32]) {
    for ((d, h), g) in dst.iter_mut().zip(h).zip(gate) {
        *d = h * gelu(*g);
    }
}
}

/// `[B, M, N]` to `[B, N, M]`, contiguous, in cache-sized blocks.
pub struct TransposeOp;

impl CustomOp1 for TransposeOp {
    fn name(&self) -> &'static str {
        "imagine-transpose"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const BLOCK: usize = 32;
        let x = contiguous(s, l)?;
        let (b, m, n) = l.shape().dims3()?;
        let mut out = vec![0f32; x.len()];
        if m == 0 || n == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((b, n, m))));
        }
        // Each task writes a band of BLOCK output rows (input columns) of one image.
        out.par_chunks_mut(n * m)
            .zip(x.par_chunks(m * n))
            .for_each(|(dst_img, src)| {
                dst_img
                    .par_chunks_mut(BLOCK * m)
                    .enumerate()
                    .for_each(|(band, dst)| {
                        let c0 = band * BLOCK;
                        let cols = BLOCK.min(n - c0);
                        for r in 0..m {
                            for (c, v) in src[r * n + c0..][..cols].iter().enumerate() {
                                dst[c * m + r] = *v;
                            }
                        }
                    })
            });
        Ok((CpuStorage::F32(out), Shape::from((b, n, m))))
    }
}

/// Nearest-neighbour 2x upsampling of `[B, C, H, W]`.
pub struct Upsample2xOp;

impl CustomOp1 for Upsample2xOp {
    fn name(&self) -> &'static str {
        "imagine-upsample2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let mut out = vec![0f32; x.len() * 4];
        if w > 0 {
            out.par_chunks_mut(4 * w)
                .zip(x.par_chunks(w))
                .for_each(|(dst, row)| {
                    let (top, bottom) = dst.split_at_mut(2 * w);
                    for (pair, v) in top.chunks_exact_mut(2).zip(row) {
                        pair[0] = *v;
                        pair[1] = *v;
                    }
                    bottom.copy_from_slice(top);
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, 2 * h, 2 * w))))
    }
}

/// `x [..., in] · wᵀ + bias` for `w [out, in]`, as one GEMM over all leading dimensions.
pub struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "imagine-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, bias) = (
            contiguous(xs, xl)?,
            contiguous(ws, wl)?,
            contiguous(bs, bl)?,
        );
        let (outs, ins) = wl.shape().dims2()?;
        if bias.len() != outs {
            candle_core::bail!("linear: bias of {} for {outs} outputs", bias.len());
        }
        let (mut out, rows, dims) = biased_output(xl, x.len(), ins, bias)?;
        gemm_f32(
            MatMut::new(&mut out, rows, outs, outs),
            Mat {
                data: x,
                rows,
                cols: ins,
                row_stride: ins,
                col_stride: 1,
            },
            Mat {
                data: w,
                rows: ins,
                cols: outs,
                row_stride: 1,
                col_stride: ins,
            },
            1.0,
            true,
        );
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// A linear layer's output `[..., outs]` for input `[..., ins]`, holding the bias in every
/// row (the GEMM accumulates onto it); also its row count and dimensions.
fn biased_output(
    xl: &Layout,
    len: usize,
    ins: usize,
    bias: &[f32],
) -> Result<(Vec<f32>, usize, Vec<usize>)> {
    let outs = bias.len();
    let mut dims = xl.shape().dims().to_vec();
    if dims.last() != Some(&ins) {
        candle_core::bail!("linear: input {dims:?} for a weight with {ins} inputs");
    }
    let rows = len / ins.max(1);
    *dims.last_mut().expect("checked above") = outs;
    let out = par_filled(rows * outs, outs, |_, row| {
        for (o, b) in row.iter_mut().zip(bias) {
            o.write(*b);
        }
    });
    Ok((out, rows, dims))
}

/// Packs a linear layer's `[out, in]` weight as the B operand `wᵀ` of [`PackedLinearOp`].
pub fn pack_linear<P: Precision>(w: &[f32], outs: usize, ins: usize) -> PackedB<P> {
    PackedB::pack(Mat {
        data: w,
        rows: ins,
        cols: outs,
        row_stride: 1,
        col_stride: ins,
    })
}

/// [`LinearOp`] with the weight pre-packed: `linear(x, bias)`; rows split between threads.
pub struct PackedLinearOp<'a, P: Precision> {
    pub weight: &'a PackedB<P>,
}

impl<P: Precision> CustomOp2 for PackedLinearOp<'_, P> {
    fn name(&self) -> &'static str {
        "imagine-linear-packed"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, bias) = (contiguous(xs, xl)?, contiguous(bs, bl)?);
        let (ins, outs) = (self.weight.k(), self.weight.n());
        if bias.len() != outs {
            candle_core::bail!("linear: bias of {} for {outs} outputs", bias.len());
        }
        let (mut out, rows, dims) = biased_output(xl, x.len(), ins, bias)?;
        matmul::gemm_packed_rows(
            MatMut::new(&mut out, rows, outs, outs),
            Mat {
                data: x,
                rows,
                cols: ins,
                row_stride: ins,
                col_stride: 1,
            },
            self.weight,
            1.0,
            true,
        );
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
