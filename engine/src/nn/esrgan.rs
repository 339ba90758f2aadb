//! ESRGAN-family super-resolution (RRDBNet, as Real-ESRGAN x2plus / x4plus and their
//! fine-tunes ship it, in basicsr's key layout) loaded from `.safetensors`: the first stage of
//! an upscale when one is configured, in place of Lanczos. Its layout is read from the
//! weights: the scale from `conv_first`'s input channels (3: x4, 12: x2 through pixel
//! unshuffle, 48: x1), the width and growth channels from their shapes, the block count from
//! the keys. Runs on our convolution kernels; large images go through in overlapping tiles.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::{imageops, RgbImage};

use crate::error::{EngineError, Result};
use crate::layers::{upsample_nearest, Conv2d};
use crate::model::{check_safetensors, LoadOptions};
use crate::outpaint::Rect;
use crate::pixels::{image_to_tensor, tensor_to_images};

type CResult<T> = candle_core::Result<T>;

const SLOPE: f64 = 0.2;

fn lrelu(x: &Tensor) -> CResult<Tensor> {
    candle_nn::ops::leaky_relu(x, SLOPE)
}

/// Five densely connected convolutions; the block adds 0.2 of its output to its input.
struct DenseBlock {
    convs: Vec<Conv2d>,
}

impl DenseBlock {
    fn load(vb: VarBuilder, feat: usize, grow: usize) -> CResult<Self> {
        let convs = (0..5)
            .map(|i| {
                let out = if i == 4 { feat } else { grow };
                Conv2d::load(
                    vb.pp(format!("conv{}", i + 1)),
                    feat + i * grow,
                    out,
                    3,
                    1,
                    1,
                )
            })
            .collect::<CResult<_>>()?;
        Ok(Self { convs })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut features = vec![x.clone()];
        for (i, conv) in self.convs.iter().enumerate() {
            let input = Tensor::cat(&features, 1)?;
            let y = conv.forward(&input)?;
            if i == 4 {
                return (y * 0.2)? + x;
            }
            features.push(lrelu(&y)?);
        }
        unreachable!("five convolutions")
    }
}

/// Three dense blocks in a row, with the same 0.2 residual around them.
struct Rrdb {
    blocks: [DenseBlock; 3],
}

impl Rrdb {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut y = x.clone();
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        (y * 0.2)? + x
    }
}

/// What an RRDBNet file holds, read from its tensors' names and shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EsrganLayout {
    /// How much larger the output is: 1, 2 or 4.
    pub scale: u32,
    /// The input is pixel-unshuffled by this first (x2: 2, x1: 4).
    pub unshuffle: usize,
    pub features: usize,
    pub growth: usize,
    pub blocks: usize,
}

/// A loaded RRDBNet.
pub struct Esrgan {
    /// How much larger the output is: 1, 2 or 4.
    pub scale: u32,
    /// The input is pixel-unshuffled by this before the first convolution (x2: 2, x1: 4).
    unshuffle: usize,
    conv_first: Conv2d,
    body: Vec<Rrdb>,
    conv_body: Conv2d,
    conv_up1: Conv2d,
    conv_up2: Conv2d,
    conv_hr: Conv2d,
    conv_last: Conv2d,
    device: Device,
}

