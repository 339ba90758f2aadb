//! Multi-head softmax attention, `softmax(q·kᵀ·scale)·v`, computed a tile of queries at a time.
//!
//! q, k and v stay in the `[B, S, heads·D]` layout the projections produce, and the output is
//! written in that layout too: no head split/merge copies. Only a `[tile, Sk]` block of scores
//! exists at once per thread (1-2 MiB instead of the full `Sq x Sk` matrix per head), and the
//! softmax normalisation is applied to the `[tile, D]` output rather than the scores.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::matmul::{self, AOperand, Bf16, PackedA, PackedB, Precision, F32};
use super::simd::{exp, multiversion};
use super::{contiguous, gemm_f32_serial, Mat, MatMut, SendPtr};

pub struct AttentionOp {
    pub heads: usize,
    pub scale: f32,
    /// Both products with bf16 inputs (f32 sums), where the CPU has AVX512_BF16.
    pub bf16: bool,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "imagine-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous(qs, ql)?,
            contiguous(ks, kl)?,
            contiguous(vs, vl)?,
        );
        let (batch, sq, width) = ql.shape().dims3()?;
        let (kb, sk, kw) = kl.shape().dims3()?;
        if kl.shape() != vl.shape()
            || kb != batch
            || kw != width
            || self.heads == 0
            || width % self.heads != 0
        {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} with {} heads do not fit",
                ql.shape(),
                kl.shape(),
                vl.shape(),
                self.heads
            );
        }
        let out = if self.bf16 && Bf16::available() {
            attention::<Bf16>(q, k, v, batch, sq, sk, width, self.heads, self.scale)
        } else {
            attention::<F32>(q, k, v, batch, sq, sk, width, self.heads, self.scale)
        };
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

#[allow(clippy::too_many_arguments)]
fn attention<P: Precision>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: usize,
    sq: usize,
    sk: usize,
    width: usize,
    heads: usize,
    scale: f32,
) -> Vec<f32> {
    let d = width / heads;
    let tile = if sk >= 1024 { 128 } else { 256 }.min(sq.max(1));
    let mut out = vec![0f32; batch * sq * width];
    let dst = SendPtr(out.as_mut_ptr());
    let tasks: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|b| (0..heads).flat_map(move |h| (0..sq).step_by(tile).map(move |q0| (b, h, q0))))
        .collect();
    // SAFETY (both paths): a task owns rows q0..q0+rows, columns h·d..(h+1)·d of image b; no
    // other task writes them, and `out` outlives the parallel loop.
    let out_tile = |b: usize, h: usize, q0: usize, rows: usize| unsafe {
        std::slice::from_raw_parts_mut(
            dst.get().add((b * sq + q0) * width + h * d),
            (rows - 1) * width + d,
        )
    };

    if !matmul::available() {
        tasks.par_iter().for_each_init(
            || (vec![0f32; tile * sk], vec![0f32; tile]),
            |(scores, inv_sums), &(b, h, q0)| {
                let rows = tile.min(sq - q0);
                let q_tile = Mat {
                    data: &q[(b * sq + q0) * width + h * d..],
                    rows,
                    cols: d,
                    row_stride: width,
                    col_stride: 1,
                };
                let k_t = Mat {
                    data: &k[b * sk * width + h * d..],
                    rows: d,
                    cols: sk,
                    row_stride: 1,
                    col_stride: width,
                };
                let scores = &mut scores[..rows * sk];
                gemm_f32_serial(MatMut::new(scores, rows, sk, sk), q_tile, k_t, scale, false);
                softmax_rows(scores, sk, inv_sums);
                let out = out_tile(b, h, q0, rows);
                let probs = Mat {
                    data: scores,
                    rows,
                    cols: sk,
                    row_stride: sk,
                    col_stride: 1,
                };
                gemm_f32_serial(
                    MatMut::new(out, rows, d, width),
                    probs,
                    head(v, b, h, sk, width, d),
                    1.0,
                    false,
                );
                normalize(out, inv_sums, rows, width, d);
            },
        );
        return out;
    }

    // Our kernel: scores are computed transposed, `Sᵀ = K·Qᵀ` ([sk, rows]), so the softmax
    // reduces across rows (vectorised along the queries) and `Sᵀ` is already the column-major
    // A operand of `P·V`, which then packs with sequential copies. K (as A) and V (as B) are
    // packed once per head.
    let packed: Vec<(PackedA<P>, PackedB<P>)> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            (
                PackedA::pack(head(k, b, h, sk, width, d)),
                PackedB::pack(head(v, b, h, sk, width, d)),
            )
        })
        .collect();
    tasks.par_iter().for_each_init(
        || (vec![0f32; tile * sk], vec![0f32; tile], vec![0f32; tile]),
        |(scores_t, max, inv_sums), &(b, h, q0)| {
            let rows = tile.min(sq - q0);
            let (k_packed, v_packed) = &packed[b * heads + h];
            let q_t = Mat {
                data: &q[(b * sq + q0) * width + h * d..],
                rows: d,
                cols: rows,
                row_stride: 1,
                col_stride: width,
            };
            let scores_t = &mut scores_t[..sk * rows];
            matmul::gemm_serial(
                MatMut::new(scores_t, sk, rows, rows),
                AOperand::Packed(k_packed),
                &q_t,
                scale,
                false,
            );
            softmax_columns(scores_t, rows, &mut max[..rows], &mut inv_sums[..rows]);
            let out = out_tile(b, h, q0, rows);
            let probs = Mat {
                data: scores_t,
                rows,
                cols: sk,
                row_stride: 1,
                col_stride: rows,
            };
            matmul::gemm_packed(
                MatMut::new(out, rows, d, width),
                probs,
                v_packed,
                1.0,
                false,
            );
            normalize(out, inv_sums, rows, width, d);
        },
    );
    out
}

