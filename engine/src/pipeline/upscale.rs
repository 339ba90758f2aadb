//! Upscaling with added detail (the web UIs' "SD upscale"): the picture is enlarged with
//! Lanczos, then repainted lightly by image-to-image over overlapping tiles of the model's
//! native size, which are blended back with weights that fall off linearly across each overlap,
//! so no seam shows. Each tile is a whole image to the model: the VAE and UNet never see more
//! than one tile, which bounds memory at any output size.

use std::ops::ControlFlow;

use image::{imageops, RgbImage};

use crate::error::{EngineError, Result};
use crate::esrgan::Esrgan;
use crate::generate::{GenerateRequest, InitImage, MAX_SIDE};
use crate::model::StableDiffusion;
use crate::outpaint::Rect;
use crate::schedulers::SchedulerKind;

/// Input pixels per side of one ESRGAN tile: a Real-ESRGAN x4 model's activations for it
/// stay near 1 GB.
const ESRGAN_TILE: u32 = 256;

/// An upscale: the picture, how much larger, and the image-to-image settings of each tile.
#[derive(Debug, Clone)]
pub struct UpscaleRequest {
    pub image: RgbImage,
    /// Whole-number enlargement (2 for the bot's buttons).
    pub factor: u32,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: Option<SchedulerKind>,
    /// How much each tile is repainted: low keeps the enlargement (Subtle), higher invents
    /// more detail (Creative).
    pub strength: f64,
    /// Tile `i` uses seed `seed + i`.
    pub seed: u64,
}

/// Tiles of `tile` pixels covering a `(width, height)` image, overlapping by at least
/// `overlap`, evenly spaced, row by row. A side no longer than a tile gets one tile of that
/// side's length.
pub fn tiles((width, height): (u32, u32), tile: u32, overlap: u32) -> Vec<Rect> {
    let starts = |side: u32| -> Vec<(u32, u32)> {
        if side <= tile {
            return vec![(0, side)];
        }
        let stride = tile - overlap.min(tile / 2);
        let n = (side - overlap).div_ceil(stride).max(2);
        (0..n)
            .map(|i| {
                // Evenly spread, and on the 8-pixel grid so that each tile is a valid image.
                let x = (side - tile) as u64 * i as u64 / (n - 1) as u64;
                ((x as u32) / 8 * 8, tile)
            })
            .collect()
    };
    let (xs, ys) = (starts(width), starts(height));
    ys.iter()
        .flat_map(|&(y, th)| {
            xs.iter().map(move |&(x, tw)| Rect {
                x,
                y,
                width: tw,
                height: th,
            })
        })
        .collect()
}

/// Each tile's weight at `(x, y)` inside it: 1 in the middle, falling linearly to nearly 0
/// at the edges it shares with other tiles (never at the image's border).
fn weight(tile: &Rect, size: (u32, u32), ramp: u32, x: u32, y: u32) -> f32 {
    let axis = |at: u32, start: u32, len: u32, side: u32| -> f32 {
        let from_start = if start > 0 { at - start } else { u32::MAX };
        let from_end = if start + len < side {
            start + len - 1 - at
        } else {
            u32::MAX
        };
        let d = from_start.min(from_end);
        if d >= ramp {
            1.0
        } else {
            (d as f32 + 0.5) / ramp as f32
        }
    };
    axis(x, tile.x, tile.width, size.0) * axis(y, tile.y, tile.height, size.1)
}

/// Blends repainted tiles into one `size` image, each weighted by [`weight`].
pub fn blend(parts: &[(Rect, RgbImage)], size: (u32, u32), ramp: u32) -> Result<RgbImage> {
    let (w, h) = size;
    let mut sum = vec![[0f32; 3]; (w * h) as usize];
    let mut total = vec![0f32; (w * h) as usize];
    for (tile, img) in parts {
        if img.dimensions() != (tile.width, tile.height)
            || tile.x + tile.width > w
            || tile.y + tile.height > h
        {
            return Err(EngineError::invalid("a tile does not fit the image"));
        }
        for (tx, ty, p) in img.enumerate_pixels() {
            let (x, y) = (tile.x + tx, tile.y + ty);
            let wgt = weight(tile, size, ramp, x, y);
            let i = (y * w + x) as usize;
            for c in 0..3 {
                sum[i][c] += wgt * p[c] as f32;
            }
            total[i] += wgt;
        }
    }
    if total.iter().any(|t| *t <= 0.0) {
        return Err(EngineError::invalid("the tiles do not cover the image"));
    }
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let i = (y * w + x) as usize;
        image::Rgb(sum[i].map(|s| (s / total[i]).round().clamp(0.0, 255.0) as u8))
    }))
}

