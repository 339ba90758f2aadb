//! `allowed_mentions`, checked as Discord checks it, and whom each message pings, recorded
//! for every created or edited message.

use imagine_tests::{Interaction, Simulator};
use serde_json::{json, Value};
use serenity::all::{CreateAllowedMentions, CreateMessage};

use crate::{ready_world, World, WAIT};

async fn deferred(world: &World) -> Interaction {
    let run = world
        .sim
        .slash_command(world.alice, world.channel, "ignore", vec![])
        .unwrap();
    let url = format!(
        "{}/api/v10/interactions/{}/{}/callback",
        world.sim.api_base(),
        run.id,
        run.token
    );
    let answer = client()
        .post(url)
        .json(&json!({ "type": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 204);
    run
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn followup(sim: &Simulator, run: &Interaction, body: Value) -> (u16, Value) {
    let url = format!(
        "{}/api/v10/webhooks/{}/{}",
        sim.api_base(),
        sim.application_id(),
        run.token
    );
    let response = client().post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn without_allowed_mentions_everything_in_the_content_pings() {
    let world = ready_world().await;
    let sim = &world.sim;
    let bob = sim.add_user("bob");
    let run = deferred(&world).await;
    let content = format!("<@{}> drew this for <@{bob}> @everyone <@&42>", world.alice);
    let (status, message) = followup(sim, &run, json!({ "content": content })).await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["mention_everyone"], true);
    assert_eq!(
        message["mentions"].as_array().unwrap().len(),
        2,
        "{message}"
    );
    let pings = sim.message_events().pop().unwrap().pings;
    assert!(pings.everyone && pings.users.contains(&bob) && pings.roles.len() == 1);
    assert!(!pings.at_most(world.alice));
}

#[tokio::test]
async fn allowed_mentions_limit_the_pings_to_whom_they_name() {
    let world = ready_world().await;
    let sim = &world.sim;
    let bob = sim.add_user("bob");
    let content = format!("<@{}> asked: <@{bob}> @everyone <@&42>", world.alice);
    // As serenity sends it, through the bot's channel endpoint.
    let message = CreateMessage::new()
        .content(content)
        .allowed_mentions(CreateAllowedMentions::new().users([world.alice]));
    let sent = world
        .channel
        .send_message(&sim.bot_http(), message)
        .await
        .unwrap();
    assert_eq!(
        sent.mentions.iter().map(|u| u.id).collect::<Vec<_>>(),
        [world.alice]
    );
    assert!(!sent.mention_everyone && sent.mention_roles.is_empty());
    let event = sim.message_events().pop().unwrap();
    assert!(
        event.pings.at_most(world.alice) && !event.pings.is_empty(),
        "{:?}",
        event.pings
    );

    // An edit is checked the same way.
    let run = deferred(&world).await;
    followup(sim, &run, json!({ "content": "waiting" })).await;
    let url = format!(
        "{}/api/v10/webhooks/{}/{}/messages/@original",
        sim.api_base(),
        sim.application_id(),
        run.token
    );
    let edit = json!({ "content": "@everyone look", "allowed_mentions": { "parse": [] } });
    let response = client().patch(url).json(&edit).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(sim.message_events().last().unwrap().pings.is_empty());
    let _ = sim.wait_edit(&run, WAIT).await.unwrap();
}

#[tokio::test]
async fn contradictory_oversized_or_unknown_allowed_mentions_are_refused() {
    let world = ready_world().await;
    let sim = &world.sim;
    let run = deferred(&world).await;
    let before = sim.message_events().len();
    let exclusive =
        json!({ "content": "x", "allowed_mentions": { "parse": ["users"], "users": ["1"] } });
    let (status, body) = followup(sim, &run, exclusive).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(50035)),
        "{body}"
    );
    assert_eq!(
        body["errors"]["allowed_mentions"]["_errors"][0]["code"],
        "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
        "{body}"
    );
    let ids: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let (status, body) = followup(
        sim,
        &run,
        json!({ "content": "x", "allowed_mentions": { "users": ids } }),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"]["allowed_mentions"]["users"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let (status, body) = followup(
        sim,
        &run,
        json!({ "content": "x", "allowed_mentions": { "parse": ["channels"] } }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["errors"]["allowed_mentions"]["parse"]["0"]["_errors"].is_array(),
        "{body}"
    );

    // In an interaction callback the message sits under `data`.
    let fresh = sim
        .slash_command(world.alice, world.channel, "ignore", vec![])
        .unwrap();
    let url = format!(
        "{}/api/v10/interactions/{}/{}/callback",
        sim.api_base(),
        fresh.id,
        fresh.token
    );
    let body = json!({ "type": 4, "data": { "content": "x", "allowed_mentions": { "parse": ["roles"], "roles": ["5"] } } });
    let response = client().post(url).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["errors"]["data"]["allowed_mentions"]["_errors"].is_array(),
        "{body}"
    );
    assert_eq!(
        sim.message_events().len(),
        before,
        "nothing refused was created or changed"
    );
}
