//! Our own CPU kernels, as candle custom ops: convolution, linear layers, attention, group
//! norm, GEGLU and layout changes. candle's CPU versions of these dominate a diffusion step
//! (im2col with scattered writes, single-threaded transposes and element-wise passes, and a
//! gemm built without its AVX-512 kernels); these keep the same numbers within f32 rounding.
//!
//! Every op takes contiguous f32 tensors on the CPU; [`crate::layers`] calls them there and
//! falls back to candle's generic ops on other devices and dtypes. The products run on our
//! GEMM with AVX-512 or AVX2 + FMA, and on the gemm crate elsewhere ([`isa`] decides, once
//! per process).

pub mod attention;
pub mod conv;
pub mod denormals;
pub mod elementwise;
pub mod isa;
pub mod matmul;
pub mod norm;
pub mod simd;
pub mod winograd;

use candle_core::{CpuStorage, Layout, Result};

/// The f32 data of a contiguous tensor.
pub(crate) fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("imagine kernels need contiguous tensors"),
    }
}

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Mat<'_> {
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// A row-major destination matrix view (unit column stride).
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

/// `dst = (accumulate ? dst : 0) + scale · lhs · rhs`, on all of rayon's threads.
pub fn gemm_f32(dst: MatMut, lhs: Mat, rhs: Mat, scale: f32, accumulate: bool) {
    if matmul::available() {
        return matmul::gemm(
            dst,
            matmul::AOperand::<matmul::F32>::Plain(lhs),
            &rhs,
            scale,
            accumulate,
        );
    }
    gemm_with(
        dst,
        lhs,
        rhs,
        scale,
        accumulate,
        gemm::Parallelism::Rayon(rayon::current_num_threads()),
    )
}

/// As [`gemm_f32`], on the calling thread only (for use inside parallel loops).
pub fn gemm_f32_serial(dst: MatMut, lhs: Mat, rhs: Mat, scale: f32, accumulate: bool) {
    if matmul::available() {
        return matmul::gemm_packed(
            dst,
            lhs,
            &matmul::PackedB::<matmul::F32>::pack(rhs),
            scale,
            accumulate,
        );
    }
    gemm_with(dst, lhs, rhs, scale, accumulate, gemm::Parallelism::None)
}

fn gemm_with(
    dst: MatMut,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(
        lhs.rows == m && rhs.rows == k && rhs.cols == n,
        "gemm: shapes do not chain"
    );
    assert!(lhs.fits() && rhs.fits(), "gemm: operand view out of bounds");
    assert!(
        m == 0 || n == 0 || (m - 1) * dst.row_stride + n <= dst.data.len(),
        "gemm: destination view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: all three views were bounds-checked above and the destination is borrowed
    // mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A vector of `len` floats whose `chunk`-sized pieces are initialised by `init(index, piece)`
/// in parallel: no zeroing pass first (the allocator would otherwise clear memory that is
/// about to be overwritten; for a VAE layer that is hundreds of MB). `init` must write every
/// element of its piece.
pub(crate) fn par_filled(
    len: usize,
    chunk: usize,
    init: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, piece)| init(i, piece));
    // SAFETY: the callers' `init` writes every element of every piece, and the pieces cover
    // `0..len` of the capacity.
    unsafe { out.set_len(len) };
    out
}

/// Writes `value` to every element.
pub(crate) fn fill(piece: &mut [std::mem::MaybeUninit<f32>], value: f32) {
    for v in piece {
        v.write(value);
    }
}

/// A raw pointer that parallel tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: users guarantee that concurrent tasks write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
