//! Outpainting canvases: the picture placed on a larger (Pan) or the same-size (Zoom Out)
//! canvas, the new area pre-filled so that diffusion has colour to start from (the kept edge
//! extended outwards, fading to the picture's mean colour, plus seeded noise; never black), and
//! a mask that repaints the new area and a feathered band of the old one, so that the seam is
//! blended rather than cut. After generation, [`Outpaint::composite`] puts the kept pixels back
//! exactly (the VAE's round trip would blur them), through the same feather.

use image::{imageops, GrayImage, Luma, Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{EngineError, Result};
use crate::generate::MAX_SIDE;

/// Width of the blended band inside the kept picture, in pixels (4 latent cells).
pub const FEATHER: u32 = 32;
/// Standard deviation of the noise added to the pre-fill, in 0-255 levels.
const FILL_NOISE: f64 = 24.0;

/// Which way a Pan extends the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Left,
    Right,
    Up,
    Down,
}

/// Where the old picture sits on the canvas, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && y >= self.y && x < self.x + self.width && y < self.y + self.height
    }
}

/// A canvas to outpaint: the starting image, the mask (255 repaints, 0 keeps, a ramp
/// between), and where the kept picture is.
#[derive(Debug, Clone)]
pub struct Outpaint {
    pub image: RgbImage,
    pub mask: GrayImage,
    pub kept: Rect,
    /// Which sides of `kept` border new area (left, right, top, bottom): only those feather.
    pub(crate) open: [bool; 4],
}

impl Outpaint {
    /// Zoom Out: the picture shrunk by `factor` (1 to 2) into the middle of a `size` canvas
    /// (the parent's size for Zoom Out 2x / 1.5x; another aspect ratio for a custom zoom,
    /// where the picture keeps its own aspect and fits the canvas before shrinking).
    pub fn zoom_out(parent: &RgbImage, factor: f64, size: (u32, u32), seed: u64) -> Result<Self> {
        if !(1.0..=2.0).contains(&factor) {
            return Err(EngineError::invalid(format!(
                "zoom factor {factor} is outside 1.0 to 2.0"
            )));
        }
        check_size(size)?;
        let (pw, ph) = parent.dimensions();
        let fit = (size.0 as f64 / pw as f64).min(size.1 as f64 / ph as f64) / factor;
        let (iw, ih) = (
            ((pw as f64 * fit).round() as u32).clamp(1, size.0),
            ((ph as f64 * fit).round() as u32).clamp(1, size.1),
        );
        let inner = imageops::resize(parent, iw, ih, imageops::FilterType::Lanczos3);
        let kept = Rect {
            x: (size.0 - iw) / 2,
            y: (size.1 - ih) / 2,
            width: iw,
            height: ih,
        };
        let open = [
            kept.x > 0,
            kept.x + iw < size.0,
            kept.y > 0,
            kept.y + ih < size.1,
        ];
        Ok(Self::build(&inner, size, kept, open, seed))
    }

    /// Pan: the canvas grows by half a side (rounded up to 8 pixels) in `direction`, the
    /// picture keeps its pixels where they were, and the new strip continues it.
    pub fn pan(parent: &RgbImage, direction: Direction, seed: u64) -> Result<Self> {
        let (pw, ph) = parent.dimensions();
        let size = pan_size((pw, ph), direction)?;
        let (x, y) = match direction {
            Direction::Left => (size.0 - pw, 0),
            Direction::Up => (0, size.1 - ph),
            Direction::Right | Direction::Down => (0, 0),
        };
        let kept = Rect {
            x,
            y,
            width: pw,
            height: ph,
        };
        let open = [
            direction == Direction::Left,
            direction == Direction::Right,
            direction == Direction::Up,
            direction == Direction::Down,
        ];
        Ok(Self::build(parent, size, kept, open, seed))
    }

    fn build(picture: &RgbImage, size: (u32, u32), kept: Rect, open: [bool; 4], seed: u64) -> Self {
        let mean = mean_colour(picture);
        let mut rng = ChaCha12Rng::seed_from_u64(seed);
        let noise = Normal::new(0.0, FILL_NOISE).expect("a positive deviation");
        // How far the fill fades from the extended edge to the mean colour.
        let fade = (size.0.max(size.1) / 4).max(1) as f64;
        let image = RgbImage::from_fn(size.0, size.1, |x, y| {
            if kept.contains(x, y) {
                return *picture.get_pixel(x - kept.x, y - kept.y);
            }
            let cx = x.clamp(kept.x, kept.x + kept.width - 1);
            let cy = y.clamp(kept.y, kept.y + kept.height - 1);
            let edge = picture.get_pixel(cx - kept.x, cy - kept.y);
            let distance = (x.abs_diff(cx) as f64).hypot(y.abs_diff(cy) as f64);
            let t = (distance / fade).min(1.0);
            Rgb(std::array::from_fn(|c| {
                let base = edge[c] as f64 * (1.0 - t) + mean[c] * t;
                (base + noise.sample(&mut rng)).round().clamp(0.0, 255.0) as u8
            }))
        });
        let feather = FEATHER.min(kept.width / 4).min(kept.height / 4).max(1);
        let mask = GrayImage::from_fn(size.0, size.1, |x, y| {
            Luma([mask_value(&kept, open, feather, x, y)])
        });
        Self {
            image,
            mask,
            kept,
            open,
        }
    }

