//! `/imagine prompt [image]`, and plain-text DMs taken as prompts. Input is parsed and checked
//! before anything is queued; a problem gets a short private reply and nothing is lost.

use anyhow::Result;
use poise::serenity_prelude::{self as serenity, CreateMessage};
use poise::CreateReply;

use super::admission::{admit, Admission, FirstReply};
use super::image_prompt::MAX_DOWNLOAD_BYTES;
use super::messages::no_mentions;
use super::place::bot_in_place;
use super::settings_cmd::with_suffix;
use super::{Context, Data, Error};
use crate::image_input;
use crate::jobs::{imagine_job, Requester};
use crate::params::{parse_prompt, ParamError};
use crate::store::{NewJob, UserSettings};

/// Draw four pictures from a prompt. Parameters go inline: --ar 3:2 --seed 42 --no text
#[poise::command(
    slash_command,
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm|PrivateChannel"
)]
pub async fn imagine(
    ctx: Context<'_>,
    #[description = "What to draw, with optional --ar, --seed, --no, --steps, --stylize, --chaos, --model"]
    prompt: String,
    #[description = "An image to start from (PNG, JPEG, WebP or GIF, up to 10 MB)"] image: Option<
        serenity::Attachment,
    >,
) -> Result<(), Error> {
    let data = ctx.data();
    let poise::Context::Application(app) = ctx else {
        return Ok(());
    };
    let interaction = app.interaction;
    let who = Requester {
        user_id: interaction.user.id.get(),
        channel_id: interaction.channel_id.get(),
        guild_id: interaction.guild_id.map(|g| g.get()),
        is_dm: interaction.guild_id.is_none(),
        interaction_token: Some(interaction.token.clone()),
        application_id: Some(interaction.application_id.get()),
        bot_in_place: bot_in_place(
            interaction.context,
            &interaction.authorizing_integration_owners,
            interaction.guild_id,
        ),
    };
    if let Some(att) = &image {
        if let Err(msg) = check_attachment(att) {
            crate::metrics::job_refused(crate::metrics::Refusal::BadInput);
            return private(ctx, msg).await;
        }
    }
    let settings = data.store.user_settings(who.user_id).await?;
    let new_job = match prepare(data, &prompt, who, image.is_some(), &settings) {
        Ok(job) => job,
        Err(msg) => {
            crate::metrics::job_refused(crate::metrics::Refusal::BadInput);
            return private(ctx, msg).await;
        }
    };
    let announce = |first: FirstReply| async move {
        let reply = CreateReply::default()
            .content(first.content)
            .components(first.components)
            .allowed_mentions(first.mentions);
        let reply = ctx.send(reply).await?;
        Ok(reply.message().await.ok().map(|m| m.id.get()))
    };
    let url = image.as_ref().map(|a| a.url.as_str());
    if let Admission::Refused(msg) = admit(data, &new_job, url, announce).await? {
        return private(ctx, msg).await;
    }
    Ok(())
}

/// Parses the prompt (with the user's `/prefer suffix`) and picks the model (`--model`, else
/// the user's, else the bot's default) and stylize (`--stylize`, else the user's preset); an
/// `Err` is the user's private reply.
pub fn prepare(
    data: &Data,
    text: &str,
    who: Requester,
    with_image: bool,
    settings: &UserSettings,
) -> Result<NewJob, String> {
    let text = with_suffix(text, settings.suffix.as_deref());
    let mut parsed = parse_prompt(&text).map_err(|e| e.to_string())?;
    crate::loras::check_prompt(data.config.loras.as_deref(), &parsed.prompt)?;
    if parsed.stylize.is_none() {
        parsed.stylize = settings.stylize.map(|preset| preset.stylize());
    }
    // A model the bot no longer has falls back to the default rather than failing every prompt.
    let preferred = settings
        .model
        .clone()
        .filter(|m| data.models.contains_key(m));
    let name = parsed
        .model
        .clone()
        .or(preferred)
        .unwrap_or_else(|| data.config.default_model.clone());
    let info = data.models.get(&name).ok_or_else(|| {
        ParamError::UnknownModel {
            available: data.models.keys().cloned().collect(),
            name: name.clone(),
        }
        .to_string()
    })?;
    let init = with_image.then(|| {
        data.data_dir
            .join("inputs")
            .join(format!("{}-{}.png", who.user_id, rand::random::<u64>()))
            .to_string_lossy()
            .into_owned()
    });
    Ok(imagine_job(&parsed, &name, info, who, init, rand::random()))
}

/// Early refusals from what Discord says about the attachment, answered privately before any
/// job exists. Nothing is accepted here: the downloaded bytes decide in
/// [`image_input`](crate::image_input), whatever the declared type.
fn check_attachment(att: &serenity::Attachment) -> Result<(), String> {
    let declared = att.content_type.as_deref().unwrap_or("");
    if !declared.is_empty() && !declared.starts_with("image/") {
        return Err(format!(
            "That attachment is not an image: attach a {}.",
            image_input::ACCEPTED
        ));
    }
    if att.size as usize > MAX_DOWNLOAD_BYTES {
        return Err("That image is larger than 10 MB: attach a smaller one.".into());
    }
    let (w, h) = (att.width.unwrap_or(0), att.height.unwrap_or(0));
    if w > image_input::MAX_SIDE || h > image_input::MAX_SIDE {
        return Err(format!(
            "That image is {w}x{h} pixels, over the limit of {max}x{max}: attach a smaller one.",
            max = image_input::MAX_SIDE
        ));
    }
    Ok(())
}

async fn private(ctx: Context<'_>, msg: String) -> Result<(), Error> {
    let reply = CreateReply::default()
        .content(msg)
        .ephemeral(true)
        .allowed_mentions(no_mentions());
    ctx.send(reply).await?;
    Ok(())
}

/// A plain DM to the bot is an `/imagine` prompt.
pub async fn dm_prompt(
    ctx: &serenity::Context,
    data: &Data,
    message: &serenity::Message,
) -> Result<(), Error> {
    let who = Requester {
        user_id: message.author.id.get(),
        channel_id: message.channel_id.get(),
        guild_id: None,
        is_dm: true,
        interaction_token: None,
        application_id: None,
        bot_in_place: true,
    };
    let say = |text: String| {
        let reply = CreateMessage::new()
            .content(text)
            .allowed_mentions(no_mentions());
        message.channel_id.send_message(&ctx.http, reply)
    };
    let settings = data.store.user_settings(who.user_id).await?;
    let new_job = match prepare(data, &message.content, who, false, &settings) {
        Ok(job) => job,
        Err(msg) => {
            crate::metrics::job_refused(crate::metrics::Refusal::BadInput);
            say(msg).await?;
            return Ok(());
        }
    };
    let announce = |first: FirstReply| async move {
        let post = CreateMessage::new()
            .content(first.content)
            .components(first.components)
            .allowed_mentions(first.mentions);
        Ok(Some(
            message
                .channel_id
                .send_message(&ctx.http, post)
                .await?
                .id
                .get(),
        ))
    };
    if let Admission::Refused(msg) = admit(data, &new_job, None, announce).await? {
        say(msg).await?;
    }
    Ok(())
}
