//! Select menus and modals: what users send through them reaches the bot as serenity reads
//! it, users can only send what the component allows, and the bot's menus and modals are held
//! to Discord's limits.

use imagine_tests::{Entry, Interaction, SimError};
use serde_json::{json, Value};
use serenity::all::{ActionRowComponent, ComponentInteractionDataKind, GatewayEvent};

use crate::rules::{callback, ignored};
use crate::{ready_world, World, WAIT};

/// The INTERACTION_CREATE the simulator sent for `interaction`, as serenity reads it.
async fn delivered(world: &World, interaction: &Interaction) -> serenity::all::Interaction {
    let id = interaction.id.to_string();
    let frame = world
        .sim
        .wait_for("the interaction on the gateway", WAIT, |entries| {
            entries.iter().find_map(|e| match e {
                Entry::Gateway { frame, .. }
                    if frame["t"] == "INTERACTION_CREATE" && frame["d"]["id"] == id =>
                {
                    Some(frame.clone())
                }
                _ => None,
            })
        })
        .await
        .unwrap();
    match serde_json::from_value::<GatewayEvent>(frame.clone()).unwrap() {
        GatewayEvent::Dispatch(_, serenity::all::Event::InteractionCreate(e)) => e.interaction,
        other => panic!("{frame} parsed as {other:?}"),
    }
}

async fn menu(world: &World) -> serenity::all::Message {
    let run = world
        .sim
        .slash_command(world.alice, world.channel, "menu", vec![])
        .unwrap();
    assert_eq!(world.sim.wait_callback(&run, WAIT).await.unwrap().kind, 4);
    world.sim.response_message(&run).expect("the menu message")
}

#[tokio::test]
async fn a_pick_in_a_select_menu_reaches_the_bot_with_its_values() {
    let world = ready_world().await;
    let message = menu(&world).await;
    let pick = world
        .sim
        .select_values(world.alice, message.id, "cells", &["c4", "c0"])
        .unwrap();
    match delivered(&world, &pick).await {
        serenity::all::Interaction::Component(c) => {
            assert_eq!(c.data.custom_id, "cells");
            assert!(matches!(
                &c.data.kind,
                ComponentInteractionDataKind::StringSelect { values } if values == &["c4", "c0"]
            ));
            assert_eq!(c.message.id, message.id);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(world.sim.wait_callback(&pick, WAIT).await.unwrap().kind, 7);
    let updated = world.sim.message(message.id).unwrap();
    assert_eq!(updated.content, "picked c4,c0");
}

#[tokio::test]
async fn users_can_pick_only_what_the_menu_allows() {
    let world = ready_world().await;
    let message = menu(&world).await;
    let sim = &world.sim;
    let pick = |values: &[&str]| sim.select_values(world.alice, message.id, "cells", values);
    for refused in [
        pick(&[]),
        pick(&["c0", "c1", "c2", "c3"]),
        pick(&["c9"]),
        pick(&["c1", "c1"]),
    ] {
        assert!(
            matches!(refused, Err(SimError::BadSelection(_))),
            "{refused:?}"
        );
    }
    assert!(matches!(
        sim.select_values(world.alice, message.id, "nope", &["c0"]),
        Err(SimError::NoSuchSelect(_))
    ));
    // The menu was an ephemeral answer to alice: bob never saw it.
    let bob = sim.add_user("bob");
    assert!(matches!(
        sim.select_values(bob, message.id, "cells", &["c0"]),
        Err(SimError::NotVisible(_))
    ));
}

#[tokio::test]
async fn a_modal_opens_pre_filled_and_its_submission_reaches_the_bot() {
    let world = ready_world().await;
    let sim = &world.sim;
    let run = sim
        .slash_command(world.alice, world.channel, "form", vec![])
        .unwrap();
    assert_eq!(sim.wait_callback(&run, WAIT).await.unwrap().kind, 9);
    let modal = sim.open_modal(&run).expect("the modal is open");
    assert_eq!(modal["title"], "Remix");
    let input = &modal["components"][0]["components"][0];
    assert_eq!(
        (input["custom_id"].clone(), input["value"].clone()),
        (json!("prompt"), json!("a red fox"))
    );

    // bob cannot submit alice's modal.
    let bob = sim.add_user("bob");
    assert_eq!(
        sim.submit_modal(bob, &run, &[("prompt", "x")]).unwrap_err(),
        SimError::NoOpenModal
    );
    let submit = sim
        .submit_modal(world.alice, &run, &[("prompt", "a blue fox")])
        .unwrap();
    match delivered(&world, &submit).await {
        serenity::all::Interaction::Modal(m) => {
            assert_eq!(m.data.custom_id, "form");
            let ActionRowComponent::InputText(input) = &m.data.components[0].components[0] else {
                panic!("{:?}", m.data.components);
            };
            assert_eq!(input.value.as_deref(), Some("a blue fox"));
        }
        other => panic!("{other:?}"),
    }
    let answer = sim.wait_callback(&submit, WAIT).await.unwrap();
    assert_eq!(answer.data["content"], "submitted prompt=a blue fox");
    // Submitting closes it.
    assert!(sim.open_modal(&run).is_none());
    assert_eq!(
        sim.submit_modal(world.alice, &run, &[]).unwrap_err(),
        SimError::NoOpenModal
    );
}

#[tokio::test]
async fn a_modal_keeps_its_pre_filled_value_and_refuses_what_its_inputs_do_not_allow() {
    let world = ready_world().await;
    let sim = &world.sim;
    let run = sim
        .slash_command(world.alice, world.channel, "form", vec![])
        .unwrap();
    sim.wait_callback(&run, WAIT).await.unwrap();
    let long = "x".repeat(101);
    for typed in [
        vec![("prompt", "")],
        vec![("prompt", long.as_str())],
        vec![("other", "x")],
    ] {
        let refused = sim.submit_modal(world.alice, &run, &typed);
        assert!(
            matches!(refused, Err(SimError::BadModalInput(_))),
            "{refused:?}"
        );
    }
    // Refusals leave it open; untouched, the pre-filled text goes.
    let submit = sim.submit_modal(world.alice, &run, &[]).unwrap();
    let answer = sim.wait_callback(&submit, WAIT).await.unwrap();
    assert_eq!(answer.data["content"], "submitted prompt=a red fox");
}

fn modal(title: &str, rows: Vec<Value>) -> Value {
    json!({ "type": 9, "data": { "custom_id": "raw", "title": title, "components": rows } })
}

fn input_row(id: &str) -> Value {
    json!({ "type": 1, "components": [
        { "type": 4, "custom_id": id, "label": "Prompt", "style": 1 }
    ] })
}

#[tokio::test]
async fn a_modal_cannot_answer_a_modal_submission() {
    let world = ready_world().await;
    let run = ignored(&world);
    let (status, body) = callback(&world, &run, modal("Raw", vec![input_row("p")])).await;
    assert_eq!(status, 204, "{body}");
    let submit = world
        .sim
        .submit_modal(world.alice, &run, &[("p", "typed")])
        .unwrap();
    let (status, body) = callback(&world, &submit, modal("Again", vec![input_row("q")])).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(50035)),
        "{body}"
    );
    let reply = json!({ "type": 4, "data": { "content": "thanks" } });
    assert_eq!(callback(&world, &submit, reply).await.0, 204);
}