impl Esrgan {
    /// Reads an RRDBNet file's layout from its header alone (no weights), or says why it is
    /// not one: what start-up checks a configured upscaler with.
    pub fn describe(path: &Path) -> Result<EsrganLayout> {
        check_safetensors(path)?;
        let bad = |why: String| EngineError::bad_file(path, why);
        let shapes = header_shapes(path)?;
        let shape = |name: &str| {
            shapes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
        };
        let first =
            shape("conv_first.weight").ok_or_else(|| {
                bad("no conv_first.weight: not an RRDBNet (Real-ESRGAN) model in basicsr's layout; \
                 old-style ESRGAN files (model.0.weight) need converting"
                .into())
            })?;
        let grown = shape("body.0.rdb1.conv1.weight")
            .ok_or_else(|| bad("no body.0.rdb1.conv1.weight: not an RRDBNet".into()))?;
        let (feat, cin, grow) = (first[0], first.get(1).copied().unwrap_or(0), grown[0]);
        let (scale, unshuffle) = match cin {
            3 => (4, 1),
            12 => (2, 2),
            48 => (1, 4),
            other => {
                return Err(bad(format!(
                    "conv_first takes {other} channels: not 3, 12 or 48"
                )))
            }
        };
        let blocks = shapes
            .iter()
            .filter_map(|(n, _)| {
                n.strip_prefix("body.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        if feat == 0 || grow == 0 || blocks == 0 || blocks > 64 {
            return Err(bad(format!(
                "an RRDBNet of {blocks} blocks, {feat} features, {grow} growth"
            )));
        }
        Ok(EsrganLayout {
            scale,
            unshuffle,
            features: feat,
            growth: grow,
            blocks,
        })
    }

    /// Loads an RRDBNet `.safetensors` file (basicsr keys: `conv_first`, `body.N.rdbM.convK`,
    /// `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let bad = |why: String| EngineError::bad_file(path, why);
        let EsrganLayout {
            scale,
            unshuffle,
            features: feat,
            growth: grow,
            blocks,
        } = Self::describe(path)?;
        let cin = 3 * unshuffle * unshuffle;
        // SAFETY: the file is memory-mapped read-only; we never write to it while mapped.
        let vb = unsafe { crate::load::mapped::var_builder(&[path], DType::F32, &opts.device) }
            .map_err(|e| bad(e.to_string()))?;
        let conv =
            |name: &str, cin: usize, cout: usize| Conv2d::load(vb.pp(name), cin, cout, 3, 1, 1);
        let load = || -> CResult<Self> {
            let body = (0..blocks)
                .map(|i| {
                    let b = vb.pp(format!("body.{i}"));
                    Ok(Rrdb {
                        blocks: [
                            DenseBlock::load(b.pp("rdb1"), feat, grow)?,
                            DenseBlock::load(b.pp("rdb2"), feat, grow)?,
                            DenseBlock::load(b.pp("rdb3"), feat, grow)?,
                        ],
                    })
                })
                .collect::<CResult<_>>()?;
            Ok(Self {
                scale,
                unshuffle,
                conv_first: conv("conv_first", cin, feat)?,
                body,
                conv_body: conv("conv_body", feat, feat)?,
                conv_up1: conv("conv_up1", feat, feat)?,
                conv_up2: conv("conv_up2", feat, feat)?,
                conv_hr: conv("conv_hr", feat, feat)?,
                conv_last: conv("conv_last", feat, 3)?,
                device: opts.device.clone(),
            })
        };
        crate::layers::loading_with(opts.precision, load)
            .map_err(|e| bad(format!("the weights do not match an RRDBNet ({e})")))
    }

    /// `[N, 3, H, W]` in [0, 1] to `[N, 3, H·scale, W·scale]` (unclamped).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        let feat = if self.unshuffle > 1 {
            let (b, c, h, w) = x.dims4()?;
            let s = self.unshuffle;
            x.reshape((b, c, h / s, s, w / s, s))?
                .permute((0, 1, 3, 5, 2, 4))?
                .reshape((b, c * s * s, h / s, w / s))?
        } else {
            x
        };
        let feat = self.conv_first.forward(&feat)?;
        let mut body = feat.clone();
        for block in &self.body {
            body = block.forward(&body)?;
        }
        let feat = (&feat + self.conv_body.forward(&body)?)?;
        let feat = lrelu(&self.conv_up1.forward(&upsample_nearest(&feat, None)?)?)?;
        let feat = lrelu(&self.conv_up2.forward(&upsample_nearest(&feat, None)?)?)?;
        Ok(self
            .conv_last
            .forward(&lrelu(&self.conv_hr.forward(&feat)?)?)?)
    }

    /// Enlarges `image` to exactly `size` (the model's own scale, then Lanczos to `size` if
    /// that differs), in overlapping tiles of at most `tile` input pixels so that memory stays
    /// bounded. Sides must divide by the model's unshuffle factor (2 for x2 models).
    pub fn enlarge(&self, image: &RgbImage, size: (u32, u32), tile: u32) -> Result<RgbImage> {
        let (w, h) = image.dimensions();
        let s = self.unshuffle as u32;
        if w % s != 0 || h % s != 0 {
            return Err(EngineError::invalid(format!(
                "an x{} ESRGAN model needs sides divisible by {s}; the image is {w}x{h}",
                self.scale
            )));
        }
        // Tiles on the input, on the unshuffle grid, with a margin that is cut off after.
        let margin = 8 * s;
        let tile = (tile / (8 * s)).max(1) * 8 * s;
        let scale = self.scale;
        let mut out = RgbImage::new(w * scale, h * scale);
        for ty in (0..h).step_by(tile as usize) {
            for tx in (0..w).step_by(tile as usize) {
                let core = Rect {
                    x: tx,
                    y: ty,
                    width: tile.min(w - tx),
                    height: tile.min(h - ty),
                };
                let x0 = core.x.saturating_sub(margin);
                let y0 = core.y.saturating_sub(margin);
                let x1 = (core.x + core.width + margin).min(w);
                let y1 = (core.y + core.height + margin).min(h);
                let crop = imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image();
                let input = ((image_to_tensor(&crop, &Device::Cpu)? + 1.0)? / 2.0)?;
                let y = self.forward(&input)?.clamp(0f32, 1f32)?;
                let big = tensor_to_images(&((y * 2.0)? - 1.0)?)?.remove(0);
                let part = imageops::crop_imm(
                    &big,
                    (core.x - x0) * scale,
                    (core.y - y0) * scale,
                    core.width * scale,
                    core.height * scale,
                )
                .to_image();
                imageops::replace(
                    &mut out,
                    &part,
                    (core.x * scale) as i64,
                    (core.y * scale) as i64,
                );
            }
        }
        Ok(if out.dimensions() == size {
            out
        } else {
            imageops::resize(&out, size.0, size.1, imageops::FilterType::Lanczos3)
        })
    }
}

/// Every tensor's name and shape, from a safetensors header (read alone, not the data).
fn header_shapes(path: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    use std::io::Read;
    let bad = |why: String| EngineError::bad_file(path, why);
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    // check_safetensors has bounded the header's length.
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(e.to_string()))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    Ok(map
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as usize)
                        .collect()
                })
                .unwrap_or_default();
            (k, shape)
        })
        .collect())
}
