//! The bot's whole Discord life against the simulator: ready, `/imagine` in a guild and in a
//! DM, a button click, DM text, reactions, and a gateway drop it must resume from.

use imagine_tests::{Direction, Entry, OptionValue, Upload};
use serde_json::json;

use crate::bot::TINY_PNG;
use crate::{ready_world, WAIT};

#[tokio::test]
async fn bot_identifies_gets_ready_and_registers_commands_for_guilds_and_dms() {
    let world = ready_world().await;
    let sim = &world.sim;
    // Heartbeats are answered: wait for a heartbeat from the bot followed by an ACK.
    sim.wait_for("a heartbeat and its ACK", WAIT, |entries| {
        let beat = entries.iter().position(|e| e.op_from_bot() == Some(1))?;
        entries[beat..]
            .iter()
            .any(|e| matches!(e, Entry::Gateway { direction: Direction::ToBot, frame } if frame["op"] == 11))
            .then_some(())
    })
    .await
    .unwrap();

    let transcript = sim.transcript();
    assert_eq!(
        transcript.calls_to("GET", "/gateway").len(),
        1,
        "{transcript}"
    );
    assert!(
        transcript
            .entries
            .iter()
            .any(|e| e.op_from_bot() == Some(2)),
        "IDENTIFY\n{transcript}"
    );
    assert_eq!(
        &transcript.dispatches()[..2],
        ["READY", "GUILD_CREATE"],
        "{transcript}"
    );
    let put = transcript.calls_to(
        "PUT",
        &format!("/applications/{}/commands", sim.application_id()),
    )[0];
    let imagine = put
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "imagine")
        .unwrap();
    assert_eq!(imagine["contexts"], json!([0, 1, 2]), "{transcript}");
    assert_eq!(imagine["integration_types"], json!([0, 1]), "{transcript}");
    assert_eq!(
        put.response.as_array().unwrap().len(),
        put.body.as_array().unwrap().len(),
        "PUT answers the registered commands"
    );
}

#[tokio::test]
async fn imagine_in_a_guild_defers_then_follows_up_with_a_png_and_buttons_that_answer_clicks() {
    let world = ready_world().await;
    let sim = &world.sim;
    let run = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "a red fox".into())],
        )
        .unwrap();

    assert_eq!(
        sim.wait_callback(&run, WAIT).await.unwrap().kind,
        5,
        "deferred"
    );
    let result = sim.wait_followup(&run, WAIT).await.unwrap();
    assert_eq!(result.content, "**a red fox**");
    assert!(result.guild_id.is_some());
    assert_eq!(result.attachments.len(), 1);
    assert_eq!(result.attachments[0].filename, "grid.png");
    assert_eq!(
        sim.file_bytes(&result.attachments[0].url).unwrap(),
        TINY_PNG
    );
    let row = &result.components[0].components;
    assert_eq!(row.len(), 2, "one row of two buttons");

    let click = sim
        .click_button(world.alice, result.id, "imagine:upscale:1")
        .unwrap();
    assert_eq!(
        sim.wait_callback(&click, WAIT).await.unwrap().kind,
        7,
        "update message"
    );
    assert_eq!(
        sim.message(result.id).unwrap().content,
        "clicked imagine:upscale:1"
    );
    assert!(sim
        .click_button(world.alice, result.id, "no-such-button")
        .is_err());
}

#[tokio::test]
async fn imagine_works_in_a_dm_with_the_bot() {
    let world = ready_world().await;
    let sim = &world.sim;
    let dm = sim.dm_channel(world.alice).unwrap();
    let run = sim
        .slash_command(
            world.alice,
            dm,
            "imagine",
            vec![("prompt", "a boat".into())],
        )
        .unwrap();

    assert_eq!(sim.wait_callback(&run, WAIT).await.unwrap().kind, 5);
    let result = sim.wait_followup(&run, WAIT).await.unwrap();
    assert_eq!(result.channel_id, dm);
    assert!(result.guild_id.is_none());
    assert_eq!(
        sim.file_bytes(&result.attachments[0].url).unwrap(),
        TINY_PNG
    );

    let click = sim
        .click_button(world.alice, result.id, "imagine:reroll")
        .unwrap();
    assert_eq!(sim.wait_callback(&click, WAIT).await.unwrap().kind, 7);
    assert_eq!(
        sim.message(result.id).unwrap().content,
        "clicked imagine:reroll"
    );
}

