//! Every gateway payload the simulator sends must deserialize in serenity as the intended
//! event: serenity turns a payload it cannot read into `Event::Unknown` and drops it silently.

use std::collections::BTreeSet;

use imagine_tests::{fixtures, Direction, Entry, Upload};
use serenity::all::{Event, GatewayEvent, Interaction};

use crate::{ready_world, WAIT};

/// Parses a frame and names what serenity made of it.
fn parse(frame: &serde_json::Value) -> String {
    let event: GatewayEvent =
        serde_json::from_value(frame.clone()).unwrap_or_else(|e| panic!("{e}: {frame}"));
    match event {
        GatewayEvent::Dispatch(_, event) => match event {
            Event::Ready(_) => "READY".into(),
            Event::Resumed(_) => "RESUMED".into(),
            Event::GuildCreate(_) => "GUILD_CREATE".into(),
            Event::MessageCreate(_) => "MESSAGE_CREATE".into(),
            Event::ReactionAdd(_) => "MESSAGE_REACTION_ADD".into(),
            Event::InteractionCreate(e) => match e.interaction {
                Interaction::Command(c) if c.guild_id.is_some() => {
                    "INTERACTION_CREATE command guild".into()
                }
                Interaction::Command(_) => "INTERACTION_CREATE command dm".into(),
                Interaction::Component(c) if c.guild_id.is_some() => {
                    "INTERACTION_CREATE component guild".into()
                }
                Interaction::Component(_) => "INTERACTION_CREATE component dm".into(),
                other => format!("INTERACTION_CREATE other {other:?}"),
            },
            Event::Unknown(unknown) => format!("UNKNOWN {}", unknown.kind),
            other => format!("unexpected {other:?}"),
        },
        GatewayEvent::Hello(_) => "HELLO".into(),
        GatewayEvent::HeartbeatAck => "HEARTBEAT_ACK".into(),
        GatewayEvent::InvalidateSession(_) => "INVALID_SESSION".into(),
        other => format!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn every_gateway_payload_the_simulator_sent_parses_as_its_event() {
    let world = ready_world().await;
    let sim = &world.sim;
    let dm = sim.dm_channel(world.alice).unwrap();
    let image = Upload::png("in.png", vec![1, 2, 3]);
    let in_guild = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "a".into()), ("image", image.into())],
        )
        .unwrap();
    let in_dm = sim
        .slash_command(world.alice, dm, "imagine", vec![("prompt", "b".into())])
        .unwrap();
    for run in [&in_guild, &in_dm] {
        let result = sim.wait_followup(run, WAIT).await.unwrap();
        let click = sim
            .click_button(world.alice, result.id, "imagine:reroll")
            .unwrap();
        sim.wait_callback(&click, WAIT).await.unwrap();
        sim.add_reaction(world.alice, result.id, "🎨").unwrap();
    }
    sim.dm_text(world.alice, "hi").unwrap();
    sim.wait_channel_message(dm, WAIT).await.unwrap();
    sim.drop_gateway();
    sim.wait_resumed(1, WAIT).await.unwrap();
    sim.wait_for("a heartbeat ACK", WAIT, |entries| {
        entries
            .iter()
            .any(|e| matches!(e, Entry::Gateway { frame, .. } if frame["op"] == 11))
            .then_some(())
    })
    .await
    .unwrap();

    let transcript = sim.transcript();
    let mut seen = BTreeSet::new();
    for entry in &transcript.entries {
        if let Entry::Gateway {
            direction: Direction::ToBot,
            frame,
        } = entry
        {
            let name = parse(frame);
            assert!(
                !name.starts_with("UNKNOWN") && !name.starts_with("unexpected"),
                "{name}: {frame}\n{transcript}"
            );
            if let Some(t) = frame["t"].as_str() {
                assert!(name.starts_with(t), "{t} parsed as {name}");
            }
            seen.insert(name);
        }
    }
    seen.insert(parse(&fixtures::invalid_session(false)));
    let sequence: Vec<u64> = transcript
        .entries
        .iter()
        .filter(|e| e.dispatch_name().is_some())
        .filter_map(|e| match e {
            Entry::Gateway { frame, .. } => frame["s"].as_u64(),
            _ => None,
        })
        .collect();
    assert_eq!(
        sequence,
        (1..=sequence.len() as u64).collect::<Vec<_>>(),
        "dispatches count up from 1\n{transcript}"
    );
    let expected = [
        "HELLO",
        "HEARTBEAT_ACK",
        "INVALID_SESSION",
        "READY",
        "RESUMED",
        "GUILD_CREATE",
        "MESSAGE_CREATE",
        "MESSAGE_REACTION_ADD",
        "INTERACTION_CREATE command guild",
        "INTERACTION_CREATE command dm",
        "INTERACTION_CREATE component guild",
        "INTERACTION_CREATE component dm",
    ];
    assert_eq!(
        seen,
        expected.iter().map(|s| s.to_string()).collect(),
        "{transcript}"
    );
}
