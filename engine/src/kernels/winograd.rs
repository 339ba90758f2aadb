//! 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 output tile is computed from its 4x4 input patch `d` and the 3x3 kernel `g` as
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: 16 products per input channel instead of 36. Summed over the
//! input channels, the 16 element-wise products are 16 GEMMs, `M_ξ[Cout, tiles] = U_ξ[Cout,
//! Cin] · V_ξ[Cin, tiles]`, so the multiply work of the VAE's and UNet's 3x3 convolutions (most
//! of a decode) drops 2.25x, and the GEMMs run on the same packed kernels as every other
//! product. The transforms are additions and subtractions only, vectorised along a row of
//! tiles (the input is split into its even and odd columns first).
//!
//! Numerics: the weights' transform halves and sums three taps (exact to f32 rounding, done
//! in f64); the input's and output's transforms add and subtract. The result differs from the
//! direct convolution by f32 rounding only (a few ulp of the output's magnitude, see the
//! tests). Every operation is in a fixed order and each tile is computed on its own, so the
//! result is the same bit for bit whatever the thread count, blocking or vector ISA.

use rayon::prelude::*;

use super::matmul::{self, reuse, AOperand, PackedA, Precision};
use super::{Mat, MatMut, SendPtr};

/// Positions of the 4x4 transformed tile.
const POSITIONS: usize = 16;

/// Tiles per GEMM column block: wide enough for full-speed products, small enough that a
/// block's transformed input and products (`16·(Cin + Cout)·TILES` floats) stay in L3.
const TILES: usize = 256;

/// Input channels below which the transforms cost more than the multiplies they save.
const MIN_CHANNELS: usize = 32;

/// Whether a convolution of this shape runs here: 3x3, stride 1, padding 1 (every 3x3
/// convolution in SD's networks except the downsamplers), with enough input channels to pay
/// for the transforms, and output channels in multiples of 4 (the packed GEMM's partial
/// panel heights).
pub fn eligible(kernel: (usize, usize, usize, usize), stride: usize, padding: usize) -> bool {
    let (cout, cin, kh, kw) = kernel;
    kh == 3 && kw == 3 && stride == 1 && padding == 1 && cin >= MIN_CHANNELS && cout % 4 == 0
}

/// The kernel in the Winograd domain: `U_ξ = (G g Gᵀ)_ξ` as a `[Cout, Cin]` matrix per
/// position, packed for the GEMM. 16/9 of the direct weight's size.
pub struct WinogradWeights<P: Precision> {
    positions: Vec<PackedA<P>>,
    cout: usize,
    cin: usize,
}

impl<P: Precision> WinogradWeights<P> {
    /// Transforms and packs a `[Cout, Cin, 3, 3]` weight (contiguous f32). The transformed
    /// f32 matrices exist only while packing (16/9 of the weight, for one layer at a time).
    pub fn pack(w: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(
            w.len(),
            cout * cin * 9,
            "winograd: weight is not [Cout, Cin, 3, 3]"
        );
        let pairs = cout * cin;
        // [ξ][Cout][Cin], filled a run of kernels per task.
        let mut u = vec![0f32; POSITIONS * pairs];
        let dst = SendPtr(u.as_mut_ptr());
        const RUN: usize = 4096;
        w.par_chunks(9 * RUN)
            .enumerate()
            .for_each(|(run, kernels)| {
                for (k, g) in kernels.chunks_exact(9).enumerate() {
                    let pair = run * RUN + k;
                    for (xi, v) in transform_kernel(g).into_iter().enumerate() {
                        // SAFETY: (ξ, pair) is written by this task only; the index is below
                        // POSITIONS·pairs, the buffer's length.
                        unsafe { *dst.get().add(xi * pairs + pair) = v };
                    }
                }
            });
        let positions = (0..POSITIONS)
            .into_par_iter()
            .map(|xi| {
                PackedA::pack(Mat {
                    data: &u[xi * pairs..][..pairs],
                    rows: cout,
                    cols: cin,
                    row_stride: cin,
                    col_stride: 1,
                })
            })
            .collect();
        Self {
            positions,
            cout,
            cin,
        }
    }

