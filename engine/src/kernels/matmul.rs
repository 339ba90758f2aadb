//! Our f32 GEMM for AVX-512: a 12x32 register-blocked micro-kernel over packed panels.
//!
//! The gemm crate reaches ~35 GFLOP/s per core on this project's convolution shapes, a seventh
//! of an AVX-512 core's peak. This follows the BLIS structure instead: operands are copied into
//! panels the micro-kernel reads sequentially (A: 12 rows interleaved per k, broadcast; B: 32
//! columns per k, two vector loads), with k blocked so a B micro-panel stays in L1 and an A
//! block in L2. Callers that reuse a B operand (attention's keys and values) pack it once.
//!
//! `C[m×n] = (accumulate ? C : 0) + alpha · A[m×k] · B[k×n]`, C row-major with unit column
//! stride, A and B with any strides.

use rayon::prelude::*;

use super::{Mat, MatMut, SendPtr};

pub const MR: usize = 12;
pub const NR: usize = 32;
/// k per block: a 256x32 B micro-panel is 32 KiB (L1), a 96x256 A block 96 KiB (L2).
const KC: usize = 256;
const MC: usize = 96;
/// Columns per C block: 128 rows x 512 columns is 256 KiB, within L2 with the B block.
const NC: usize = 512;

/// Whether this CPU runs our kernel (otherwise callers use the gemm crate).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A B operand that can copy a `[kc, cols]` block of itself into NR-column panels
/// `[kc][NR]` (zero-padded past `cols`): a strided matrix, or a convolution's input read as its
/// im2col matrix without ever materialising that matrix.
pub trait PackB: Sync {
    fn k(&self) -> usize;
    fn n(&self) -> usize;
    fn pack(&self, pc: usize, kc: usize, j0: usize, cols: usize, out: &mut Vec<f32>);
}

impl PackB for Mat<'_> {
    fn k(&self) -> usize {
        self.rows
    }
    fn n(&self) -> usize {
        self.cols
    }
    fn pack(&self, pc: usize, kc: usize, j0: usize, cols: usize, out: &mut Vec<f32>) {
        reuse(out, cols.div_ceil(NR) * NR * kc);
        for (jp, panel) in out.chunks_mut(kc * NR).enumerate() {
            let j = j0 + jp * NR;
            let width = NR.min(j0 + cols - j);
            for p in 0..kc {
                let dst = &mut panel[p * NR..][..width];
                let row = (pc + p) * self.row_stride + j * self.col_stride;
                if self.col_stride == 1 {
                    dst.copy_from_slice(&self.data[row..row + width]);
                } else {
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = self.data[row + i * self.col_stride];
                    }
                }
            }
        }
    }
}

