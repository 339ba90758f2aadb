//! 2-D convolution in NCHW as one GEMM per tile: `out[co, p] = W[co, (ci,ky,kx)] · col[(ci,ky,kx), p]`.
//!
//! The weight is already `[Cout, Cin·kh·kw]` row-major, and the column matrix is built with the
//! pixel index fastest, so every column row is a (shifted) copy of input rows and the product
//! lands directly in the NCHW output: no transposes, unlike candle's im2col. 1x1 convolutions
//! use the input as the column matrix itself. The bias is written first and the GEMM adds to it.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::matmul::{self, write_pairs, AOperand, Bf16, PackB, PackedA, Precision, F32, NR};
use super::winograd::{self, WinogradWeights};
use super::{contiguous, fill, gemm_f32, par_filled, Mat, MatMut};

/// Column matrices (fallback path) are built in tiles of at most this many floats (16 MiB).
const COL_BUDGET: usize = 4 << 20;
/// Below this many output pixels per image, a batch is convolved as one wide GEMM.
const SMALL_IMAGE: usize = 1024;

/// `conv2d(x [B,Cin,H,W], w [Cout,Cin,kh,kw], bias [Cout])`, square stride and padding.
pub struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
}

/// The same convolution with weights prepared at load for our GEMM: `conv2d(x, bias)`.
pub struct PackedConv2dOp<'a, P: Precision> {
    pub weights: PackedConv<'a, P>,
    pub stride: usize,
    pub padding: usize,
}

/// A convolution's weights as prepared at load.
pub enum PackedConv<'a, P: Precision> {
    /// Packed for the direct convolution, with the `(Cout, Cin, kh, kw)` shape.
    Direct(&'a PackedA<P>, (usize, usize, usize, usize)),
    /// In the Winograd domain ([`winograd`]: 3x3, stride 1, padding 1).
    Winograd(&'a WinogradWeights<P>),
}

impl<P: Precision> PackedConv<'_, P> {
    fn kernel(&self) -> (usize, usize, usize, usize) {
        match self {
            Self::Direct(_, kernel) => *kernel,
            Self::Winograd(w) => (w.cout(), w.cin(), 3, 3),
        }
    }
}

/// Packs a `[Cout, Cin, kh, kw]` weight (contiguous f32) for [`PackedConv2dOp`].
pub fn pack_weights<P: Precision>(w: &[f32], cout: usize) -> PackedA<P> {
    let k = w.len() / cout.max(1);
    PackedA::pack(Mat {
        data: w,
        rows: cout,
        cols: k,
        row_stride: k,
        col_stride: 1,
    })
}

#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(
        x: &Layout,
        kernel: (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let (batch, cin, h, w) = x.shape().dims4()?;
        let (cout, wcin, kh, kw) = kernel;
        if wcin != cin {
            candle_core::bail!("conv2d: input has {cin} channels, the weight expects {wcin}");
        }
        let stride = stride.max(1);
        if h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!("conv2d: {h}x{w} input is smaller than the {kh}x{kw} kernel");
        }
        Ok(Self {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (w + 2 * pad - kw) / stride + 1,
        })
    }
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

/// The weight operand: packed for our kernel, or plain for the gemm crate.
enum Weights<'a, P: Precision> {
    Packed(&'a PackedA<P>),
    Plain(&'a [f32]),
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "imagine-conv2d"
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
        let g = Geometry::new(xl, wl.shape().dims4()?, self.stride, self.padding)?;
        if bias.len() != g.cout {
            candle_core::bail!(
                "conv2d: bias of {} for {} output channels",
                bias.len(),
                g.cout
            );
        }
        let out = conv::<F32>(&g, x, Weights::Plain(w), bias, None, COL_BUDGET);
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.batch, g.cout, g.ho, g.wo)),
        ))
    }
}

impl<P: Precision> CustomOp2 for PackedConv2dOp<'_, P> {
    fn name(&self) -> &'static str {
        "imagine-conv2d-packed"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(contiguous(xs, xl)?, xl, contiguous(bs, bl)?, None)
    }
}

