//! What the bot's messages say and which buttons they carry, for each state of a job. One
//! place, so the queued, running, finished and failed views stay consistent.

use poise::serenity_prelude::{
    ButtonStyle, CreateActionRow, CreateAllowedMentions, CreateButton, CreateInputText,
    CreateModal, CreateSelectMenu, CreateSelectMenuKind, CreateSelectMenuOption, InputTextStyle,
    ReactionType,
};

use crate::buttons::{ButtonAction, ButtonId};
use crate::store::{Job, JobId, JobKind, JobStatus};

/// Discord's message limit, less room for the status line.
const MAX_PROMPT_SHOWN: usize = 1800;

fn headline(job: &Job) -> String {
    let prompt: String = job.request.prompt.chars().take(MAX_PROMPT_SHOWN).collect();
    let ellipsis = if prompt.len() < job.request.prompt.len() {
        "…"
    } else {
        ""
    };
    let what = match (job.request.kind, job.request.parent.and_then(|p| p.index)) {
        (JobKind::Upscale, Some(i)) => format!(" - Image #{}", i + 1),
        (JobKind::Variation, _) => " - Variations".to_string(),
        (JobKind::VarySubtle, _) => " - Variations (Subtle)".to_string(),
        (JobKind::VaryStrong, _) => " - Variations (Strong)".to_string(),
        (JobKind::VaryRegion, _) => " - Variations (Region)".to_string(),
        (JobKind::UpscaleSubtle, _) => " - Upscaled (Subtle)".to_string(),
        (JobKind::UpscaleCreative, _) => " - Upscaled (Creative)".to_string(),
        (JobKind::ZoomOut, _) => match job.request.params.zoom {
            Some(z) => format!(" - Zoom Out {z}x"),
            None => " - Zoom Out".to_string(),
        },
        (JobKind::Pan, _) => match job.request.params.pan.as_deref() {
            Some(d) => format!(" - Pan {}", capitalised(d)),
            None => " - Pan".to_string(),
        },
        _ => String::new(),
    };
    format!("**{prompt}{ellipsis}**{what} - <@{}>", job.request.user_id)
}

/// A waiting job: its place in line and, once jobs have been timed, about how long it waits.
pub fn queued(job: &Job, position: usize, wait: Option<std::time::Duration>) -> String {
    let wait = match wait.map(|w| w.as_secs()) {
        None => String::new(),
        Some(s) if s < 60 => ", starts in less than a minute".into(),
        Some(s) => format!(", starts in about {} min", s.div_ceil(60)),
    };
    format!(
        "{} (Waiting to start, position {position} in the queue{wait})",
        headline(job)
    )
}

pub fn running(job: &Job, percent: u8) -> String {
    format!("{} ({percent}%)", headline(job))
}

pub fn done(job: &Job) -> String {
    headline(job)
}

pub fn failed(job: &Job, error: &str) -> String {
    format!("{} - failed: {error}", headline(job))
}

pub fn cancelled(job: &Job) -> String {
    format!("{} - cancelled", headline(job))
}

/// Shown in a place the bot cannot post to (a user-installed context) shortly before the
/// interaction token dies: the result will come another way.
pub fn coming_by_dm(job: &Job) -> String {
    format!(
        "{} (Still working: this is taking a while, so I will send you the result by DM)",
        headline(job)
    )
}

/// The job's final message, by its status: the result, the failure or the cancellation.
pub fn ended(job: &Job) -> String {
    match job.status {
        JobStatus::Failed => failed(job, job.error.as_deref().unwrap_or("unknown error")),
        JobStatus::Cancelled => cancelled(job),
        _ => done(job),
    }
}

/// Every message about a job may ping its requester, and no one else: prompts are echoed, and
/// a prompt with `@everyone` or a role mention must not ping a server.
pub fn mentions(job: &Job) -> CreateAllowedMentions {
    CreateAllowedMentions::new().users([job.request.user_id])
}

/// The same, as the JSON field of a message body.
pub fn mentions_json(job: &Job) -> serde_json::Value {
    serde_json::json!({ "parse": [], "users": [job.request.user_id.to_string()] })
}