/// B packed once for reuse (attention's keys and values, linear layers' weights): for each
/// k block, `ceil(n/NR)` panels of `[kc][NR]`.
pub struct PackedB {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl PackedB {
    pub fn pack(b: Mat) -> Self {
        let (k, n) = (b.rows, b.cols);
        let mut data = Vec::with_capacity(n.div_ceil(NR) * NR * k);
        let mut scratch = Vec::new();
        for pc in (0..k).step_by(KC) {
            b.pack(pc, KC.min(k - pc), 0, n, &mut scratch);
            data.extend_from_slice(&scratch);
        }
        Self { data, k, n }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    fn block(&self, pc: usize) -> &[f32] {
        let panels = self.n.div_ceil(NR);
        &self.data[pc * panels * NR..][..KC.min(self.k - pc) * panels * NR]
    }
}

/// A packed once (convolution weights): for each k block, `ceil(m/MR)` panels of `[kc][MR]`.
pub struct PackedA {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedA {
    pub fn pack(a: Mat) -> Self {
        let (m, k) = (a.rows, a.cols);
        let mut data = Vec::with_capacity(m.div_ceil(MR) * MR * k);
        let mut scratch = Vec::new();
        for pc in (0..k).step_by(KC) {
            pack_a(&a, 0, m, pc, KC.min(k - pc), &mut scratch);
            data.extend_from_slice(&scratch);
        }
        Self { data, m, k }
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Panels `first..` of k block `pc`.
    fn panels(&self, pc: usize, first: usize, count: usize) -> &[f32] {
        let kc = KC.min(self.k - pc);
        let start = pc * self.m.div_ceil(MR) * MR + first * kc * MR;
        &self.data[start..][..count * kc * MR]
    }
}

/// The A operand of a product.
#[derive(Clone, Copy)]
pub enum AOperand<'a> {
    Plain(Mat<'a>),
    Packed(&'a PackedA),
}

impl AOperand<'_> {
    fn rows(&self) -> usize {
        match self {
            Self::Plain(a) => a.rows,
            Self::Packed(a) => a.m,
        }
    }
    fn cols(&self) -> usize {
        match self {
            Self::Plain(a) => a.cols,
            Self::Packed(a) => a.k,
        }
    }
}

/// Sizes a packing buffer to `len` without clearing it: packers write every element that
/// feeds a kept output; padding rows/columns of a panel only produce discarded outputs.
pub(crate) fn reuse(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    buf.truncate(len);
}

/// Packs rows `i0..i0+mc` and k range `pc..pc+kc` of A into MR-row panels `[kc][MR]`.
fn pack_a(a: &Mat, i0: usize, mc: usize, pc: usize, kc: usize, out: &mut Vec<f32>) {
    let panels = mc.div_ceil(MR);
    reuse(out, panels * kc * MR);
    for (ip, panel) in out.chunks_mut(kc * MR).enumerate() {
        let rows = MR.min(mc - ip * MR);
        let base = (i0 + ip * MR) * a.row_stride + pc * a.col_stride;
        // k outer, rows inner: the panel is written sequentially from `rows` read streams.
        if a.row_stride == 1 {
            // Column-major A (attention's transposed scores): each k is a contiguous run.
            for (p, slot) in panel.chunks_exact_mut(MR).enumerate() {
                let at = base + p * a.col_stride;
                slot[..rows].copy_from_slice(&a.data[at..at + rows]);
            }
            continue;
        }
        for (p, slot) in panel.chunks_exact_mut(MR).enumerate() {
            let at = base + p * a.col_stride;
            for (r, v) in slot[..rows].iter_mut().enumerate() {
                *v = a.data[at + r * a.row_stride];
            }
        }
    }
}

fn check(dst: &MatMut, a: &AOperand, k: usize, n: usize) {
    assert!(
        available(),
        "matmul: AVX-512 kernel on a CPU without AVX-512"
    );
    assert!(
        a.rows() == dst.rows && a.cols() == k && n == dst.cols,
        "matmul: shapes do not chain"
    );
    if let AOperand::Plain(a) = a {
        assert!(
            a.rows == 0
                || a.cols == 0
                || (a.rows - 1) * a.row_stride + (a.cols - 1) * a.col_stride < a.data.len()
        );
    }
    assert!(dst.rows == 0 || (dst.rows - 1) * dst.row_stride + dst.cols <= dst.data.len());
}

/// Zeroes C when k is 0 (there is no product to write).
fn empty_product(dst: &mut MatMut, accumulate: bool) {
    if !accumulate {
        for r in 0..dst.rows {
            dst.data[r * dst.row_stride..][..dst.cols].fill(0.0);
        }
    }
}

/// C rows `r0..r0+m` += alpha · A[r0.., pc..pc+kc] · B_block, for one packed k block of B.
#[allow(clippy::too_many_arguments)]
fn run_block(
    dst: &mut MatMut,
    a: &AOperand,
    r0: usize,
    pc: usize,
    kc: usize,
    b_block: &[f32],
    alpha: f32,
    accumulate: bool,
    a_pack: &mut Vec<f32>,
) {
    let (m, n) = (dst.rows, dst.cols);
    let c = dst.data.as_mut_ptr();
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        let a_panels: &[f32] = match a {
            AOperand::Plain(a) => {
                pack_a(a, r0 + i0, mc, pc, kc, a_pack);
                a_pack
            }
            // Row offsets are multiples of MR for packed A (see `gemm`).
            AOperand::Packed(a) => a.panels(pc, (r0 + i0) / MR, mc.div_ceil(MR)),
        };
        for jp in 0..n.div_ceil(NR) {
            let b_panel = &b_block[jp * kc * NR..][..kc * NR];
            let cols = NR.min(n - jp * NR);
            for ip in 0..mc.div_ceil(MR) {
                let rows = MR.min(mc - ip * MR);
                let a_panel = &a_panels[ip * kc * MR..][..kc * MR];
                // SAFETY: the tile (i0+ip·MR.., jp·NR..) of rows x cols lies in dst (checked
                // by the callers); the panels hold kc·MR and kc·NR floats.
                unsafe {
                    let tile = c.add((i0 + ip * MR) * dst.row_stride + jp * NR);
                    tile_kernel(
                        kc,
                        a_panel,
                        b_panel,
                        tile,
                        dst.row_stride,
                        rows,
                        cols,
                        alpha,
                        accumulate,
                    );
                }
            }
        }
    }
}

/// Single-threaded product with a pre-packed B.
pub fn gemm_packed(mut dst: MatMut, a: Mat, b: &PackedB, alpha: f32, accumulate: bool) {
    let a = AOperand::Plain(a);
    check(&dst, &a, b.k, b.n);
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if b.k == 0 {
        return empty_product(&mut dst, accumulate);
    }
    let mut a_pack = Vec::new();
    for pc in (0..b.k).step_by(KC) {
        let kc = KC.min(b.k - pc);
        run_block(
            &mut dst,
            &a,
            0,
            pc,
            kc,
            b.block(pc),
            alpha,
            accumulate || pc > 0,
            &mut a_pack,
        );
    }
}

/// Multi-threaded product with a pre-packed B (linear layers): rows of C are split between
/// rayon's threads.
pub fn gemm_packed_rows(dst: MatMut, a: Mat, b: &PackedB, alpha: f32, accumulate: bool) {
    let m = dst.rows;
    check(&dst, &AOperand::Plain(a), b.k, b.n);
    let threads = rayon::current_num_threads().max(1);
    let chunk = m.div_ceil(threads).div_ceil(MR).max(1) * MR;
    let (row_stride, cols) = (dst.row_stride, dst.cols);
    let ptr = SendPtr(dst.data.as_mut_ptr());
    let len = dst.data.len();
    (0..m.div_ceil(chunk)).into_par_iter().for_each(|ci| {
        let r0 = ci * chunk;
        let rows = chunk.min(m - r0);
        // SAFETY: chunks cover disjoint row ranges of C; the view is within `len`.
        let data = unsafe {
            std::slice::from_raw_parts_mut(ptr.get().add(r0 * row_stride), len - r0 * row_stride)
        };
        let a_part = Mat {
            data: &a.data[r0 * a.row_stride..],
            rows,
            ..a
        };
        gemm_packed(
            MatMut::new(data, rows, cols, row_stride),
            a_part,
            b,
            alpha,
            accumulate,
        );
    });
}

/// Multi-threaded product: columns of C are split between rayon's threads; each packs its
/// own columns of B one k block at a time (so the packed block stays in cache).
pub fn gemm(dst: MatMut, a: AOperand, b: &impl PackB, alpha: f32, accumulate: bool) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols());
    assert!(b.k() == k && b.n() == n, "matmul: shapes do not chain");
    check(&dst, &a, k, n);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // One chunk per thread (split further when very wide): each chunk packs A again unless
    // it is pre-packed.
    let per_thread = n.div_ceil(threads).div_ceil(NR) * NR;
    let chunk = per_thread.clamp(NR, 4096);
    let row_stride = dst.row_stride;
    let ptr = SendPtr(dst.data.as_mut_ptr());
    let len = dst.data.len();
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|ci| {
        let j0 = ci * chunk;
        let cols = chunk.min(n - j0);
        // SAFETY: chunks cover disjoint column ranges of C; the view is within `len`.
        let data = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(j0), len - j0) };
        columns(
            MatMut::new(data, m, cols, row_stride),
            a,
            b,
            j0,
            alpha,
            accumulate,
        );
    });
}

