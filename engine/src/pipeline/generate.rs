//! One generation: text to image, image to image, or inpainting, for several images at once.
//! Follows diffusers' Stable Diffusion pipelines step for step (classifier-free guidance as
//! one batch of [unconditional..., conditional...], init-noise scaling, img2img start index,
//! masked-latent blending), with all randomness from the request's seeds.

use std::ops::ControlFlow;

use candle_core::{DType, Tensor};
use image::{GrayImage, RgbImage};

use crate::error::{EngineError, Result};
use crate::model::{StableDiffusion, UNetKind};
use crate::noise::LatentNoise;
use crate::pixels::{
    image_to_tensor, latent_preview, mask_to_latent, mask_to_tensor, tensor_to_images,
};
use crate::schedulers::SchedulerKind;
use crate::taesd::Taesd;
use crate::time_embedding::guidance_scale_embedding;
use crate::unet::AddedConditioning;

/// Largest side accepted, in pixels: beyond this a CPU job would run for hours.
pub const MAX_SIDE: usize = 2048;
/// Most images in one call.
pub const MAX_IMAGES: usize = 16;

/// What to generate. Plain data: the same request gives the same pixels.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// Classifier-free guidance scale; at or below 1 the unconditional pass is skipped. An
    /// LCM-distilled UNet takes it as an embedding instead, in one pass, and ignores the
    /// negative prompt.
    pub guidance: f64,
    /// `None`: the model's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    /// One seed per image.
    pub seeds: Vec<u64>,
    pub init: Option<InitImage>,
    /// Replaces the seeded starting noise: `[N, C, H/8, W/8]`, unit variance.
    pub initial_noise: Option<Tensor>,
    /// Replaces the noise samplers add between steps (Euler-a, LCM): `[K, N, C, H/8, W/8]`,
    /// used in order, then the seeds take over. For comparing with a reference run.
    pub step_noise: Option<Tensor>,
    /// Decode the final images with the attached TAESD instead of the full VAE: a fraction of
    /// the cost, slightly softer images (grids). Needs [`StableDiffusion::with_tiny_decoder`].
    pub fast_decode: bool,
}

/// The starting image of image-to-image and inpainting.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// Must be exactly `width` x `height`.
    pub image: RgbImage,
    /// 0 keeps the image, 1 replaces it entirely.
    pub strength: f64,
    /// White repaints, black keeps; same size as `image`.
    pub mask: Option<GrayImage>,
}

/// What a step reports to the caller.
pub struct Progress<'a> {
    /// Steps done so far (1-based) and the number this job runs.
    pub step: usize,
    pub total: usize,
    denoised: &'a Tensor,
    tiny_decoder: Option<&'a Taesd>,
}

impl Progress<'_> {
    /// Previews of the current clean-image estimate, one per image: decoded by the model's
    /// TAESD when one is attached (full size, close to the final image), else the linear
    /// latent-to-RGB map (one pixel per latent cell, almost free). Computed on call only.
    pub fn previews(&self) -> Result<Vec<RgbImage>> {
        match self.tiny_decoder {
            Some(taesd) => taesd.decode_images(self.denoised),
            None => latent_preview(self.denoised),
        }
    }
}

/// The finished images and what the engine decided along the way.
#[derive(Debug, Clone)]
pub struct Generation {
    pub images: Vec<RgbImage>,
    /// The final latents `[N, C, H/8, W/8]` (UNet space, f32) the images were decoded from,
    /// to decode again later (e.g. with the full VAE after a fast decode).
    pub latents: Tensor,
    pub scheduler: SchedulerKind,
    /// CLIP tokens in the prompt; past the window it was split into `prompt_chunks` windows.
    pub prompt_tokens: usize,
    pub prompt_chunks: usize,
}