/// Replies that should ping no one at all (private refusals).
pub fn no_mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
}

/// The ❌ under a queued or running job.
pub fn cancel_row(job: JobId) -> Vec<CreateActionRow> {
    let cancel = ButtonAction::Cancel;
    let mut button =
        CreateButton::new(ButtonId::new(cancel, job).encode()).style(ButtonStyle::Secondary);
    if let Some(emoji) = cancel.emoji() {
        button = button.emoji(ReactionType::Unicode(emoji.into()));
    }
    vec![CreateActionRow::Buttons(vec![button])]
}

/// What the private Vary (Region) menu says above its select.
pub const REGION_MENU_TEXT: &str = "**Vary (Region)**: pick the parts of the image to repaint \
     (cells of a 3x3 grid, halves, or several together). The rest stays as it is. To paint the \
     region yourself, use `/region` with a mask image (white = repaint).";

/// The select menu of areas Vary (Region) offers, for `job`'s image: any combination, at
/// least one.
pub fn region_menu(job: JobId) -> Vec<CreateActionRow> {
    let options = crate::region::AREAS
        .iter()
        .map(|area| CreateSelectMenuOption::new(area.label(), area.value()))
        .collect();
    let pick = ButtonAction::RegionPick;
    let mut select = CreateSelectMenu::new(
        ButtonId::new(pick, job).encode(),
        CreateSelectMenuKind::String { options },
    )
    .min_values(1)
    .max_values(crate::region::AREAS.len() as u8);
    if let Some(placeholder) = pick.label() {
        select = select.placeholder(placeholder);
    }
    vec![CreateActionRow::SelectMenu(select)]
}

/// The custom_id of the Custom Zoom modal's one text input.
pub const ZOOM_INPUT: &str = "prompt";

/// The Custom Zoom modal for `job`'s image, pre-filled with `text` (prompt, `--ar`, `--zoom`).
pub fn custom_zoom_modal(job: JobId, text: &str) -> CreateModal {
    let max = crate::params::MAX_INPUT_CHARS;
    let text: String = text.chars().take(max).collect();
    let input = CreateInputText::new(
        InputTextStyle::Paragraph,
        "Prompt, with --zoom 1 to 2 (and --ar)",
        ZOOM_INPUT,
    )
    .value(text)
    .min_length(1)
    .max_length(max as u16);
    let form = ButtonId::new(ButtonAction::CustomZoomForm, job).encode();
    CreateModal::new(form, "Custom Zoom").components(vec![CreateActionRow::InputText(input)])
}

/// The Remix modal (custom_id from [`crate::remix::form_id`]), pre-filled with `text`.
pub fn remix_modal(custom_id: String, text: &str) -> CreateModal {
    let max = crate::params::MAX_INPUT_CHARS;
    let text: String = text.chars().take(max).collect();
    let input = CreateInputText::new(
        InputTextStyle::Paragraph,
        "Prompt and parameters",
        ZOOM_INPUT,
    )
    .value(text)
    .min_length(1)
    .max_length(max as u16);
    CreateModal::new(custom_id, "Remix").components(vec![CreateActionRow::InputText(input)])
}

/// The buttons under a finished job: U1–U4 + 🔄 and V1–V4 under a grid, the toolbox (Vary,
/// Zoom Out, Pan) under a single image.
pub fn buttons(job: JobId, kind: JobKind) -> Vec<CreateActionRow> {
    let rows: Vec<&[ButtonAction]> = if kind.makes_single_image() {
        ButtonAction::SINGLE_ROWS.to_vec()
    } else {
        ButtonAction::GRID_ROWS.to_vec()
    };
    rows.into_iter()
        .map(|row| {
            CreateActionRow::Buttons(
                row.iter()
                    .map(|action| {
                        let mut b = CreateButton::new(ButtonId::new(*action, job).encode())
                            .style(ButtonStyle::Secondary);
                        if let Some(label) = action.label() {
                            b = b.label(label);
                        }
                        if let Some(emoji) = action.emoji() {
                            b = b.emoji(ReactionType::Unicode(emoji.into()));
                        }
                        b
                    })
                    .collect(),
            )
        })
        .collect()
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