    pub fn cout(&self) -> usize {
        self.cout
    }

    pub fn cin(&self) -> usize {
        self.cin
    }
}

/// `G g Gᵀ` of one 3x3 kernel (row-major) at positions `ξ = 4a + c`, with
/// `G = [[1,0,0], [½,½,½], [½,-½,½], [0,0,1]]`. In f64, rounded once.
fn transform_kernel(g: &[f32]) -> [f32; POSITIONS] {
    let g: [f64; 9] = std::array::from_fn(|i| g[i] as f64);
    let along = |v: [f64; 3]| {
        [
            v[0],
            (v[0] + v[1] + v[2]) / 2.0,
            (v[0] - v[1] + v[2]) / 2.0,
            v[2],
        ]
    };
    // G g: each kernel column through G.
    let cols: [[f64; 4]; 3] = std::array::from_fn(|j| along([g[j], g[3 + j], g[6 + j]]));
    let mut u = [0f32; POSITIONS];
    for a in 0..4 {
        // Row a of G g, through G again: (G g) Gᵀ.
        let row = along([cols[0][a], cols[1][a], cols[2][a]]);
        for c in 0..4 {
            u[4 * a + c] = row[c] as f32;
        }
    }
    u
}

/// `out[B, Cout, H, W] += conv3x3(x[B, Cin, H, W])` (stride 1, padding 1); `out` holds the
/// bias and anything else to add.
pub fn accumulate<P: Precision>(
    x: &[f32],
    (batch, h, w): (usize, usize, usize),
    weights: &WinogradWeights<P>,
    out: &mut [f32],
) {
    let (cin, cout) = (weights.cin, weights.cout);
    assert_eq!(x.len(), batch * cin * h * w, "winograd: input size");
    assert_eq!(out.len(), batch * cout * h * w, "winograd: output size");
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    // Tile rows of all images, in order; a block takes whole tile rows (across images too,
    // so small maps still make wide products).
    let tile_rows = batch * th;
    let block_rows = (TILES / tw).clamp(1, tile_rows.max(1));
    let max_tiles = block_rows * tw;
    BUFFERS.with(|buffers| {
        let (v, m) = &mut *buffers.borrow_mut();
        // Every element read below is written first in each block.
        reuse(v, cin * POSITIONS * max_tiles);
        reuse(m, POSITIONS * cout * max_tiles);
        blocks(x, (batch, h, w), weights, out, (v, m), block_rows);
    })
}

