//! Our GEMM for AVX-512, AVX2 and NEON: register-blocked micro-kernels over packed 12x32
//! panels, in f32 or (AVX-512 only) with bf16 inputs and f32 accumulation.
//!
//! The gemm crate reaches ~35 GFLOP/s per core on this project's convolution shapes, a seventh
//! of an AVX-512 core's peak. This follows the BLIS structure instead: operands are copied into
//! panels the micro-kernel reads sequentially (A: 12 rows interleaved per k, broadcast; B: 32
//! columns per k, two vector loads), with k blocked so a B micro-panel stays in L1 and an A
//! block in L2. Callers that reuse a B operand (attention's keys and values) pack it once.
//!
//! AVX2 has 16 vector registers of 8 floats, too few for a 12x32 tile; its kernel walks the
//! same panels as 6x16 tiles, so packing (weights at load, convolution inputs per call) is
//! one code path for both, and both kernels sum every output in the same order: their
//! results are identical, bit for bit. NEON (aarch64) has 32 registers of 4 floats; its
//! kernel walks the panels as 12x8 tiles (24 accumulators, all 12 A values of a k step in
//! three registers multiplied by lane, two B vectors: 29 registers) and sums in the same
//! order too, so an ARM machine computes the same products as an x86 one.
//!
//! The [`Precision`] decides what a panel holds: f32 values, or (where the CPU has
//! AVX512_BF16) pairs of consecutive k values rounded to bf16 in one 32-bit word, which
//! `vdpbf16ps` multiplies and adds into f32 accumulators: twice the products per instruction
//! and half the bytes per weight. Operands are always given in f32; the packers round.
//!
//! `C[m×n] = (accumulate ? C : 0) + alpha · A[m×k] · B[k×n]`, C row-major with unit column
//! stride, A and B with any strides.

use rayon::prelude::*;

use super::isa::{isa, vector_isa, Isa};
use super::{Mat, MatMut, SendPtr};

pub const MR: usize = 12;
pub const NR: usize = 32;
const MC: usize = 96;

/// What the GEMM's panels hold and which micro-kernel multiplies them.
pub trait Precision: Copy + Send + Sync + 'static {
    /// One panel element: a value (f32) or a pair of k values (bf16).
    type Elem: Copy + Send + Sync + 'static;
    /// k values per panel element.
    const PAIR: usize;
    /// k per block: a `[KC][NR]` B micro-panel is 32 KiB (L1), an `[MC][KC]` A block 96 KiB (L2).
    const KC: usize;
    /// Columns per C block, so the block being accumulated stays in L2 across k blocks.
    const NC: usize;

    /// Whether this CPU runs the kernel.
    fn available() -> bool;

    /// Panel rows (elements along k) for `kc` values of k.
    fn steps(kc: usize) -> usize {
        kc.div_ceil(Self::PAIR)
    }

    /// `src` holds f32 panels `[kc][width]`; returns them in this precision, using `scratch`.
    fn convert<'a>(
        src: &'a [f32],
        kc: usize,
        width: usize,
        scratch: &'a mut Vec<u32>,
    ) -> &'a [Self::Elem];

    /// Packs a `[kc, cols]` block of `b` into this precision's panels, using `floats` and
    /// `words` as buffers.
    fn pack_b<'a>(
        b: &(impl PackB + ?Sized),
        pc: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        floats: &'a mut Vec<f32>,
        words: &'a mut Vec<u32>,
    ) -> &'a [Self::Elem];

    /// `C[R×NR] = (accumulate ? C : 0) + alpha · A_panel[..R] · B_panel` for the first
    /// `R = rows` of the panel's MR rows; `rows` is 4, 8 or 12 (a panel's only partial
    /// heights in SD's networks, whose channel counts are multiples of 4).
    ///
    /// # Safety
    /// `a` and `b` hold `steps·MR` and `steps·NR` elements; C rows `0..rows` at stride `ldc`
    /// hold NR writable floats; the CPU has [`Self::available`]'s features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro(
        steps: usize,
        a: *const Self::Elem,
        b: *const Self::Elem,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        accumulate: bool,
        rows: usize,
    );
}

/// f32 panels and FMA: the reference precision, on AVX-512 (one 12x32 tile in 24 zmm
/// accumulators), AVX2 (the same panels as four 6x16 tiles) or NEON (as four 12x8 tiles).
#[derive(Clone, Copy, Debug)]
pub struct F32;

