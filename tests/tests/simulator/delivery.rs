//! What exactly-once delivery is judged by: idempotent channel posts (`nonce` +
//! `enforce_nonce`), requests that hang (before or after Discord acted), when each interaction
//! was first answered, and how many times each finished result reached users.

use std::time::Duration;

use imagine_tests::{Change, Fault};
use serde_json::{json, Value};
use serenity::all::{Builder, CreateAttachment, CreateButton, CreateMessage, Nonce};

use crate::bot::TINY_PNG;
use crate::{ready_world, WAIT};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn a_repeated_post_with_an_enforced_nonce_returns_the_first_message() {
    let world = ready_world().await;
    let sim = &world.sim;
    let http = sim.bot_http();
    let post = |nonce: Nonce, enforce: bool| {
        let message = CreateMessage::new()
            .content("your image")
            .nonce(nonce)
            .enforce_nonce(enforce);
        world.channel.send_message(&http, message)
    };
    let first = post(Nonce::String("job-7-result".into()), true)
        .await
        .unwrap();
    let again = post(Nonce::String("job-7-result".into()), true)
        .await
        .unwrap();
    assert_eq!(again.id, first.id, "the retry created nothing");
    assert_eq!(sim.message_events().len(), 1);
    let numeric = post(Nonce::Number(7), true).await.unwrap();
    assert_ne!(numeric.id, first.id, "another nonce, another message");
    // Without enforce_nonce the nonce is only echoed: a second message is created.
    let unenforced = post(Nonce::String("job-8".into()), false).await.unwrap();
    let twice = post(Nonce::String("job-8".into()), false).await.unwrap();
    assert_ne!(unenforced.id, twice.id);
    // Discord forgets a nonce after a few minutes.
    sim.advance_clock(Duration::from_secs(6 * 60));
    let later = post(Nonce::String("job-7-result".into()), true)
        .await
        .unwrap();
    assert_ne!(later.id, first.id);
}

#[tokio::test]
async fn a_nonce_over_25_characters_is_refused() {
    let world = ready_world().await;
    let sim = &world.sim;
    let url = format!(
        "{}/api/v10/channels/{}/messages",
        sim.api_base(),
        world.channel
    );
    let send = |nonce: Value| {
        client()
            .post(url.clone())
            .header("authorization", format!("Bot {}", sim.token()))
            .json(&json!({ "content": "x", "nonce": nonce, "enforce_nonce": true }))
            .send()
    };
    assert_eq!(
        send(json!("n".repeat(25))).await.unwrap().status().as_u16(),
        200
    );
    let long = send(json!("n".repeat(26))).await.unwrap();
    assert_eq!(long.status().as_u16(), 400);
    let body: Value = long.json().await.unwrap();
    assert_eq!(
        body["errors"]["nonce"]["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH",
        "{body}"
    );
    assert_eq!(send(json!([1])).await.unwrap().status().as_u16(), 400);
}

#[tokio::test]
async fn a_hanging_request_is_never_answered_nor_acted_on_until_the_client_gives_up() {
    let world = ready_world().await;
    let sim = &world.sim;
    sim.fail_route("POST", "/channels/*/messages", Fault::Hang, 1);
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!(
        "{}/api/v10/channels/{}/messages",
        sim.api_base(),
        world.channel
    );
    let send = || {
        impatient
            .post(url.clone())
            .header("authorization", format!("Bot {}", sim.token()))
            .json(&json!({ "content": "hello" }))
            .send()
    };
    let error = send().await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    sim.wait_for("the simulator to see the client give up", WAIT, |entries| {
        entries
            .iter()
            .any(|e| matches!(e, imagine_tests::Entry::Note(n) if n.ends_with("the client gave up waiting")))
            .then_some(())
    })
    .await
    .unwrap();
    assert!(sim.message_events().is_empty(), "nothing was created");
    assert_eq!(
        send().await.unwrap().status().as_u16(),
        200,
        "the fault fired once"
    );
}

#[tokio::test]
async fn a_request_hanging_after_discord_acted_leaves_its_effect_and_a_nonce_retry_is_harmless() {
    let world = ready_world().await;
    let sim = &world.sim;
    sim.fail_route("POST", "/channels/*/messages", Fault::HangAfterApplying, 1);
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!(
        "{}/api/v10/channels/{}/messages",
        sim.api_base(),
        world.channel
    );
    let body = json!({ "content": "result", "nonce": "job-3", "enforce_nonce": true });
    let send = || {
        impatient
            .post(url.clone())
            .header("authorization", format!("Bot {}", sim.token()))
            .json(&body)
            .send()
    };
    assert!(send().await.unwrap_err().is_timeout());
    assert_eq!(sim.message_events().len(), 1, "Discord created the message");
    let retry: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(retry["id"], sim.message_events()[0].message["id"]);
    assert_eq!(sim.message_events().len(), 1, "the retry created nothing");
}

#[tokio::test]
async fn reports_tell_when_each_interaction_was_answered_and_which_failed() {
    let world = ready_world().await;
    let sim = &world.sim;
    let answered = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "a".into())],
        )
        .unwrap();
    sim.wait_callback(&answered, WAIT).await.unwrap();
    let ignored = sim
        .slash_command(world.alice, world.channel, "ignore", vec![])
        .unwrap();
    sim.advance_clock(Duration::from_secs(4));
    sim.wait_interaction_failed(&ignored, WAIT).await.unwrap();

    let reports = sim.interaction_reports();
    assert_eq!(reports.len(), 2);
    let first = &reports[0];
    assert_eq!(
        (first.interaction.id, first.user, first.callback),
        (answered.id, world.alice, Some(5))
    );
    assert!(
        first.answered_within(Duration::from_secs(3)) && !first.failed,
        "{first:?}"
    );
    let second = sim.interaction_report(&ignored).unwrap();
    assert!(
        second.failed && second.answered_after.is_none(),
        "{second:?}"
    );
}