#[tokio::test]
async fn a_slash_command_attachment_is_served_for_the_bot_to_download() {
    let world = ready_world().await;
    let sim = &world.sim;
    let image = Upload::png("start.png", vec![7; 1234]);
    let options = vec![
        ("prompt", OptionValue::from("like this")),
        ("image", image.into()),
    ];
    let run = sim
        .slash_command(world.alice, world.channel, "imagine", options)
        .unwrap();

    let result = sim.wait_followup(&run, WAIT).await.unwrap();
    assert_eq!(result.content, "**like this** (from start.png: 1234 bytes)");
}

#[tokio::test]
async fn dm_text_and_reactions_reach_the_bot() {
    let world = ready_world().await;
    let sim = &world.sim;
    let dm = sim.dm_channel(world.alice).unwrap();
    let said = sim.dm_text(world.alice, "hello bot").unwrap();
    assert_eq!(
        sim.wait_channel_message(dm, WAIT).await.unwrap().content,
        "You said: hello bot"
    );

    sim.add_reaction(world.alice, said, "👍").unwrap();
    sim.wait_for("the bot's note about the reaction", WAIT, |entries| {
        let notes = entries
            .iter()
            .filter_map(Entry::as_rest)
            .filter(|c| c.path == format!("/channels/{dm}/messages"));
        notes
            .into_iter()
            .any(|c| c.response["content"] == "reaction 👍")
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_dropped_gateway_is_resumed_and_missed_events_are_replayed() {
    let world = ready_world().await;
    let sim = &world.sim;
    assert!(sim.drop_gateway());
    // Sent while the bot is disconnected: it must arrive through the RESUME replay.
    let run = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "late".into())],
        )
        .unwrap();

    sim.wait_resumed(1, WAIT).await.unwrap();
    let result = sim.wait_followup(&run, WAIT).await.unwrap();
    assert_eq!(result.content, "**late**");
    let transcript = sim.transcript();
    assert!(
        transcript
            .entries
            .iter()
            .any(|e| e.op_from_bot() == Some(6)),
        "RESUME\n{transcript}"
    );
    assert_eq!(sim.gateway_connections(), 2, "{transcript}");
    assert_eq!(
        transcript
            .dispatches()
            .iter()
            .filter(|t| **t == "READY")
            .count(),
        1,
        "{transcript}"
    );
}

#[tokio::test]
async fn an_invalid_session_makes_the_bot_identify_again() {
    let world = ready_world().await;
    let sim = &world.sim;
    sim.forget_session();
    assert!(sim.drop_gateway());
    sim.wait_for("a second READY", WAIT, |entries| {
        (entries
            .iter()
            .filter(|e| e.dispatch_name() == Some("READY"))
            .count()
            == 2)
            .then_some(())
    })
    .await
    .unwrap();
    let transcript = sim.transcript();
    let invalid = transcript.entries.iter().any(|e| {
        matches!(e, Entry::Gateway { direction: Direction::ToBot, frame } if frame["op"] == 9 && frame["d"] == false)
    });
    assert!(invalid, "INVALID_SESSION\n{transcript}");

    let run = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "again".into())],
        )
        .unwrap();
    assert_eq!(
        sim.wait_followup(&run, WAIT).await.unwrap().content,
        "**again**"
    );
}

#[tokio::test]
async fn a_guild_added_while_connected_arrives_as_guild_create() {
    let world = ready_world().await;
    let sim = &world.sim;
    let guild = sim.add_guild("Later Guild");
    let channel = sim.add_channel(guild, "art");
    sim.wait_for("a second GUILD_CREATE", WAIT, |entries| {
        (entries
            .iter()
            .filter(|e| e.dispatch_name() == Some("GUILD_CREATE"))
            .count()
            == 2)
            .then_some(())
    })
    .await
    .unwrap();
    let run = sim
        .slash_command(
            world.alice,
            channel,
            "imagine",
            vec![("prompt", "x".into())],
        )
        .unwrap();
    assert_eq!(
        sim.wait_followup(&run, WAIT).await.unwrap().channel_id,
        channel
    );
}

#[tokio::test]
async fn events_the_bot_has_no_intent_for_are_withheld_like_discord_does() {
    let sim = imagine_tests::Simulator::start().await;
    sim.add_guild("Test Guild");
    let alice = sim.add_user("alice");
    crate::bot::start_with_intents(&sim, serenity::all::GatewayIntents::GUILDS).await;
    sim.wait_ready(WAIT).await.unwrap();

    sim.dm_text(alice, "anyone there?").unwrap();
    sim.wait_for("the DM to be withheld", WAIT, |entries| {
        let withheld = |e: &Entry| matches!(e, Entry::Note(n) if n.contains("DIRECT_MESSAGES"));
        entries.iter().any(withheld).then_some(())
    })
    .await
    .unwrap();
    let transcript = sim.transcript();
    assert!(
        !transcript.dispatches().contains(&"MESSAGE_CREATE"),
        "{transcript}"
    );
}
