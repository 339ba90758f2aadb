//! Turning what a user asked for (a prompt, or a button under an earlier job) into a stored
//! job request. Pure decisions, no I/O: sizes, steps, guidance, seeds, strengths.

use imagine_engine::ModelInfo;

use crate::buttons::ButtonAction;
use crate::custom_zoom::ZoomText;
use crate::params::{parse_prompt, size_for_aspect, ParsedPrompt};
use crate::region::Region;
use crate::store::{ImageRecord, Job, JobKind, JobParams, NewJob, Parent};

/// Images in a grid job.
pub const GRID: u32 = 4;
/// img2img strength of V buttons, Vary (Subtle), Vary (Strong) and image prompts.
pub const VARIATION_STRENGTH: f32 = 0.6;
pub const SUBTLE_STRENGTH: f32 = 0.35;
pub const STRONG_STRENGTH: f32 = 0.75;
pub const IMAGE_PROMPT_STRENGTH: f32 = 0.75;
/// V1-V4 in Low Variation Mode (`/settings`): as close as Vary (Subtle).
pub const LOW_VARIATION_STRENGTH: f32 = 0.35;
/// Zoom Out and Pan paint the new area from noise (the kept area is blended back each step,
/// then composited exactly): the pre-fill only seeds its colours.
pub const OUTPAINT_STRENGTH: f32 = 1.0;
/// Upscale (Subtle) repaints each enlarged tile a little, Upscale (Creative) more.
pub const UPSCALE_SUBTLE_STRENGTH: f32 = 0.25;
pub const UPSCALE_CREATIVE_STRENGTH: f32 = 0.45;
/// Vary (Region) repaints its region almost from scratch (the kept area is blended back each
/// step, then composited exactly); a little of the old picture keeps its colours in place.
pub const REGION_STRENGTH: f32 = 0.9;

/// Who asked, and where the answer goes.
#[derive(Debug, Clone)]
pub struct Requester {
    pub user_id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    pub is_dm: bool,
    pub interaction_token: Option<String>,
    pub application_id: Option<u64>,
    /// Whether the bot itself can post where the request was made (see
    /// [`NewJob::bot_in_place`]).
    pub bot_in_place: bool,
}

/// `--stylize` (0–1000, default 100) to classifier-free guidance: 100 gives the usual 7.5,
/// 0 turns guidance off. Distilled (turbo) models are made for no guidance at all.
pub fn guidance_for(stylize: Option<u32>, info: &ModelInfo) -> f32 {
    // Models made for little or no guidance (Turbo: 0, LCM-LoRA-style: 1) keep their own.
    if info.default_guidance <= 1.0 {
        return info.default_guidance as f32;
    }
    1.0 + stylize.unwrap_or(100) as f32 * 0.065
}

/// Image to image runs `floor(steps * strength)` steps: make sure that is at least one.
pub fn steps_for_strength(steps: u32, strength: f32) -> u32 {
    steps.max((1.0 / strength).ceil() as u32)
}

/// Four consecutive seeds from `base`, as `--seed` promises.
pub fn grid_seeds(base: u32) -> Vec<u32> {
    (0..GRID).map(|i| base.wrapping_add(i)).collect()
}

/// A new `/imagine` (or DM prompt) job.
pub fn imagine_job(
    parsed: &ParsedPrompt,
    model: &str,
    info: &ModelInfo,
    who: Requester,
    init_image: Option<String>,
    random_seed: u32,
) -> NewJob {
    let (width, height) = size_for_aspect(parsed.aspect, info.native_size as u32);
    let default_steps = info.default_steps as u32;
    let mut steps = parsed.steps.unwrap_or(default_steps);
    let strength = init_image.as_ref().map(|_| IMAGE_PROMPT_STRENGTH);
    if let Some(s) = strength {
        steps = steps_for_strength(steps, s);
    }
    NewJob {
        user_id: who.user_id,
        channel_id: who.channel_id,
        guild_id: who.guild_id,
        is_dm: who.is_dm,
        interaction_token: who.interaction_token,
        application_id: who.application_id,
        bot_in_place: who.bot_in_place,
        kind: JobKind::Imagine,
        parent: None,
        prompt: parsed.prompt.clone(),
        negative_prompt: parsed.negative.clone(),
        params: JobParams {
            width,
            height,
            steps,
            guidance: guidance_for(parsed.stylize, info),
            scheduler: String::new(),
            aspect: parsed.aspect,
            chaos: parsed.chaos,
            stylize: parsed.stylize,
            strength,
            init_image,
            precision: None,
            zoom: None,
            pan: None,
            region: None,
            region_mask: None,
        },
        model: model.to_string(),
        seeds: grid_seeds(parsed.seed.unwrap_or(random_seed)),
    }
}

