//! ✉️ on a result: the bot sends whoever reacted a DM with the job's seeds and full
//! parameters, as Midjourney does, so an image can be made again or studied. Read from the
//! store and the PNGs' own parameters, so it works on any result the bot still knows, after
//! restarts too. A reaction on anything else, or by a bot, does nothing.

use poise::serenity_prelude::Reaction;
use serde_json::json;

use super::Data;
use crate::render::read_parameters;
use crate::store::JobStatus;

/// The envelope emoji, with and without the emoji variation selector.
const ENVELOPES: [&str; 2] = ["✉️", "✉"];
/// Discord's limit on a message's content.
const MAX_CONTENT: usize = 2000;

pub async fn on_reaction(data: &Data, reaction: &Reaction) -> anyhow::Result<()> {
    let is_envelope = matches!(
        &reaction.emoji,
        poise::serenity_prelude::ReactionType::Unicode(e) if ENVELOPES.contains(&e.as_str())
    );
    let Some(user) = reaction.user_id.filter(|_| is_envelope) else {
        return Ok(());
    };
    if reaction.member.as_ref().is_some_and(|m| m.user.bot) {
        return Ok(());
    }
    let Some(job) = data.store.job_by_message(reaction.message_id.get()).await? else {
        return Ok(());
    };
    if job.status != JobStatus::Done {
        return Ok(());
    }
    let images = super::dispatcher::resolve_images(
        &data.data_dir,
        data.shared_images.as_ref(),
        data.store.images(job.id).await?,
    )
    .await;
    let seeds: Vec<String> = images.iter().map(|i| i.seed.to_string()).collect();
    let parameters = match images.first() {
        Some(first) => {
            let path = first.path.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| read_parameters(&bytes).ok().flatten())
            })
            .await?
        }
        None => None,
    };
    let mut content = format!(
        "**Job {}** · {} · seed{} {}",
        job.id.0,
        job.request.model,
        if seeds.len() == 1 { "" } else { "s" },
        seeds.join(", ")
    );
    if let Some(text) = parameters {
        // Inside a code block nothing formats or pings; the block's own fence is kept out.
        let text = text.replace("```", "'''");
        content.push_str(&format!("\n```\n{text}\n```"));
    }
    if content.chars().count() > MAX_CONTENT {
        content = content.chars().take(MAX_CONTENT - 4).collect::<String>() + "\n```";
    }
    let dm = data.rest.open_dm(user.get()).await?;
    let body = json!({ "content": content, "allowed_mentions": { "parse": [] } });
    if let Err(e) = data.rest.create_message(dm, &body, None).await {
        // DMs closed to the bot is the user's choice, not a fault.
        tracing::info!(job = job.id.0, "cannot DM the parameters: {e}");
    }
    Ok(())
}
