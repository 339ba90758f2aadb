//! `/region job:<number or message link> mask:<image>`: Vary (Region) with a region the user
//! painted (white = repaint, black = keep), for when the menu's cells are too coarse.
//!
//! The mask is an outside input like an image prompt: Discord's declared size is checked first,
//! then the download is capped and decoded by [`image_input`](crate::image_input) on a blocking
//! thread. It is fitted to the picture (any size is stretched to it) and saved in the data
//! folder before the job exists, so the job runs, and reruns after a restart, from the store
//! alone. Downloading can take longer than Discord's 3 s, so the command defers first; a
//! refusal then replaces the "thinking" message with a private one.

use std::path::PathBuf;

use poise::serenity_prelude as serenity;
use poise::CreateReply;

use super::admission::{admit, Admission, FirstReply};
use super::dispatcher::resolve_images;
use super::image_prompt::{fetch_capped, DOWNLOAD_TIMEOUT, MAX_DOWNLOAD_BYTES};
use super::messages::no_mentions;
use super::place::bot_in_place;
use super::{Context, Data, Error};
use crate::image_input;
use crate::jobs::{region_job, RegionSource, Requester};
use crate::region::{fit_mask, mask_problem, parse_job_ref, JobRef};
use crate::render::write_file_atomically;
use crate::store::{Job, JobStatus};

/// Repaint part of an upscaled image: attach a mask, white where it should change.
#[poise::command(
    slash_command,
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm|PrivateChannel"
)]
pub async fn region(
    ctx: Context<'_>,
    #[description = "The upscaled (U) image's job: its number, or its message link"] job: String,
    #[description = "A mask image: white = repaint, black = keep (PNG, JPEG, WebP or GIF)"]
    mask: serenity::Attachment,
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
    // Refusals that need no download are answered at once, privately.
    let parent = match find_parent(data, &job, &who).await? {
        Ok(parent) => parent,
        Err(msg) => return private(ctx, msg).await,
    };
    if let Err(msg) = check_declared(&mask) {
        return private(ctx, msg).await;
    }
    ctx.defer().await?;
    let images = resolve_images(
        &data.data_dir,
        data.shared_images.as_ref(),
        data.store.images(parent.id).await?,
    )
    .await;
    let Some(picture) = images.iter().find(|r| r.idx == 0) else {
        return refuse_after_defer(ctx, "That job's image is no longer available.".into()).await;
    };
    let size = (picture.width, picture.height);
    let saved = match save_mask(data, &mask.url, size, who.user_id).await {
        Ok(path) => path,
        Err(msg) => return refuse_after_defer(ctx, msg).await,
    };
    let max_side = data.config.max_image_side;
    let painted = RegionSource::Painted(saved.to_string_lossy().into_owned());
    let new_job = match region_job(&parent, &images, who, rand::random(), max_side, painted) {
        Ok(job) => job,
        Err(msg) => return refuse_after_defer(ctx, msg).await,
    };
    let announce = |first: FirstReply| async move {
        let reply = CreateReply::default()
            .content(first.content)
            .components(first.components)
            .allowed_mentions(first.mentions);
        let reply = ctx.send(reply).await?;
        Ok(reply.message().await.ok().map(|m| m.id.get()))
    };
    if let Admission::Refused(msg) = admit(data, &new_job, None, announce).await? {
        return refuse_after_defer(ctx, msg).await;
    }
    Ok(())
}

