//! What the user sees of a finished job: the 2x2 grid and PNG files that carry their
//! generation parameters in a `parameters` text chunk, in the format Stable Diffusion web UIs
//! write and read.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;

/// The parameters written into a PNG, web-UI style.
#[derive(Debug, Clone)]
pub struct PngParameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub sampler: String,
    pub guidance: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
    pub strength: Option<f64>,
    /// What the image was computed in (`fp32`, `bf16`, `fp16`) and on (`cpu`, `cuda:0`).
    pub precision: String,
    pub device: String,
    /// The first stage of an upscale, when not Lanczos (the ESRGAN file's name).
    pub upscaler: Option<String>,
    /// The decoder, when not the model's own VAE (TAESD's name after a fast decode).
    pub vae: Option<String>,
    /// The LoRAs applied, `(name, short hash)` (see [`crate::loras::short_hash`]); their
    /// `<lora:NAME:SCALE>` tags are in the prompt, as the web UIs record them.
    pub loras: Vec<(String, String)>,
}

impl PngParameters {
    /// `prompt\nNegative prompt: ...\nSteps: N, Sampler: ..., CFG scale: ..., Seed: ..., Size: WxH,
    /// Model: ..., Precision: ..., Device: ...` (the web UIs' format, which readers split on
    /// `, ` and `: `, so fields of ours are kept by tools that do not know them).
    pub fn to_text(&self) -> String {
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str(&format!("\nNegative prompt: {}", self.negative_prompt));
        }
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps, self.sampler, self.guidance, self.seed, self.width, self.height, self.model
        ));
        if let Some(s) = self.strength {
            text.push_str(&format!(", Denoising strength: {s}"));
        }
        text.push_str(&format!(
            ", Precision: {}, Device: {}",
            self.precision, self.device
        ));
        if let Some(upscaler) = &self.upscaler {
            text.push_str(&format!(", Upscaler: {upscaler}"));
        }
        if let Some(vae) = &self.vae {
            text.push_str(&format!(", VAE: {vae}"));
        }
        if !self.loras.is_empty() {
            let hashes: Vec<String> = self
                .loras
                .iter()
                .map(|(name, hash)| format!("{name}: {hash}"))
                .collect();
            text.push_str(&format!(", Lora hashes: \"{}\"", hashes.join(", ")));
        }
        text
    }
}

/// The parameters of a fast-decoded image as they read once its latents are decoded with the
/// model's own VAE: the `VAE:` field of the last line (where [`PngParameters::to_text`] puts
/// it) removed.
pub fn without_vae(parameters: &str) -> String {
    let (head, last) = match parameters.rsplit_once('\n') {
        Some((head, last)) => (Some(head), last),
        None => (None, parameters),
    };
    let fields: Vec<&str> = last
        .split(", ")
        .filter(|f| !f.starts_with("VAE: "))
        .collect();
    match head {
        Some(head) => format!("{head}\n{}", fields.join(", ")),
        None => fields.join(", "),
    }
}

/// Tiles up to four equally sized images two per row (row-major: 1 2 / 3 4); four images
/// make the 2x2 grid the bot posts.
pub fn grid_2x2(images: &[RgbImage]) -> Result<RgbImage> {
    anyhow::ensure!(
        !images.is_empty() && images.len() <= 4,
        "a grid holds 1 to 4 images, got {}",
        images.len()
    );
    let (w, h) = images[0].dimensions();
    anyhow::ensure!(
        images.iter().all(|i| i.dimensions() == (w, h)),
        "grid images differ in size"
    );
    let n = images.len() as u32;
    let mut grid = RgbImage::new(w * n.min(2), h * n.div_ceil(2));
    for (k, img) in images.iter().enumerate() {
        let (x, y) = ((k as u32 % 2) * w, (k as u32 / 2) * h);
        image::imageops::replace(&mut grid, img, x as i64, y as i64);
    }
    Ok(grid)
}

