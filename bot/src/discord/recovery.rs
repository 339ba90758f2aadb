//! What a start picks up from the store: the jobs a stop interrupted. A gateway that runs
//! only some of the shards shares the store with the gateways running the others, whose jobs
//! are live: it takes back only its own guilds' jobs (and DMs' on shard 0), the ones no one
//! else would run, and leaves the rest to their gateway.

use crate::shards::ShardRange;
use crate::store::{Job, Store, StoreError};

/// `running` jobs of these shards go back to `queued`: their runner stopped with this process.
/// Returns how many.
pub async fn requeue_interrupted(store: &Store, shards: ShardRange) -> Result<u64, StoreError> {
    if shards.is_whole() {
        // The only gateway: every running job was its own (one statement).
        return store.requeue_running().await;
    }
    let mut requeued = 0;
    for job in store.running_jobs().await? {
        if !shards.covers(job.request.guild_id) {
            continue;
        }
        match store.requeue_job(job.id).await {
            Ok(()) => requeued += 1,
            // Its result was recorded meanwhile (another gateway read it): nothing to redo.
            Err(StoreError::IllegalTransition { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(requeued)
}

/// The admitted jobs that have not ended and belong to these shards, oldest first.
pub async fn unfinished_jobs(store: &Store, shards: ShardRange) -> Result<Vec<Job>, StoreError> {
    let jobs = store.unfinished_jobs().await?;
    Ok(jobs
        .into_iter()
        .filter(|j| shards.covers(j.request.guild_id))
        .collect())
}
