//! Admission and delivery as the bot relies on them: an unconfirmed job never runs, an ended
//! job stays in the outbox until delivered, and tokens do not outlive their use.

use super::tests::{image, new_job};
use super::*;

async fn a_job_whose_first_reply_is_unconfirmed_is_not_resumed_and_can_be_abandoned(store: Store) {
    let pending = store
        .insert_admitting(&new_job(1, "pending"), Some("https://cdn/x.png"))
        .await
        .unwrap();
    let confirmed = store
        .insert_admitting(&new_job(1, "confirmed"), None)
        .await
        .unwrap();
    store.confirm_admission(confirmed).await.unwrap();
    let resumed: Vec<JobId> = store
        .unfinished_jobs()
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(resumed, [confirmed]);
    let unadmitted = store.unadmitted_jobs().await.unwrap();
    assert_eq!(unadmitted.len(), 1);
    assert_eq!(
        unadmitted[0].delivery.image_url.as_deref(),
        Some("https://cdn/x.png")
    );

    assert!(store.abandon(pending).await.unwrap());
    let job = store.job(pending).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.delivery.delivered_at.is_some(), "nothing to deliver");
    assert_eq!(job.request.interaction_token, None);
    assert!(
        !store.abandon(confirmed).await.unwrap(),
        "admitted jobs are left alone"
    );
    assert!(store.outbox(i64::MAX, 10).await.unwrap().is_empty());
}

async fn an_ended_job_stays_in_the_outbox_until_delivered(store: Store) {
    let id = store.insert_job(&new_job(1, "a cat")).await.unwrap();
    store.mark_running(id).await.unwrap();
    store.finish_job(id, &[image(0, 1)]).await.unwrap();
    assert_eq!(store.undelivered().await.unwrap(), 1);

    store.delivery_failed(id, 5_000).await.unwrap();
    assert!(
        store.outbox(4_999, 10).await.unwrap().is_empty(),
        "backing off"
    );
    let due = store.outbox(5_000, 10).await.unwrap();
    assert_eq!((due.len(), due[0].delivery.attempts), (1, 1));

    assert!(store.mark_delivered(id).await.unwrap());
    assert!(!store.mark_delivered(id).await.unwrap(), "delivered once");
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        job.request.interaction_token, None,
        "the token is forgotten"
    );
    assert_eq!(store.undelivered().await.unwrap(), 0);
}

async fn one_outbox_at_a_time_claims_a_delivery_until_it_ends_or_expires(store: Store) {
    let id = store
        .insert_job(&new_job(1, "a claimed cat"))
        .await
        .unwrap();
    store.mark_running(id).await.unwrap();
    store.finish_job(id, &[image(0, 1)]).await.unwrap();
    // Gateway A claims it until t=10 000; gateway B, at t=1 000, neither sees nor gets it.
    assert!(store.claim_delivery(id, 1_000, 10_000).await.unwrap());
    assert!(store.outbox(1_000, 10).await.unwrap().is_empty());
    assert!(!store.claim_delivery(id, 1_000, 20_000).await.unwrap());
    // A failed attempt ends the claim: whoever comes next (after the backoff) may take it.
    store.delivery_failed(id, 2_000).await.unwrap();
    assert_eq!(store.outbox(2_000, 10).await.unwrap().len(), 1);
    assert!(store.claim_delivery(id, 2_000, 12_000).await.unwrap());
    // A claim left by a gateway that died expires; then another one takes it over.
    assert!(!store.claim_delivery(id, 11_999, 30_000).await.unwrap());
    assert_eq!(store.outbox(12_000, 10).await.unwrap().len(), 1);
    assert!(store.claim_delivery(id, 12_000, 30_000).await.unwrap());
    // Delivered: nobody claims it again, not even after the claim's time.
    assert!(store.mark_delivered(id).await.unwrap());
    assert!(!store.claim_delivery(id, 40_000, 50_000).await.unwrap());
    assert!(store.outbox(i64::MAX, 10).await.unwrap().is_empty());
    // A released claim (a DM notice shown) frees the job at once.
    let other = store.insert_job(&new_job(1, "a notice")).await.unwrap();
    store.mark_running(other).await.unwrap();
    store.fail_job(other, "no").await.unwrap();
    assert!(store.claim_delivery(other, 0, 10_000).await.unwrap());
    store.release_delivery(other).await.unwrap();
    assert!(store.claim_delivery(other, 1, 10_000).await.unwrap());
}

async fn the_shared_line_is_the_admitted_waiting_jobs_in_admission_order(store: Store) {
    let first = store.insert_job(&new_job(1, "first")).await.unwrap();
    let unconfirmed = store
        .insert_admitting(&new_job(2, "unconfirmed"), None)
        .await
        .unwrap();
    let running = store.insert_job(&new_job(3, "running")).await.unwrap();
    store.mark_running(running).await.unwrap();
    let last = store.insert_job(&new_job(4, "last")).await.unwrap();
    assert_eq!(store.queued_jobs().await.unwrap(), [first, last]);
    store.confirm_admission(unconfirmed).await.unwrap();
    store.cancel_job(first).await.unwrap();
    assert_eq!(store.queued_jobs().await.unwrap(), [unconfirmed, last]);
}

async fn running_jobs_are_not_delivered_and_stopped_ones_go_back_in_line(store: Store) {
    let id = store.insert_job(&new_job(1, "a dog")).await.unwrap();
    store.mark_running(id).await.unwrap();
    assert!(store.outbox(i64::MAX, 10).await.unwrap().is_empty());
    store.requeue_job(id).await.unwrap();
    assert_eq!(
        store.job(id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
}

async fn dead_tokens_are_forgotten_and_dm_notices_are_shown_once(store: Store) {
    let mut away = new_job(1, "far away");
    away.bot_in_place = false;
    let id = store.insert_job(&away).await.unwrap();
    let here = store.insert_job(&new_job(1, "right here")).await.unwrap();
    let due = store.dm_notices_due(i64::MAX).await.unwrap();
    assert_eq!(due.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    store.mark_dm_notice(id).await.unwrap();
    assert!(store.dm_notices_due(i64::MAX).await.unwrap().is_empty());

    assert_eq!(
        store.forget_dead_tokens(0).await.unwrap(),
        0,
        "none are old"
    );
    assert_eq!(store.forget_dead_tokens(i64::MAX).await.unwrap(), 2);
    let job = store.job(here).await.unwrap().unwrap();
    assert_eq!(job.request.interaction_token, None);
}

on_both_backends! {
    a_job_whose_first_reply_is_unconfirmed_is_not_resumed_and_can_be_abandoned,
    an_ended_job_stays_in_the_outbox_until_delivered,
    one_outbox_at_a_time_claims_a_delivery_until_it_ends_or_expires,
    running_jobs_are_not_delivered_and_stopped_ones_go_back_in_line,
    the_shared_line_is_the_admitted_waiting_jobs_in_admission_order,
    dead_tokens_are_forgotten_and_dm_notices_are_shown_once,
}
