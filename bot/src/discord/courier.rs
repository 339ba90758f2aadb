//! Live edits of a job's message while it waits or runs (queue position, progress, preview),
//! through serenity. While the interaction token is fresh the bot edits its interaction
//! message; plain-DM jobs edit the bot's own channel message. Once the token is dead a live
//! message can no longer change; the final message is then delivered another way (see
//! [`super::delivery`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use poise::serenity_prelude::{
    self as serenity, Builder, ChannelId, CreateAttachment, EditInteractionResponse, EditMessage,
    Http, MessageId,
};

use super::messages;
use crate::render::grid_2x2;
use crate::store::{ImageRecord, Job, JobKind};

/// Interaction tokens last 15 minutes; stop using one a little before.
pub const TOKEN_LIFETIME_MS: i64 = 14 * 60 * 1000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The job's interaction token while it is still usable.
pub fn fresh_token(job: &Job) -> Option<&str> {
    let token = job.request.interaction_token.as_deref()?;
    (now_ms() - job.created_at < TOKEN_LIFETIME_MS).then_some(token)
}

#[derive(Clone)]
pub struct Courier {
    pub http: Arc<Http>,
}

impl Courier {
    /// Edits the job's live message in place, if it still can.
    async fn edit(&self, job: &Job, content: String, file: Option<CreateAttachment>) -> Result<()> {
        let components = messages::cancel_row(job.id);
        if let Some(token) = fresh_token(job) {
            let mut edit = EditInteractionResponse::new()
                .content(content)
                .components(components)
                .allowed_mentions(messages::mentions(job));
            if let Some(file) = file {
                edit = edit.new_attachment(file);
            }
            edit.execute(&*self.http, token)
                .await
                .map_err(scrub)
                .context("editing the interaction response")?;
        } else if let (None, Some(message)) = (job.request.application_id, job.message_id) {
            let mut edit = EditMessage::new()
                .content(content)
                .components(components)
                .allowed_mentions(messages::mentions(job));
            if let Some(file) = file {
                edit = edit.new_attachment(file);
            }
            ChannelId::new(job.request.channel_id)
                .edit_message(&*self.http, MessageId::new(message), edit)
                .await
                .map_err(scrub)
                .context("editing the job's message")?;
        }
        Ok(())
    }

    pub async fn queued(
        &self,
        job: &Job,
        position: usize,
        wait: Option<std::time::Duration>,
    ) -> Result<()> {
        self.edit(job, messages::queued(job, position, wait), None)
            .await
    }

    pub async fn progress(&self, job: &Job, percent: u8, preview: Option<Vec<u8>>) -> Result<()> {
        let file = preview.map(|png| CreateAttachment::bytes(png, "preview.png"));
        self.edit(job, messages::running(job, percent), file).await
    }
}

/// The PNG a finished job shows: the 2x2 grid, or the single image of a U job. Blocking (file
/// reads, decoding, grid assembly, PNG encoding): call it off the async runtime.
pub fn result_file(job: &Job, images: &[ImageRecord]) -> Result<(String, Vec<u8>)> {
    let first = images.first().context("the job has no images")?;
    if job.request.kind == JobKind::Upscale || images.len() == 1 {
        let bytes = std::fs::read(&first.path)
            .with_context(|| format!("cannot read {}", first.path.display()))?;
        return Ok((format!("imagine-{}.png", job.id.0), bytes));
    }
    let imgs = images
        .iter()
        .map(|r| {
            Ok(image::open(&r.path)
                .with_context(|| format!("cannot read {}", r.path.display()))?
                .to_rgb8())
        })
        .collect::<Result<Vec<_>>>()?;
    let grid = grid_2x2(&imgs)?;
    let params = std::fs::read(&first.path)
        .ok()
        .and_then(|b| crate::render::read_parameters(&b).ok().flatten())
        .unwrap_or_default();
    Ok((
        format!("imagine-{}-grid.png", job.id.0),
        crate::render::png_bytes(&grid, &params)?,
    ))
}

/// serenity's HTTP errors carry the request URL, which holds the interaction token: keep
/// only the status and Discord's message.
pub fn scrub(e: serenity::Error) -> anyhow::Error {
    crate::metrics::discord_error(&e);
    match e {
        serenity::Error::Http(serenity::HttpError::UnsuccessfulRequest(r)) => anyhow::anyhow!(
            "Discord answered {} ({}: {})",
            r.status_code,
            r.error.code,
            r.error.message
        ),
        other => anyhow::anyhow!("{}", redact_paths(&other.to_string())),
    }
}

/// Cuts every URL path after `/webhooks/` or `/interactions/`, where tokens live.
pub fn redact_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(char::is_whitespace) {
        match ["/webhooks/", "/interactions/"]
            .iter()
            .find_map(|m| word.find(m).map(|i| i + m.len()))
        {
            Some(cut) => {
                out.push_str(&word[..cut]);
                out.push_str("***");
                if word.ends_with(char::is_whitespace) {
                    out.push(' ');
                }
            }
            None => out.push_str(word),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_in_urls_are_redacted() {
        let s =
            super::redact_paths("error sending https://x/api/v10/webhooks/1/SECRET/messages now");
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.ends_with("now"));
        let s = super::redact_paths("(url: \"http://h/api/v10/interactions/9/TOKEN/callback\")");
        assert!(!s.contains("TOKEN"), "{s}");
    }
}