#[tokio::test]
async fn modals_and_menus_over_discords_limits_are_refused() {
    let world = ready_world().await;
    let too_long_title = modal(&"t".repeat(46), vec![input_row("p")]);
    let six_rows = modal("Six", (0..6).map(|i| input_row(&format!("p{i}"))).collect());
    let twice = modal("Twice", vec![input_row("p"), input_row("p")]);
    for (body, path) in [
        (too_long_title, vec!["data", "title"]),
        (six_rows, vec!["data", "components"]),
        (
            twice,
            vec!["data", "components", "1", "components", "0", "custom_id"],
        ),
    ] {
        let run = ignored(&world);
        let (status, answer) = callback(&world, &run, body).await;
        assert_eq!(status, 400, "{answer}");
        let leaf = path.iter().fold(&answer["errors"], |v, k| &v[*k]);
        assert!(leaf["_errors"][0]["code"].is_string(), "{path:?}: {answer}");
    }
    let options: Vec<Value> = (0..26)
        .map(|i| json!({ "label": format!("o{i}"), "value": format!("o{i}") }))
        .collect();
    let select = json!({ "type": 3, "custom_id": "s", "options": options });
    let button = json!({ "type": 2, "style": 1, "label": "b", "custom_id": "b" });
    let mut select_25 = select.clone();
    select_25["options"].as_array_mut().unwrap().pop();
    for (rows, ok) in [
        (
            json!([{ "type": 1, "components": [select_25.clone()] }]),
            true,
        ),
        (json!([{ "type": 1, "components": [select] }]), false),
        (
            json!([{ "type": 1, "components": [select_25, button] }]),
            false,
        ),
    ] {
        let run = ignored(&world);
        let body = json!({ "type": 4, "data": { "content": "pick", "components": rows } });
        let (status, answer) = callback(&world, &run, body).await;
        assert_eq!(status == 204, ok, "{status}: {answer}");
    }
}