/// The keyword of the chunk that carries the generation parameters.
const PARAMETERS: &str = "parameters";
/// The most text a compressed chunk may inflate to when read back.
const MAX_TEXT_BYTES: usize = 1 << 20;

/// Encodes an RGB image as PNG bytes with a `parameters` text chunk: `tEXt` when the text is
/// Latin-1, `iTXt` (UTF-8) when it is not, as the web UIs' PNG writers (Pillow's
/// `PngInfo.add_text`) do, so readers of either kind find the prompt in any language.
pub fn png_bytes(img: &RgbImage, parameters: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, img.width(), img.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let (keyword, text) = (PARAMETERS.to_string(), parameters.to_string());
        if parameters.chars().all(|c| u32::from(c) <= 0xFF) {
            encoder.add_text_chunk(keyword, text)
        } else {
            encoder.add_itxt_chunk(keyword, text)
        }
        .context("adding the parameters chunk")?;
        let mut writer = encoder.write_header().context("writing the PNG header")?;
        writer
            .write_image_data(img.as_raw())
            .context("writing PNG data")?;
        writer.finish().context("finishing the PNG")?;
    }
    Ok(out)
}

/// Writes `png_bytes` to a file, creating or replacing it atomically.
pub fn write_png(path: &Path, img: &RgbImage, parameters: &str) -> Result<()> {
    write_file_atomically(path, &png_bytes(img, parameters)?)
}