/// Single-threaded product (for use inside parallel loops).
pub fn gemm_serial(dst: MatMut, a: AOperand, b: &impl PackB, alpha: f32, accumulate: bool) {
    let (k, n) = (a.cols(), dst.cols);
    assert!(b.k() == k && b.n() == n, "matmul: shapes do not chain");
    check(&dst, &a, k, n);
    columns(dst, a, b, 0, alpha, accumulate);
}

/// `dst` = columns `j0..` of the product, packing B one k block at a time.
fn columns(mut dst: MatMut, a: AOperand, b: &impl PackB, j0: usize, alpha: f32, accumulate: bool) {
    let (m, cols, k) = (dst.rows, dst.cols, a.cols());
    if m == 0 || cols == 0 {
        return;
    }
    if k == 0 {
        return empty_product(&mut dst, accumulate);
    }
    PACK_BUFFERS.with(|buffers| {
        let (b_pack, a_pack) = &mut *buffers.borrow_mut();
        let row_stride = dst.row_stride;
        // NC columns at a time, so the C block being accumulated stays in L2 across k blocks.
        for jc in (0..cols).step_by(NC) {
            let width = NC.min(cols - jc);
            let mut block = MatMut::new(&mut dst.data[jc..], m, width, row_stride);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                b.pack(pc, kc, j0 + jc, width, b_pack);
                let acc = accumulate || pc > 0;
                run_block(&mut block, &a, 0, pc, kc, b_pack, alpha, acc, a_pack);
            }
        }
    })
}

