//! Conversions between images and tensors at the engine's edges, and the cheap latent preview:
//! a fixed linear map from the four SD latent channels to RGB, which costs almost nothing
//! (a full VAE decode per step would cost more than the step itself on a CPU).

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};

use crate::error::{EngineError, Result};

/// Latent channel → RGB contributions for SD 1.x/2.x latents (as ComfyUI's previews use).
const LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// An RGB image to a `[1, 3, H, W]` tensor with values in [-1, 1].
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|v| *v as f32 / 127.5 - 1.0)
        .collect();
    let t = Tensor::from_vec(data, (h as usize, w as usize, 3), device)?;
    Ok(t.permute((2, 0, 1))?.unsqueeze(0)?)
}

/// Decoder output `[N, 3, H, W]` in [-1, 1] to 8-bit images, rounding as diffusers does.
pub fn tensor_to_images(pixels: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, c, h, w) = pixels.dims4()?;
    if c != 3 {
        return Err(EngineError::invalid(format!(
            "expected 3 colour channels, got {c}"
        )));
    }
    let bytes = ((pixels.to_dtype(DType::F32)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .affine(255.0, 0.0)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let per = h * w * 3;
    Ok((0..n)
        .map(|i| {
            RgbImage::from_raw(w as u32, h as u32, bytes[i * per..(i + 1) * per].to_vec())
                .expect("buffer sized from the tensor")
        })
        .collect())
}

/// A mask image (white = repaint) to a binarised `[1, 1, H, W]` tensor at pixel resolution.
pub fn mask_to_tensor(mask: &GrayImage, device: &Device) -> Result<Tensor> {
    let (w, h) = mask.dimensions();
    let data: Vec<f32> = mask
        .as_raw()
        .iter()
        .map(|v| if *v >= 128 { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(
        data,
        (1, 1, h as usize, w as usize),
        device,
    )?)
}

/// Nearest-neighbour downsampling of a pixel mask to latent resolution (as diffusers'
/// `interpolate(mask, size=latent_size)` does).
pub fn mask_to_latent(mask: &Tensor, scale: usize) -> Result<Tensor> {
    let (_, _, h, w) = mask.dims4()?;
    let (lh, lw) = (h / scale, w / scale);
    let rows: Vec<u32> = (0..lh).map(|i| (i * h / lh) as u32).collect();
    let cols: Vec<u32> = (0..lw).map(|j| (j * w / lw) as u32).collect();
    let rows = Tensor::new(rows.as_slice(), mask.device())?;
    let cols = Tensor::new(cols.as_slice(), mask.device())?;
    Ok(mask.index_select(&rows, 2)?.index_select(&cols, 3)?)
}

/// Preview images of latents `[N, C, h, w]`, one pixel per latent cell.
pub fn latent_preview(latents: &Tensor) -> Result<Vec<RgbImage>> {
    let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (n, c, h, w) = latents.dims4()?;
    let data = latents.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let base = i * c * plane;
        let mut img = RgbImage::new(w as u32, h as u32);
        for (p, px) in img.pixels_mut().enumerate() {
            let mut rgb = [0f32; 3];
            for (ch, factors) in LATENT_RGB.iter().enumerate().take(c) {
                let v = data[base + ch * plane + p];
                for k in 0..3 {
                    rgb[k] += v * factors[k];
                }
            }
            if c < 3 {
                rgb = [data[base + p]; 3];
            }
            px.0 = rgb.map(|v| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
        }
        out.push(img);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_survive_a_round_trip_through_tensors() {
        let img = RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 60, y as u8 * 200, 17]));
        let t = image_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 2, 4]);
        assert_eq!(tensor_to_images(&t).unwrap()[0], img);
    }

    #[test]
    fn masks_are_binarised_and_downsampled_nearest() {
        let mask = GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 0 } else { 200 }]));
        let t = mask_to_latent(&mask_to_tensor(&mask, &Device::Cpu).unwrap(), 8).unwrap();
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 1.0, 0.0, 1.0]
        );
    }

    #[test]
    fn previews_have_one_pixel_per_latent_cell() {
        let latents = Tensor::zeros((2, 4, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let previews = latent_preview(&latents).unwrap();
        assert_eq!(previews.len(), 2);
        assert_eq!(previews[0].dimensions(), (5, 3));
        assert_eq!(previews[0].get_pixel(0, 0).0, [128, 128, 128]);
    }
}
