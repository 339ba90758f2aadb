//! The one door every image a user hands us comes through: the attachment of `/imagine` and
//! the command line's `--init-image` and `--mask`.
//!
//! Users attach whatever their phone or browser made, so this module trusts nothing about it:
//! - the format is read from the content's magic bytes, never from a file name or a declared
//!   content type; PNG, JPEG, WebP and GIF are accepted, anything else is named and refused;
//! - the size the header claims is checked before any pixel is decoded, so a 200-byte file
//!   claiming 50,000 x 50,000 pixels is refused without allocating for it, and
//!   [`image::Limits`] bound what the decoder may allocate as a second line of defence;
//! - what comes out is the picture the user saw: EXIF orientation applied (phone photos are
//!   stored sideways), the first frame of an animation, CMYK, grey and 16-bit converted.
//!
//! Transparency becomes white for image prompts (composited over white, as the Stable
//! Diffusion web UIs flatten an RGBA init image) and "keep" (black) for masks: a transparent
//! area of a mask was not painted.
//!
//! Every failure is an [`InputError`], whose `Display` is a short clause the caller puts in
//! its own sentence ("I could not use the attached image: …", "cannot use photo.heic: …").

use std::io::Cursor;

use image::metadata::Orientation;
use image::{
    DynamicImage, GrayImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage,
    RgbaImage,
};

/// The largest side accepted, in pixels, before and after orientation.
pub const MAX_SIDE: u32 = 4096;
/// The most a decoder may allocate: a 4096x4096 16-bit RGBA frame is 128 MiB.
const MAX_ALLOC: u64 = 256 << 20;
/// The accepted formats, as the error messages name them.
pub const ACCEPTED: &str = "PNG, JPEG, WebP or GIF";

/// Why an image was refused. `Display` is a lower-case clause without a final period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the file is empty")]
    Empty,
    #[error("it is not an image (use a {ACCEPTED})")]
    NotAnImage,
    #[error("it is a {0} image, which I cannot read (use a {ACCEPTED})")]
    UnsupportedFormat(&'static str),
    #[error(
        "it is {width}x{height} pixels, over the limit of {MAX_SIDE}x{MAX_SIDE} (use a smaller image)"
    )]
    TooLarge { width: u32, height: u32 },
    /// Not shown to the user: `detail` is the decoder's own words, for the log.
    #[error("its {format} data is damaged or incomplete (save it again and retry)")]
    Damaged {
        format: &'static str,
        detail: String,
    },
    #[error("it needs more memory to decode than I allow (use a smaller or simpler image)")]
    TooMuchMemory { detail: String },
    #[error("it is a kind of {format} I cannot read (save it again as a plain PNG or JPEG)")]
    UnsupportedVariant {
        format: &'static str,
        detail: String,
    },
}

/// Decodes `bytes` into the upright picture they show, after checking format and size.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, InputError> {
    let format = detect_format(bytes)?;
    let (width, height) = header_dimensions(bytes, format)?;
    if width == 0 || height == 0 {
        return Err(damaged(format, format!("the header says {width}x{height}")));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(InputError::TooLarge { width, height });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(format, e))?;
    if decoder.total_bytes() > MAX_ALLOC {
        return Err(InputError::TooMuchMemory {
            detail: format!("{} bytes decoded", decoder.total_bytes()),
        });
    }
    // A damaged EXIF block is no reason to refuse the picture: it is shown as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// [`decode`], as the 8-bit RGB an image prompt is; transparency over white.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, InputError> {
    decode(bytes).map(|img| flatten_over(&img, [255; 3]))
}

/// [`decode`], as an inpainting mask (white: repaint; black: keep); transparency keeps.
pub fn decode_mask(bytes: &[u8]) -> Result<GrayImage, InputError> {
    decode(bytes).map(|img| DynamicImage::ImageRgb8(flatten_over(&img, [0; 3])).to_luma8())
}

/// The image as 8-bit RGB, its transparent parts composited over `background`.
pub fn flatten_over(img: &DynamicImage, background: [u8; 3]) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba: RgbaImage = img.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8, bg: u8| -> u8 {
            let (c, bg, a) = (u32::from(c), u32::from(bg), u32::from(a));
            ((c * a + bg * (255 - a) + 127) / 255) as u8
        };
        image::Rgb([
            over(r, background[0]),
            over(g, background[1]),
            over(b, background[2]),
        ])
    })
}

/// The format the content's first bytes announce; only the accepted ones are `Ok`.
pub fn detect_format(bytes: &[u8]) -> Result<ImageFormat, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if let Some(name) = iso_media_brand(bytes) {
        return Err(InputError::UnsupportedFormat(name));
    }
    match image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif),
        ) => Ok(format),
        Ok(other) => Err(InputError::UnsupportedFormat(format_name(other))),
        Err(_) => Err(InputError::NotAnImage),
    }
}

/// HEIC (iPhone photos) and AVIF live in an ISO media box `....ftyp<brand>`; naming them
/// tells an iPhone user what to change, where "not an image" would puzzle them.
fn iso_media_brand(bytes: &[u8]) -> Option<&'static str> {
    if bytes.get(4..8)? != b"ftyp" {
        return None;
    }
    match bytes.get(8..12)? {
        b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1" => Some("HEIC"),
        b"avif" | b"avis" => Some("AVIF"),
        _ => None,
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Dds => "DDS",
        ImageFormat::Hdr => "HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Tga => "TGA",
        ImageFormat::Farbfeld => "Farbfeld",
        _ => "different",
    }
}

/// The size the header claims, read without decoding pixels or limiting dimensions (the
/// caller compares them with [`MAX_SIDE`] and names them in its message).
fn header_dimensions(bytes: &[u8], format: ImageFormat) -> Result<(u32, u32), InputError> {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_ALLOC);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    reader
        .into_dimensions()
        .map_err(|e| decode_error(format, e))
}

fn damaged(format: ImageFormat, detail: String) -> InputError {
    InputError::Damaged {
        format: format_name(format),
        detail,
    }
}

fn decode_error(format: ImageFormat, error: ImageError) -> InputError {
    match error {
        // Only dimensions and allocation are limited here, and the sides were checked.
        ImageError::Limits(_) => InputError::TooMuchMemory {
            detail: error.to_string(),
        },
        ImageError::Unsupported(_) => InputError::UnsupportedVariant {
            format: format_name(format),
            detail: error.to_string(),
        },
        _ => damaged(format, error.to_string()),
    }
}

#[cfg(test)]
mod tests;