/// Writes `bytes` to `path` so that a reader (or a restart after a crash) sees either the
/// old file or the whole new one, never a torn one: a temporary file beside it, flushed to
/// disk, then renamed over it.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let temp = path.with_file_name(temp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the `parameters` text chunk back from PNG bytes, if present, whichever of `tEXt`,
/// `zTXt` and `iTXt` carries it.
pub fn read_parameters(bytes: &[u8]) -> Result<Option<String>> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().context("not a PNG")?;
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS)
    {
        return Ok(Some(t.text.clone()));
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == PARAMETERS) {
        let mut t = t.clone();
        t.decompress_text_with_limit(MAX_TEXT_BYTES)
            .context("reading the iTXt parameters chunk")?;
        return Ok(Some(
            t.get_text().context("reading the iTXt parameters chunk")?,
        ));
    }
    if let Some(t) = info
        .compressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS)
    {
        let mut t = t.clone();
        t.decompress_text_with_limit(MAX_TEXT_BYTES)
            .context("reading the zTXt parameters chunk")?;
        return Ok(Some(
            t.get_text().context("reading the zTXt parameters chunk")?,
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PngParameters {
        PngParameters {
            prompt: "a brown puppy".into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            sampler: "Euler".into(),
            guidance: 7.5,
            seed: 42,
            width: 512,
            height: 768,
            model: "sd-turbo".into(),
            strength: None,
            precision: "fp32".into(),
            device: "cpu".into(),
            upscaler: None,
            vae: None,
            loras: Vec::new(),
        }
    }

    #[test]
    fn loras_are_recorded_as_automatic1111_records_them() {
        let p = PngParameters {
            prompt: "a puppy <lora:ink:0.5> <lora:film:1>".into(),
            loras: vec![
                ("ink".into(), "0123456789ab".into()),
                ("film".into(), "ba9876543210".into()),
            ],
            ..params()
        };
        assert!(p
            .to_text()
            .ends_with("Device: cpu, Lora hashes: \"ink: 0123456789ab, film: ba9876543210\""));
    }

    #[test]
    fn parameters_text_follows_the_web_ui_format() {
        assert_eq!(
            params().to_text(),
            "a brown puppy\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: sd-turbo, Precision: fp32, Device: cpu"
        );
    }

    #[test]
    fn a_fast_decode_names_its_decoder_and_the_full_decode_drops_it() {
        let mut p = params();
        p.vae = Some("taesd".into());
        p.strength = Some(0.6);
        let text = p.to_text();
        assert!(
            text.ends_with(
                "Model: sd-turbo, Denoising strength: 0.6, Precision: fp32, Device: cpu, VAE: taesd"
            ),
            "{text}"
        );
        p.vae = None;
        assert_eq!(without_vae(&text), p.to_text());
        assert_eq!(without_vae(&p.to_text()), p.to_text());
    }

    #[test]
    fn png_files_carry_their_parameters() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        let text = params().to_text();
        let bytes = png_bytes(&img, &text).unwrap();
        assert_eq!(
            read_parameters(&bytes).unwrap().as_deref(),
            Some(text.as_str())
        );
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back, img);
    }

    /// The chunk types of a PNG, in order.
    fn chunk_types(bytes: &[u8]) -> Vec<String> {
        let mut types = Vec::new();
        let mut at = 8;
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            types.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
            at += 12 + len;
        }
        types
    }

    #[test]
    fn any_unicode_prompt_is_carried_in_an_itxt_chunk() {
        let img = RgbImage::from_pixel(2, 2, image::Rgb([9, 9, 9]));
        for prompt in [
            "un café — à Paris ☕ 東京 Москва",
            "“curly quotes”",
            "🐶🏖️",
            "naïve café",
        ] {
            let mut p = params();
            p.prompt = prompt.into();
            let text = p.to_text();
            let bytes = png_bytes(&img, &text).unwrap();
            assert_eq!(read_parameters(&bytes).unwrap().as_deref(), Some(&*text));
            let latin1 = prompt.chars().all(|c| (c as u32) <= 0xFF);
            let chunk = if latin1 { "tEXt" } else { "iTXt" };
            assert!(chunk_types(&bytes).contains(&chunk.to_string()), "{prompt}");
            assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), img);
        }
    }

    fn png_with_text(chunk: &impl png::text_metadata::EncodableTextChunk) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        writer.write_text_chunk(chunk).unwrap();
        writer.write_image_data(&[1, 2, 3]).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn parameters_are_read_from_compressed_chunks_too() {
        let ztxt = png_with_text(&png::text_metadata::ZTXtChunk::new("parameters", "a fox"));
        assert!(chunk_types(&ztxt).contains(&"zTXt".to_string()));
        assert_eq!(read_parameters(&ztxt).unwrap().as_deref(), Some("a fox"));
        let mut itxt = png::text_metadata::ITXtChunk::new("parameters", "a fox ❄");
        itxt.compressed = true;
        let itxt = png_with_text(&itxt);
        assert_eq!(read_parameters(&itxt).unwrap().as_deref(), Some("a fox ❄"));
        let other = png_with_text(&png::text_metadata::TEXtChunk::new("Comment", "hi"));
        assert_eq!(read_parameters(&other).unwrap(), None);
    }

    #[test]
    fn a_png_is_replaced_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.png");
        let img = RgbImage::from_pixel(2, 2, image::Rgb([1, 1, 1]));
        write_png(&path, &img, "first").unwrap();
        write_png(&path, &img, "second").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(read_parameters(&bytes).unwrap().as_deref(), Some("second"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let err = write_png(&dir.path().join("missing/0.png"), &img, "x").unwrap_err();
        assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
    }

    #[test]
    fn grid_places_images_row_major() {
        let imgs: Vec<RgbImage> = (0..4u8)
            .map(|k| RgbImage::from_pixel(2, 2, image::Rgb([k * 60, 0, 0])))
            .collect();
        let grid = grid_2x2(&imgs).unwrap();
        assert_eq!(grid.dimensions(), (4, 4));
        assert_eq!(grid.get_pixel(0, 0).0[0], 0);
        assert_eq!(grid.get_pixel(3, 0).0[0], 60);
        assert_eq!(grid.get_pixel(0, 3).0[0], 120);
        assert_eq!(grid.get_pixel(3, 3).0[0], 180);
        assert_eq!(grid_2x2(&imgs[..2]).unwrap().dimensions(), (4, 2));
    }
}