    /// The final picture: `generated` where the mask repaints, the canvas (the kept picture,
    /// exactly) where it keeps, mixed by the mask in the feathered band.
    pub fn composite(&self, generated: &RgbImage) -> Result<RgbImage> {
        if generated.dimensions() != self.image.dimensions() {
            return Err(EngineError::invalid(format!(
                "the generated image is {:?}, the canvas {:?}",
                generated.dimensions(),
                self.image.dimensions()
            )));
        }
        Ok(RgbImage::from_fn(
            self.image.width(),
            self.image.height(),
            |x, y| {
                let m = self.mask.get_pixel(x, y)[0] as u32;
                let (new, old) = (generated.get_pixel(x, y), self.image.get_pixel(x, y));
                Rgb(std::array::from_fn(|c| {
                    ((new[c] as u32 * m + old[c] as u32 * (255 - m) + 127) / 255) as u8
                }))
            },
        ))
    }

    /// Whether the kept picture borders new area on its left, right, top, bottom side.
    pub fn open_sides(&self) -> [bool; 4] {
        self.open
    }
}

/// The canvas a Pan of a `(width, height)` picture makes: half a side more (rounded up to 8
/// pixels) in `direction`; an error past the size limit.
pub fn pan_size((w, h): (u32, u32), direction: Direction) -> Result<(u32, u32)> {
    let grow = |side: u32| (side / 2).div_ceil(8) * 8;
    let size = match direction {
        Direction::Left | Direction::Right => (w + grow(w), h),
        Direction::Up | Direction::Down => (w, h + grow(h)),
    };
    check_size(size)?;
    Ok(size)
}

impl Direction {
    /// `left`, `right`, `up`, `down`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Right => "right",
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Left, Self::Right, Self::Up, Self::Down]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

/// 255 outside the kept picture; inside it, a linear ramp from 255 at an open side down to 0
/// at `feather` pixels in.
fn mask_value(kept: &Rect, open: [bool; 4], feather: u32, x: u32, y: u32) -> u8 {
    if !kept.contains(x, y) {
        return 255;
    }
    let (dx0, dy0) = (x - kept.x, y - kept.y);
    let distances = [dx0, kept.width - 1 - dx0, dy0, kept.height - 1 - dy0];
    let nearest = distances
        .iter()
        .zip(open)
        .filter(|(_, open)| *open)
        .map(|(d, _)| *d)
        .min();
    match nearest {
        Some(d) if d < feather => {
            // Pixel centres: the outermost kept pixel is half a pixel from the seam.
            let t = (d as f64 + 0.5) / feather as f64;
            (255.0 * (1.0 - t)).round() as u8
        }
        _ => 0,
    }
}

fn mean_colour(img: &RgbImage) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += p[c] as f64;
        }
    }
    let n = (img.width() * img.height()).max(1) as f64;
    sum.map(|s| s / n)
}