thread_local! {
    /// Each thread's B and A packing buffers, kept between products: fresh megabyte buffers
    /// would be page-faulted in (and zeroed by the kernel) on every call.
    static PACK_BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One MR x NR tile; partial tiles go through a scratch tile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_kernel(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    accumulate: bool,
) {
    if rows == MR && cols == NR {
        micro_12x32(kc, a.as_ptr(), b.as_ptr(), c, ldc, alpha, accumulate);
        return;
    }
    let mut scratch = [0f32; MR * NR];
    micro_12x32(
        kc,
        a.as_ptr(),
        b.as_ptr(),
        scratch.as_mut_ptr(),
        NR,
        alpha,
        false,
    );
    for r in 0..rows {
        let out = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        let tile = &scratch[r * NR..][..cols];
        if accumulate {
            for (o, t) in out.iter_mut().zip(tile) {
                *o += *t;
            }
        } else {
            out.copy_from_slice(tile);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_12x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        let ap = a.add(p * MR);
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(i));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
    }
    let alpha = _mm512_set1_ps(alpha);
    for (i, row) in acc.iter().enumerate() {
        let out = c.add(i * ldc);
        for (h, v) in row.iter().enumerate() {
            let dst = out.add(16 * h);
            let v = _mm512_mul_ps(*v, alpha);
            let v = if accumulate {
                _mm512_add_ps(_mm512_loadu_ps(dst), v)
            } else {
                v
            };
            _mm512_storeu_ps(dst, v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_12x32(
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: f32,
    _: bool,
) {
    unreachable!("available() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(m: usize, n: usize, k: usize, a: &Mat, b: &Mat) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| {
                        (a.data[i * a.row_stride + p * a.col_stride]
                            * b.data[p * b.row_stride + j * b.col_stride])
                            as f64
                    })
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_reference_for_odd_shapes_and_strides() {
        if !available() {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (12, 32, 256),
            (13, 33, 257),
            (100, 70, 600),
            (5, 200, 3),
        ] {
            let av: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 11.0)
                .collect();
            let bv: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) / 9.0)
                .collect();
            for transpose_b in [false, true] {
                let a = Mat {
                    data: &av,
                    rows: m,
                    cols: k,
                    row_stride: k,
                    col_stride: 1,
                };
                let b = if transpose_b {
                    Mat {
                        data: &bv,
                        rows: k,
                        cols: n,
                        row_stride: 1,
                        col_stride: k,
                    }
                } else {
                    Mat {
                        data: &bv,
                        rows: k,
                        cols: n,
                        row_stride: n,
                        col_stride: 1,
                    }
                };
                let want = reference(m, n, k, &a, &b);
                let worst = |got: &[f32], times: f32| {
                    got.iter()
                        .zip(&want)
                        .map(|(x, y)| (x - times * y).abs())
                        .fold(0f32, f32::max)
                };
                let case = format!("{m}x{n}x{k} transposed B {transpose_b}");
                let mut got = vec![1f32; m * n];
                let plain = AOperand::Plain(a);
                gemm(MatMut::new(&mut got, m, n, n), plain, &b, 1.0, false);
                assert!(worst(&got, 1.0) < 1e-3, "{case}: {}", worst(&got, 1.0));
                // Accumulate with alpha 2 on top of the result: 3x.
                gemm(MatMut::new(&mut got, m, n, n), plain, &b, 2.0, true);
                assert!(
                    worst(&got, 3.0) < 3e-3,
                    "{case} accumulate: {}",
                    worst(&got, 3.0)
                );
                // Pre-packed A, and pre-packed B split by rows.
                let packed_a = PackedA::pack(a);
                gemm(
                    MatMut::new(&mut got, m, n, n),
                    AOperand::Packed(&packed_a),
                    &b,
                    1.0,
                    false,
                );
                assert!(
                    worst(&got, 1.0) < 1e-3,
                    "{case} packed A: {}",
                    worst(&got, 1.0)
                );
                gemm_packed_rows(
                    MatMut::new(&mut got, m, n, n),
                    a,
                    &PackedB::pack(b),
                    1.0,
                    false,
                );
                assert!(
                    worst(&got, 1.0) < 1e-3,
                    "{case} packed B: {}",
                    worst(&got, 1.0)
                );
            }
        }
    }
}