/// The finished single-image job `text` names, if `who` may repaint it: their own, or one
/// posted in this channel (anyone there can see it and press its buttons).
async fn find_parent(
    data: &Data,
    text: &str,
    who: &Requester,
) -> Result<Result<Job, String>, Error> {
    let found = match parse_job_ref(text) {
        Ok(JobRef::Id(id)) => data.store.job(crate::store::JobId(id)).await?,
        Ok(JobRef::Message(message)) => data.store.job_by_message(message).await?,
        Err(msg) => return Ok(Err(msg)),
    };
    let visible =
        |job: &Job| job.request.user_id == who.user_id || job.request.channel_id == who.channel_id;
    let Some(job) = found.filter(visible) else {
        return Ok(Err(
            "I know no such job of yours or of this channel. Name one of your own jobs, or one \
             posted here, by its number or message link."
                .into(),
        ));
    };
    if !job.request.kind.makes_single_image() {
        return Ok(Err(
            "That job is a grid of four: press U1-U4 under it first, then use /region on that \
             image."
                .into(),
        ));
    }
    if job.status != JobStatus::Done {
        return Ok(Err("That job has not finished yet.".into()));
    }
    if data.store.images_purged(job.id).await? {
        return Ok(Err(
            "That job's images were cleaned up (this bot keeps images for a limited time or \
             space): make the image again first."
                .into(),
        ));
    }
    Ok(Ok(job))
}

/// What Discord says about the attachment, before downloading it.
fn check_declared(mask: &serenity::Attachment) -> Result<(), String> {
    let declared = mask.content_type.as_deref().unwrap_or("");
    if !declared.is_empty() && !declared.starts_with("image/") {
        return Err(format!(
            "The mask is not an image: attach a {} (white = repaint, black = keep).",
            image_input::ACCEPTED
        ));
    }
    if mask.size as usize > MAX_DOWNLOAD_BYTES {
        return Err("The mask is larger than 10 MB: attach a smaller image.".into());
    }
    let (w, h) = (mask.width.unwrap_or(0), mask.height.unwrap_or(0));
    if w > image_input::MAX_SIDE || h > image_input::MAX_SIDE {
        return Err(format!(
            "The mask is {w}x{h} pixels, over the limit of {max}x{max}: attach a smaller one.",
            max = image_input::MAX_SIDE
        ));
    }
    Ok(())
}

/// Downloads, decodes and fits the mask to a `size` picture, and saves it as a black-and-white
/// PNG in the data folder; the `Err` is the sentence for the user.
async fn save_mask(data: &Data, url: &str, size: (u32, u32), user: u64) -> Result<PathBuf, String> {
    let bytes = fetch_capped(&data.http_client, url, MAX_DOWNLOAD_BYTES, DOWNLOAD_TIMEOUT)
        .await
        .map_err(|e| e.to_string().replace("the attached image", "the mask"))?;
    let path = data
        .data_dir
        .join("inputs")
        .join(format!("{user}-{}-mask.png", rand::random::<u64>()));
    let target = path.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let painted = image_input::decode_mask(&bytes)
            .map_err(|e| format!("I could not use the mask: {e}."))?;
        let fitted = fit_mask(&painted, size);
        if let Some(problem) = mask_problem(&fitted) {
            return Err(problem.into());
        }
        let mut png = std::io::Cursor::new(Vec::new());
        fitted
            .write_to(&mut png, image::ImageFormat::Png)
            .map_err(|_| "I could not save the mask: please tell the bot's owner.".to_string())?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|_| "I could not save the mask: please tell the bot's owner.")?;
        }
        write_file_atomically(&target, png.get_ref())
            .map_err(|_| "I could not save the mask: please tell the bot's owner.".to_string())
    })
    .await
    .map_err(|_| "I could not use the mask: reading it failed unexpectedly.".to_string())??;
    Ok(path)
}

async fn private(ctx: Context<'_>, msg: String) -> Result<(), Error> {
    let reply = CreateReply::default()
        .content(msg)
        .ephemeral(true)
        .allowed_mentions(no_mentions());
    ctx.send(reply).await?;
    Ok(())
}

/// After `defer`, the public "thinking" message is removed and the refusal sent privately.
async fn refuse_after_defer(ctx: Context<'_>, msg: String) -> Result<(), Error> {
    if let poise::Context::Application(app) = ctx {
        let _ = app.interaction.delete_response(ctx.http()).await;
    }
    private(ctx, msg).await
}