/// The job a button under `parent` starts, for `who` (anyone who can see the message).
pub fn button_job(
    action: ButtonAction,
    parent: &Job,
    parent_images: &[ImageRecord],
    who: Requester,
    random_seed: u32,
    max_side: u32,
) -> Result<NewJob, String> {
    let mut req = parent.request.clone();
    let index = match action {
        ButtonAction::Upscale(i) | ButtonAction::Variation(i) => Some(i),
        ButtonAction::VarySubtle
        | ButtonAction::VaryStrong
        | ButtonAction::VaryRegion
        | ButtonAction::RegionPick
        | ButtonAction::UpscaleTiled { .. }
        | ButtonAction::ZoomOut { .. }
        | ButtonAction::CustomZoom
        | ButtonAction::CustomZoomForm
        | ButtonAction::Pan(_) => Some(0),
        ButtonAction::Reroll | ButtonAction::Cancel => None,
    };
    let source = match index {
        Some(i) => Some(
            parent_images
                .iter()
                .find(|r| r.idx == i)
                .ok_or("That image is no longer available.")?,
        ),
        None => None,
    };
    req.user_id = who.user_id;
    req.channel_id = who.channel_id;
    req.guild_id = who.guild_id;
    req.is_dm = who.is_dm;
    req.interaction_token = who.interaction_token;
    req.application_id = who.application_id;
    req.bot_in_place = who.bot_in_place;
    req.kind = action.job_kind().ok_or("That button starts no job.")?;
    req.parent = Some(Parent {
        job: parent.id,
        index,
    });
    // Steps as the user asked, before any raise for a previous strength.
    let strength = match action {
        ButtonAction::Upscale(_) | ButtonAction::Cancel => None,
        ButtonAction::Variation(_) => Some(VARIATION_STRENGTH),
        ButtonAction::VarySubtle => Some(SUBTLE_STRENGTH),
        ButtonAction::VaryStrong => Some(STRONG_STRENGTH),
        ButtonAction::VaryRegion | ButtonAction::RegionPick => Some(REGION_STRENGTH),
        ButtonAction::ZoomOut { .. }
        | ButtonAction::CustomZoom
        | ButtonAction::CustomZoomForm
        | ButtonAction::Pan(_) => Some(OUTPAINT_STRENGTH),
        ButtonAction::UpscaleTiled { creative: false } => Some(UPSCALE_SUBTLE_STRENGTH),
        ButtonAction::UpscaleTiled { creative: true } => Some(UPSCALE_CREATIVE_STRENGTH),
        ButtonAction::Reroll => req.params.strength,
    };
    if let Some(s) = strength {
        req.params.steps = steps_for_strength(req.params.steps, s);
    }
    req.params.strength = strength;
    // What the parent computed in, so that the button reproduces its image.
    if let Some(compute) = &parent.compute {
        req.params.precision = Some(compute.precision.clone());
    }
    if let Some(src) = source {
        req.params.init_image = Some(src.path.to_string_lossy().into_owned());
        req.params.width = src.width;
        req.params.height = src.height;
    }
    req.params.zoom = None;
    req.params.pan = None;
    // The caller names the region (menu or painted mask) of a Vary (Region) job.
    req.params.region = None;
    req.params.region_mask = None;
    match action {
        ButtonAction::ZoomOut { double } => {
            req.params.zoom = Some(if double { 2.0 } else { 1.5 });
        }
        // The factor (and maybe the size) come from the modal: see `custom_zoom_job`.
        ButtonAction::CustomZoom | ButtonAction::CustomZoomForm => {
            req.params.zoom = Some(crate::custom_zoom::DEFAULT_ZOOM);
        }
        ButtonAction::UpscaleTiled { .. } => {
            let (w, h) = (req.params.width * 2, req.params.height * 2);
            if w.max(h) > max_side {
                return Err(
                    "This image is as large as this bot makes them: it cannot be upscaled further."
                        .into(),
                );
            }
            (req.params.width, req.params.height) = (w, h);
        }
        ButtonAction::Pan(direction) => {
            let size = (req.params.width, req.params.height);
            let too_large =
                "This image is as large as this bot makes them: it cannot be panned further.";
            let (w, h) = imagine_engine::outpaint::pan_size(size, direction)
                .ok()
                .filter(|(w, h)| *w.max(h) <= max_side)
                .ok_or(too_large)?;
            req.params.pan = Some(direction.name().to_string());
            (req.params.width, req.params.height) = (w, h);
        }
        _ => {}
    }
    req.seeds = match action {
        ButtonAction::Upscale(_) => vec![source.map_or(0, |s| s.seed)],
        ButtonAction::UpscaleTiled { .. } => vec![random_seed],
        _ => grid_seeds(random_seed),
    };
    Ok(req)
}

