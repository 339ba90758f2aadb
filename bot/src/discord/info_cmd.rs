//! `/info`: a private summary for whoever asks: their queued and running jobs (with places in
//! line), the queue's length and workers, and each model with its typical job time, measured
//! from the jobs the store has recently finished.

use std::fmt::Write;

use poise::CreateReply;

use super::messages::no_mentions;
use super::{Context, Error};
use crate::store::JobStatus;

/// Your jobs, the queue, and the models with their typical job time.
#[poise::command(
    slash_command,
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm|PrivateChannel"
)]
pub async fn info(ctx: Context<'_>) -> Result<(), Error> {
    let data = ctx.data();
    let user = ctx.author().id.get();
    let positions = data.queue.positions();
    let mine = data.store.active_jobs_of(user).await?;
    let mut text = String::from("**Your jobs**\n");
    if mine.is_empty() {
        text.push_str("None queued or running.\n");
    }
    for job in &mine {
        let prompt: String = job.request.prompt.chars().take(60).collect();
        let state = match job.status {
            JobStatus::Running => "running".to_string(),
            _ => match positions.iter().find(|(id, _)| *id == job.id) {
                Some((_, p)) => format!("waiting, position {p}"),
                None => "about to start".to_string(),
            },
        };
        writeln!(text, "- `{prompt}` ({state})")?;
    }
    let running = data.queue.running().len();
    writeln!(
        text,
        "\n**Queue**: {} waiting, {running} running on {} worker{}",
        positions.len(),
        data.queue.workers(),
        if data.queue.workers() == 1 { "" } else { "s" }
    )?;
    let times = data.store.typical_job_seconds().await?;
    text.push_str("\n**Models**\n");
    for name in data.models.keys() {
        let default = if *name == data.config.default_model {
            " (default)"
        } else {
            ""
        };
        let typical = match times.iter().find(|(model, _)| model == name) {
            Some((_, s)) if *s < 90.0 => format!("a job takes about {s:.0} s"),
            Some((_, s)) => format!("a job takes about {:.0} min", s / 60.0),
            None => "no job timed yet".to_string(),
        };
        writeln!(text, "- `{name}`{default}: {typical}")?;
    }
    let reply = CreateReply::default()
        .content(text)
        .ephemeral(true)
        .allowed_mentions(no_mentions());
    ctx.send(reply).await?;
    Ok(())
}
