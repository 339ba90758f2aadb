//! Admitting a job, the same for `/imagine`, a plain DM and a button: take a queue slot, write
//! the job, post its first message (saying its place in line), fetch any image prompt, and
//! only then put it in line, so the worker never starts a job whose message or input is
//! missing.

use std::future::Future;

use anyhow::Context as _;

use super::image_prompt::download_image;
use super::{messages, Data, Error};
use crate::store::NewJob;

/// What became of a request.
pub enum Admission {
    /// Queued (or failed visibly after its message was posted).
    Accepted,
    /// Refused before anything was written: the private reply to give.
    Refused(String),
}

/// Admits `new_job`. `announce` posts the first message and returns its id, if any.
/// `image_url` is the image prompt to download into `new_job.params.init_image`.
pub async fn admit<A, F>(
    data: &Data,
    new_job: &NewJob,
    image_url: Option<&str>,
    announce: A,
) -> Result<Admission, Error>
where
    A: FnOnce(String) -> F,
    F: Future<Output = Result<Option<u64>, Error>>,
{
    let reservation = match data.queue.reserve(new_job.user_id) {
        Ok(r) => r,
        Err(e) => return Ok(Admission::Refused(e.to_string())),
    };
    let id = data.store.insert_job(new_job).await?;
    let expected = reservation.expected_position();
    let job = data
        .store
        .job(id)
        .await?
        .context("the job just written is missing")?;
    if let Some(message) = announce(messages::queued(&job, expected)).await? {
        data.store.set_message(id, message).await?;
    }
    let job = data.store.job(id).await?.unwrap_or(job);
    if let (Some(url), Some(path)) = (image_url, &new_job.params.init_image) {
        if let Err(why) = download_image(data, url, path).await {
            data.store.fail_job(id, &why).await?;
            let _ = data.courier().failed(&job, &why).await;
            return Ok(Admission::Accepted);
        }
    }
    let position = reservation.commit(id);
    if position != expected {
        let _ = data.courier().queued(&job, position).await;
    }
    Ok(Admission::Accepted)
}