/// A V1-V4 job made in Low Variation Mode: closer to its image.
pub fn with_low_variation(mut job: NewJob) -> NewJob {
    if job.kind == JobKind::Variation {
        job.params.strength = Some(LOW_VARIATION_STRENGTH);
        job.params.steps = steps_for_strength(job.params.steps, LOW_VARIATION_STRENGTH);
    }
    job
}

/// Where a Vary (Region) job repaints: areas picked in the menu, or a mask painted by the
/// user (saved in the data dir; white repaints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionSource {
    Picked(Region),
    Painted(String),
}

/// The Vary (Region) job on `parent`'s image: four repaintings of `region`, the rest kept.
pub fn region_job(
    parent: &Job,
    parent_images: &[ImageRecord],
    who: Requester,
    random_seed: u32,
    max_side: u32,
    region: RegionSource,
) -> Result<NewJob, String> {
    let action = ButtonAction::VaryRegion;
    let mut job = button_job(action, parent, parent_images, who, random_seed, max_side)?;
    match region {
        RegionSource::Picked(areas) => job.params.region = Some(areas.encode()),
        RegionSource::Painted(path) => job.params.region_mask = Some(path),
    }
    Ok(job)
}

/// The Custom Zoom job: Zoom Out of `parent`'s image with what the modal said: its prompt,
/// `--no`, `--zoom` factor, and `--ar` (a new shape, of about the image's area), `--seed`,
/// `--steps`, `--stylize`, `--chaos`. The model stays the image's.
pub fn custom_zoom_job(
    parent: &Job,
    parent_images: &[ImageRecord],
    who: Requester,
    random_seed: u32,
    max_side: u32,
    info: &ModelInfo,
    text: &ZoomText,
) -> Result<NewJob, String> {
    let parsed = parse_prompt(&text.prompt).map_err(|e| e.to_string())?;
    if parsed
        .model
        .as_ref()
        .is_some_and(|m| *m != parent.request.model)
    {
        return Err("Custom Zoom keeps the image's model: take `--model` out.".into());
    }
    let action = ButtonAction::CustomZoomForm;
    let mut job = button_job(action, parent, parent_images, who, random_seed, max_side)?;
    job.prompt = parsed.prompt;
    job.negative_prompt = parsed.negative;
    job.params.zoom = Some(text.factor);
    if parsed.aspect != job.params.aspect {
        let (w, h) = (job.params.width, job.params.height);
        let side = (f64::from(w) * f64::from(h)).sqrt().round() as u32;
        let size = size_for_aspect(parsed.aspect, side);
        if size.0.max(size.1) > max_side {
            return Err(format!(
                "At --ar {}:{} the canvas would be {}x{}, over this bot's limit of {max_side} px.",
                parsed.aspect.w, parsed.aspect.h, size.0, size.1
            ));
        }
        (job.params.width, job.params.height) = size;
        job.params.aspect = parsed.aspect;
    }
    if let Some(steps) = parsed.steps {
        job.params.steps = steps_for_strength(steps, OUTPAINT_STRENGTH);
    }
    if parsed.stylize.is_some() {
        job.params.stylize = parsed.stylize;
        job.params.guidance = guidance_for(parsed.stylize, info);
    }
    if parsed.chaos > 0 {
        job.params.chaos = parsed.chaos;
    }
    if let Some(seed) = parsed.seed {
        job.seeds = grid_seeds(seed);
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::parse_prompt;
    use crate::store::{JobId, JobStatus};
    use imagine_engine::{ModelFamily, SchedulerKind, UNetKind};

    fn info(distilled: bool) -> ModelInfo {
        ModelInfo {
            dir: "m".into(),
            name: "m".into(),
            family: ModelFamily::Sd1,
            unet_kind: UNetKind::Standard,
            vae_scale: 8,
            latent_channels: 4,
            native_size: 512,
            default_scheduler: SchedulerKind::Euler,
            scheduler_fallback: false,
            distilled,
            zeros_for_empty_negative: false,
            default_steps: if distilled { 1 } else { 25 },
            default_guidance: if distilled { 0.0 } else { 7.5 },
        }
    }

    fn who() -> Requester {
        Requester {
            user_id: 1,
            channel_id: 2,
            guild_id: Some(3),
            is_dm: false,
            interaction_token: Some("t".into()),
            application_id: Some(4),
            bot_in_place: true,
        }
    }

    #[test]
    fn a_prompt_becomes_a_four_image_job_with_its_parameters() {
        let p = parse_prompt("a cat --ar 3:2 --seed 10 --no dogs --stylize 0").unwrap();
        let job = imagine_job(&p, "sd15", &info(false), who(), None, 999);
        assert_eq!(job.seeds, vec![10, 11, 12, 13]);
        assert_eq!(job.negative_prompt, "dogs");
        assert_eq!(job.params.guidance, 1.0);
        assert_eq!(job.params.steps, 25);
        assert!(job.params.width > job.params.height);
        assert_eq!(job.params.width % 64, 0);
    }

    #[test]
    fn turbo_models_take_one_step_without_guidance() {
        let p = parse_prompt("a cat --stylize 500").unwrap();
        let job = imagine_job(&p, "sd-turbo", &info(true), who(), None, 5);
        assert_eq!((job.params.steps, job.params.guidance), (1, 0.0));
        assert_eq!(job.seeds, vec![5, 6, 7, 8]);
    }

    #[test]
    fn image_to_image_always_runs_at_least_one_step() {
        assert_eq!(steps_for_strength(1, 0.35), 3);
        assert_eq!(steps_for_strength(25, 0.6), 25);
        let p = parse_prompt("a cat").unwrap();
        let job = imagine_job(&p, "t", &info(true), who(), Some("in.png".into()), 5);
        assert_eq!(job.params.steps, 2);
    }

    #[test]
    fn buttons_start_jobs_from_the_chosen_image() {
        let p = parse_prompt("a cat").unwrap();
        let parent = Job {
            id: JobId(9),
            request: imagine_job(&p, "m", &info(false), who(), None, 100),
            message_id: None,
            status: JobStatus::Done,
            error: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            delivery: Default::default(),
            compute: Some(crate::store::Compute {
                precision: "fp16".into(),
                device: "cuda:1".into(),
            }),
        };
        let images: Vec<ImageRecord> = (0..4)
            .map(|i| ImageRecord {
                idx: i,
                seed: 100 + i as u32,
                path: format!("/d/{i}.png").into(),
                sha256: String::new(),
                width: 512,
                height: 512,
            })
            .collect();
        let mut other = who();
        other.user_id = 77;
        let u = button_job(
            ButtonAction::Upscale(2),
            &parent,
            &images,
            other.clone(),
            5,
            2048,
        )
        .unwrap();
        assert_eq!(u.seeds, vec![102]);
        assert_eq!(u.user_id, 77, "the new job belongs to whoever pressed");
        assert_eq!(u.params.init_image.as_deref(), Some("/d/2.png"));
        let v = button_job(
            ButtonAction::Variation(1),
            &parent,
            &images,
            other.clone(),
            5,
            2048,
        )
        .unwrap();
        assert_eq!(
            (v.params.strength, v.seeds[0]),
            (Some(VARIATION_STRENGTH), 5)
        );
        assert_eq!(
            v.parent,
            Some(Parent {
                job: JobId(9),
                index: Some(1)
            })
        );
        let r = button_job(ButtonAction::Reroll, &parent, &images, other, 50, 2048).unwrap();
        assert_eq!((r.params.init_image.clone(), r.seeds[0]), (None, 50));
        let pan = button_job(
            ButtonAction::Pan(imagine_engine::outpaint::Direction::Up),
            &parent,
            &images,
            who(),
            8,
            2048,
        )
        .unwrap();
        assert_eq!(
            (
                pan.params.width,
                pan.params.height,
                pan.params.pan.as_deref()
            ),
            (512, 768, Some("up"))
        );
        assert_eq!(
            (pan.params.strength, pan.seeds.len()),
            (Some(OUTPAINT_STRENGTH), 4)
        );
        let zoom = button_job(
            ButtonAction::ZoomOut { double: false },
            &parent,
            &images,
            who(),
            8,
            2048,
        )
        .unwrap();
        assert_eq!((zoom.params.width, zoom.params.zoom), (512, Some(1.5)));
        // Past the size limit a pan is refused with a sentence, not a job.
        let mut huge = images.clone();
        huge[0].width = 1536;
        let right = ButtonAction::Pan(imagine_engine::outpaint::Direction::Right);
        let e = button_job(right, &parent, &huge, who(), 8, 2048).unwrap_err();
        assert!(e.contains("cannot be panned further"), "{e}");
        // The host's own limit (max_image_side) holds too.
        let up = ButtonAction::UpscaleTiled { creative: false };
        let e = button_job(up, &parent, &images, who(), 8, 768).unwrap_err();
        assert!(e.contains("cannot be upscaled further"), "{e}");
        assert!(button_job(right, &parent, &images, who(), 8, 700).is_err());
        let ok = button_job(up, &parent, &images, who(), 8, 1024).unwrap();
        assert_eq!(
            (ok.params.width, ok.params.height, ok.seeds.len()),
            (1024, 1024, 1)
        );
        let picked = Region::from_values(&["c4".to_string(), "hl".to_string()]).unwrap();
        let region = region_job(
            &parent,
            &images,
            who(),
            30,
            2048,
            RegionSource::Picked(picked),
        )
        .unwrap();
        assert_eq!(region.kind, JobKind::VaryRegion);
        assert_eq!(region.params.region.as_deref(), Some("c4,hl"));
        assert_eq!(region.params.init_image.as_deref(), Some("/d/0.png"));
        assert_eq!(region.params.strength, Some(REGION_STRENGTH));
        assert_eq!(region.seeds, vec![30, 31, 32, 33]);
        let painted = RegionSource::Painted("/d/mask.png".into());
        let region = region_job(&parent, &images, who(), 30, 2048, painted).unwrap();
        assert_eq!(
            (region.params.region, region.params.region_mask.as_deref()),
            (None, Some("/d/mask.png"))
        );
        let text = crate::custom_zoom::split_zoom("a dog --zoom 1.25 --ar 2:1 --seed 7").unwrap();
        let zoom = custom_zoom_job(&parent, &images, who(), 1, 2048, &info(false), &text).unwrap();
        assert_eq!(zoom.kind, JobKind::ZoomOut);
        assert_eq!(
            (zoom.prompt.as_str(), zoom.params.zoom),
            ("a dog", Some(1.25))
        );
        assert_eq!((zoom.params.width, zoom.params.height), (768, 384));
        assert_eq!(zoom.seeds, vec![7, 8, 9, 10]);
        let same = crate::custom_zoom::split_zoom("a cat --zoom 1").unwrap();
        let kept = custom_zoom_job(&parent, &images, who(), 1, 2048, &info(false), &same).unwrap();
        assert_eq!((kept.params.width, kept.params.height), (512, 512));
        let other_model = crate::custom_zoom::split_zoom("a cat --model x --zoom 2").unwrap();
        let e = custom_zoom_job(&parent, &images, who(), 1, 2048, &info(false), &other_model);
        assert!(e.unwrap_err().contains("--model"));
        for child in [&u, &v, &r] {
            assert_eq!(
                child.params.precision.as_deref(),
                Some("fp16"),
                "a button reproduces its parent's precision"
            );
        }
    }
}
