//! What a user attaching each kind of file sees: the picture they meant, or a clear refusal.
//! The files are in `assets/testdata/images/` (made by `tools/make_image_corpus.py`).

use super::*;

fn corpus(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/testdata/images/");
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn is_red([r, g, b]: [u8; 3]) -> bool {
    r > 180 && g < 80 && b < 80
}

fn encoded(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn a_phone_photo_is_turned_upright_by_its_exif_orientation() {
    // Stored 48x32 with a red square top-left, EXIF orientation 6 (rotate 90° clockwise).
    let img = decode_rgb(&corpus("photo_exif_orientation_6.jpg")).unwrap();
    assert_eq!(img.dimensions(), (32, 48));
    assert!(is_red(img.get_pixel(29, 2).0), "{:?}", img.get_pixel(29, 2));
    assert!(!is_red(img.get_pixel(2, 2).0), "{:?}", img.get_pixel(2, 2));
}

#[test]
fn a_cmyk_jpeg_keeps_its_colours() {
    let img = decode_rgb(&corpus("cmyk_red.jpg")).unwrap();
    assert_eq!(img.dimensions(), (32, 32));
    assert!(
        is_red(img.get_pixel(16, 16).0),
        "{:?}",
        img.get_pixel(16, 16)
    );
}

#[test]
fn grey_and_16_bit_pngs_become_rgb() {
    let img = decode_rgb(&corpus("grey.png")).unwrap();
    assert_eq!(img.get_pixel(3, 3).0, [128, 128, 128]);
    let ramp = decode_rgb(&corpus("grey16_ramp.png")).unwrap();
    assert_eq!(ramp.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(ramp.get_pixel(31, 0).0, [255, 255, 255]);
    let rgb16 =
        image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(4, 4, image::Rgb([65535, 0, 32896]));
    let img = decode_rgb(&encoded(DynamicImage::ImageRgb16(rgb16), ImageFormat::Png)).unwrap();
    assert_eq!(img.get_pixel(1, 1).0, [255, 0, 128]);
}

#[test]
fn transparency_becomes_white_in_an_image_prompt_and_keep_in_a_mask() {
    let bytes = corpus("rgba_half_transparent.png");
    let img = decode_rgb(&bytes).unwrap();
    assert_eq!(img.get_pixel(2, 8).0, [255, 255, 255], "transparent half");
    assert_eq!(img.get_pixel(30, 8).0, [0, 200, 0], "opaque half");
    let mask = decode_mask(&bytes).unwrap();
    assert_eq!(
        mask.get_pixel(2, 8).0,
        [0],
        "a transparent mask area is kept"
    );
    let half = RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 128]));
    let img = decode_rgb(&encoded(DynamicImage::ImageRgba8(half), ImageFormat::Png)).unwrap();
    assert_eq!(
        img.get_pixel(0, 0).0,
        [127, 127, 127],
        "half black over white"
    );
}

#[test]
fn an_animation_gives_its_first_frame() {
    for name in ["animated.gif", "animated.webp", "animated.png"] {
        let img = decode_rgb(&corpus(name)).unwrap();
        assert_eq!(img.dimensions(), (24, 24), "{name}");
        assert!(
            is_red(img.get_pixel(12, 12).0),
            "{name}: {:?}",
            img.get_pixel(12, 12)
        );
    }
}

#[test]
fn a_still_webp_is_read() {
    let img = decode_rgb(&corpus("still.webp")).unwrap();
    assert_eq!(img.dimensions(), (32, 32));
    assert!(is_red(img.get_pixel(2, 2).0) && !is_red(img.get_pixel(20, 20).0));
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    let err = decode(&corpus("bomb_50000x50000.png")).unwrap_err();
    assert_eq!(
        err,
        InputError::TooLarge {
            width: 50_000,
            height: 50_000
        }
    );
    assert_eq!(
        err.to_string(),
        "it is 50000x50000 pixels, over the limit of 4096x4096 (use a smaller image)"
    );
    // Just over the limit on one side, in each accepted format the image crate can write.
    for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif] {
        let wide = DynamicImage::ImageRgb8(RgbImage::new(MAX_SIDE + 1, 1));
        assert_eq!(
            decode(&encoded(wide, format)).unwrap_err(),
            InputError::TooLarge {
                width: MAX_SIDE + 1,
                height: 1
            },
            "{format:?}"
        );
    }
    let widest_accepted = DynamicImage::ImageRgb8(RgbImage::new(MAX_SIDE, 1));
    assert!(decode(&encoded(widest_accepted, ImageFormat::Png)).is_ok());
}

#[test]
fn the_content_decides_the_format_not_the_name() {
    // A JPEG is a JPEG whatever it is called: callers never pass a name or a content type.
    assert_eq!(
        detect_format(&corpus("photo_exif_orientation_6.jpg")),
        Ok(ImageFormat::Jpeg)
    );
    assert_eq!(
        decode(&corpus("random_bytes.png")).unwrap_err(),
        InputError::NotAnImage
    );
    let text = decode(&corpus("notes.txt")).unwrap_err();
    assert_eq!(text, InputError::NotAnImage);
    assert_eq!(
        text.to_string(),
        "it is not an image (use a PNG, JPEG, WebP or GIF)"
    );
    assert_eq!(decode(&[]).unwrap_err(), InputError::Empty);
}

#[test]
fn other_image_formats_are_named() {
    assert_eq!(
        decode(&corpus("tiny.bmp")).unwrap_err().to_string(),
        "it is a BMP image, which I cannot read (use a PNG, JPEG, WebP or GIF)"
    );
    let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
    assert_eq!(
        decode(&heic).unwrap_err(),
        InputError::UnsupportedFormat("HEIC")
    );
    let avif = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1".to_vec();
    assert_eq!(
        decode(&avif).unwrap_err(),
        InputError::UnsupportedFormat("AVIF")
    );
}

#[test]
fn truncated_and_corrupt_files_get_a_clear_message() {
    let err = decode(&corpus("truncated.jpg")).unwrap_err();
    assert!(
        matches!(err, InputError::Damaged { format: "JPEG", .. }),
        "{err:?}"
    );
    let png = corpus("grey.png");
    for cut in [8, 20, 33, png.len() - 13] {
        let err = decode(&png[..cut]).unwrap_err();
        assert!(
            matches!(err, InputError::Damaged { format: "PNG", .. }),
            "cut at {cut}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            "its PNG data is damaged or incomplete (save it again and retry)"
        );
    }
    let mut bad_header = corpus("still.webp");
    bad_header.truncate(20);
    assert!(matches!(
        decode(&bad_header),
        Err(InputError::Damaged { format: "WebP", .. })
    ));
}