fn check_size((w, h): (u32, u32)) -> Result<()> {
    if w as usize > MAX_SIDE || h as usize > MAX_SIDE {
        return Err(EngineError::invalid(format!(
            "the canvas would be {w}x{h}, beyond the {MAX_SIDE} px limit"
        )));
    }
    if w % 8 != 0 || h % 8 != 0 {
        return Err(EngineError::invalid(format!(
            "the canvas {w}x{h} is not a multiple of 8 pixels"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture with structure: a gradient with a bright square.
    fn picture(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let square = (w / 4..w / 2).contains(&x) && (h / 4..h / 2).contains(&y);
            if square {
                Rgb([250, 240, 10])
            } else {
                Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 90])
            }
        })
    }

    #[test]
    fn a_pan_right_keeps_every_old_pixel_where_it_was() {
        let parent = picture(64, 64);
        let o = Outpaint::pan(&parent, Direction::Right, 1).unwrap();
        assert_eq!(
            o.image.dimensions(),
            (96, 64),
            "a square panned right becomes 3:2"
        );
        assert_eq!(
            o.kept,
            Rect {
                x: 0,
                y: 0,
                width: 64,
                height: 64
            }
        );
        // Whatever the model makes, the old pixels stay outside the feather.
        let generated = RgbImage::from_pixel(96, 64, Rgb([0, 0, 0]));
        let out = o.composite(&generated).unwrap();
        let feather = FEATHER.min(64 / 4);
        for y in 0..64 {
            for x in 0..64 - feather {
                assert_eq!(out.get_pixel(x, y), parent.get_pixel(x, y), "({x}, {y})");
            }
            for x in 64..96 {
                assert_eq!(out.get_pixel(x, y), &Rgb([0, 0, 0]), "new strip ({x}, {y})");
            }
        }
    }

    #[test]
    fn pans_grow_the_side_they_extend_by_half() {
        let parent = picture(64, 96);
        let left = Outpaint::pan(&parent, Direction::Left, 1).unwrap();
        assert_eq!(left.image.dimensions(), (96, 96));
        assert_eq!((left.kept.x, left.kept.y), (32, 0));
        let up = Outpaint::pan(&parent, Direction::Up, 1).unwrap();
        assert_eq!(up.image.dimensions(), (64, 144));
        assert_eq!((up.kept.x, up.kept.y), (0, 48));
        assert_eq!(up.open_sides(), [false, false, true, false]);
        let down = Outpaint::pan(&parent, Direction::Down, 1).unwrap();
        assert_eq!(down.image.dimensions(), (64, 144));
        // The limit holds: 1536 wide panned right would be 2304.
        let wide = RgbImage::new(1536, 64);
        let e = Outpaint::pan(&wide, Direction::Right, 1).unwrap_err();
        assert!(e.to_string().contains("2048 px limit"), "{e}");
    }

    #[test]
    fn zoom_out_puts_the_picture_shrunk_in_the_middle() {
        let parent = picture(64, 64);
        let o = Outpaint::zoom_out(&parent, 2.0, (64, 64), 3).unwrap();
        assert_eq!(
            o.kept,
            Rect {
                x: 16,
                y: 16,
                width: 32,
                height: 32
            }
        );
        let shrunk = imageops::resize(&parent, 32, 32, imageops::FilterType::Lanczos3);
        let out = o.composite(&RgbImage::new(64, 64)).unwrap();
        let feather = FEATHER.min(32 / 4);
        for y in feather..32 - feather {
            for x in feather..32 - feather {
                assert_eq!(out.get_pixel(16 + x, 16 + y), shrunk.get_pixel(x, y));
            }
        }
        let o = Outpaint::zoom_out(&parent, 1.5, (64, 64), 3).unwrap();
        assert_eq!((o.kept.width, o.kept.height), (43, 43));
        // A custom zoom to a wider canvas: the picture keeps its aspect.
        let o = Outpaint::zoom_out(&parent, 1.0, (128, 64), 3).unwrap();
        assert_eq!(
            o.kept,
            Rect {
                x: 32,
                y: 0,
                width: 64,
                height: 64
            }
        );
        assert_eq!(o.open_sides(), [true, true, false, false]);
        assert!(Outpaint::zoom_out(&parent, 2.5, (64, 64), 3).is_err());
        assert!(Outpaint::zoom_out(&parent, 2.0, (60, 64), 3).is_err());
    }

    #[test]
    fn the_mask_repaints_the_new_area_and_ramps_down_across_the_feather() {
        let o = Outpaint::pan(&picture(256, 256), Direction::Right, 1).unwrap();
        let row: Vec<u8> = (0..o.image.width())
            .map(|x| o.mask.get_pixel(x, 10)[0])
            .collect();
        assert!(row[256..].iter().all(|&m| m == 255), "new strip repainted");
        assert!(
            row[..256 - FEATHER as usize].iter().all(|&m| m == 0),
            "kept area kept"
        );
        let band = &row[256 - FEATHER as usize..256];
        assert!(
            band.windows(2).all(|w| w[0] < w[1]),
            "a rising ramp: {band:?}"
        );
        assert!(band[0] < 10 && band[band.len() - 1] > 245, "{band:?}");
        // Blending, not cutting: a mid-band pixel mixes old and new.
        let generated = RgbImage::from_pixel(384, 256, Rgb([0, 0, 0]));
        let out = o.composite(&generated).unwrap();
        let x = 256 - FEATHER / 2;
        let (old, mixed) = (o.image.get_pixel(x, 10)[0], out.get_pixel(x, 10)[0]);
        assert!(mixed > 0 && mixed < old, "{mixed} between 0 and {old}");
    }

    #[test]
    fn the_new_area_is_pre_filled_from_the_edge_not_left_black() {
        let parent = RgbImage::from_pixel(64, 64, Rgb([200, 120, 40]));
        let o = Outpaint::pan(&parent, Direction::Down, 9).unwrap();
        let strip: Vec<&Rgb<u8>> = (64..96)
            .flat_map(|y| (0..64).map(move |x| (x, y)))
            .map(|(x, y)| o.image.get_pixel(x, y))
            .collect();
        let mean = |c: usize| strip.iter().map(|p| p[c] as f64).sum::<f64>() / strip.len() as f64;
        for (c, want) in [200.0, 120.0, 40.0].into_iter().enumerate() {
            assert!((mean(c) - want).abs() < 6.0, "channel {c}: {}", mean(c));
        }
        assert!(
            strip.iter().any(|p| p[0] != 200),
            "noise gives diffusion something to work with"
        );
        let again = Outpaint::pan(&parent, Direction::Down, 9).unwrap();
        assert_eq!(again.image, o.image, "seeded: the same canvas every time");
    }
}
