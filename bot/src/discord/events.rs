//! Gateway events poise does not route to commands: button clicks (persistent: everything is
//! read from the store by the job id in the custom_id, so they work after a restart) and plain
//! DMs. The ❌ button cancels a queued or running job; ✉️ on a result DMs its parameters.

use poise::serenity_prelude::{
    self as serenity, ComponentInteraction, ComponentInteractionDataKind,
    CreateInteractionResponse, CreateInteractionResponseMessage, FullEvent, Permissions,
};

use tracing::Instrument;

use super::admission::{admit, Admission, FirstReply};
use super::dispatcher::resolve_images;
use super::place::bot_in_place;
use super::{Data, Error};
use crate::buttons::{ButtonAction, ButtonId};
use crate::jobs::{button_job, region_job, with_low_variation, RegionSource, Requester};
use crate::queue::StopReason;
use crate::region::Region;
use crate::store::{ImageRecord, Job, JobStatus, NewJob, StoreError, UserSettings};

pub async fn on_event(
    framework: poise::FrameworkContext<'_, Data, Error>,
    event: &FullEvent,
) -> Result<(), Error> {
    let ctx = framework.serenity_context;
    let data = framework.user_data;
    match event {
        FullEvent::InteractionCreate {
            interaction: serenity::Interaction::Component(click),
        } => match super::settings_cmd::Control::parse(&click.data.custom_id) {
            Some(control) => super::settings_cmd::on_control(ctx, data, click, control).await,
            None => on_click(ctx, data, click).await,
        },
        FullEvent::InteractionCreate {
            interaction: serenity::Interaction::Modal(submit),
        } => super::forms::on_submit(ctx, data, submit).await,
        FullEvent::ReactionAdd { add_reaction } => {
            if let Err(e) = super::envelope::on_reaction(data, add_reaction).await {
                tracing::warn!("✉️ reaction not answered: {e:#}");
            }
            Ok(())
        }
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
        .ephemeral(true)
        .allowed_mentions(super::messages::no_mentions());
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
    // The region menu is the one select; everything else is a button.
    let picked = match (&click.data.kind, button.action) {
        (ComponentInteractionDataKind::StringSelect { values }, ButtonAction::RegionPick) => {
            match Region::from_values(values) {
                Ok(region) => Some(region),
                Err(msg) => return reply_private(ctx, click, &msg).await,
            }
        }
        (ComponentInteractionDataKind::Button, action) if action != ButtonAction::RegionPick => {
            None
        }
        _ => return reply_private(ctx, click, "This menu is not one of mine any more.").await,
    };
    let Some(parent) = data.store.job(button.job).await? else {
        return reply_private(ctx, click, "That job no longer exists.").await;
    };
    if button.action == ButtonAction::Cancel {
        return on_cancel(ctx, data, click, &parent).await;
    }
    if parent.status != JobStatus::Done {
        return reply_private(ctx, click, "That job has not finished yet.").await;
    }
    if let Some(why) = crate::retention::cleaned_up(&data.store, &parent, button.action).await? {
        return reply_private(ctx, click, &why).await;
    }
    if button.action == ButtonAction::CustomZoom {
        let req = &parent.request;
        let text =
            crate::custom_zoom::prefill(&req.prompt, &req.negative_prompt, req.params.aspect);
        let modal = super::messages::custom_zoom_modal(parent.id, &text);
        click
            .create_response(&ctx.http, CreateInteractionResponse::Modal(modal))
            .await?;
        return Ok(());
    }
    if button.action == ButtonAction::VaryRegion {
        let menu = CreateInteractionResponseMessage::new()
            .content(super::messages::REGION_MENU_TEXT)
            .components(super::messages::region_menu(parent.id))
            .ephemeral(true)
            .allowed_mentions(super::messages::no_mentions());
        click
            .create_response(&ctx.http, CreateInteractionResponse::Message(menu))
            .await?;
        return Ok(());
    }
    let settings = data.store.user_settings(click.user.id.get()).await?;
    if settings.remix && crate::remix::remixable(button.action) {
        let req = &parent.request;
        let p = &req.params;
        let text = crate::remix::prefill(
            &req.prompt,
            &req.negative_prompt,
            p.aspect,
            p.stylize,
            p.chaos,
        );
        let form = crate::remix::form_id(button, picked.as_ref());
        let modal = super::messages::remix_modal(form, &text);
        click
            .create_response(&ctx.http, CreateInteractionResponse::Modal(modal))
            .await?;
        return Ok(());
    }
    let images = resolve_images(
        &data.data_dir,
        data.shared_images.as_ref(),
        data.store.images(parent.id).await?,
    )
    .await;
    let who = Requester {
        user_id: click.user.id.get(),
        channel_id: click.channel_id.get(),
        guild_id: click.guild_id.map(|g| g.get()),
        is_dm: click.guild_id.is_none(),
        interaction_token: Some(click.token.clone()),
        application_id: Some(click.application_id.get()),
        bot_in_place: bot_in_place(
            click.context,
            &click.authorizing_integration_owners,
            click.guild_id,
        ),
    };
    let made = new_button_job(
        data,
        &parent,
        &images,
        who,
        button.action,
        picked,
        &settings,
    );
    let new_job = match made {
        Ok(job) => job,
        Err(msg) => return reply_private(ctx, click, &msg).await,
    };
    let announce = |first: FirstReply| async move {
        let msg = CreateInteractionResponseMessage::new()
            .content(first.content)
            .components(first.components)
            .allowed_mentions(first.mentions);
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

/// The job a button (or the region menu, with the areas `picked`) starts for `who`, with
/// their settings applied; the `Err` is the private reply.
pub(super) fn new_button_job(
    data: &Data,
    parent: &Job,
    images: &[ImageRecord],
    who: Requester,
    action: ButtonAction,
    picked: Option<Region>,
    settings: &UserSettings,
) -> Result<NewJob, String> {
    let max_side = data.config.max_image_side;
    let seed = rand::random();
    let job = match picked {
        Some(region) => {
            let region = RegionSource::Picked(region);
            region_job(parent, images, who, seed, max_side, region)?
        }
        None => button_job(action, parent, images, who, seed, max_side)?,
    };
    Ok(match settings.low_variation {
        true => with_low_variation(job),
        false => job,
    })
}

/// ❌: the requester, or someone who may manage messages here, stops the job. A waiting job
/// leaves the line at once; a running one stops at its next step. The outbox then shows it
/// cancelled.
async fn on_cancel(
    ctx: &serenity::Context,
    data: &Data,
    click: &ComponentInteraction,
    job: &Job,
) -> Result<(), Error> {
    let moderator = click
        .member
        .as_ref()
        .and_then(|m| m.permissions)
        .is_some_and(|p| p.intersects(Permissions::ADMINISTRATOR | Permissions::MANAGE_MESSAGES));
    if click.user.id.get() != job.request.user_id && !moderator {
        return reply_private(
            ctx,
            click,
            "Only the person who asked for this job (or a server admin) can cancel it.",
        )
        .await;
    }
    let span = tracing::info_span!("job", id = job.id.0);
    let by = click.user.id.get();
    let reply = cancel(data, job).instrument(span.clone()).await?;
    span.in_scope(|| tracing::info!(by, outcome = reply, "❌ pressed"));
    reply_private(ctx, click, reply).await
}

/// Cancels `job`; returns what to tell whoever pressed ❌.
async fn cancel(data: &Data, job: &Job) -> Result<&'static str, Error> {
    if let Some(flag) = data.queue.stop_flag(job.id) {
        flag.request(StopReason::Cancelled);
        return Ok("Cancelling: the job stops at its next step.");
    }
    // Waiting in line, or still being admitted (its first message is out but it is not in
    // line yet; admission then leaves it out): cancelled in the store either way.
    let withdrawn = data.queue.withdraw(job.id);
    match data.store.cancel_job(job.id).await {
        Ok(()) => {
            if withdrawn {
                super::positions::line_moved(data);
            }
            data.outbox.notify();
            Ok("Cancelled.")
        }
        Err(StoreError::IllegalTransition { from, .. }) if from.is_finished() => {
            Ok("That job has already ended.")
        }
        // It started meanwhile: stop it between steps.
        Err(StoreError::IllegalTransition { .. }) => match data.queue.stop_flag(job.id) {
            Some(flag) => {
                flag.request(StopReason::Cancelled);
                Ok("Cancelling: the job stops at its next step.")
            }
            None => Ok("That job cannot be cancelled right now. Please try again in a moment."),
        },
        Err(e) => Err(e.into()),
    }
}