thread_local! {
    /// The transformed input and the products of a block, kept between calls: fresh
    /// megabyte buffers would be page-faulted in (and zeroed) on every convolution.
    static BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// [`accumulate`] over blocks of `block_rows` tile rows, with `v` and `m` sized for one.
fn blocks<P: Precision>(
    x: &[f32],
    (batch, h, w): (usize, usize, usize),
    weights: &WinogradWeights<P>,
    out: &mut [f32],
    (v, m): (&mut [f32], &mut [f32]),
    block_rows: usize,
) {
    let (cin, cout) = (weights.cin, weights.cout);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tile_rows = batch * th;
    let out_ptr = SendPtr(out.as_mut_ptr());
    for first in (0..tile_rows).step_by(block_rows) {
        let rows = block_rows.min(tile_rows - first);
        let n = rows * tw;
        // V: [Cin][ξ][n], one channel per task.
        v[..cin * POSITIONS * n]
            .par_chunks_mut(POSITIONS * n)
            .enumerate()
            .for_each(|(ci, dst)| {
                let mut scratch = RowScratch::new(tw);
                for r in 0..rows {
                    let (img, ty) = ((first + r) / th, (first + r) % th);
                    let plane = &x[(img * cin + ci) * h * w..][..h * w];
                    transform_input(plane, (h, w), (img, ty), &mut scratch, dst, (n, r * tw));
                }
            });
        // M_ξ = U_ξ · V_ξ, one position per task.
        let v = &v[..cin * POSITIONS * n];
        m[..POSITIONS * cout * n]
            .par_chunks_mut(cout * n)
            .enumerate()
            .for_each(|(xi, dst)| {
                let rhs = Mat {
                    data: &v[xi * n..],
                    rows: cin,
                    cols: n,
                    row_stride: POSITIONS * n,
                    col_stride: 1,
                };
                let a = AOperand::Packed(&weights.positions[xi]);
                matmul::gemm_serial(MatMut::new(dst, cout, n, n), a, &rhs, 1.0, false);
            });
        // Y = Aᵀ M A into the output, one channel per task.
        let m = &m[..POSITIONS * cout * n];
        (0..cout).into_par_iter().for_each(|co| {
            let mut scratch = OutputScratch::new(tw);
            for r in 0..rows {
                let (img, ty) = ((first + r) / th, (first + r) % th);
                let products: [&[f32]; POSITIONS] =
                    std::array::from_fn(|xi| &m[(xi * cout + co) * n + r * tw..][..tw]);
                // SAFETY: each task writes only output channel `co` (a disjoint plane per
                // image); the plane lies within `out`, whose length was checked above.
                let plane = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.get().add((img * cout + co) * h * w),
                        h * w,
                    )
                };
                transform_output(&products, &mut scratch, plane, (h, w), ty);
            }
        });
    }
}

/// Per-task buffers for one input row's even and odd columns and the row transforms of a
/// patch's 4 input rows.
struct RowScratch {
    odd: Vec<f32>,
    even: Vec<f32>,
    /// Row transform of patch row i: `[c][tx]`.
    rows: [Vec<f32>; 4],
    /// The tile row (image, ty) whose patch `rows` holds.
    holds: Option<(usize, usize)>,
}

impl RowScratch {
    fn new(tw: usize) -> Self {
        Self {
            odd: vec![0.0; tw + 1],
            even: vec![0.0; tw + 1],
            rows: std::array::from_fn(|_| vec![0.0; 4 * tw]),
            holds: None,
        }
    }

    /// Makes `rows` hold tile row `ty`'s patch rows of `plane`: the last two rows of tile row
    /// `ty - 1`'s patch are this one's first two, so only two rows are transformed when the
    /// previous tile row of the same image came just before.
    fn load(&mut self, plane: &[f32], (h, w): (usize, usize), img: usize, ty: usize) {
        let first = match self.holds {
            Some(held) if ty > 0 && held == (img, ty - 1) => {
                self.rows.swap(0, 2);
                self.rows.swap(1, 3);
                2
            }
            _ => 0,
        };
        for i in first..4 {
            // Patch row i is input row 2ty - 1 + i (zero outside the image).
            let iy = (2 * ty + i).checked_sub(1).filter(|&y| y < h);
            self.transform_row(iy.map(|y| &plane[y * w..][..w]), i);
        }
        self.holds = Some((img, ty));
    }