/// bf16 pairs and `vdpbf16ps`, f32 accumulation (like PyTorch's bf16 autocast matmuls, but
/// the outputs stay f32).
#[derive(Clone, Copy, Debug)]
pub struct Bf16;

/// Whether the CPU has AVX512_BF16 (with the AVX-512 subset its packers use).
#[cfg(target_arch = "x86_64")]
fn has_bf16() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bf16"))
}

#[cfg(not(target_arch = "x86_64"))]
fn has_bf16() -> bool {
    false
}

impl Precision for F32 {
    type Elem = f32;
    const PAIR: usize = 1;
    const KC: usize = 256;
    const NC: usize = 512;

    fn available() -> bool {
        isa().has_vector_kernels()
    }

    fn convert<'a>(src: &'a [f32], _: usize, _: usize, _: &'a mut Vec<u32>) -> &'a [f32] {
        src
    }

    fn pack_b<'a>(
        b: &(impl PackB + ?Sized),
        pc: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        floats: &'a mut Vec<f32>,
        _: &'a mut Vec<u32>,
    ) -> &'a [f32] {
        b.pack(pc, kc, j0, cols, floats);
        floats
    }

    unsafe fn micro(
        steps: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        accumulate: bool,
        rows: usize,
    ) {
        match (vector_isa(), rows) {
            (Isa::Avx512, 12) => micro_f32::<12>(steps, a, b, c, ldc, alpha, accumulate),
            (Isa::Avx512, 8) => micro_f32::<8>(steps, a, b, c, ldc, alpha, accumulate),
            (Isa::Avx512, 4) => micro_f32::<4>(steps, a, b, c, ldc, alpha, accumulate),
            (Isa::Neon, 4 | 8 | 12) => micro_f32_neon(steps, a, b, c, ldc, alpha, accumulate, rows),
            (_, 4 | 8 | 12) => micro_f32_avx2(steps, a, b, c, ldc, alpha, accumulate, rows),
            _ => unreachable!("micro-kernel heights are 4, 8 and 12"),
        }
    }
}

impl Precision for Bf16 {
    type Elem = u32;
    const PAIR: usize = 2;
    const KC: usize = 512;
    const NC: usize = 256;

    fn available() -> bool {
        isa() == Isa::Avx512 && has_bf16()
    }

    fn convert<'a>(src: &'a [f32], kc: usize, width: usize, out: &'a mut Vec<u32>) -> &'a [u32] {
        let steps = Self::steps(kc);
        let panels = src.len() / (kc * width).max(1);
        reuse(out, panels * steps * width);
        // SAFETY: only reached where `available()` holds (the callers check it).
        unsafe { bf16_pairs(src, kc, width, out) };
        out
    }

    fn pack_b<'a>(
        b: &(impl PackB + ?Sized),
        pc: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        floats: &'a mut Vec<f32>,
        words: &'a mut Vec<u32>,
    ) -> &'a [u32] {
        b.pack_pairs(pc, kc, j0, cols, words, floats);
        words
    }

    unsafe fn micro(
        steps: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        accumulate: bool,
        rows: usize,
    ) {
        match rows {
            12 => micro_bf16::<12>(steps, a, b, c, ldc, alpha, accumulate),
            8 => micro_bf16::<8>(steps, a, b, c, ldc, alpha, accumulate),
            4 => micro_bf16::<4>(steps, a, b, c, ldc, alpha, accumulate),
            _ => unreachable!("micro-kernel heights are 4, 8 and 12"),
        }
    }
}

/// Whether this process runs our f32 kernel (AVX-512, AVX2 or NEON; otherwise callers use the
/// gemm crate).
pub fn available() -> bool {
    F32::available()
}

/// f32 → bf16 bits, rounding to nearest even (finite inputs; the network has no NaN).
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16
}