/// `conv2d(x, bias) + extra`, where `extra` is `[B, Cout]` (a per-image channel offset: the
/// UNet's time embedding) or `[B, Cout, Ho, Wo]` (a residual): added while initialising the
/// output, which saves a full pass over it and an allocation.
impl<P: Precision> CustomOp3 for PackedConv2dOp<'_, P> {
    fn name(&self) -> &'static str {
        "imagine-conv2d-packed-add"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        es: &CpuStorage,
        el: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(
            contiguous(xs, xl)?,
            xl,
            contiguous(bs, bl)?,
            Some(contiguous(es, el)?),
        )
    }
}

impl<P: Precision> PackedConv2dOp<'_, P> {
    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        bias: &[f32],
        extra: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let kernel = self.weights.kernel();
        let g = Geometry::new(xl, kernel, self.stride, self.padding)?;
        if bias.len() != g.cout {
            candle_core::bail!("conv2d: bias of {} for {} channels", bias.len(), g.cout);
        }
        check_extra(&g, extra)?;
        let out = match self.weights {
            PackedConv::Direct(w, _) => {
                if w.rows() != g.cout || w.cols() != g.k() {
                    candle_core::bail!("conv2d: packed weights do not match kernel {kernel:?}");
                }
                conv(&g, x, Weights::Packed(w), bias, extra, COL_BUDGET)
            }
            PackedConv::Winograd(w) => {
                if !winograd::eligible(kernel, g.stride, g.pad) {
                    candle_core::bail!(
                        "conv2d: Winograd weights for a {kernel:?} kernel, stride {}, padding {}",
                        g.stride,
                        g.pad
                    );
                }
                let mut out = initial_output(&g, bias, extra);
                winograd::accumulate(x, (g.batch, g.h, g.w), w, &mut out);
                out
            }
        };
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.batch, g.cout, g.ho, g.wo)),
        ))
    }
}

/// `extra` is `[B, Cout]` or the output's shape.
fn check_extra(g: &Geometry, extra: Option<&[f32]>) -> Result<()> {
    let out_len = g.batch * g.cout * g.ho * g.wo;
    match extra {
        Some(e) if e.len() != g.batch * g.cout && e.len() != out_len => candle_core::bail!(
            "conv2d: {} values to add to a [{}, {}, {}, {}] output",
            e.len(),
            g.batch,
            g.cout,
            g.ho,
            g.wo
        ),
        _ => Ok(()),
    }
}

/// The convolution input seen as its im2col matrix `[(ci,ky,kx), (image, oy, ox)]`, packed
/// straight from the image (implicit GEMM: the column matrix never exists).
struct Im2Col<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    /// `x` already rounded to bf16 (for the bf16 kernel): each value is packed up to nine
    /// times, so rounding once first halves the packer's work and the bytes it reads.
    x16: Option<&'a [u16]>,
    first_image: usize,
    images: usize,
}

impl PackB for Im2Col<'_> {
    fn k(&self) -> usize {
        self.g.k()
    }

    fn n(&self) -> usize {
        self.images * self.g.ho * self.g.wo
    }

    fn pack(&self, pc: usize, kc: usize, j0: usize, cols: usize, out: &mut Vec<f32>) {
        // Every column < cols is written below (zeros included); padding columns of the last
        // panel only feed output columns that are discarded, so no clearing pass.
        super::matmul::reuse(out, cols.div_ceil(NR) * NR * kc);
        let mut row = vec![0f32; self.g.wo];
        for p in 0..kc {
            for run in self.runs(j0, cols) {
                let win = self.window(self.x, pc + p, run, &mut row);
                for_each_segment([win], run, |t, [src], len| {
                    scatter_into_panels(out, kc, p, t - j0, src, len)
                });
            }
        }
    }

    /// Pairs of k rows gathered from the input's bf16 copy: no f32 panel in between.
    fn pack_pairs(
        &self,
        pc: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        out: &mut Vec<u32>,
        scratch: &mut Vec<f32>,
    ) {
        let Some(x16) = self.x16 else {
            // No rounded copy (not made by `conv`): through f32 panels.
            self.pack(pc, kc, j0, cols, scratch);
            Bf16::convert(scratch, kc, NR, out);
            return;
        };
        let steps = kc.div_ceil(2);
        super::matmul::reuse(out, cols.div_ceil(NR) * NR * steps);
        let (mut lo_row, mut hi_row) = (vec![0u16; self.g.wo], vec![0u16; self.g.wo]);
        for s in 0..steps {
            let (lo, hi) = (pc + 2 * s, pc + 2 * s + 1);
            for run in self.runs(j0, cols) {
                let lo = self.window(x16, lo, run, &mut lo_row);
                let hi = match hi < pc + kc {
                    true => self.window(x16, hi, run, &mut hi_row),
                    false => Window::ZERO,
                };
                for_each_segment([lo, hi], run, |t, [lo, hi], len| {
                    // SAFETY: only packed for the bf16 kernel, which needs AVX-512 BW.
                    unsafe { write_pairs(out, steps, s, t - j0, lo, hi, len) }
                });
            }
        }
    }
}