#[tokio::test]
async fn a_result_edited_again_is_one_delivery_and_posted_again_is_two() {
    let world = ready_world().await;
    let sim = &world.sim;
    let run = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "a cat".into())],
        )
        .unwrap();
    // The minimal bot defers, then follows up with a PNG and two buttons: a finished result.
    let result = sim.wait_followup(&run, WAIT).await.unwrap();
    let deliveries = sim.deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].event.interaction, Some(run.id));
    assert_eq!(
        deliveries[0].event.change,
        Change::Edited,
        "it replaced the thinking message"
    );
    assert_eq!(deliveries[0].key, ["imagine:upscale:1", "imagine:reroll"]);

    // The same result edited onto @original again (a retry after a lost answer): still one.
    let http = sim.bot_http();
    let same = serenity::all::EditInteractionResponse::new()
        .content("**a cat**")
        .new_attachment(CreateAttachment::bytes(TINY_PNG, "grid.png"));
    same.execute(&http, &run.token).await.unwrap();
    assert_eq!(sim.deliveries().len(), 1);

    // Posted to the channel as well: a second delivery of the same result.
    let buttons = vec![serenity::all::CreateActionRow::Buttons(vec![
        CreateButton::new("imagine:upscale:1").label("U1"),
        CreateButton::new("imagine:reroll").label("Reroll"),
    ])];
    let post = CreateMessage::new()
        .content("**a cat**")
        .add_file(CreateAttachment::bytes(TINY_PNG, "grid.png"))
        .components(buttons);
    world.channel.send_message(&http, post).await.unwrap();
    let deliveries = sim.deliveries();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(
        deliveries[1].key, deliveries[0].key,
        "the same job's result, twice"
    );
    assert_eq!(deliveries[1].event.interaction, None);
    assert_eq!(result.id, deliveries[0].event.message_id);
}

#[tokio::test]
async fn a_result_fault_spares_progress_edits_and_hits_the_result() {
    let world = ready_world().await;
    let sim = &world.sim;
    sim.fail_result_route("POST", "/webhooks/**", Fault::ServerError(502), 1);
    let run = sim
        .slash_command(world.alice, world.channel, "ignore", vec![])
        .unwrap();
    let base = sim.api_base();
    let callback = format!(
        "{base}/api/v10/interactions/{}/{}/callback",
        run.id, run.token
    );
    let deferred = client()
        .post(callback)
        .json(&json!({ "type": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(deferred.status().as_u16(), 204);
    let url = format!(
        "{base}/api/v10/webhooks/{}/{}",
        sim.application_id(),
        run.token
    );
    let post = |body: Value, with_file: bool| {
        let mut form = reqwest::multipart::Form::new().text("payload_json", body.to_string());
        if with_file {
            let file = reqwest::multipart::Part::bytes(TINY_PNG.to_vec()).file_name("grid.png");
            form = form.part("files[0]", file);
        }
        client().post(url.clone()).multipart(form).send()
    };
    let buttons = json!([{ "type": 1, "components": [
        { "type": 2, "style": 2, "label": "U1", "custom_id": "imagine:u:1:0" },
        { "type": 2, "style": 2, "label": "U2", "custom_id": "imagine:u:1:1" },
    ] }]);
    let progress = post(json!({ "content": "50%" }), true).await.unwrap();
    assert_eq!(
        progress.status().as_u16(),
        200,
        "a preview without buttons passes"
    );
    let result = json!({ "content": "done", "components": buttons });
    assert_eq!(
        post(result.clone(), true).await.unwrap().status().as_u16(),
        502
    );
    assert_eq!(
        post(result, true).await.unwrap().status().as_u16(),
        200,
        "one shot"
    );
}
