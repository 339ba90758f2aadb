//! Memory-mapped safetensors whose pages leave the process once their tensor is copied out.
//!
//! A tensor is read from the mapping into its own buffer (then packed, see
//! [`crate::layers`]); the file pages it was read from stay mapped, and counted in the
//! process's resident memory, until the whole component is loaded: the load peak would hold
//! the weights twice. [`load`] hands each tensor's pages back right after the copy, so a
//! component's weights exist once while it loads. The pages stay in the page cache (a second
//! load is as fast) and come back from it if read again.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Tensor `name` of `file` on `device`, with its file pages released from this process.
pub fn load(file: &MmapedSafetensors, name: &str, device: &Device) -> Result<Tensor> {
    let tensor = file.load(name, device)?;
    release(file.get(name)?.data());
    Ok(tensor)
}

/// A VarBuilder over memory-mapped safetensors files that serves each tensor through [`load`].
///
/// # Safety
/// As [`MmapedSafetensors::multi`]: the files must not be modified while mapped.
pub unsafe fn var_builder<P: AsRef<Path>>(
    files: &[P],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let files = MmapedSafetensors::multi(files)?;
    Ok(VarBuilder::from_backend(
        Box::new(Released(files)),
        dtype,
        device.clone(),
    ))
}

struct Released(MmapedSafetensors);

impl SimpleBackend for Released {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        load(&self.0, name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// Drops the pages under `bytes` (part of a read-only file mapping) from this process's
/// resident set. Reading them again faults them back in from the file, unchanged, so this
/// never changes what the mapping holds.
#[cfg(unix)]
fn release(bytes: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let start = bytes.as_ptr() as usize / page * page;
    let end = bytes.as_ptr() as usize + bytes.len();
    if end <= start {
        return;
    }
    // SAFETY: the range lies in a live read-only file mapping (whole pages of it); dropping
    // such pages only means the next read refaults them from the file. A failure leaves the
    // pages mapped, which is only a missed saving.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
}

#[cfg(not(unix))]
fn release(_: &[u8]) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tensors read through the releasing loader equal the file's, also when read again
    /// after their pages were released (and from neighbours sharing a page).
    #[test]
    fn released_tensors_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let big = Tensor::arange(0f32, 300_000.0, &Device::Cpu)
            .unwrap()
            .reshape((600, 500))
            .unwrap();
        let small = Tensor::new(&[1.5f32, -2.0, 3.25], &Device::Cpu).unwrap();
        let half = big.to_dtype(DType::F16).unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([
                ("big".to_string(), big.clone()),
                ("small".to_string(), small.clone()),
                ("half".to_string(), half),
            ]),
            &path,
        )
        .unwrap();
        // SAFETY: the test owns the file and does not modify it.
        let vb = unsafe { var_builder(&[&path], DType::F32, &Device::Cpu) }.unwrap();
        let same = |a: &Tensor, b: &Tensor| {
            a.dims() == b.dims()
                && a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        for _ in 0..2 {
            assert!(same(&vb.get((600, 500), "big").unwrap(), &big));
            assert!(same(&vb.get(3, "small").unwrap(), &small));
            // fp16 in the file, f32 asked for: converted (these integers are exact in f16
            // up to 2048).
            let half = vb.get((600, 500), "half").unwrap();
            assert!(same(
                &half.narrow(0, 0, 4).unwrap(),
                &big.narrow(0, 0, 4).unwrap()
            ));
        }
        let e = vb.get((3, 1), "small").unwrap_err().to_string();
        assert!(e.contains("shape mismatch for small"), "{e}");
        assert!(!vb.contains_tensor("missing"));
    }
}