    /// `Bᵀ` along one input row (`None`: a padding row) into `rows[i]`.
    fn transform_row(&mut self, row: Option<&[f32]>, i: usize) {
        let tw = self.odd.len() - 1;
        // With the padding column, patch column c of tile tx is input column 2tx - 1 + c:
        // odd[j] = x[2j - 1] and even[j] = x[2j] give columns (odd[tx], even[tx],
        // odd[tx + 1], even[tx + 1]).
        self.odd.fill(0.0);
        self.even.fill(0.0);
        if let Some(row) = row {
            let pairs = row.chunks_exact(2);
            let last = pairs.remainder().first().copied();
            let count = pairs.len();
            for (pair, (e, o)) in pairs.zip(self.even.iter_mut().zip(&mut self.odd[1..])) {
                *e = pair[0];
                *o = pair[1];
            }
            if let Some(v) = last {
                self.even[count] = v;
            }
        }
        let out = &mut self.rows[i][..4 * tw];
        let (t0, rest) = out.split_at_mut(tw);
        let (t1, rest) = rest.split_at_mut(tw);
        let (t2, t3) = rest.split_at_mut(tw);
        let (o0, o1) = (&self.odd[..tw], &self.odd[1..]);
        let (e0, e1) = (&self.even[..tw], &self.even[1..]);
        for tx in 0..tw {
            t0[tx] = o0[tx] - o1[tx];
            t1[tx] = e0[tx] + o1[tx];
            t2[tx] = o1[tx] - e0[tx];
            t3[tx] = e0[tx] - e1[tx];
        }
    }
}

/// `Bᵀ d B` of tile row `ty`'s tiles of one channel `plane [h, w]`, written as
/// `dst[ξ·n + at + tx]`. `Bᵀ = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]]`.
fn transform_input(
    plane: &[f32],
    (h, w): (usize, usize),
    (img, ty): (usize, usize),
    s: &mut RowScratch,
    dst: &mut [f32],
    (n, at): (usize, usize),
) {
    let tw = s.odd.len() - 1;
    s.load(plane, (h, w), img, ty);
    // Columns of the row-transformed patch: position ξ = 4a + c.
    let r = |i: usize, c: usize| &s.rows[i][c * tw..][..tw];
    for c in 0..4 {
        let (r0, r1, r2, r3) = (r(0, c), r(1, c), r(2, c), r(3, c));
        // Bᵀ down the columns: rows r0 - r2, r1 + r2, r2 - r1, r1 - r3 (adding -q is exactly
        // subtracting q).
        let rows = [
            (r0, r2, -1.0),
            (r1, r2, 1.0),
            (r2, r1, -1.0),
            (r1, r3, -1.0),
        ];
        for (a, (p, q, sign)) in rows.into_iter().enumerate() {
            let start = (4 * a + c) * n + at;
            for (d, (p, q)) in dst[start..start + tw].iter_mut().zip(p.iter().zip(q)) {
                *d = p + sign * q;
            }
        }
    }
}

/// Per-task buffers for the output transform: `Aᵀ M` (`[dy][c][tx]`) and one output row's
/// even and odd columns.
struct OutputScratch {
    s: [[Vec<f32>; 4]; 2],
    y: [Vec<f32>; 2],
}

impl OutputScratch {
    fn new(tw: usize) -> Self {
        let row = || vec![0f32; tw];
        Self {
            s: std::array::from_fn(|_| std::array::from_fn(|_| row())),
            y: [row(), row()],
        }
    }
}

