//! Vary (Region): repainting part of a picture in place. The region (a mask, 255 = repaint)
//! grows a feathered band outwards into the kept picture, so that what is repainted blends in;
//! everything farther away than the band comes back pixel-identical through
//! [`Outpaint::composite`], the same canvas type Zoom Out and Pan use.

use image::{GrayImage, Luma, RgbImage};

use super::outpaint::{Outpaint, Rect, FEATHER};
use crate::error::{EngineError, Result};

/// How wide the blended band around a region is for a picture of `(width, height)`: the
/// outpainting feather, narrower on small pictures (a sixteenth of the short side, at least 2).
pub fn region_feather((w, h): (u32, u32)) -> u32 {
    FEATHER.min(w.min(h) / 16).max(2)
}

impl Outpaint {
    /// The canvas that repaints `region` (same size as `picture`; at or above 128 repaints) of
    /// `picture`: the picture itself as the start, and a mask of 255 inside the region falling
    /// linearly to 0 across [`region_feather`] pixels outside it (chessboard distance).
    pub fn region(picture: &RgbImage, region: &GrayImage) -> Result<Self> {
        if picture.dimensions() != region.dimensions() {
            return Err(EngineError::invalid(format!(
                "the region mask is {:?}, the picture {:?}",
                region.dimensions(),
                picture.dimensions()
            )));
        }
        let inside: Vec<bool> = region.pixels().map(|p| p[0] >= 128).collect();
        if !inside.contains(&true) {
            return Err(EngineError::invalid("the region to repaint is empty"));
        }
        let (w, h) = picture.dimensions();
        let feather = region_feather((w, h));
        let distance = chessboard_distance(&inside, w as usize, h as usize, feather + 1);
        let mask = GrayImage::from_fn(w, h, |x, y| {
            let d = distance[y as usize * w as usize + x as usize];
            Luma([ramp(d, feather)])
        });
        Ok(Self {
            image: picture.clone(),
            mask,
            kept: Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
            open: [false; 4],
        })
    }
}

/// 255 in the region (distance 0), then down in `feather` even steps, 0 beyond.
fn ramp(distance: u32, feather: u32) -> u8 {
    if distance > feather {
        return 0;
    }
    let left = (feather + 1 - distance) as f64 / (feather + 1) as f64;
    (255.0 * left).round() as u8
}

/// Each pixel's chessboard distance to the nearest `inside` pixel, capped at `cap`: the classic
/// two-pass transform (forward over the upper-left neighbours, backward over the lower-right),
/// linear in the number of pixels.
fn chessboard_distance(inside: &[bool], w: usize, h: usize, cap: u32) -> Vec<u32> {
    let mut d: Vec<u32> = inside.iter().map(|&i| if i { 0 } else { cap }).collect();
    let neighbours_before = [(-1isize, 0isize), (-1, -1), (0, -1), (1, -1)];
    let at = |x: usize, y: usize, (dx, dy): (isize, isize)| {
        let (nx, ny) = (x as isize + dx, y as isize + dy);
        (nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h)
            .then(|| ny as usize * w + nx as usize)
    };
    for y in 0..h {
        for x in 0..w {
            for step in neighbours_before {
                if let Some(n) = at(x, y, step) {
                    d[y * w + x] = d[y * w + x].min(d[n] + 1);
                }
            }
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            for (dx, dy) in neighbours_before {
                if let Some(n) = at(x, y, (-dx, -dy)) {
                    d[y * w + x] = d[y * w + x].min(d[n] + 1);
                }
            }
        }
    }
    d.iter().map(|v| (*v).min(cap)).collect()
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    fn picture(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 77]))
    }

    /// The left third of a `w` x `h` picture.
    fn left_third(w: u32, h: u32) -> GrayImage {
        GrayImage::from_fn(w, h, |x, _| Luma([if x < w / 3 { 255 } else { 0 }]))
    }

    #[test]
    fn outside_the_region_and_its_feather_every_pixel_stays() {
        let (w, h) = (96, 64);
        let parent = picture(w, h);
        let o = Outpaint::region(&parent, &left_third(w, h)).unwrap();
        let feather = region_feather((w, h));
        assert_eq!(feather, 4);
        let generated = RgbImage::from_pixel(w, h, Rgb([255, 0, 255]));
        let out = o.composite(&generated).unwrap();
        for y in 0..h {
            for x in 0..w {
                let (got, old) = (out.get_pixel(x, y), parent.get_pixel(x, y));
                if x < w / 3 {
                    assert_eq!(got, &Rgb([255, 0, 255]), "repainted ({x}, {y})");
                } else if x >= w / 3 + feather {
                    assert_eq!(got, old, "kept ({x}, {y})");
                } else {
                    // The band blends: between the old pixel and the new one, never a cut.
                    assert!(got[0] > old[0] && got[2] >= old[2], "({x}, {y}): {got:?}");
                }
            }
        }
    }

    #[test]
    fn the_feather_ramps_down_away_from_the_region() {
        let o = Outpaint::region(&picture(256, 256), &left_third(256, 256)).unwrap();
        let row: Vec<u8> = (0..256).map(|x| o.mask.get_pixel(x, 100)[0]).collect();
        let edge = 256 / 3;
        assert!(row[..edge as usize].iter().all(|&m| m == 255));
        let band = &row[edge as usize..(edge + region_feather((256, 256)) + 1) as usize];
        assert!(band.windows(2).all(|p| p[0] > p[1]), "{band:?}");
        assert_eq!(*band.last().unwrap(), 0);
        assert!(row[(edge + 16) as usize..].iter().all(|&m| m == 0));
        // The start image is the picture itself: the region starts from what was there.
        assert_eq!(o.image, picture(256, 256));
    }

    #[test]
    fn the_distance_transform_is_exact_chessboard() {
        let (w, h) = (9, 7);
        let mut inside = vec![false; w * h];
        inside[3 * w + 4] = true;
        let d = chessboard_distance(&inside, w, h, 100);
        for y in 0..h {
            for x in 0..w {
                let want = x.abs_diff(4).max(y.abs_diff(3)) as u32;
                assert_eq!(d[y * w + x], want, "({x}, {y})");
            }
        }
    }

    #[test]
    fn an_empty_or_mismatched_region_is_refused() {
        let parent = picture(64, 64);
        let empty = GrayImage::new(64, 64);
        assert!(Outpaint::region(&parent, &empty).is_err());
        assert!(Outpaint::region(&parent, &left_third(64, 32)).is_err());
    }
}