/// Panels `[kc][width]` of f32 to `[ceil(kc/2)][width]` words holding (k even, k odd) as
/// (low, high) bf16 halves; an odd last k is paired with zero.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw"))]
unsafe fn bf16_pairs(src: &[f32], kc: usize, width: usize, out: &mut [u32]) {
    let steps = kc.div_ceil(2);
    for (panel, dst) in src
        .chunks_exact(kc * width)
        .zip(out.chunks_exact_mut(steps * width))
    {
        for (s, row) in dst.chunks_exact_mut(width).enumerate() {
            let lo = &panel[2 * s * width..][..width];
            if 2 * s + 1 < kc {
                let hi = &panel[(2 * s + 1) * width..][..width];
                for ((o, &l), &h) in row.iter_mut().zip(lo).zip(hi) {
                    *o = bf16_bits(l) | (bf16_bits(h) << 16);
                }
            } else {
                for (o, &l) in row.iter_mut().zip(lo) {
                    *o = bf16_bits(l);
                }
            }
        }
    }
}

/// A B operand that can copy a `[kc, cols]` block of itself into NR-column f32 panels
/// `[kc][NR]` (zero-padded past `cols`): a strided matrix, or a convolution's input read as its
/// im2col matrix without ever materialising that matrix.
pub trait PackB: Sync {
    fn k(&self) -> usize;
    fn n(&self) -> usize;
    fn pack(&self, pc: usize, kc: usize, j0: usize, cols: usize, out: &mut Vec<f32>);

    /// As [`PackB::pack`], into bf16 pair panels `[ceil(kc/2)][NR]` (see [`Bf16`]); by
    /// default through f32 panels in `scratch`.
    fn pack_pairs(
        &self,
        pc: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        out: &mut Vec<u32>,
        scratch: &mut Vec<f32>,
    ) {
        self.pack(pc, kc, j0, cols, scratch);
        Bf16::convert(scratch, kc, NR, out);
    }
}

/// `x` rounded to bf16 (the high halves of [`bf16_bits`]), in parallel.
pub(crate) fn to_bf16(x: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; x.len()];
    out.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o = bf16_bits(*x) as u16;
            }
        });
    out
}

/// Writes bf16 rows `lo` and `hi` (k rows 2s and 2s+1, `len` values each, already rounded;
/// `None` is zeros) as columns `t..t+len` of step `s` of pair panels `[steps][NR]`: each word
/// holds the low row's value in its low half and the high row's in its high half.
///
/// # Safety
/// The CPU has AVX-512F and BW (this packs only for the bf16 kernel, which needs them).
pub(crate) unsafe fn write_pairs(
    out: &mut [u32],
    steps: usize,
    s: usize,
    t: usize,
    lo: Option<&[u16]>,
    hi: Option<&[u16]>,
    len: usize,
) {
    if len == 0 {
        return;
    }
    let last = t + len - 1;
    assert!(
        (last / NR) * steps * NR + s * NR + last % NR < out.len()
            && lo.is_none_or(|x| x.len() >= len)
            && hi.is_none_or(|x| x.len() >= len),
        "write_pairs: out of bounds"
    );
    pairs_avx512(out.as_mut_ptr(), steps, s, t, lo, hi, len)
}

