//! Jobs written whose first reply was never confirmed: the reply failed (past 3 s, a 5xx), or
//! the bot stopped between writing the job and hearing back. Such a job must not run days
//! later. At start each is resolved: kept if its first message exists (Discord's answer was
//! only lost), else abandoned, cancelled, without delivery.

use tracing::Instrument;

use super::courier::fresh_token;
use super::messages;
use super::rest::Rest;
use crate::shards::ShardRange;
use crate::store::{Job, Store, StoreError};

/// Tells the requester, on a first reply that may have reached Discord late, that the job was
/// not queued. Best effort: if the reply never landed there is nothing to edit.
pub async fn say_not_queued(rest: &Rest, job: &Job) {
    let (Some(app), Some(token)) = (job.request.application_id, fresh_token(job)) else {
        return;
    };
    let body = serde_json::json!({
        "content": "Something went wrong while queueing this. Please try again.",
        "components": [],
        "allowed_mentions": messages::mentions_json(job),
    });
    let _ = rest.edit_original(app, token, &body, None).await;
}

/// At start: admits the unconfirmed jobs of this process's shards whose first message exists,
/// abandons the others. Jobs of other shards are their gateway's: one may be admitting them
/// right now. Returns (kept, abandoned).
pub async fn resolve_at_start(
    store: &Store,
    rest: &Rest,
    shards: ShardRange,
) -> Result<(usize, usize), StoreError> {
    let (mut kept, mut abandoned) = (0, 0);
    let unadmitted = store.unadmitted_jobs().await?;
    for job in unadmitted
        .into_iter()
        .filter(|j| shards.covers(j.request.guild_id))
    {
        let span = tracing::info_span!("job", id = job.id.0);
        if resolve(store, rest, &job).instrument(span).await? {
            kept += 1;
        } else {
            abandoned += 1;
        }
    }
    Ok((kept, abandoned))
}

/// Returns whether the job was kept.
async fn resolve(store: &Store, rest: &Rest, job: &Job) -> Result<bool, StoreError> {
    let message = match (job.request.application_id, fresh_token(job)) {
        (Some(app), Some(token)) => rest.get_original(app, token).await.ok(),
        _ => None,
    };
    let message_id = message
        .as_ref()
        .and_then(|m| m["id"].as_str())
        .and_then(|id| id.parse::<u64>().ok());
    let Some(id) = message_id else {
        store.abandon(job.id).await?;
        tracing::info!("its first reply never reached Discord: abandoned");
        return Ok(false);
    };
    store.set_message(job.id, id).await?;
    store.confirm_admission(job.id).await?;
    tracing::info!("its first reply exists: admitted");
    Ok(true)
}