impl GenerateRequest {
    /// A text-to-image request with the common defaults.
    pub fn text(prompt: impl Into<String>, width: usize, height: usize, seeds: Vec<u64>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            width,
            height,
            steps: 20,
            guidance: 7.5,
            scheduler: None,
            seeds,
            init: None,
            initial_noise: None,
            step_noise: None,
            fast_decode: false,
        }
    }

    fn validate(&self, vae_scale: usize) -> Result<()> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 || w % vae_scale != 0 || h % vae_scale != 0 {
            return Err(EngineError::invalid(format!(
                "size {w}x{h}: width and height must be positive multiples of {vae_scale}"
            )));
        }
        if w > MAX_SIDE || h > MAX_SIDE {
            return Err(EngineError::invalid(format!(
                "size {w}x{h}: each side must be at most {MAX_SIDE} pixels"
            )));
        }
        if self.steps == 0 {
            return Err(EngineError::invalid("steps must be at least 1"));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 || self.guidance > 100.0 {
            return Err(EngineError::invalid("guidance must be between 0 and 100"));
        }
        if self.seeds.is_empty() || self.seeds.len() > MAX_IMAGES {
            return Err(EngineError::invalid(format!(
                "between 1 and {MAX_IMAGES} images (seeds) per call"
            )));
        }
        if let Some(init) = &self.init {
            if !(0.0..=1.0).contains(&init.strength) {
                return Err(EngineError::invalid(format!(
                    "strength {} is outside [0, 1]",
                    init.strength
                )));
            }
            if init.image.dimensions() != (w as u32, h as u32) {
                let (iw, ih) = init.image.dimensions();
                return Err(EngineError::invalid(format!(
                    "the init image is {iw}x{ih} but the request is {w}x{h}"
                )));
            }
            if let Some(mask) = &init.mask {
                if mask.dimensions() != init.image.dimensions() {
                    let (mw, mh) = mask.dimensions();
                    return Err(EngineError::invalid(format!(
                        "the mask is {mw}x{mh} but the image is {w}x{h}: they must be the same size"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Prepared conditioning for the UNet.
struct Conditioning {
    context: Tensor,
    /// SDXL: pooled text and sizes, batched like `context`.
    added: Option<AddedConditioning>,
    guided: bool,
    tokens: usize,
    chunks: usize,
}

/// Inpainting inputs at latent resolution.
struct MaskInputs {
    /// `[N, 1, h, w]`, 1 where the model repaints.
    mask: Tensor,
    /// Clean latents of the original image (blending) or of the masked image (9-channel UNet).
    latents: Tensor,
}

impl StableDiffusion {
    /// Runs one generation. `progress` is called after every step; returning
    /// `ControlFlow::Break` cancels the job between steps.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let info = self.info();
        req.validate(info.vae_scale)?;
        if req.fast_decode && self.tiny_decoder.is_none() {
            return Err(EngineError::invalid(
                "fast_decode needs a tiny decoder (TAESD) attached to the model",
            ));
        }
        let n = req.seeds.len();
        let (lh, lw) = (req.height / info.vae_scale, req.width / info.vae_scale);
        let kind = req.scheduler.unwrap_or(info.default_scheduler);
        let strength = req.init.as_ref().map_or(1.0, |init| init.strength);
        let mut sampler = kind.build_for_strength(&self.schedule, req.steps, strength)?;
        let cond = self.conditioning(req, n)?;
        let timestep_cond = self.guidance_embedding(req.guidance, n)?;

        let mut noise = LatentNoise::new(&req.seeds, (self.latent_channels, lh, lw), &self.device);
        let start_noise = match &req.initial_noise {
            Some(t) => {
                let want = [n, self.latent_channels, lh, lw];
                if t.dims() != want {
                    return Err(EngineError::invalid(format!(
                        "initial latents have shape {:?}, expected {want:?}",
                        t.dims()
                    )));
                }
                t.to_dtype(DType::F32)?.to_device(&self.device)?
            }
            None => noise.draw()?,
        };
        if let Some(draws) = &req.step_noise {
            noise.replay(draws)?;
        }

        // Where the schedule starts, and the latents it starts from.
        let (start, mut latents, mask) = match &req.init {
            None if info.unet_kind == UNetKind::Inpainting => {
                let blank =
                    RgbImage::from_pixel(req.width as u32, req.height as u32, image::Rgb([128; 3]));
                let full =
                    GrayImage::from_pixel(req.width as u32, req.height as u32, image::Luma([255]));
                let mask = self.mask_inputs(&blank, &full, n)?;
                (0, (&start_noise * sampler.init_noise_sigma())?, Some(mask))
            }
            None => (0, (&start_noise * sampler.init_noise_sigma())?, None),
            Some(init) => {
                let run = ((req.steps as f64 * init.strength) as usize).min(req.steps);
                if run == 0 {
                    return Err(EngineError::invalid(format!(
                        "strength {} with {} steps runs no denoising step: raise the strength or the steps",
                        init.strength, req.steps
                    )));
                }
                let start = req.steps - run;
                let image_latents = self.encode_image(&init.image)?.repeat((n, 1, 1, 1))?;
                let latents = if info.unet_kind == UNetKind::Inpainting && init.strength >= 1.0 {
                    (&start_noise * sampler.init_noise_sigma())?
                } else {
                    sampler.add_noise(&image_latents, &start_noise, start)?
                };
                let mask = match (&init.mask, info.unet_kind) {
                    (None, _) => None,
                    (Some(m), UNetKind::Inpainting) => Some(self.mask_inputs(&init.image, m, n)?),
                    (Some(m), UNetKind::Standard) => Some(MaskInputs {
                        mask: mask_to_latent(&mask_to_tensor(m, &self.device)?, info.vae_scale)?
                            .repeat((n, 1, 1, 1))?,
                        latents: image_latents,
                    }),
                };
                (start, latents, mask)
            }
        };

        let timesteps = sampler.timesteps().to_vec();
        for (i, t) in timesteps.iter().enumerate().skip(start) {
            let mut input = sampler.scale_model_input(&latents, i)?;
            if let (UNetKind::Inpainting, Some(m)) = (info.unet_kind, &mask) {
                input = Tensor::cat(&[&input, &m.mask, &m.latents], 1)?;
            }
            if cond.guided {
                input = Tensor::cat(&[&input, &input], 0)?;
            }
            let out = self
                .unet
                .forward_conditioned(
                    &input.to_dtype(self.dtype)?,
                    *t,
                    &cond.context,
                    cond.added.as_ref(),
                    timestep_cond.as_ref(),
                )?
                .to_dtype(DType::F32)?;
            let out = if cond.guided {
                let uncond = out.narrow(0, 0, n)?;
                let text = out.narrow(0, n, n)?;
                (&uncond + ((text - &uncond)? * req.guidance)?)?
            } else {
                out
            };
            let step = sampler.step(&out, i, &latents, &mut noise)?;
            latents = step.prev_sample;
            if let (UNetKind::Standard, Some(m)) = (info.unet_kind, &mask) {
                // Keep the unmasked area on the original image, noised to the next level.
                let keep = if i + 1 < timesteps.len() {
                    sampler.add_noise(&m.latents, &start_noise, i + 1)?
                } else {
                    m.latents.clone()
                };
                let inverse = (1.0 - &m.mask)?;
                latents = (keep.broadcast_mul(&inverse)? + latents.broadcast_mul(&m.mask)?)?;
            }
            let report = Progress {
                step: i + 1 - start,
                total: timesteps.len() - start,
                denoised: &step.denoised,
                tiny_decoder: self.tiny_decoder.as_ref(),
            };
            if progress(&report).is_break() {
                return Err(EngineError::Cancelled);
            }
        }

        let images = self.decode_images(&latents, req.fast_decode)?;
        Ok(Generation {
            images,
            latents,
            scheduler: kind,
            prompt_tokens: cond.tokens,
            prompt_chunks: cond.chunks,
        })
    }

    /// UNet-space latents `[N, C, h, w]` to images, one at a time: with the full VAE, or with
    /// the attached TAESD when `fast` (an error without one).
    pub fn decode_images(&self, latents: &Tensor, fast: bool) -> Result<Vec<RgbImage>> {
        if fast {
            let taesd = self.tiny_decoder.as_ref().ok_or_else(|| {
                EngineError::invalid("a fast decode needs a tiny decoder (TAESD) attached")
            })?;
            return taesd.decode_images(latents);
        }
        let n = latents.dim(0)?;
        let mut images = Vec::with_capacity(n);
        for i in 0..n {
            let one = latents.narrow(0, i, 1)?;
            images.extend(tensor_to_images(&self.vae_decode(&one)?)?);
        }
        Ok(images)
    }

    /// Text embeddings for the batch: `[2N, S, D]` with guidance, else `[N, S, D]`.
    fn conditioning(&self, req: &GenerateRequest, n: usize) -> Result<Conditioning> {
        if self.text_encoder_2.is_some() {
            return self.conditioning_xl(req, n);
        }
        let guided = self.classifier_free_guidance(req.guidance);
        let mut prompt = self.tokenizer.encode(&req.prompt, 1)?;
        let mut context = None;
        if guided {
            let negative = self
                .tokenizer
                .encode(&req.negative_prompt, prompt.chunks.len())?;
            if negative.chunks.len() > prompt.chunks.len() {
                prompt = self.tokenizer.encode(&req.prompt, negative.chunks.len())?;
            }
            context = Some(self.embed(&negative.chunks)?);
        }
        let cond = self.embed(&prompt.chunks)?;
        let context = match context {
            Some(uncond) => Tensor::cat(&[uncond.repeat((n, 1, 1))?, cond.repeat((n, 1, 1))?], 0)?,
            None => cond.repeat((n, 1, 1))?,
        };
        Ok(Conditioning {
            context,
            added: None,
            guided,
            tokens: prompt.token_count,
            chunks: prompt.chunks.len(),
        })
    }

    /// The conditioning of one unguided image of `width` x `height` (benchmarks and tools
    /// that call [`StableDiffusion::unet_forward_added`] themselves): the context `[1, S, D]`
    /// and, for SDXL, the pooled text and sizes.
    pub fn text_conditioning(
        &self,
        prompt: &str,
        width: usize,
        height: usize,
    ) -> Result<(Tensor, Option<AddedConditioning>)> {
        let mut req = GenerateRequest::text(prompt, width, height, vec![0]);
        req.guidance = 0.0;
        let cond = self.conditioning(&req, 1)?;
        Ok((cond.context, cond.added))
    }

    /// SDXL's conditioning, as `StableDiffusionXLPipeline` builds it: both encoders'
    /// penultimate states side by side, the second's pooled output, and the six size numbers
    /// (original = target = the request's size, crop at 0,0). An empty negative prompt is
    /// zeros where the pipeline forces zeros for it.
    fn conditioning_xl(&self, req: &GenerateRequest, n: usize) -> Result<Conditioning> {
        let guided = self.classifier_free_guidance(req.guidance);
        let zero_negative = self.info().zeros_for_empty_negative && req.negative_prompt.is_empty();
        let mut windows = 1;
        if guided && !zero_negative {
            windows = self.tokenizer.encode(&req.negative_prompt, 1)?.chunks.len();
        }
        let prompt = self.tokenizer.encode(&req.prompt, windows)?;
        let windows = prompt.chunks.len();
        let (cond, cond_pooled) = self.embed_xl(&req.prompt, windows)?;
        let h = req.height as f32;
        let w = req.width as f32;
        let ids = Tensor::new(&[[h, w, 0.0, 0.0, h, w]], &self.device)?;
        let (context, pooled) = if guided {
            let (uncond, uncond_pooled) = if zero_negative {
                (cond.zeros_like()?, cond_pooled.zeros_like()?)
            } else {
                self.embed_xl(&req.negative_prompt, windows)?
            };
            (
                Tensor::cat(&[uncond.repeat((n, 1, 1))?, cond.repeat((n, 1, 1))?], 0)?,
                Tensor::cat(
                    &[uncond_pooled.repeat((n, 1))?, cond_pooled.repeat((n, 1))?],
                    0,
                )?,
            )
        } else {
            (cond.repeat((n, 1, 1))?, cond_pooled.repeat((n, 1))?)
        };
        let batch = context.dim(0)?;
        Ok(Conditioning {
            context,
            added: Some(AddedConditioning {
                text_embeds: pooled,
                time_ids: ids.repeat((batch, 1))?,
            }),
            guided,
            tokens: prompt.token_count,
            chunks: windows,
        })
    }

    /// SDXL: `text` through both tokenizers and encoders in `windows` windows (at least),
    /// joined along the sequence `[1, k*77, D1 + D2]`, and the first window's pooled output
    /// `[1, P]` (as the web UIs pool long prompts).
    fn embed_xl(&self, text: &str, windows: usize) -> Result<(Tensor, Tensor)> {
        let second = self
            .text_encoder_2
            .as_ref()
            .expect("embed_xl is called for SDXL models only");
        let first = self.tokenizer.encode(text, windows)?;
        let other = second.tokenizer.encode(text, first.chunks.len())?;
        if other.chunks.len() != first.chunks.len() {
            return Err(EngineError::invalid(
                "the two tokenizers split this prompt differently; shorten it",
            ));
        }
        let encoded = self.encode_tokens_xl(&first.chunks, &other.chunks)?;
        let (k, s, d) = encoded.hidden.dims3()?;
        let pooled = encoded
            .pooled
            .expect("the second encoder pools")
            .narrow(0, 0, 1)?;
        Ok((encoded.hidden.reshape((1, k * s, d))?, pooled))
    }

    /// Whether `guidance` runs a second, unconditional batch: above 1, unless the UNet takes
    /// the scale as an embedding (LCM-distilled), as diffusers' pipelines decide.
    fn classifier_free_guidance(&self, guidance: f64) -> bool {
        guidance > 1.0 && self.unet.time_cond_proj_dim().is_none()
    }

    /// The guidance embedding an LCM-distilled UNet takes, `[N, time_cond_proj_dim]`, for
    /// `w = guidance - 1` as diffusers' pipelines pass it; `None` for other UNets.
    fn guidance_embedding(&self, guidance: f64, n: usize) -> Result<Option<Tensor>> {
        let Some(dim) = self.unet.time_cond_proj_dim() else {
            return Ok(None);
        };
        let w = guidance_scale_embedding(guidance - 1.0, dim, n, &self.device)?;
        Ok(Some(w.to_dtype(self.dtype)?))
    }

    /// Encodes token windows and joins them along the sequence: `[1, k*77, D]`.
    fn embed(&self, chunks: &[Vec<u32>]) -> Result<Tensor> {
        let hidden = self.encode_tokens(chunks)?;
        let (k, s, d) = hidden.dims3()?;
        Ok(hidden.reshape((1, k * s, d))?)
    }

    fn encode_image(&self, image: &RgbImage) -> Result<Tensor> {
        let pixels = image_to_tensor(image, &self.device)?;
        Ok(self.vae_encode(&pixels)?.to_dtype(DType::F32)?)
    }

    /// Inputs of a 9-channel inpainting UNet: latent-size mask and masked-image latents.
    fn mask_inputs(&self, image: &RgbImage, mask: &GrayImage, n: usize) -> Result<MaskInputs> {
        let full = mask_to_tensor(mask, &self.device)?;
        let keep = (1.0 - &full)?;
        let masked = image_to_tensor(image, &self.device)?.broadcast_mul(&keep)?;
        let latents = self
            .vae_encode(&masked)?
            .to_dtype(DType::F32)?
            .repeat((n, 1, 1, 1))?;
        let mask = mask_to_latent(&full, self.info().vae_scale)?.repeat((n, 1, 1, 1))?;
        Ok(MaskInputs { mask, latents })
    }
}
