//! Getting a job's state onto Discord. While the interaction token is fresh the bot edits its
//! interaction message; after 15 minutes the token is dead, so the result is posted through the
//! bot's own channel (or DM) endpoint instead. Plain-DM jobs always use the channel endpoints.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use poise::serenity_prelude::{
    self as serenity, Builder, ChannelId, CreateAllowedMentions, CreateAttachment, CreateMessage,
    EditInteractionResponse, EditMessage, Http, MessageId,
};

use super::messages;
use crate::render::grid_2x2;
use crate::store::{ImageRecord, Job, JobKind};

/// Interaction tokens last 15 minutes; stop using one a little before.
const TOKEN_LIFETIME_MS: i64 = 14 * 60 * 1000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Clone)]
pub struct Courier {
    pub http: Arc<Http>,
}

/// A message's new look.
struct View {
    content: String,
    file: Option<CreateAttachment>,
    components: Vec<serenity::CreateActionRow>,
}

impl Courier {
    fn fresh_token(job: &Job) -> Option<&str> {
        let token = job.request.interaction_token.as_deref()?;
        (now_ms() - job.created_at < TOKEN_LIFETIME_MS).then_some(token)
    }

    /// Edits the job's message in place, if it still can. Progress is best effort.
    async fn edit(&self, job: &Job, view: View) -> Result<()> {
        if let Some(token) = Self::fresh_token(job) {
            let mut edit = EditInteractionResponse::new()
                .content(view.content)
                .components(view.components);
            if let Some(file) = view.file {
                edit = edit.new_attachment(file);
            }
            edit.execute(&*self.http, token)
                .await
                .map_err(scrub)
                .context("editing the interaction response")?;
        } else if let (None, Some(message)) = (&job.request.interaction_token, job.message_id) {
            let mut edit = EditMessage::new()
                .content(view.content)
                .components(view.components);
            if let Some(file) = view.file {
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

    pub async fn queued(&self, job: &Job, position: usize) -> Result<()> {
        let view = View {
            content: messages::queued(job, position),
            file: None,
            components: vec![],
        };
        self.edit(job, view).await
    }

    pub async fn progress(&self, job: &Job, percent: u8, preview: Option<Vec<u8>>) -> Result<()> {
        let view = View {
            content: messages::running(job, percent),
            file: preview.map(|png| CreateAttachment::bytes(png, "preview.png")),
            components: vec![],
        };
        self.edit(job, view).await
    }

    /// The finished job: the grid (or single image) and its buttons. Falls back to a new
    /// channel message when the interaction message cannot be edited any more.
    pub async fn done(&self, job: &Job, images: &[ImageRecord]) -> Result<()> {
        let (name, png) = result_file(job, images)?;
        let content = messages::done(job);
        let components = messages::buttons(job.id, job.request.kind);
        let view = View {
            content: content.clone(),
            file: Some(CreateAttachment::bytes(png.clone(), name.clone())),
            components: components.clone(),
        };
        let late = Self::fresh_token(job).is_none() && job.request.interaction_token.is_some();
        if !late {
            match self.edit(job, view).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    crate::metrics::delivery_retry();
                    tracing::warn!(job = job.id.0, "cannot edit, posting instead: {e:#}")
                }
            }
        }
        let message = CreateMessage::new()
            .content(content)
            .add_file(CreateAttachment::bytes(png, name))
            .components(components)
            .allowed_mentions(CreateAllowedMentions::new().users([job.request.user_id]));
        ChannelId::new(job.request.channel_id)
            .send_message(&*self.http, message)
            .await
            .map_err(scrub)
            .context("posting the finished job")?;
        Ok(())
    }

    pub async fn failed(&self, job: &Job, error: &str) -> Result<()> {
        let content = messages::failed(job, error);
        let view = View {
            content: content.clone(),
            file: None,
            components: vec![],
        };
        let editable = Self::fresh_token(job).is_some() || job.request.interaction_token.is_none();
        if editable && self.edit(job, view).await.is_ok() {
            return Ok(());
        }
        ChannelId::new(job.request.channel_id)
            .send_message(&*self.http, CreateMessage::new().content(content))
            .await
            .map_err(scrub)
            .context("posting the failure")?;
        Ok(())
    }
}

/// The PNG a finished job shows: the 2x2 grid, or the single image of a U job.
fn result_file(job: &Job, images: &[ImageRecord]) -> Result<(String, Vec<u8>)> {
    if job.request.kind == JobKind::Upscale || images.len() == 1 {
        let bytes = std::fs::read(&images[0].path)
            .with_context(|| format!("cannot read {}", images[0].path.display()))?;
        return Ok((format!("imagine-{}.png", job.id.0), bytes));
    }
    let imgs = images
        .iter()
        .map(|r| Ok(image::open(&r.path)?.to_rgb8()))
        .collect::<Result<Vec<_>>>()?;
    let grid = grid_2x2(&imgs)?;
    let params = std::fs::read(&images[0].path)
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
fn scrub(e: serenity::Error) -> anyhow::Error {
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
fn redact_paths(text: &str) -> String {
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
    }
}
