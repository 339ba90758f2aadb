//! `/settings` and `/prefer suffix`: each user's defaults, kept in the store and used by every
//! job they start. `/settings` answers privately with a panel: a select menu of the models, one
//! of the stylize presets, and buttons for Remix mode and High / Low Variation Mode. Each
//! change is saved and the panel redrawn in place (an UPDATE_MESSAGE), so it always shows what
//! is stored. Its controls' custom_ids (`im1:set:<control>`) name no job: they act on whoever
//! uses them, and an ephemeral panel is only ever shown to its owner.

use poise::serenity_prelude::{
    self as serenity, ButtonStyle, ComponentInteraction, ComponentInteractionDataKind,
    CreateActionRow, CreateButton, CreateInteractionResponse, CreateInteractionResponseMessage,
    CreateSelectMenu, CreateSelectMenuKind, CreateSelectMenuOption,
};
use poise::CreateReply;

use super::messages::no_mentions;
use super::{Context, Data, Error};
use crate::params::parse_prompt;
use crate::store::{StylizePreset, UserSettings, MAX_SUFFIX_CHARS};

/// Discord's limit on a select menu's options.
const MAX_OPTIONS: usize = 25;

/// A control of the panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Model,
    Stylize,
    Remix,
    HighVariation,
    LowVariation,
}

impl Control {
    const ALL: [Control; 5] = [
        Control::Model,
        Control::Stylize,
        Control::Remix,
        Control::HighVariation,
        Control::LowVariation,
    ];

    pub fn custom_id(self) -> &'static str {
        match self {
            Control::Model => "im1:set:model",
            Control::Stylize => "im1:set:style",
            Control::Remix => "im1:set:remix",
            Control::HighVariation => "im1:set:vh",
            Control::LowVariation => "im1:set:vl",
        }
    }

    pub fn parse(custom_id: &str) -> Option<Control> {
        Control::ALL
            .into_iter()
            .find(|c| c.custom_id() == custom_id)
    }
}

/// Your defaults: model, stylize, Remix mode, variation strength (and /prefer suffix).
#[poise::command(
    slash_command,
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm|PrivateChannel"
)]
pub async fn settings(ctx: Context<'_>) -> Result<(), Error> {
    let data = ctx.data();
    let mine = data.store.user_settings(ctx.author().id.get()).await?;
    let (content, rows) = panel(data, &mine);
    let reply = CreateReply::default()
        .content(content)
        .components(rows)
        .ephemeral(true)
        .allowed_mentions(no_mentions());
    ctx.send(reply).await?;
    Ok(())
}

/// Your preferences for every prompt.
#[poise::command(
    slash_command,
    subcommands("suffix"),
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm|PrivateChannel"
)]
pub async fn prefer(_ctx: Context<'_>) -> Result<(), Error> {
    Ok(())
}

/// Text added to the end of every prompt you send (leave it empty to remove it).
#[poise::command(slash_command)]
pub async fn suffix(
    ctx: Context<'_>,
    #[description = "e.g. \"in watercolour --ar 3:2\"; empty removes it"] text: Option<String>,
) -> Result<(), Error> {
    let data = ctx.data();
    let user = ctx.author().id.get();
    let text = text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    let reply = match check_suffix(text.as_deref()) {
        Err(msg) => msg,
        Ok(()) => {
            let mut mine = data.store.user_settings(user).await?;
            mine.suffix = text.clone();
            data.store.save_user_settings(user, &mine).await?;
            match text {
                Some(t) => format!("Every prompt of yours now ends with `{t}`."),
                None => "Your prompts get no suffix any more.".into(),
            }
        }
    };
    let reply = CreateReply::default()
        .content(reply)
        .ephemeral(true)
        .allowed_mentions(no_mentions());
    ctx.send(reply).await?;
    Ok(())
}

/// A suffix must be short and, after a prompt, parse: its parameters are checked now rather
/// than on every later prompt.
pub fn check_suffix(text: Option<&str>) -> Result<(), String> {
    let Some(text) = text else { return Ok(()) };
    let chars = text.chars().count();
    if chars > MAX_SUFFIX_CHARS {
        return Err(format!(
            "That suffix is {chars} characters long: keep it to {MAX_SUFFIX_CHARS} or fewer."
        ));
    }
    if text.contains('`') {
        return Err("A suffix cannot contain backticks (`).".into());
    }
    parse_prompt(&with_suffix("a picture", Some(text)))
        .map(|_| ())
        .map_err(|e| format!("That suffix does not work after a prompt: {e}"))
}

