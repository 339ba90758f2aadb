//! Gateway events poise does not route to commands: button clicks (persistent: everything is
//! read from the store by the job id in the custom_id, so they work after a restart) and plain
//! DMs.

use poise::serenity_prelude::{
    self as serenity, ComponentInteraction, CreateInteractionResponse,
    CreateInteractionResponseMessage, FullEvent,
};

use super::admission::{admit, Admission};
use super::{Data, Error};
use crate::buttons::ButtonId;
use crate::jobs::{button_job, Requester};
use crate::store::JobStatus;

pub async fn on_event(
    framework: poise::FrameworkContext<'_, Data, Error>,
    event: &FullEvent,
) -> Result<(), Error> {
    let ctx = framework.serenity_context;
    let data = framework.user_data;
    match event {
        FullEvent::InteractionCreate {
            interaction: serenity::Interaction::Component(click),
        } => on_click(ctx, data, click).await,
        FullEvent::Message { new_message }
            if new_message.guild_id.is_none()
                && !new_message.author.bot
                && !new_message.content.trim().is_empty() =>
        {
            super::imagine_cmd::dm_prompt(ctx, data, new_message).await
        }
        _ => Ok(()),
    }
}

async fn reply_private(
    ctx: &serenity::Context,
    click: &ComponentInteraction,
    text: &str,
) -> Result<(), Error> {
    let msg = CreateInteractionResponseMessage::new()
        .content(text)
        .ephemeral(true);
    click
        .create_response(&ctx.http, CreateInteractionResponse::Message(msg))
        .await?;
    Ok(())
}

async fn on_click(
    ctx: &serenity::Context,
    data: &Data,
    click: &ComponentInteraction,
) -> Result<(), Error> {
    let Some(button) = ButtonId::parse(&click.data.custom_id) else {
        return reply_private(ctx, click, "This button is not one of mine any more.").await;
    };
    let Some(parent) = data.store.job(button.job).await? else {
        return reply_private(ctx, click, "That job no longer exists.").await;
    };
    if parent.status != JobStatus::Done {
        return reply_private(ctx, click, "That job has not finished yet.").await;
    }
    if let Some(why) = crate::retention::cleaned_up(&data.store, &parent, button.action).await? {
        return reply_private(ctx, click, &why).await;
    }
    let images = data.store.images(parent.id).await?;
    let who = Requester {
        user_id: click.user.id.get(),
        channel_id: click.channel_id.get(),
        guild_id: click.guild_id.map(|g| g.get()),
        is_dm: click.guild_id.is_none(),
        interaction_token: Some(click.token.clone()),
        application_id: Some(click.application_id.get()),
    };
    let new_job = match button_job(button.action, &parent, &images, who, rand::random()) {
        Ok(job) => job,
        Err(msg) => return reply_private(ctx, click, &msg).await,
    };
    let announce = |text: String| async move {
        let msg = CreateInteractionResponseMessage::new().content(text);
        click
            .create_response(&ctx.http, CreateInteractionResponse::Message(msg))
            .await?;
        Ok(click.get_response(&ctx.http).await.ok().map(|m| m.id.get()))
    };
    if let Admission::Refused(msg) = admit(data, &new_job, None, announce).await? {
        return reply_private(ctx, click, &msg).await;
    }
    Ok(())
}
