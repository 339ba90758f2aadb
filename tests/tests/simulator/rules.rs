//! Discord's rules, each shown firing: the 3 s deadline, one callback per interaction, the
//! 15 min token, and the message limits (custom_id, rows, buttons, content, file size).
//!
//! The bot ignores `/ignore`, so these tests answer its interactions themselves with raw HTTP:
//! they test the simulator's rules, not serenity's own client-side checks.

use std::time::Duration;

use imagine_tests::{Interaction, SimConfig, Simulator};
use serde_json::{json, Value};

use crate::{bot, ready_world, World, WAIT};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post_json(url: String, body: Value) -> (u16, Value) {
    let response = client().post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn callback(world: &World, run: &Interaction, body: Value) -> (u16, Value) {
    let url = format!(
        "{}/api/v10/interactions/{}/{}/callback",
        world.sim.api_base(),
        run.id,
        run.token
    );
    post_json(url, body).await
}

async fn followup(world: &World, run: &Interaction, body: Value) -> (u16, Value) {
    let url = format!(
        "{}/api/v10/webhooks/{}/{}",
        world.sim.api_base(),
        world.sim.application_id(),
        run.token
    );
    post_json(url, body).await
}

pub(crate) fn ignored(world: &World) -> Interaction {
    world
        .sim
        .slash_command(world.alice, world.channel, "ignore", vec![])
        .unwrap()
}

/// An interaction the test has deferred, ready for follow-ups.
async fn deferred(world: &World) -> Interaction {
    let run = ignored(world);
    assert_eq!(callback(world, &run, json!({ "type": 5 })).await.0, 204);
    run
}

fn button(custom_id: &str) -> Value {
    json!({ "type": 2, "style": 1, "label": "go", "custom_id": custom_id })
}

fn row(buttons: usize) -> Value {
    let buttons: Vec<Value> = (0..buttons).map(|i| button(&format!("b{i}"))).collect();
    json!({ "type": 1, "components": buttons })
}

#[tokio::test]
async fn an_interaction_not_answered_within_three_seconds_fails() {
    let world = ready_world().await;
    let run = ignored(&world);
    world.sim.advance_clock(Duration::from_secs(4));
    world.sim.wait_interaction_failed(&run, WAIT).await.unwrap();

    let (status, body) = callback(&world, &run, json!({ "type": 5 })).await;
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!(10062)),
        "{body}"
    );
}

#[tokio::test]
async fn the_bots_unanswered_command_fails_on_the_real_clock_too() {
    let world = ready_world().await;
    let run = ignored(&world);
    // No clock tricks: the watcher fires after 3 real seconds.
    world.sim.wait_interaction_failed(&run, WAIT).await.unwrap();
}

