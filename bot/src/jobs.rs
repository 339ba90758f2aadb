//! Turning what a user asked for (a prompt, or a button under an earlier job) into a stored
//! job request. Pure decisions, no I/O: sizes, steps, guidance, seeds, strengths.

use imagine_engine::ModelInfo;

use crate::buttons::ButtonAction;
use crate::params::{size_for_aspect, ParsedPrompt};
use crate::store::{ImageRecord, Job, JobKind, JobParams, NewJob, Parent};

/// Images in a grid job.
pub const GRID: u32 = 4;
/// img2img strength of V buttons, Vary (Subtle), Vary (Strong) and image prompts.
pub const VARIATION_STRENGTH: f32 = 0.6;
pub const SUBTLE_STRENGTH: f32 = 0.35;
pub const STRONG_STRENGTH: f32 = 0.75;
pub const IMAGE_PROMPT_STRENGTH: f32 = 0.75;
/// Zoom Out and Pan paint the new area from noise (the kept area is blended back each step,
/// then composited exactly): the pre-fill only seeds its colours.
pub const OUTPAINT_STRENGTH: f32 = 1.0;
/// Upscale (Subtle) repaints each enlarged tile a little, Upscale (Creative) more.
pub const UPSCALE_SUBTLE_STRENGTH: f32 = 0.25;
pub const UPSCALE_CREATIVE_STRENGTH: f32 = 0.45;

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
    if info.distilled {
        return 0.0;
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
    let default_steps = if info.distilled { 1 } else { 25 };
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
        | ButtonAction::UpscaleTiled { .. }
        | ButtonAction::ZoomOut { .. }
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
        ButtonAction::ZoomOut { .. } | ButtonAction::Pan(_) => Some(OUTPAINT_STRENGTH),
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
    match action {
        ButtonAction::ZoomOut { double } => {
            req.params.zoom = Some(if double { 2.0 } else { 1.5 });
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
        for child in [&u, &v, &r] {
            assert_eq!(
                child.params.precision.as_deref(),
                Some("fp16"),
                "a button reproduces its parent's precision"
            );
        }
    }
}
