//! Modal submissions. Custom Zoom's modal comes back here with the text the user left in it
//! (prompt, `--zoom`, `--ar`, ...), and Remix mode's with the edited prompt for the button
//! that opened it; like a button, a modal's custom_id names the job, so a modal opened before
//! a restart still works after it.

use poise::serenity_prelude::{
    self as serenity, ActionRowComponent, CreateInteractionResponse,
    CreateInteractionResponseMessage, ModalInteraction,
};

use super::admission::{admit, Admission, FirstReply};
use super::dispatcher::resolve_images;
use super::messages::{no_mentions, ZOOM_INPUT};
use super::{Data, Error};
use crate::buttons::{ButtonAction, ButtonId};
use crate::custom_zoom::split_zoom;
use crate::jobs::{custom_zoom_job, Requester};
use crate::store::{ImageRecord, Job, JobStatus};
use imagine_engine::ModelInfo;

async fn reply_private(
    ctx: &serenity::Context,
    submit: &ModalInteraction,
    text: &str,
) -> Result<(), Error> {
    let msg = CreateInteractionResponseMessage::new()
        .content(text)
        .ephemeral(true)
        .allowed_mentions(no_mentions());
    submit
        .create_response(&ctx.http, CreateInteractionResponse::Message(msg))
        .await?;
    Ok(())
}

/// The text typed into the input `custom_id`, if the submission has it.
fn field(submit: &ModalInteraction, custom_id: &str) -> Option<String> {
    submit
        .data
        .components
        .iter()
        .flat_map(|row| row.components.iter())
        .find_map(|c| match c {
            ActionRowComponent::InputText(input) if input.custom_id == custom_id => {
                input.value.clone()
            }
            _ => None,
        })
}

pub async fn on_submit(
    ctx: &serenity::Context,
    data: &Data,
    submit: &ModalInteraction,
) -> Result<(), Error> {
    if let Some((button, region)) = crate::remix::parse_form_id(&submit.data.custom_id) {
        return on_remix(ctx, data, submit, button, region).await;
    }
    let form = ButtonId::parse(&submit.data.custom_id)
        .filter(|b| b.action == ButtonAction::CustomZoomForm);
    let (Some(form), Some(text)) = (form, field(submit, ZOOM_INPUT)) else {
        return reply_private(ctx, submit, "This form is not one of mine any more.").await;
    };
    let zoom = match split_zoom(&text) {
        Ok(zoom) => zoom,
        Err(msg) => return reply_private(ctx, submit, &msg).await,
    };
    let (parent, info, images) = match finished_parent(data, form).await? {
        Ok(found) => found,
        Err(msg) => return reply_private(ctx, submit, &msg).await,
    };
    let who = requester(submit, &parent);
    let max_side = data.config.max_image_side;
    let seed = rand::random();
    let new_job = match custom_zoom_job(&parent, &images, who, seed, max_side, info, &zoom) {
        Ok(job) => job,
        Err(msg) => return reply_private(ctx, submit, &msg).await,
    };
    start(ctx, data, submit, new_job).await
}

/// Remix mode: the job `button` (with `region`, for the region menu) would have started, with
/// the submitted prompt and parameters.
async fn on_remix(
    ctx: &serenity::Context,
    data: &Data,
    submit: &ModalInteraction,
    button: ButtonId,
    region: Option<crate::region::Region>,
) -> Result<(), Error> {
    let Some(text) = field(submit, ZOOM_INPUT) else {
        return reply_private(ctx, submit, "This form is not one of mine any more.").await;
    };
    let (parent, info, images) = match finished_parent(data, button).await? {
        Ok(found) => found,
        Err(msg) => return reply_private(ctx, submit, &msg).await,
    };
    let who = requester(submit, &parent);
    let settings = data.store.user_settings(who.user_id).await?;
    let made = super::events::new_button_job(
        data,
        &parent,
        &images,
        who,
        button.action,
        region,
        &settings,
    )
    .and_then(|mut job| crate::remix::apply(&mut job, &text, info).map(|()| job));
    match made {
        Ok(job) => start(ctx, data, submit, job).await,
        Err(msg) => reply_private(ctx, submit, &msg).await,
    }
}

/// The finished job a form acts on, its model and its images; `Err` is the sentence for the
/// user when the job is gone, unfinished, cleaned up, or its model is no longer configured.
async fn finished_parent(
    data: &Data,
    form: ButtonId,
) -> Result<Result<(Job, &ModelInfo, Vec<ImageRecord>), String>, Error> {
    let Some(parent) = data.store.job(form.job).await? else {
        return Ok(Err("That job no longer exists.".into()));
    };
    if parent.status != JobStatus::Done {
        return Ok(Err("That job has not finished yet.".into()));
    }
    if let Some(why) = crate::retention::cleaned_up(&data.store, &parent, form.action).await? {
        return Ok(Err(why));
    }
    let Some(info) = data.models.get(&parent.request.model) else {
        return Ok(Err(
            "That image's model is no longer configured on this bot.".into(),
        ));
    };
    let images = resolve_images(
        &data.data_dir,
        data.shared_images.as_ref(),
        data.store.images(parent.id).await?,
    )
    .await;
    Ok(Ok((parent, info, images)))
}

/// Who submitted, and where the answer goes.
fn requester(submit: &ModalInteraction, parent: &crate::store::Job) -> Requester {
    Requester {
        user_id: submit.user.id.get(),
        channel_id: submit.channel_id.get(),
        guild_id: submit.guild_id.map(|g| g.get()),
        is_dm: submit.guild_id.is_none(),
        interaction_token: Some(submit.token.clone()),
        application_id: Some(submit.application_id.get()),
        // serenity 0.12 drops a modal submission's context and owners; the modal was opened
        // from a button on the parent's message, so where it can post is where that job could.
        // (Elsewhere, which Discord does not do, it is taken as a place the bot is in, as
        // `place::bot_in_place` takes payloads without a context.)
        bot_in_place: submit.channel_id.get() != parent.request.channel_id
            || parent.request.bot_in_place,
    }
}

/// Admits `new_job`, its first message answering the submission.
async fn start(
    ctx: &serenity::Context,
    data: &Data,
    submit: &ModalInteraction,
    new_job: crate::store::NewJob,
) -> Result<(), Error> {
    let announce = |first: FirstReply| async move {
        let msg = CreateInteractionResponseMessage::new()
            .content(first.content)
            .components(first.components)
            .allowed_mentions(first.mentions);
        submit
            .create_response(&ctx.http, CreateInteractionResponse::Message(msg))
            .await?;
        Ok(submit
            .get_response(&ctx.http)
            .await
            .ok()
            .map(|m| m.id.get()))
    };
    if let Admission::Refused(msg) = admit(data, &new_job, None, announce).await? {
        return reply_private(ctx, submit, &msg).await;
    }
    Ok(())
}