/// Output pixels `j..j+len` (counted over the images of an [`Im2Col`]): part of one output
/// row `oy` of image `img`, from column `ox0`.
#[derive(Clone, Copy)]
struct Run {
    j: usize,
    img: usize,
    oy: usize,
    ox0: usize,
    len: usize,
}

/// Where an im2col row's values along an output row come from: `data[ox + shift]` for `ox`
/// in `first..last`, zero (padding) elsewhere.
struct Window<'s, T> {
    data: &'s [T],
    shift: isize,
    first: usize,
    last: usize,
}

impl<T> Clone for Window<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Window<'_, T> {}

impl<T> Window<'_, T> {
    const ZERO: Self = Window {
        data: &[],
        shift: 0,
        first: 0,
        last: 0,
    };
}

/// Splits `run` where any window starts or ends, and calls `emit(j, values, len)` per piece
/// with each window's values (`None`: zeros).
fn for_each_segment<'s, T, const N: usize>(
    windows: [Window<'s, T>; N],
    run: Run,
    mut emit: impl FnMut(usize, [Option<&'s [T]>; N], usize),
) {
    let end = run.ox0 + run.len;
    let mut a = run.ox0;
    while a < end {
        let mut b = end;
        for w in &windows {
            for cut in [w.first, w.last] {
                if cut > a && cut < b {
                    b = cut;
                }
            }
        }
        let values = windows.map(|w| {
            (a >= w.first && a < w.last)
                .then(|| &w.data[(a as isize + w.shift) as usize..][..b - a])
        });
        emit(run.j + (a - run.ox0), values, b - a);
        a = b;
    }
}

impl Im2Col<'_> {
    /// The runs that make up columns `j0..j0+cols`.
    fn runs(&self, j0: usize, cols: usize) -> impl Iterator<Item = Run> + '_ {
        let (hw, wo) = (self.g.ho * self.g.wo, self.g.wo);
        let mut j = j0;
        std::iter::from_fn(move || {
            if j >= j0 + cols {
                return None;
            }
            let (img, pix) = (self.first_image + j / hw, j % hw);
            let (oy, ox0) = (pix / wo, pix % wo);
            let run = Run {
                j,
                img,
                oy,
                ox0,
                len: (wo - ox0).min(j0 + cols - j),
            };
            j += run.len;
            Some(run)
        })
    }

    /// Im2col row `r` along `run`'s output row, from `x` (the input, or its bf16 copy): the
    /// input row itself with stride 1 (no copy), else gathered into `row`.
    fn window<'s, T: Copy + Default>(
        &self,
        x: &'s [T],
        r: usize,
        run: Run,
        row: &'s mut [T],
    ) -> Window<'s, T> {
        let g = self.g;
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let iy = (run.oy * g.stride + ky) as isize - g.pad as isize;
        if iy < 0 || iy as usize >= g.h {
            return Window::ZERO;
        }
        let input = &x[((run.img * g.cin + ci) * g.h + iy as usize) * g.w..][..g.w];
        if g.stride == 1 {
            let first = g.pad.saturating_sub(kx).min(g.wo);
            let last = (g.w + g.pad).saturating_sub(kx).min(g.wo).max(first);
            return Window {
                data: input,
                shift: kx as isize - g.pad as isize,
                first,
                last,
            };
        }
        im2col_row(g, input, kx, row);
        Window {
            data: row,
            shift: 0,
            first: 0,
            last: g.wo,
        }
    }
}