/// Adds `Aᵀ M A` of one tile row (`products[ξ][tx]`) to output rows `2ty`, `2ty + 1` of
/// `plane [h, w]`. `Aᵀ = [[1,1,1,0], [0,1,-1,-1]]`.
fn transform_output(
    products: &[&[f32]; POSITIONS],
    scratch: &mut OutputScratch,
    plane: &mut [f32],
    (h, w): (usize, usize),
    ty: usize,
) {
    let OutputScratch { s, y } = scratch;
    let tw = y[0].len();
    let m = |a: usize, c: usize| &products[4 * a + c][..tw];
    // Along the rows (a), per column c: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3.
    for c in 0..4 {
        let (m0, m1, m2, m3) = (m(0, c), m(1, c), m(2, c), m(3, c));
        let (s0, s1) = s.split_at_mut(1);
        let (s0, s1) = (&mut s0[0][c][..tw], &mut s1[0][c][..tw]);
        for tx in 0..tw {
            s0[tx] = m0[tx] + m1[tx] + m2[tx];
            s1[tx] = m1[tx] - m2[tx] - m3[tx];
        }
    }
    for dy in 0..2 {
        let oy = 2 * ty + dy;
        if oy >= h {
            break;
        }
        let s = &s[dy];
        let (y0, y1) = y.split_at_mut(1);
        let (y0, y1) = (&mut y0[0][..tw], &mut y1[0][..tw]);
        let (s0, s1, s2, s3) = (&s[0][..tw], &s[1][..tw], &s[2][..tw], &s[3][..tw]);
        for tx in 0..tw {
            y0[tx] = s0[tx] + s1[tx] + s2[tx];
            y1[tx] = s1[tx] - s2[tx] - s3[tx];
        }
        let row = &mut plane[oy * w..][..w];
        for (pair, (a, b)) in row.chunks_mut(2).zip(y0.iter().zip(y1.iter())) {
            pair[0] += a;
            if let Some(second) = pair.get_mut(1) {
                *second += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa::{vector_levels, with_vectors};
    use crate::kernels::matmul::F32;

    /// The definition, in f64.
    fn reference(
        x: &[f32],
        w: &[f32],
        (b, cin, h, wd, cout): (usize, usize, usize, usize, usize),
    ) -> Vec<f64> {
        let mut out = vec![0f64; b * cout * h * wd];
        for img in 0..b {
            for co in 0..cout {
                for oy in 0..h {
                    for ox in 0..wd {
                        let mut acc = 0f64;
                        for ci in 0..cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (oy as isize + ky - 1, ox as isize + kx - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((img * cin + ci) * h + iy as usize) * wd + ix as usize];
                                    let wv =
                                        w[((co * cin + ci) * 3 + ky as usize) * 3 + kx as usize];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((img * cout + co) * h + oy) * wd + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 - 1001.0) / 1001.0)
            .collect()
    }

    fn run<P: Precision>(
        x: &[f32],
        w: &[f32],
        dims: (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let (b, cin, h, wd, cout) = dims;
        let weights = WinogradWeights::<P>::pack(w, cout, cin);
        let mut out = vec![0.25f32; b * cout * h * wd];
        accumulate(x, (b, h, wd), &weights, &mut out);
        out.iter().map(|v| v - 0.25).collect()
    }

    /// Worst absolute error relative to the output's largest magnitude.
    fn worst(ours: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        ours.iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max)
            / scale
    }

    #[test]
    fn matches_the_definition() {
        // Odd and even sizes, one tile row per block (wide), several images per block (small
        // maps), Cout past one MR panel and a partial one.
        for dims in [
            (1, 32, 7, 9, 4),
            (2, 40, 6, 6, 16),
            (1, 33, 11, 600, 8),
            (3, 32, 5, 4, 28),
            (1, 64, 16, 16, 64),
        ] {
            let (b, cin, h, wd, cout) = dims;
            let x = data(b * cin * h * wd, 1);
            let w = data(cout * cin * 9, 2);
            let want = reference(&x, &w, dims);
            let mut results = Vec::new();
            for level in vector_levels() {
                let ours = with_vectors(level, || run::<F32>(&x, &w, dims));
                let err = worst(&ours, &want);
                assert!(err < 2e-6, "{dims:?} {level:?}: relative error {err}");
                results.push(ours);
            }
            // Every vector ISA gives the same bits.
            for r in &results[1..] {
                assert!(r
                    .iter()
                    .zip(&results[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn eligibility() {
        assert!(eligible((128, 128, 3, 3), 1, 1));
        assert!(!eligible((128, 128, 3, 3), 2, 1), "stride 2");
        assert!(!eligible((128, 128, 3, 3), 1, 0), "no padding");
        assert!(!eligible((128, 4, 3, 3), 1, 1), "too few input channels");
        assert!(
            !eligible((3, 128, 3, 3), 1, 1),
            "output channels not a multiple of 4"
        );
        assert!(!eligible((128, 128, 1, 1), 1, 0), "1x1");
    }
}