impl StableDiffusion {
    /// Enlarges `req.image` by `req.factor` (with `first_stage` when given, else Lanczos) and
    /// repaints it tile by tile (see the module). `progress(done, total)` is called after
    /// every denoising step of every tile; `Break` cancels.
    pub fn upscale(
        &self,
        req: &UpscaleRequest,
        first_stage: Option<&Esrgan>,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<RgbImage> {
        let (w, h) = req.image.dimensions();
        let size = (w * req.factor, h * req.factor);
        if req.factor < 1 || size.0 as usize > MAX_SIDE || size.1 as usize > MAX_SIDE {
            return Err(EngineError::invalid(format!(
                "an upscale to {}x{} is beyond the {MAX_SIDE} px limit",
                size.0, size.1
            )));
        }
        let scale = self.info().vae_scale as u32;
        if !size.0.is_multiple_of(scale) || !size.1.is_multiple_of(scale) {
            return Err(EngineError::invalid(format!(
                "the upscaled size {}x{} is not a multiple of {scale} pixels",
                size.0, size.1
            )));
        }
        let enlarged = match first_stage {
            Some(esrgan) => esrgan.enlarge(&req.image, size, ESRGAN_TILE)?,
            None => imageops::resize(&req.image, size.0, size.1, imageops::FilterType::Lanczos3),
        };
        let tile = self.info().native_size as u32;
        let overlap = tile / 8;
        let layout = tiles(size, tile, overlap);
        let run = ((req.steps as f64 * req.strength) as usize).min(req.steps);
        let total = run * layout.len();
        let mut parts = Vec::with_capacity(layout.len());
        for (i, rect) in layout.iter().enumerate() {
            let crop =
                imageops::crop_imm(&enlarged, rect.x, rect.y, rect.width, rect.height).to_image();
            let mut tile_req = GenerateRequest::text(
                &req.prompt,
                rect.width as usize,
                rect.height as usize,
                vec![req.seed.wrapping_add(i as u64)],
            );
            tile_req.negative_prompt = req.negative_prompt.clone();
            tile_req.steps = req.steps;
            tile_req.guidance = req.guidance;
            tile_req.scheduler = req.scheduler;
            tile_req.init = Some(InitImage {
                image: crop,
                strength: req.strength,
                mask: None,
            });
            let done_before = i * run;
            let out = self.generate(&tile_req, &mut |p| progress(done_before + p.step, total))?;
            parts.push((
                *rect,
                out.images.into_iter().next().expect("one seed, one image"),
            ));
        }
        blend(&parts, size, overlap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_with_overlaps_on_the_8_pixel_grid() {
        let layout = tiles((1024, 768), 512, 64);
        assert_eq!(layout.len(), 3 * 2);
        for t in &layout {
            assert_eq!((t.width, t.height), (512, 512));
            assert!(t.x % 8 == 0 && t.y % 8 == 0 && t.x + 512 <= 1024 && t.y + 512 <= 768);
        }
        let xs: Vec<u32> = layout.iter().take(3).map(|t| t.x).collect();
        assert_eq!(xs, [0, 256, 512]);
        // Neighbours overlap by at least the overlap asked for.
        assert!(xs.windows(2).all(|p| p[0] + 512 >= p[1] + 64));
        // A side that fits one tile takes one.
        assert_eq!(tiles((512, 512), 512, 64).len(), 1);
        assert_eq!(tiles((128, 64), 64, 8).len(), 3);
    }

    #[test]
    fn blending_keeps_agreeing_tiles_exactly_and_mixes_across_the_overlap() {
        let size = (128, 64);
        let layout = tiles(size, 64, 8);
        // Tiles cut from one picture blend back into that picture.
        let picture = RgbImage::from_fn(128, 64, |x, y| image::Rgb([x as u8 * 2, y as u8 * 4, 7]));
        let parts: Vec<(Rect, RgbImage)> = layout
            .iter()
            .map(|r| {
                (
                    *r,
                    imageops::crop_imm(&picture, r.x, r.y, r.width, r.height).to_image(),
                )
            })
            .collect();
        assert_eq!(blend(&parts, size, 8).unwrap(), picture);
        // Black and white neighbours: a ramp across their overlap, no step.
        let parts: Vec<(Rect, RgbImage)> = layout
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let v = if i % 2 == 0 { 0 } else { 255 };
                (
                    *r,
                    RgbImage::from_pixel(r.width, r.height, image::Rgb([v; 3])),
                )
            })
            .collect();
        let out = blend(&parts, size, 8).unwrap();
        let row: Vec<u8> = (0..128).map(|x| out.get_pixel(x, 30)[0]).collect();
        let biggest_step = row.windows(2).map(|p| p[0].abs_diff(p[1])).max().unwrap();
        assert!(biggest_step < 64, "a seam: {row:?}");
        assert_eq!(
            (row[0], row[127]),
            (0, 0),
            "tiles 0 and 2 are black at the borders"
        );
        assert!(
            blend(&parts[..1], size, 8).is_err(),
            "uncovered pixels are an error"
        );
    }
}
