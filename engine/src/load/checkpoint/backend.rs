//! A candle `SimpleBackend` that serves diffusers names from a memory-mapped single-file
//! checkpoint, renaming and reshaping on the fly. The networks' own loaders (`UNet::load`,
//! `Autoencoder::new`, `ClipTextModel::new`) read through it unchanged: no converted copy of
//! the file is ever written, and each tensor is materialised once, when its layer asks.

use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::keys::{Fetch, KeyMap};

/// One component's view of the file.
pub struct RenamedWeights {
    file: Arc<MmapedSafetensors>,
    names: KeyMap,
    /// What the component is called in errors ("unet", "text_encoder", ...).
    component: &'static str,
}

impl RenamedWeights {
    pub fn new(file: Arc<MmapedSafetensors>, names: KeyMap, component: &'static str) -> Self {
        Self {
            file,
            names,
            component,
        }
    }

    fn fetch(&self, name: &str, dev: &Device) -> Result<Tensor> {
        let fetch = self.names.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "the checkpoint has no tensor for {}'s {name}",
                self.component
            ))
        })?;
        Ok(match fetch {
            Fetch::Same(key) => crate::load::mapped::load(&self.file, key, dev)?,
            Fetch::Squeezed(key) => {
                let t = crate::load::mapped::load(&self.file, key, dev)?;
                let dims: Vec<usize> = match t.dims() {
                    [rows, cols, 1, 1] => vec![*rows, *cols],
                    other => other.to_vec(),
                };
                t.reshape(dims)?
            }
            Fetch::Third(key, index) => {
                let t = crate::load::mapped::load(&self.file, key, dev)?;
                let rows = t.dim(0)?;
                if rows % 3 != 0 {
                    candle_core::bail!("{key} has {rows} rows, not three equal q/k/v parts");
                }
                t.narrow(0, index * rows / 3, rows / 3)?.contiguous()?
            }
            Fetch::Transposed(key) => crate::load::mapped::load(&self.file, key, dev)?
                .t()?
                .contiguous()?,
        })
    }
}

impl SimpleBackend for RenamedWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.fetch(name, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "{}'s {name} has shape {:?} in the checkpoint, the model built from its other tensors expects {:?}",
                self.component,
                t.dims(),
                s.dims()
            );
        }
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.fetch(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}