#[tokio::test]
async fn a_second_callback_to_the_same_interaction_is_rejected() {
    let world = ready_world().await;
    let run = deferred(&world).await;
    let (status, body) = callback(
        &world,
        &run,
        json!({ "type": 4, "data": { "content": "hi" } }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 40060);
    assert!(
        body.get("message").is_some() && body.get("errors").is_some(),
        "{body}"
    );
}

#[tokio::test]
async fn the_interaction_token_expires_after_fifteen_minutes() {
    let world = ready_world().await;
    let run = deferred(&world).await;
    assert_eq!(
        followup(&world, &run, json!({ "content": "in time" }))
            .await
            .0,
        200
    );

    world.sim.advance_clock(Duration::from_secs(15 * 60 + 1));
    let (status, body) = followup(&world, &run, json!({ "content": "too late" })).await;
    assert_eq!(
        (status, body["code"].clone()),
        (401, json!(50027)),
        "{body}"
    );
    let edit = format!(
        "{}/api/v10/webhooks/{}/{}/messages/@original",
        world.sim.api_base(),
        world.sim.application_id(),
        run.token
    );
    let response = client()
        .patch(edit)
        .json(&json!({ "content": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn a_custom_id_over_100_characters_is_rejected() {
    let world = ready_world().await;
    let run = deferred(&world).await;
    let ok = json!({ "components": [{ "type": 1, "components": [button(&"x".repeat(100))] }] });
    assert_eq!(followup(&world, &run, ok).await.0, 200);
    let long = json!({ "components": [{ "type": 1, "components": [button(&"x".repeat(101))] }] });
    let (status, body) = followup(&world, &run, long).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(50035)),
        "{body}"
    );
    let leaf = &body["errors"]["components"]["0"]["components"]["0"]["custom_id"]["_errors"][0];
    assert_eq!(leaf["code"], "BASE_TYPE_BAD_LENGTH", "{body}");
}

#[tokio::test]
async fn more_than_five_rows_or_five_buttons_per_row_are_rejected() {
    let world = ready_world().await;
    let run = deferred(&world).await;
    let (status, body) = followup(&world, &run, json!({ "components": vec![row(1); 6] })).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(50035)),
        "{body}"
    );
    assert!(body["errors"]["components"]["_errors"].is_array(), "{body}");

    let (status, body) = followup(&world, &run, json!({ "components": [row(5), row(6)] })).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"]["components"]["1"]["components"]["_errors"].is_array(),
        "{body}"
    );

    // The same rules hold for a message sent in the callback itself, nested under `data`.
    let fresh = ignored(&world);
    let (status, body) = callback(
        &world,
        &fresh,
        json!({ "type": 4, "data": { "components": vec![row(1); 6] } }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"]["data"]["components"]["_errors"].is_array(),
        "{body}"
    );
}

#[tokio::test]
async fn content_over_2000_characters_is_rejected() {
    let world = ready_world().await;
    let run = deferred(&world).await;
    assert_eq!(
        followup(&world, &run, json!({ "content": "é".repeat(2000) }))
            .await
            .0,
        200
    );
    let (status, body) = followup(&world, &run, json!({ "content": "a".repeat(2001) })).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(50035)),
        "{body}"
    );
    assert_eq!(
        body["errors"]["content"]["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH",
        "{body}"
    );

    let url = format!(
        "{}/api/v10/channels/{}/messages",
        world.sim.api_base(),
        world.channel
    );
    let response = client()
        .post(url)
        .header("authorization", format!("Bot {}", world.sim.token()))
        .json(&json!({ "content": "a".repeat(2001) }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn a_file_over_the_attachment_size_limit_is_rejected() {
    let config = SimConfig {
        attachment_size_limit: 1024,
        ..SimConfig::default()
    };
    let sim = Simulator::start_with(config).await;
    let guild = sim.add_guild("g");
    let channel = sim.add_channel(guild, "c");
    let alice = sim.add_user("alice");
    bot::start(&sim).await;
    sim.wait_ready(WAIT).await.unwrap();
    let world = World {
        sim,
        channel,
        alice,
    };
    let run = deferred(&world).await;

    let send = |size: usize| {
        let url = format!(
            "{}/api/v10/webhooks/{}/{}",
            world.sim.api_base(),
            world.sim.application_id(),
            run.token
        );
        let file = reqwest::multipart::Part::bytes(vec![0u8; size])
            .file_name("big.png")
            .mime_str("image/png")
            .unwrap();
        let form = reqwest::multipart::Form::new()
            .text(
                "payload_json",
                json!({ "content": "file", "attachments": [{ "id": 0, "filename": "big.png" }] })
                    .to_string(),
            )
            .part("files[0]", file);
        client().post(url).multipart(form).send()
    };
    let fits = send(1024).await.unwrap();
    assert_eq!(fits.status().as_u16(), 200);
    let message: Value = fits.json().await.unwrap();
    assert_eq!(message["attachments"][0]["size"], 1024);

    let too_big = send(1025).await.unwrap();
    assert_eq!(
        too_big.status().as_u16(),
        413,
        "Discord answers 413 for oversized uploads"
    );
    let body: Value = too_big.json().await.unwrap();
    assert_eq!(body["code"], 40005, "{body}");
    let calls = world.sim.transcript();
    let last = calls.rest_calls().last().unwrap();
    assert_eq!(
        last.files[0].size, 1025,
        "the transcript records the upload\n{calls}"
    );
}