/// Writes `src` (`None`: zeros) as columns `t..t+len` of k row `p` of NR-wide panels
/// `[kc][NR]`.
#[inline(always)]
fn scatter_into_panels(
    out: &mut [f32],
    kc: usize,
    p: usize,
    mut t: usize,
    src: Option<&[f32]>,
    len: usize,
) {
    let mut done = 0;
    while done < len {
        let slot = t % NR;
        let at = (t / NR) * kc * NR + p * NR + slot;
        let take = (NR - slot).min(len - done);
        match src {
            // Whole panel row: a fixed-size copy the compiler inlines as vector moves.
            Some(src) if take == NR => {
                let dst: &mut [f32; NR] = (&mut out[at..at + NR]).try_into().expect("NR floats");
                dst.copy_from_slice(&src[done..done + NR]);
            }
            Some(src) => out[at..at + take].copy_from_slice(&src[done..done + take]),
            None => out[at..at + take].fill(0.0),
        }
        done += take;
        t += take;
    }
}

/// One output row's values of im2col row (ci, ky, kx): `out[ox] = input[ox·s + kx - pad]`.
fn im2col_row<T: Copy + Default>(g: &Geometry, input: &[T], kx: usize, out: &mut [T]) {
    if g.stride == 1 {
        let first = g.pad.saturating_sub(kx).min(g.wo);
        let last = (g.w + g.pad).saturating_sub(kx).min(g.wo).max(first);
        out[..first].fill(T::default());
        out[last..].fill(T::default());
        let src0 = first + kx - g.pad;
        out[first..last].copy_from_slice(&input[src0..src0 + (last - first)]);
    } else {
        for (ox, v) in out.iter_mut().enumerate() {
            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
            *v = if ix < 0 || ix >= g.w as isize {
                T::default()
            } else {
                input[ix as usize]
            };
        }
    }
}

/// The output before the products: bias (+ extra) per channel. The products accumulate onto
/// it.
fn initial_output(g: &Geometry, bias: &[f32], extra: Option<&[f32]>) -> Vec<f32> {
    let hw_out = g.ho * g.wo;
    par_filled(g.batch * g.cout * hw_out, hw_out, |plane_index, plane| {
        let b = bias[plane_index % g.cout];
        match extra {
            Some(e) if e.len() == g.batch * g.cout => fill(plane, b + e[plane_index]),
            Some(e) => {
                for (o, v) in plane.iter_mut().zip(&e[plane_index * hw_out..]) {
                    o.write(b + v);
                }
            }
            None => fill(plane, b),
        }
    })
}

fn conv<P: Precision>(
    g: &Geometry,
    x: &[f32],
    w: Weights<P>,
    bias: &[f32],
    extra: Option<&[f32]>,
    col_budget: usize,
) -> Vec<f32> {
    let hw_out = g.ho * g.wo;
    let mut out = initial_output(g, bias, extra);
    let image_out = g.cout * hw_out;

    let packed = match w {
        Weights::Packed(p) if P::available() => p,
        Weights::Packed(_) => unreachable!("weights are only packed where our kernel runs"),
        Weights::Plain(w) => {
            conv_with_columns(g, x, w, col_budget, &mut out);
            return out;
        }
    };
    let a = AOperand::Packed(packed);
    // The bf16 kernel (two k values per panel word) reads a copy rounded once.
    let rounded = (P::PAIR == 2 && !g.pointwise()).then(|| matmul::to_bf16(x));
    let x16 = rounded.as_deref();
    if g.pointwise() {
        pointwise(g, x, &mut out, |dst, rhs| {
            matmul::gemm(dst, a, &rhs, 1.0, true)
        });
    } else if hw_out < SMALL_IMAGE && g.batch > 1 {
        // Small maps (the UNet's 8x8..32x32 levels): one GEMM over the whole batch.
        let n = g.batch * hw_out;
        let mut tmp = vec![0f32; g.cout * n];
        let source = Im2Col {
            g,
            x,
            x16,
            first_image: 0,
            images: g.batch,
        };
        matmul::gemm(MatMut::new(&mut tmp, g.cout, n, n), a, &source, 1.0, false);
        add_batch(g, &tmp, &mut out);
    } else {
        for b in 0..g.batch {
            let source = Im2Col {
                g,
                x,
                x16,
                first_image: b,
                images: 1,
            };
            let dst = MatMut::new(
                &mut out[b * image_out..][..image_out],
                g.cout,
                hw_out,
                hw_out,
            );
            matmul::gemm(dst, a, &source, 1.0, true);
        }
    }
    out
}