/// [`write_pairs`] 16 columns at a time: widen each row's halves to 32 bits and put the
/// high row's in the top half.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pairs_avx512(
    out: *mut u32,
    steps: usize,
    s: usize,
    mut t: usize,
    lo: Option<&[u16]>,
    hi: Option<&[u16]>,
    len: usize,
) {
    use std::arch::x86_64::*;
    let load = |src: Option<&[u16]>, at: usize, mask: __mmask16| match src {
        Some(x) => _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, x.as_ptr().add(at).cast())),
        None => _mm512_setzero_si512(),
    };
    let mut done = 0;
    while done < len {
        let slot = t % NR;
        let take = (NR - slot).min(len - done);
        let dst = out.add((t / NR) * steps * NR + s * NR + slot);
        let mut i = 0;
        while i < take {
            let n = (take - i).min(16);
            let mask: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
            let words = _mm512_or_si512(
                load(lo, done + i, mask),
                _mm512_slli_epi32::<16>(load(hi, done + i, mask)),
            );
            _mm512_mask_storeu_epi32(dst.add(i).cast(), mask, words);
            i += n;
        }
        done += take;
        t += take;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pairs_avx512(
    _: *mut u32,
    _: usize,
    _: usize,
    _: usize,
    _: Option<&[u16]>,
    _: Option<&[u16]>,
    _: usize,
) {
    unreachable!("the bf16 kernel runs on x86-64 only")
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
/// k block, `ceil(n/NR)` panels of `[steps(kc)][NR]`.
pub struct PackedB<P: Precision = F32> {
    data: Vec<P::Elem>,
    k: usize,
    n: usize,
}

impl<P: Precision> PackedB<P> {
    pub fn pack(b: Mat) -> Self {
        let (k, n) = (b.rows, b.cols);
        let mut data =
            Vec::with_capacity(n.div_ceil(NR) * NR * P::steps(P::KC) * k.div_ceil(P::KC));
        let (mut scratch, mut words) = (Vec::new(), Vec::new());
        for pc in (0..k).step_by(P::KC) {
            let kc = P::KC.min(k - pc);
            b.pack(pc, kc, 0, n, &mut scratch);
            data.extend_from_slice(P::convert(&scratch, kc, NR, &mut words));
        }
        Self { data, k, n }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    fn block(&self, pc: usize) -> &[P::Elem] {
        let panels = self.n.div_ceil(NR);
        let start = (pc / P::KC) * P::steps(P::KC) * panels * NR;
        &self.data[start..][..P::steps(P::KC.min(self.k - pc)) * panels * NR]
    }
}

/// A packed once (convolution weights): for each k block, `ceil(m/MR)` panels of
/// `[steps(kc)][MR]`.
pub struct PackedA<P: Precision = F32> {
    data: Vec<P::Elem>,
    m: usize,
    k: usize,
}

impl<P: Precision> PackedA<P> {
    pub fn pack(a: Mat) -> Self {
        let (m, k) = (a.rows, a.cols);
        let mut data =
            Vec::with_capacity(m.div_ceil(MR) * MR * P::steps(P::KC) * k.div_ceil(P::KC));
        let (mut scratch, mut words) = (Vec::new(), Vec::new());
        for pc in (0..k).step_by(P::KC) {
            let kc = P::KC.min(k - pc);
            pack_a(&a, 0, m, pc, kc, &mut scratch);
            data.extend_from_slice(P::convert(&scratch, kc, MR, &mut words));
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
    fn panels(&self, pc: usize, first: usize, count: usize) -> &[P::Elem] {
        let steps = P::steps(P::KC.min(self.k - pc));
        let block = (pc / P::KC) * P::steps(P::KC) * self.m.div_ceil(MR) * MR;
        &self.data[block + first * steps * MR..][..count * steps * MR]
    }
}

/// The A operand of a product.
pub enum AOperand<'a, P: Precision = F32> {
    Plain(Mat<'a>),
    Packed(&'a PackedA<P>),
}

impl<P: Precision> Clone for AOperand<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Precision> Copy for AOperand<'_, P> {}

impl<P: Precision> AOperand<'_, P> {
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
/// feeds a kept output; padding rows/columns of a panel only produce discarded outputs (bf16
/// pairs two k values of one row or column, so this holds for it too).
pub(crate) fn reuse<T: Copy + Default>(buf: &mut Vec<T>, len: usize) {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    buf.truncate(len);
}

/// Packs rows `i0..i0+mc` and k range `pc..pc+kc` of A into MR-row f32 panels `[kc][MR]`.
fn pack_a(a: &Mat, i0: usize, mc: usize, pc: usize, kc: usize, out: &mut Vec<f32>) {
    let panels = mc.div_ceil(MR);
    reuse(out, panels * kc * MR);
    for (ip, panel) in out.chunks_mut(kc * MR).enumerate() {
        let rows = MR.min(mc - ip * MR);
        let base = (i0 + ip * MR) * a.row_stride + pc * a.col_stride;
        // k outer, rows inner: the panel is written sequentially from `rows` read streams.
        for (p, slot) in panel.chunks_exact_mut(MR).enumerate() {
            let at = base + p * a.col_stride;
            if a.row_stride == 1 && rows == MR {
                // Column-major A (attention's transposed scores): each k is a contiguous run,
                // copied as a fixed-size array (inline moves, not a memmove call).
                let slot: &mut [f32; MR] = slot.try_into().expect("MR floats");
                slot.copy_from_slice(&a.data[at..at + MR]);
            } else if a.row_stride == 1 {
                slot[..rows].copy_from_slice(&a.data[at..at + rows]);
            } else {
                for (r, v) in slot[..rows].iter_mut().enumerate() {
                    *v = a.data[at + r * a.row_stride];
                }
            }
        }
    }
}

fn check<P: Precision>(dst: &MatMut, a: &AOperand<P>, k: usize, n: usize) {
    assert!(
        P::available(),
        "matmul: {} kernel on a CPU without its instructions",
        std::any::type_name::<P>()
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

/// Each thread's packing buffers, kept between products: fresh megabyte buffers would be
/// page-faulted in (and zeroed by the kernel) on every call.
#[derive(Default)]
struct Buffers {
    b: Vec<f32>,
    a: Vec<f32>,
    b_words: Vec<u32>,
    a_words: Vec<u32>,
}

thread_local! {
    static PACK_BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

/// C rows `r0..r0+m` += alpha · A[r0.., pc..pc+kc] · B_block, for one packed k block of B.
#[allow(clippy::too_many_arguments)]
fn run_block<P: Precision>(
    dst: &mut MatMut,
    a: &AOperand<P>,
    r0: usize,
    pc: usize,
    kc: usize,
    b_block: &[P::Elem],
    alpha: f32,
    accumulate: bool,
    a_pack: &mut Vec<f32>,
    a_words: &mut Vec<u32>,
) {
    let (m, n) = (dst.rows, dst.cols);
    let steps = P::steps(kc);
    let c = dst.data.as_mut_ptr();
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        let a_panels: &[P::Elem] = match a {
            AOperand::Plain(a) => {
                pack_a(a, r0 + i0, mc, pc, kc, a_pack);
                P::convert(a_pack, kc, MR, a_words)
            }
            // Row offsets are multiples of MR for packed A (see `gemm`).
            AOperand::Packed(a) => a.panels(pc, (r0 + i0) / MR, mc.div_ceil(MR)),
        };
        for jp in 0..n.div_ceil(NR) {
            let b_panel = &b_block[jp * steps * NR..][..steps * NR];
            let cols = NR.min(n - jp * NR);
            for ip in 0..mc.div_ceil(MR) {
                let rows = MR.min(mc - ip * MR);
                let a_panel = &a_panels[ip * steps * MR..][..steps * MR];
                // SAFETY: the tile (i0+ip·MR.., jp·NR..) of rows x cols lies in dst (checked
                // by the callers); the panels hold steps·MR and steps·NR elements.
                unsafe {
                    let tile = c.add((i0 + ip * MR) * dst.row_stride + jp * NR);
                    tile_kernel::<P>(
                        steps,
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
pub fn gemm_packed<P: Precision>(
    mut dst: MatMut,
    a: Mat,
    b: &PackedB<P>,
    alpha: f32,
    accumulate: bool,
) {
    let a = AOperand::<P>::Plain(a);
    check(&dst, &a, b.k, b.n);
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if b.k == 0 {
        return empty_product(&mut dst, accumulate);
    }
    PACK_BUFFERS.with(|buffers| {
        let buffers = &mut *buffers.borrow_mut();
        for pc in (0..b.k).step_by(P::KC) {
            let kc = P::KC.min(b.k - pc);
            run_block(
                &mut dst,
                &a,
                0,
                pc,
                kc,
                b.block(pc),
                alpha,
                accumulate || pc > 0,
                &mut buffers.a,
                &mut buffers.a_words,
            );
        }
    })
}

/// Multi-threaded product with a pre-packed B (linear layers): rows of C are split between
/// rayon's threads.
pub fn gemm_packed_rows<P: Precision>(
    dst: MatMut,
    a: Mat,
    b: &PackedB<P>,
    alpha: f32,
    accumulate: bool,
) {
    let m = dst.rows;
    check(&dst, &AOperand::<P>::Plain(a), b.k, b.n);
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
pub fn gemm<P: Precision>(
    dst: MatMut,
    a: AOperand<P>,
    b: &impl PackB,
    alpha: f32,
    accumulate: bool,
) {
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
pub fn gemm_serial<P: Precision>(
    dst: MatMut,
    a: AOperand<P>,
    b: &impl PackB,
    alpha: f32,
    accumulate: bool,
) {
    let (k, n) = (a.cols(), dst.cols);
    assert!(b.k() == k && b.n() == n, "matmul: shapes do not chain");
    check(&dst, &a, k, n);
    columns(dst, a, b, 0, alpha, accumulate);
}

/// `dst` = columns `j0..` of the product, packing B one k block at a time.
fn columns<P: Precision>(
    mut dst: MatMut,
    a: AOperand<P>,
    b: &impl PackB,
    j0: usize,
    alpha: f32,
    accumulate: bool,
) {
    let (m, cols, k) = (dst.rows, dst.cols, a.cols());
    if m == 0 || cols == 0 {
        return;
    }
    if k == 0 {
        return empty_product(&mut dst, accumulate);
    }
    PACK_BUFFERS.with(|buffers| {
        let buffers = &mut *buffers.borrow_mut();
        let row_stride = dst.row_stride;
        for jc in (0..cols).step_by(P::NC) {
            let width = P::NC.min(cols - jc);
            let mut block = MatMut::new(&mut dst.data[jc..], m, width, row_stride);
            for pc in (0..k).step_by(P::KC) {
                let kc = P::KC.min(k - pc);
                let b_block = P::pack_b(
                    b,
                    pc,
                    kc,
                    j0 + jc,
                    width,
                    &mut buffers.b,
                    &mut buffers.b_words,
                );
                let acc = accumulate || pc > 0;
                run_block(
                    &mut block,
                    &a,
                    0,
                    pc,
                    kc,
                    b_block,
                    alpha,
                    acc,
                    &mut buffers.a,
                    &mut buffers.a_words,
                );
            }
        }
    })
}

/// One MR x NR tile; partial tiles go through a scratch tile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_kernel<P: Precision>(
    steps: usize,
    a: &[P::Elem],
    b: &[P::Elem],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    accumulate: bool,
) {
    if cols == NR && matches!(rows, 4 | 8 | 12) {
        // Whole columns and a kernel of this height: straight into C (a 128-channel layer
        // ends in an 8-row panel, which would otherwise cost 12 rows and a copy).
        P::micro(
            steps,
            a.as_ptr(),
            b.as_ptr(),
            c,
            ldc,
            alpha,
            accumulate,
            rows,
        );
        return;
    }
    let mut scratch = [0f32; MR * NR];
    P::micro(
        steps,
        a.as_ptr(),
        b.as_ptr(),
        scratch.as_mut_ptr(),
        NR,
        alpha,
        false,
        MR,
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

/// Stores the accumulators: `C = (accumulate ? C : 0) + alpha · acc`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_tile<const R: usize>(
    acc: &[[std::arch::x86_64::__m512; 2]; R],
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_f32<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
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
    store_tile(&acc, c, ldc, alpha, accumulate);
}

/// The bf16 micro-kernel: per step, each A word (two k values of one row) is broadcast and
/// `vdpbf16ps` adds both products into every column's f32 accumulator.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_bf16<const R: usize>(
    steps: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for s in 0..steps {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(s * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(s * NR + 16).cast()));
        let ap = a.add(s * MR);
        for (i, row) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
            row[0] = _mm512_dpbf16_ps(row[0], av, b0);
            row[1] = _mm512_dpbf16_ps(row[1], av, b1);
        }
    }
    store_tile(&acc, c, ldc, alpha, accumulate);
}

/// The AVX2 micro-kernel: the same 12x32 panels (so weights pack the same way on both
/// paths), multiplied as 6x16 or 4x16 tiles. A 6x16 tile holds 12 ymm accumulators, two B
/// vectors and a broadcast A value: 15 of AVX2's 16 registers. Both row groups of one column
/// half run back to back, so that half of the B panel (16 KiB at KC 256) stays in L1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_f32_avx2(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
    rows: usize,
) {
    for half in [0, 16] {
        let (b, c) = (b.add(half), c.add(half));
        match rows {
            12 => {
                tile_avx2::<6>(kc, a, b, c, ldc, alpha, accumulate);
                tile_avx2::<6>(kc, a.add(6), b, c.add(6 * ldc), ldc, alpha, accumulate);
            }
            8 => {
                tile_avx2::<4>(kc, a, b, c, ldc, alpha, accumulate);
                tile_avx2::<4>(kc, a.add(4), b, c.add(4 * ldc), ldc, alpha, accumulate);
            }
            _ => tile_avx2::<4>(kc, a, b, c, ldc, alpha, accumulate),
        }
    }
}

/// One R x 16 tile of [`micro_f32_avx2`]: A rows at `a` (panel stride MR), B columns at `b`
/// (panel stride NR).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx2<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(p * NR));
        let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
        let ap = a.add(p * MR);
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*ap.add(i));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
    }
    let alpha = _mm256_set1_ps(alpha);
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            let dst = c.add(i * ldc + 8 * h);
            let v = _mm256_mul_ps(*v, alpha);
            let v = if accumulate {
                _mm256_add_ps(_mm256_loadu_ps(dst), v)
            } else {
                v
            };
            _mm256_storeu_ps(dst, v);
        }
    }
}

/// The NEON micro-kernel: the same 12x32 panels, multiplied as four 12x8 (or 8x8, 4x8) tiles,
/// one column quarter at a time so its slice of the B panel stays in L1.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_f32_neon(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
    rows: usize,
) {
    for quarter in [0, 8, 16, 24] {
        let (b, c) = (b.add(quarter), c.add(quarter));
        match rows {
            12 => tile_neon::<3>(kc, a, b, c, ldc, alpha, accumulate),
            8 => tile_neon::<2>(kc, a, b, c, ldc, alpha, accumulate),
            _ => tile_neon::<1>(kc, a, b, c, ldc, alpha, accumulate),
        }
    }
}

/// One `4·G` x 8 tile of [`micro_f32_neon`]: per k step, G vectors of 4 A values (rows
/// `4g..4g+4`, panel stride MR) each multiply two B vectors (panel stride NR) by lane, fused
/// (one rounding per product and add, as `vfmadd` on x86).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn tile_neon<const G: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use std::arch::aarch64::*;
    // acc[g][r][h]: row 4g + r, columns 4h..4h+4 of the tile.
    let mut acc = [[[vdupq_n_f32(0.0); 2]; 4]; G];
    for p in 0..kc {
        let b0 = vld1q_f32(b.add(p * NR));
        let b1 = vld1q_f32(b.add(p * NR + 4));
        let ap = a.add(p * MR);
        for (g, rows) in acc.iter_mut().enumerate() {
            let av = vld1q_f32(ap.add(4 * g));
            rows[0][0] = vfmaq_laneq_f32::<0>(rows[0][0], b0, av);
            rows[0][1] = vfmaq_laneq_f32::<0>(rows[0][1], b1, av);
            rows[1][0] = vfmaq_laneq_f32::<1>(rows[1][0], b0, av);
            rows[1][1] = vfmaq_laneq_f32::<1>(rows[1][1], b1, av);
            rows[2][0] = vfmaq_laneq_f32::<2>(rows[2][0], b0, av);
            rows[2][1] = vfmaq_laneq_f32::<2>(rows[2][1], b1, av);
            rows[3][0] = vfmaq_laneq_f32::<3>(rows[3][0], b0, av);
            rows[3][1] = vfmaq_laneq_f32::<3>(rows[3][1], b1, av);
        }
    }
    let alpha = vdupq_n_f32(alpha);
    for (i, row) in acc.iter().flatten().enumerate() {
        for (h, v) in row.iter().enumerate() {
            let dst = c.add(i * ldc + 4 * h);
            let v = vmulq_f32(*v, alpha);
            let v = if accumulate {
                vaddq_f32(vld1q_f32(dst), v)
            } else {
                v
            };
            vst1q_f32(dst, v);
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_f32_neon(
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: f32,
    _: bool,
    _: usize,
) {
    unreachable!("the NEON kernel runs on aarch64 only")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_f32_avx2(
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: f32,
    _: bool,
    _: usize,
) {
    unreachable!("the AVX2 kernel runs on x86-64 only")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_f32<const R: usize>(
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: f32,
    _: bool,
) {
    unreachable!("the AVX-512 kernel runs on x86-64 only")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_bf16<const R: usize>(
    _: usize,
    _: *const u32,
    _: *const u32,
    _: *mut f32,
    _: usize,
    _: f32,
    _: bool,
) {
    unreachable!("the bf16 kernel runs on x86-64 only")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa::{vector_levels, with_vectors};

    /// The product in f64 of A and B with each input first passed through `round`.
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &Mat,
        b: &Mat,
        round: fn(f32) -> f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| {
                        round(a.data[i * a.row_stride + p * a.col_stride]) as f64
                            * round(b.data[p * b.row_stride + j * b.col_stride]) as f64
                    })
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    /// Every entry point of precision `P` against the reference on inputs rounded by `round`.
    fn matches_reference<P: Precision>(round: fn(f32) -> f32) {
        if !P::available() {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (12, 32, 256),
            (13, 33, 257),
            (100, 70, 600),
            (5, 200, 3),
            (30, 40, 1100),
            (20, 64, 300),
        ] {
            let av: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 11.3)
                .collect();
            let bv: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) / 9.7)
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
                let want = reference(m, n, k, &a, &b, round);
                let worst = |got: &[f32], times: f32| {
                    got.iter()
                        .zip(&want)
                        .map(|(x, y)| (x - times * y).abs())
                        .fold(0f32, f32::max)
                };
                let case = format!(
                    "{} on {:?}: {m}x{n}x{k} transposed B {transpose_b}",
                    std::any::type_name::<P>(),
                    vector_isa()
                );
                let mut got = vec![1f32; m * n];
                let plain = AOperand::<P>::Plain(a);
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
                let packed_a = PackedA::<P>::pack(a);
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
                    &PackedB::<P>::pack(b),
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

    #[test]
    fn f32_matches_reference_for_odd_shapes_and_strides_on_every_level() {
        for level in vector_levels() {
            with_vectors(level, || matches_reference::<F32>(|x| x));
        }
    }

    /// `C = (accumulate ? C : 0) + alpha · A·B` in the kernels' own order: per k block of KC,
    /// a sum from zero with one fused multiply-add per product, scaled, then added to C.
    fn ordered_fma(a: &Mat, b: &Mat, c: &mut [f32], alpha: f32, accumulate: bool) {
        let (m, n, k) = (a.rows, b.cols, a.cols);
        for i in 0..m {
            for j in 0..n {
                let out = &mut c[i * n + j];
                for pc in (0..k).step_by(F32::KC) {
                    let mut acc = 0f32;
                    for p in pc..k.min(pc + F32::KC) {
                        let x = a.data[i * a.row_stride + p * a.col_stride];
                        acc = x.mul_add(b.data[p * b.row_stride + j * b.col_stride], acc);
                    }
                    *out = if accumulate || pc > 0 {
                        *out + acc * alpha
                    } else {
                        acc * alpha
                    };
                }
            }
        }
    }

    /// Every kernel (AVX-512, AVX2, NEON) sums each output over k in the same order with fused
    /// multiply-adds, so its products equal that scalar loop's bit for bit: a model gives the
    /// same GEMM results on every machine (run under qemu for NEON).
    #[test]
    fn every_level_matches_an_ordered_fma_loop_bit_for_bit() {
        let (m, n, k) = (40, 100, 700);
        let av: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 23) as f32).sin()).collect();
        let bv: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 19) as f32).cos()).collect();
        let a = Mat {
            data: &av,
            rows: m,
            cols: k,
            row_stride: k,
            col_stride: 1,
        };
        let b = Mat {
            data: &bv,
            rows: k,
            cols: n,
            row_stride: n,
            col_stride: 1,
        };
        let mut want = vec![0.5f32; m * n];
        ordered_fma(&a, &b, &mut want, 0.7, true);
        let mut want_fresh = vec![0f32; m * n];
        ordered_fma(&a, &b, &mut want_fresh, 0.7, false);
        let levels = vector_levels();
        assert!(
            !isa().has_vector_kernels() || !levels.is_empty(),
            "no vector level to check"
        );
        for level in levels {
            with_vectors(level, || {
                let mut c = vec![0.5f32; m * n];
                let plain = AOperand::<F32>::Plain(a);
                gemm(MatMut::new(&mut c, m, n, n), plain, &b, 0.7, true);
                assert!(c == want, "{level:?}: accumulated product differs");
                let mut c = vec![9f32; m * n];
                let packed = PackedA::<F32>::pack(a);
                gemm(
                    MatMut::new(&mut c, m, n, n),
                    AOperand::Packed(&packed),
                    &b,
                    0.7,
                    false,
                );
                assert!(c == want_fresh, "{level:?}: product with packed A differs");
                let mut c = vec![0.5f32; m * n];
                gemm_packed_rows(
                    MatMut::new(&mut c, m, n, n),
                    a,
                    &PackedB::<F32>::pack(b),
                    0.7,
                    true,
                );
                assert!(c == want, "{level:?}: product with packed B differs");
            });
        }
    }

    #[test]
    fn bf16_is_exact_products_of_rounded_inputs() {
        if !crate::kernels::isa::test_path_runs("bf16", Bf16::available()) {
            return;
        }
        matches_reference::<Bf16>(|x| f32::from_bits(bf16_bits(x) << 16));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_bits(-2.5), 0xC020);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0 + 1.0 / 4096.0), 0x3F81);
    }
}
