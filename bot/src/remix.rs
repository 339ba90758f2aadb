//! Remix mode: with it on (a per-user setting), V1-V4, Vary, Zoom Out, Pan and Vary (Region)
//! first open a modal with the prompt and its parameters; the job then uses what was
//! submitted. The modal's custom_id carries what the button (or region menu) asked for, in the
//! same `im1:` scheme: `im1:rm:<the button's id without im1:>`, plus `:<areas>` for a region,
//! so a modal opened before a restart still works after it.

use imagine_engine::ModelInfo;

use crate::buttons::{ButtonAction, ButtonId, MAX_CUSTOM_ID_LEN};
use crate::jobs::{grid_seeds, guidance_for, steps_for_strength};
use crate::params::{parse_prompt, Aspect};
use crate::region::Region;
use crate::store::NewJob;

const FORM_PREFIX: &str = "im1:rm:";

/// Whether Remix mode puts a modal before this button.
pub fn remixable(action: ButtonAction) -> bool {
    matches!(
        action,
        ButtonAction::Variation(_)
            | ButtonAction::VarySubtle
            | ButtonAction::VaryStrong
            | ButtonAction::ZoomOut { .. }
            | ButtonAction::Pan(_)
            | ButtonAction::RegionPick
    )
}

/// The Remix modal's custom_id for `button` (and the areas picked, for the region menu).
pub fn form_id(button: ButtonId, region: Option<&Region>) -> String {
    let encoded = button.encode();
    let rest = encoded.strip_prefix("im1:").unwrap_or(&encoded);
    let id = match region {
        Some(region) => format!("{FORM_PREFIX}{rest}:{}", region.encode()),
        None => format!("{FORM_PREFIX}{rest}"),
    };
    debug_assert!(id.len() <= MAX_CUSTOM_ID_LEN, "{id}");
    id
}

/// Reads [`form_id`] back. Strict: only what it writes, for remixable actions.
pub fn parse_form_id(id: &str) -> Option<(ButtonId, Option<Region>)> {
    if id.len() > MAX_CUSTOM_ID_LEN {
        return None;
    }
    let rest = id.strip_prefix(FORM_PREFIX)?;
    let (button, region) = if rest.starts_with("vrp:") {
        let (button, areas) = rest.rsplit_once(':')?;
        (button, Some(Region::parse(areas)?))
    } else {
        (rest, None)
    };
    let button = ButtonId::parse(&format!("im1:{button}"))?;
    let region_ok = region.is_some() == (button.action == ButtonAction::RegionPick);
    (remixable(button.action) && region_ok).then_some((button, region))
}

/// What the modal starts with: the prompt and the parameters Remix lets one change.
pub fn prefill(
    prompt: &str,
    negative: &str,
    aspect: Aspect,
    stylize: Option<u32>,
    chaos: u32,
) -> String {
    let mut text = prompt.to_string();
    if !negative.is_empty() {
        text.push_str(&format!(" --no {negative}"));
    }
    text.push_str(&format!(" --ar {}:{}", aspect.w, aspect.h));
    if let Some(s) = stylize {
        text.push_str(&format!(" --stylize {s}"));
    }
    if chaos > 0 {
        text.push_str(&format!(" --chaos {chaos}"));
    }
    text
}

/// Applies the submitted `text` to the job the button would have started: its prompt,
/// `--no`, `--stylize`, `--chaos`, `--steps` and `--seed`. The shape and the model stay the
/// image's (Custom Zoom changes the shape); asking otherwise is refused.
pub fn apply(job: &mut NewJob, text: &str, info: &ModelInfo) -> Result<(), String> {
    let parsed = parse_prompt(text).map_err(|e| e.to_string())?;
    if parsed.model.as_ref().is_some_and(|m| *m != job.model) {
        return Err("Remix keeps the image's model: take `--model` out.".into());
    }
    if parsed.aspect != job.params.aspect {
        let Aspect { w, h } = job.params.aspect;
        return Err(format!(
            "Remix keeps the image's shape (--ar {w}:{h}); use Custom Zoom to change it."
        ));
    }
    job.prompt = parsed.prompt;
    job.negative_prompt = parsed.negative;
    if parsed.stylize.is_some() {
        job.params.stylize = parsed.stylize;
        job.params.guidance = guidance_for(parsed.stylize, info);
    }
    job.params.chaos = parsed.chaos;
    if let Some(steps) = parsed.steps {
        job.params.steps = match job.params.strength {
            Some(s) => steps_for_strength(steps, s),
            None => steps,
        };
    }
    if let Some(seed) = parsed.seed {
        job.seeds = grid_seeds(seed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobId;
    use imagine_engine::outpaint::Direction;

    #[test]
    fn form_ids_round_trip_and_stay_within_discords_limit() {
        let region = Region::from_values(&["c0".into(), "hb".into()]).unwrap();
        let cases = [
            (ButtonId::new(ButtonAction::Variation(2), JobId(12)), None),
            (
                ButtonId::new(ButtonAction::Pan(Direction::Up), JobId(i64::MAX)),
                None,
            ),
            (
                ButtonId::new(ButtonAction::RegionPick, JobId(5)),
                Some(region),
            ),
        ];
        for (button, region) in cases {
            let id = form_id(button, region.as_ref());
            assert!(id.len() <= 100, "{id}");
            assert_eq!(parse_form_id(&id), Some((button, region)), "{id}");
        }
        assert_eq!(
            form_id(ButtonId::new(ButtonAction::Variation(2), JobId(12)), None),
            "im1:rm:v:12:2"
        );
        let all = crate::region::AREAS.map(|a| a.value()).to_vec();
        let widest = Region::from_values(&all).unwrap();
        let id = form_id(
            ButtonId::new(ButtonAction::RegionPick, JobId(i64::MAX)),
            Some(&widest),
        );
        assert!(id.len() <= 100, "{} chars", id.len());
    }

    #[test]
    fn only_remixable_actions_and_well_formed_ids_parse() {
        for bad in [
            "im1:rm:u:12:0",
            "im1:rm:us:12",
            "im1:rm:x:12",
            "im1:rm:vrp:12",
            "im1:rm:v:12:2:c0",
            "im1:rm:vrp:12:c9",
            "im1:rm:vrp:12:c4,c0",
            "im1:v:12:2",
            "im1:rm:",
        ] {
            assert_eq!(parse_form_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_prefill_parses_back_to_the_same_parameters() {
        let text = prefill("a cat", "dogs", Aspect { w: 3, h: 2 }, Some(250), 40);
        assert_eq!(text, "a cat --no dogs --ar 3:2 --stylize 250 --chaos 40");
        let parsed = parse_prompt(&text).unwrap();
        assert_eq!(
            (parsed.prompt.as_str(), parsed.negative.as_str()),
            ("a cat", "dogs")
        );
        assert_eq!(
            (parsed.aspect, parsed.stylize, parsed.chaos),
            (Aspect { w: 3, h: 2 }, Some(250), 40)
        );
    }
}