/// `prompt` with the user's suffix, if any: the suffix's words end the prompt's words and its
/// parameters follow the prompt's (`a cat --seed 1` + `in ink --ar 3:2` is `a cat in ink
/// --seed 1 --ar 3:2`).
pub fn with_suffix(prompt: &str, suffix: Option<&str>) -> String {
    let Some(suffix) = suffix else {
        return prompt.to_string();
    };
    let (words, params) = split_params(prompt);
    let (more_words, more_params) = split_params(suffix);
    [words, more_words, params, more_params]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` cut where its first `--parameter` starts.
fn split_params(text: &str) -> (&str, &str) {
    let at = text
        .char_indices()
        .find(|(i, _)| {
            text[*i..].starts_with("--")
                && text[..*i]
                    .chars()
                    .next_back()
                    .is_none_or(char::is_whitespace)
        })
        .map_or(text.len(), |(i, _)| i);
    text.split_at(at)
}

/// The panel's text and controls for `mine`.
fn panel(data: &Data, mine: &UserSettings) -> (String, Vec<CreateActionRow>) {
    let default_model = &data.config.default_model;
    let model = mine
        .model
        .clone()
        .filter(|m| data.models.contains_key(m))
        .unwrap_or_else(|| default_model.clone());
    let style = mine.stylize.unwrap_or(StylizePreset::Med);
    let on_off = |on: bool| if on { "on" } else { "off" };
    let content = format!(
        "**Your settings** (used by every job you start)\n\
         Model: `{model}`\nStylize: {}\nRemix mode: {}\nVariation: {}\nPrompt suffix: {}",
        style.name(),
        on_off(mine.remix),
        if mine.low_variation { "low" } else { "high" },
        mine.suffix.as_deref().map_or(
            "none (set one with `/prefer suffix`)".to_string(),
            |s| format!("`{s}`")
        ),
    );
    let models = data
        .models
        .keys()
        .take(MAX_OPTIONS)
        .map(|name| CreateSelectMenuOption::new(name, name).default_selection(*name == model))
        .collect();
    let styles = StylizePreset::ALL
        .iter()
        .map(|p| {
            let label = format!("Stylize {} (--stylize {})", p.name(), p.stylize());
            CreateSelectMenuOption::new(label, p.name()).default_selection(*p == style)
        })
        .collect();
    let select = |control: Control, options| {
        CreateActionRow::SelectMenu(CreateSelectMenu::new(
            control.custom_id(),
            CreateSelectMenuKind::String { options },
        ))
    };
    let toggle = |control: Control, label: &str, on: bool| {
        let style = if on {
            ButtonStyle::Success
        } else {
            ButtonStyle::Secondary
        };
        CreateButton::new(control.custom_id())
            .label(label)
            .style(style)
    };
    let buttons = CreateActionRow::Buttons(vec![
        toggle(Control::Remix, "Remix mode", mine.remix),
        toggle(
            Control::HighVariation,
            "High Variation Mode",
            !mine.low_variation,
        ),
        toggle(
            Control::LowVariation,
            "Low Variation Mode",
            mine.low_variation,
        ),
    ]);
    let rows = vec![
        select(Control::Model, models),
        select(Control::Stylize, styles),
        buttons,
    ];
    (content, rows)
}

/// A control of the panel was used: save the change and redraw the panel in place.
pub async fn on_control(
    ctx: &serenity::Context,
    data: &Data,
    click: &ComponentInteraction,
    control: Control,
) -> Result<(), Error> {
    let user = click.user.id.get();
    let mut mine = data.store.user_settings(user).await?;
    let picked = match &click.data.kind {
        ComponentInteractionDataKind::StringSelect { values } if values.len() == 1 => {
            Some(values[0].as_str())
        }
        _ => None,
    };
    let changed = match (control, picked) {
        (Control::Model, Some(name)) if data.models.contains_key(name) => {
            mine.model = Some(name.to_string());
            true
        }
        (Control::Stylize, Some(name)) => match StylizePreset::parse(name) {
            Some(preset) => {
                mine.stylize = Some(preset);
                true
            }
            None => false,
        },
        (Control::Remix, None) => {
            mine.remix = !mine.remix;
            true
        }
        (Control::HighVariation, None) => {
            mine.low_variation = false;
            true
        }
        (Control::LowVariation, None) => {
            mine.low_variation = true;
            true
        }
        _ => false,
    };
    if !changed {
        let msg = CreateInteractionResponseMessage::new()
            .content("That choice is not one of this panel's any more: run /settings again.")
            .ephemeral(true)
            .allowed_mentions(no_mentions());
        click
            .create_response(&ctx.http, CreateInteractionResponse::Message(msg))
            .await?;
        return Ok(());
    }
    data.store.save_user_settings(user, &mine).await?;
    let (content, rows) = panel(data, &mine);
    let update = CreateInteractionResponseMessage::new()
        .content(content)
        .components(rows)
        .allowed_mentions(no_mentions());
    click
        .create_response(&ctx.http, CreateInteractionResponse::UpdateMessage(update))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_round_trip() {
        for control in Control::ALL {
            assert_eq!(Control::parse(control.custom_id()), Some(control));
        }
        assert_eq!(Control::parse("im1:set:"), None);
        assert_eq!(Control::parse("im1:set:remix "), None);
    }

    #[test]
    fn suffixes_are_short_and_must_parse_after_a_prompt() {
        assert!(check_suffix(None).is_ok());
        assert!(check_suffix(Some("in watercolour --ar 3:2")).is_ok());
        assert!(check_suffix(Some(&"x".repeat(MAX_SUFFIX_CHARS + 1))).is_err());
        let e = check_suffix(Some("--bogus 1")).unwrap_err();
        assert!(e.contains("does not work"), "{e}");
        assert!(check_suffix(Some("`code`")).is_err());
        assert_eq!(with_suffix("a cat", Some("--ar 3:2")), "a cat --ar 3:2");
        assert_eq!(
            with_suffix("a cat --seed 1", Some("in ink --ar 3:2")),
            "a cat in ink --seed 1 --ar 3:2"
        );
        assert_eq!(
            with_suffix("a well-lit room", Some("at night")),
            "a well-lit room at night"
        );
        assert_eq!(with_suffix("a cat", None), "a cat");
    }
}