/// `out [B, Cout, HW] += tmp [Cout, B·HW]`.
fn add_batch(g: &Geometry, tmp: &[f32], out: &mut [f32]) {
    let hw_out = g.ho * g.wo;
    let n = g.batch * hw_out;
    out.par_chunks_mut(hw_out)
        .enumerate()
        .for_each(|(i, plane)| {
            let (b, co) = (i / g.cout, i % g.cout);
            for (o, t) in plane.iter_mut().zip(&tmp[co * n + b * hw_out..][..hw_out]) {
                *o += t;
            }
        });
}

/// A 1x1 convolution: per image, `out[Cout, HW] += W · x[Cin, HW]` through `product`.
fn pointwise(g: &Geometry, x: &[f32], out: &mut [f32], product: impl Fn(MatMut, Mat)) {
    let (hw, image_in) = (g.ho * g.wo, g.cin * g.h * g.w);
    for b in 0..g.batch {
        let input = &x[b * image_in..][..image_in];
        let rhs = Mat {
            data: input,
            rows: g.cin,
            cols: hw,
            row_stride: hw,
            col_stride: 1,
        };
        let dst = &mut out[b * g.cout * hw..][..g.cout * hw];
        product(MatMut::new(dst, g.cout, hw, hw), rhs);
    }
}

/// Without our GEMM kernel: explicit column tiles and the gemm crate. `out` holds the bias.
fn conv_with_columns(g: &Geometry, x: &[f32], w: &[f32], col_budget: usize, out: &mut [f32]) {
    let hw_out = g.ho * g.wo;
    let image_out = g.cout * hw_out;
    let weights = Mat {
        data: w,
        rows: g.cout,
        cols: g.k(),
        row_stride: g.k(),
        col_stride: 1,
    };

    if g.pointwise() {
        pointwise(g, x, out, |dst, rhs| gemm_f32(dst, weights, rhs, 1.0, true));
        return;
    }
    let rows_per_tile = (col_budget / (g.k() * g.wo).max(1)).clamp(1, g.ho);
    let mut col = vec![0f32; g.k() * rows_per_tile * g.wo];
    for b in 0..g.batch {
        let plane = &mut out[b * image_out..][..image_out];
        let mut row0 = 0;
        while row0 < g.ho {
            let rows = rows_per_tile.min(g.ho - row0);
            let n = rows * g.wo;
            let col = &mut col[..g.k() * n];
            im2col(g, x, b, row0..row0 + rows, col);
            let rhs = Mat {
                data: col,
                rows: g.k(),
                cols: n,
                row_stride: n,
                col_stride: 1,
            };
            let dst = MatMut::new(&mut plane[row0 * g.wo..], g.cout, n, hw_out);
            gemm_f32(dst, weights, rhs, 1.0, true);
            row0 += rows;
        }
    }
}

