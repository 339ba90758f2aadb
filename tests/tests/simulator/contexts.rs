//! User-installed contexts: a server the bot is not in and a group DM. Users who installed the
//! app run its commands there; the interaction's own webhook answers them, while the bot's
//! channel endpoints are refused (403 Missing Access). DMs open only with users who share a
//! server with the bot or installed the app.

use imagine_tests::{SimError, Simulator};
use serde_json::{json, Value};
use serenity::all::{ChannelId, CreateMessage, GuildId, UserId};
use serenity::http::HttpError;

use crate::{bot, WAIT};

fn status_and_code(error: serenity::Error) -> (u16, isize) {
    match error {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            (r.status_code.as_u16(), r.error.code)
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

/// The INTERACTION_CREATE payload the simulator sent for `token`.
async fn interaction_payload(sim: &Simulator, token: &str) -> Value {
    sim.wait_for("the interaction to be dispatched", WAIT, |entries| {
        entries.iter().find_map(|e| match e {
            imagine_tests::Entry::Gateway { frame, .. }
                if frame["t"] == "INTERACTION_CREATE" && frame["d"]["token"] == token =>
            {
                Some(frame["d"].clone())
            }
            _ => None,
        })
    })
    .await
    .unwrap()
}

/// serenity 0.12.5 must read the payload as a command in that context, or it would drop it.
fn assert_serenity_reads_a_command(payload: &Value, context: u8) {
    let parsed: serenity::all::Interaction = serde_json::from_value(payload.clone()).unwrap();
    let serenity::all::Interaction::Command(command) = parsed else {
        panic!("not a command: {payload}");
    };
    let expected = match context {
        0 => serenity::all::InteractionContext::Guild,
        _ => serenity::all::InteractionContext::PrivateChannel,
    };
    assert_eq!(command.context, Some(expected));
    let owners = &command.authorizing_integration_owners.0;
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert!(matches!(
        owners[0],
        serenity::all::AuthorizingIntegrationOwner::UserInstall(_)
    ));
}

struct Places {
    sim: Simulator,
    alice: UserId,
    bob: UserId,
    foreign: GuildId,
    foreign_channel: ChannelId,
    group: ChannelId,
}

async fn places() -> Places {
    let sim = Simulator::start().await;
    let home = sim.add_guild("Home");
    sim.add_channel(home, "general");
    let foreign = sim.add_guild_without_bot("Elsewhere");
    let foreign_channel = sim.add_channel(foreign, "chat");
    let alice = sim.add_stranger("alice");
    sim.install_app(alice).unwrap();
    let bob = sim.add_stranger("bob");
    let group = sim.add_group_dm("friends", &[alice, bob]).unwrap();
    bot::start(&sim).await;
    sim.wait_ready(WAIT).await.unwrap();
    Places {
        sim,
        alice,
        bob,
        foreign,
        foreign_channel,
        group,
    }
}

#[tokio::test]
async fn a_server_without_the_bot_is_reached_only_through_the_interaction() {
    let p = places().await;
    let sim = &p.sim;
    let guild_creates = sim
        .transcript()
        .dispatches()
        .iter()
        .filter(|d| **d == "GUILD_CREATE")
        .count();
    assert_eq!(
        guild_creates,
        1,
        "only the bot's own server\n{}",
        sim.transcript()
    );

    let run = sim
        .slash_command(
            p.alice,
            p.foreign_channel,
            "imagine",
            vec![("prompt", "a fox".into())],
        )
        .unwrap();
    let payload = interaction_payload(sim, &run.token).await;
    assert_eq!(payload["context"], 0);
    assert_eq!(payload["guild_id"], json!(p.foreign.to_string()));
    assert_eq!(
        payload["authorizing_integration_owners"],
        json!({ "1": p.alice.to_string() }),
        "only the user's install authorizes it"
    );
    assert_eq!(payload["member"]["user"]["id"], json!(p.alice.to_string()));
    assert_serenity_reads_a_command(&payload, 0);
    let result = sim.wait_followup(&run, WAIT).await.unwrap();
    assert_eq!(result.content, "**a fox**", "the webhook works here");

    let http = sim.bot_http();
    let post = p
        .foreign_channel
        .send_message(&http, CreateMessage::new().content("late"))
        .await;
    assert_eq!(status_and_code(post.unwrap_err()), (403, 50001));
    assert_eq!(
        status_and_code(p.foreign_channel.to_channel(&http).await.unwrap_err()),
        (403, 50001)
    );
    let edit = serenity::all::EditMessage::new().content("x");
    let edit = p.foreign_channel.edit_message(&http, result.id, edit).await;
    assert_eq!(status_and_code(edit.unwrap_err()), (403, 50001));
}

#[tokio::test]
async fn a_group_dm_is_context_two_and_closed_to_the_bots_channel_endpoints() {
    let p = places().await;
    let sim = &p.sim;
    let run = sim
        .slash_command(
            p.alice,
            p.group,
            "imagine",
            vec![("prompt", "a boat".into())],
        )
        .unwrap();
    let payload = interaction_payload(sim, &run.token).await;
    assert_eq!(payload["context"], 2);
    assert_eq!(payload["channel"]["type"], 3);
    assert!(
        payload.get("guild_id").is_none() && payload["user"]["id"] == json!(p.alice.to_string())
    );
    assert_eq!(
        payload["authorizing_integration_owners"],
        json!({ "1": p.alice.to_string() })
    );
    assert_serenity_reads_a_command(&payload, 2);
    let result = sim.wait_followup(&run, WAIT).await.unwrap();
    assert_eq!(result.channel_id, p.group);

    let post = p
        .group
        .send_message(&sim.bot_http(), CreateMessage::new().content("hi"))
        .await;
    assert_eq!(status_and_code(post.unwrap_err()), (403, 50001));
    // Bob has not installed the app: Discord does not offer him its commands.
    let refused = sim.slash_command(p.bob, p.group, "imagine", vec![("prompt", "x".into())]);
    assert_eq!(refused.unwrap_err(), SimError::NotInstalled(p.bob.get()));
}

#[tokio::test]
async fn the_bot_can_dm_users_who_share_a_server_or_installed_the_app_and_no_one_else() {
    let p = places().await;
    let sim = &p.sim;
    let http = sim.bot_http();
    let member = sim.add_user("carol");
    for user in [p.alice, member] {
        let dm = user.create_dm_channel(&http).await.unwrap();
        let sent = dm
            .send_message(&http, CreateMessage::new().content("your image"))
            .await;
        assert_eq!(sent.unwrap().channel_id, dm.id);
    }
    let stranger = user_dm_error(&http, p.bob).await;
    assert_eq!(
        stranger,
        (403, 50007),
        "bob shares no server and did not install the app"
    );
    assert_eq!(
        sim.dm_channel(p.bob).unwrap_err(),
        SimError::CannotDm(p.bob.get())
    );
}

async fn user_dm_error(http: &serenity::http::Http, user: UserId) -> (u16, isize) {
    status_and_code(user.create_dm_channel(http).await.unwrap_err())
}