/// Head h of image b of a `[B, s, width]` tensor, as an `[s, d]` matrix.
fn head(x: &[f32], b: usize, h: usize, s: usize, width: usize, d: usize) -> Mat<'_> {
    Mat {
        data: &x[b * s * width + h * d..],
        rows: s,
        cols: d,
        row_stride: width,
        col_stride: 1,
    }
}

/// Divides each output row by its softmax sum.
fn normalize(out: &mut [f32], inv_sums: &[f32], rows: usize, width: usize, d: usize) {
    for (r, inv) in inv_sums[..rows].iter().enumerate() {
        for o in &mut out[r * width..r * width + d] {
            *o *= inv;
        }
    }
}

multiversion! {
/// Softmax numerators of each column of `s [sk, cols]` in place; `inv_sums[c]` gets
/// 1 / (column c's sum). Every loop runs along a row, so it vectorises across columns.
fn softmax_columns(s: &mut [f32], cols: usize, max: &mut [f32], inv_sums: &mut [f32]) {
    max.fill(f32::NEG_INFINITY);
    for row in s.chunks_exact(cols) {
        for (m, v) in max.iter_mut().zip(row) {
            *m = m.max(*v);
        }
    }
    inv_sums.fill(0.0);
    for row in s.chunks_exact_mut(cols) {
        for ((v, m), sum) in row.iter_mut().zip(max.iter()).zip(inv_sums.iter_mut()) {
            *v = exp(*v - m);
            *sum += *v;
        }
    }
    for sum in inv_sums.iter_mut() {
        *sum = 1.0 / *sum;
    }
}
}

multiversion! {
/// Softmax numerators of each row of `s [rows, sk]` in place; `inv_sums[r]` gets 1 / (row r's
/// sum) (the path without our GEMM).
fn softmax_rows(s: &mut [f32], sk: usize, inv_sums: &mut [f32]) {
    for (row, inv) in s.chunks_mut(sk).zip(inv_sums.iter_mut()) {
        *inv = 1.0 / softmax_unnormalized(row);
    }
}
}

/// Replaces `row` by `exp(row - max(row))` and returns its sum. Lane-wise accumulators keep
/// both reductions vectorisable (a single f32 accumulator forces scalar code).
#[inline(always)]
fn softmax_unnormalized(row: &mut [f32]) -> f32 {
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for l in 0..L {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    let max = chunks.remainder().iter().fold(
        lanes.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)),
        |m, v| m.max(*v),
    );
    let mut sums = [0f32; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for l in 0..L {
            c[l] = exp(c[l] - max);
            sums[l] += c[l];
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        tail += *v;
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_attention() {
        check::<F32>(2e-5);
        for level in crate::kernels::isa::vector_levels() {
            crate::kernels::isa::with_vectors(level, || check::<F32>(2e-5));
        }
    }

    /// bf16 products: q·kᵀ and P·v each round their inputs to 8 significant bits, so the
    /// outputs (averages of v values of magnitude up to 1.4) move by a few 1e-3.
    #[test]
    fn bf16_stays_close_to_naive_attention() {
        if crate::kernels::isa::test_path_runs("bf16", Bf16::available()) {
            check::<Bf16>(2e-2);
        }
    }

    fn check<P: Precision>(tolerance: f32) {
        let (batch, sq, sk, heads, d) = (2, 300, 77, 3, 8);
        let width = heads * d;
        let gen = |n: usize, m: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * m % 113) as f32 - 56.0) / 40.0)
                .collect()
        };
        let (q, k, v) = (
            gen(batch * sq * width, 31),
            gen(batch * sk * width, 17),
            gen(batch * sk * width, 7),
        );
        let scale = 1.0 / (d as f32).sqrt();
        let ours = attention::<P>(&q, &k, &v, batch, sq, sk, width, heads, scale);
        let mut worst = 0f32;
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..sq {
                    let s: Vec<f64> = (0..sk)
                        .map(|j| {
                            (0..d)
                                .map(|c| {
                                    (q[(b * sq + i) * width + h * d + c]
                                        * k[(b * sk + j) * width + h * d + c])
                                        as f64
                                })
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..sk)
                            .map(|j| e[j] * v[(b * sk + j) * width + h * d + c] as f64)
                            .sum::<f64>()
                            / total;
                        worst =
                            worst.max((ours[(b * sq + i) * width + h * d + c] - want as f32).abs());
                    }
                }
            }
        }
        assert!(worst < tolerance, "max diff {worst}");
    }
}