/// Fills `col[(ci,ky,kx), (oy, ox)]` for image `b` and output rows `rows`.
fn im2col(g: &Geometry, x: &[f32], b: usize, rows: std::ops::Range<usize>, col: &mut [f32]) {
    let n = rows.len() * g.wo;
    let image_in = g.cin * g.h * g.w;
    col.par_chunks_mut(n).enumerate().for_each(|(r, dst)| {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let channel = &x[b * image_in + ci * g.h * g.w..][..g.h * g.w];
        for (ri, oy) in rows.clone().enumerate() {
            let out_row = &mut dst[ri * g.wo..][..g.wo];
            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
            if iy < 0 || iy >= g.h as isize {
                out_row.fill(0.0);
            } else {
                im2col_row(g, &channel[iy as usize * g.w..][..g.w], kx, out_row);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa::{vector_levels, with_vectors};

    /// Direct 7-loop convolution, the definition.
    fn reference(g: &Geometry, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; g.batch * g.cout * g.ho * g.wo];
        for b in 0..g.batch {
            for co in 0..g.cout {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut acc = bias[co] as f64;
                        for ci in 0..g.cin {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * g.cin + ci) * g.h + iy as usize) * g.w
                                        + ix as usize];
                                    let wv = w[((co * g.cin + ci) * g.kh + ky) * g.kw + kx];
                                    acc += (xv * wv) as f64;
                                }
                            }
                        }
                        out[((b * g.cout + co) * g.ho + oy) * g.wo + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        batch: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) {
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let g = Geometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh: k,
            kw: k,
            stride,
            pad,
            ho,
            wo,
        };
        let x: Vec<f32> = (0..batch * cin * h * w)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let wt: Vec<f32> = (0..cout * cin * k * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 97.0)
            .collect();
        let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.1 - 0.3).collect();
        let want = reference(&g, &x, &wt, &bias);
        // Column tiles (default, and 2 rows: several tiles per image), and packed weights.
        let packed = pack_weights::<F32>(&wt, cout);
        let mut runs = vec![
            conv::<F32>(&g, &x, Weights::Plain(&wt), &bias, None, COL_BUDGET),
            conv::<F32>(&g, &x, Weights::Plain(&wt), &bias, None, 2 * g.k() * g.wo),
        ];
        for level in vector_levels() {
            runs.push(with_vectors(level, || {
                conv(&g, &x, Weights::Packed(&packed), &bias, None, COL_BUDGET)
            }));
        }
        if crate::kernels::isa::test_path_runs("bf16", Bf16::available()) {
            // bf16: the exact convolution of the bf16-rounded input and weights.
            let round = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .map(|x| f32::from_bits(matmul::bf16_bits(*x) << 16))
                    .collect()
            };
            let want16 = reference(&g, &round(&x), &round(&wt), &bias);
            let ours = conv(
                &g,
                &x,
                Weights::Packed(&pack_weights::<Bf16>(&wt, cout)),
                &bias,
                None,
                COL_BUDGET,
            );
            let worst = ours
                .iter()
                .zip(&want16)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4,
                "bf16 {batch}x{cin}x{h}x{w} k{k}: diff {worst}"
            );
        }
        for ours in runs {
            let worst = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{batch}x{cin}x{h}x{w} k{k} s{stride} p{pad}: diff {worst}"
            );
        }
    }

    #[test]
    fn fused_additions_match_adding_afterwards() {
        for level in vector_levels() {
            with_vectors(level, fused_additions_match);
        }
    }

    fn fused_additions_match() {
        let (batch, cin, h, w, cout) = (2, 3, 5, 6, 4);
        let g = Geometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            ho: h,
            wo: w,
        };
        let x: Vec<f32> = (0..batch * cin * h * w)
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let wt: Vec<f32> = (0..cout * cin * 9).map(|i| (i % 5) as f32 * 0.1).collect();
        let bias = vec![0.5f32; cout];
        let packed = pack_weights::<F32>(&wt, cout);
        let plain = conv(&g, &x, Weights::Packed(&packed), &bias, None, COL_BUDGET);
        let per_channel: Vec<f32> = (0..batch * cout).map(|i| i as f32).collect();
        let residual: Vec<f32> = (0..plain.len()).map(|i| (i % 11) as f32).collect();
        let with_channel = conv(
            &g,
            &x,
            Weights::Packed(&packed),
            &bias,
            Some(&per_channel),
            COL_BUDGET,
        );
        let with_residual = conv(
            &g,
            &x,
            Weights::Packed(&packed),
            &bias,
            Some(&residual),
            COL_BUDGET,
        );
        for i in 0..plain.len() {
            assert!((with_channel[i] - plain[i] - per_channel[i / (h * w)]).abs() < 1e-4);
            assert!((with_residual[i] - plain[i] - residual[i]).abs() < 1e-4);
        }
    }

    #[test]
    fn matches_the_definition() {
        check(1, 3, 9, 7, 5, 3, 1, 1); // per-image tiles
        check(2, 4, 6, 6, 3, 3, 1, 1); // small maps, batched
        check(2, 4, 7, 9, 3, 3, 2, 1); // stride 2 (downsampler)
        check(2, 4, 7, 9, 3, 3, 2, 0);
        check(3, 5, 4, 4, 6, 1, 1, 0); // pointwise
        check(1, 2, 11, 5, 3, 3, 1, 1); // odd sizes, last tile shorter
        check(1, 3, 40, 45, 14, 3, 1, 1); // runs crossing NR panels, m past one MR panel
    }
}
