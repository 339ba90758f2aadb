//! Late delivery in user-installed contexts (needs the simulator's contexts: branch `sim`):
//! a server without the bot and a group DM. The channel endpoint answers 403 there once the
//! interaction token is dead, so the result goes to the requester by DM, once.

mod common;

use std::time::Duration;

use common::*;
use imagine_tests::Simulator;
use serenity::all::{ChannelId, UserId};

async fn late_result_comes_by_dm(
    sim: &Simulator,
    user: UserId,
    place: ChannelId,
    dir: &std::path::Path,
) {
    let bot = start_bot(sim, dir, &[]).await;
    let run = sim
        .slash_command(
            user,
            place,
            "imagine",
            vec![("prompt", "a slow far fox --steps 6".into())],
        )
        .unwrap();
    let cb = sim.wait_callback(&run, WAIT).await.unwrap();
    assert_eq!(cb.kind, 4);
    sim.advance_clock(Duration::from_secs(16 * 60));
    let dm = sim.dm_channel(user).unwrap();
    let dm_posts = format!("/channels/{dm}/messages");
    let sent = finished(sim, std::slice::from_ref(&dm_posts)).await;
    assert_eq!(png_of(sim, &sent).dimensions(), (128, 128));
    let place_posts = format!("/channels/{place}/messages");
    let results = sim
        .transcript()
        .rest_calls()
        .filter(|c| {
            (c.path == dm_posts || c.path == place_posts) && c.status < 300 && has_buttons(&c.body)
        })
        .count();
    assert_eq!(results, 1, "delivered once, by DM");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_result_in_a_server_without_the_bot_comes_by_dm() {
    let sim = Simulator::start().await;
    let home = sim.add_guild("Home");
    sim.add_channel(home, "general");
    let foreign = sim.add_guild_without_bot("Elsewhere");
    let chat = sim.add_channel(foreign, "chat");
    let alice = sim.add_stranger("alice");
    sim.install_app(alice).unwrap();
    let dir = tempfile::tempdir().unwrap();
    late_result_comes_by_dm(&sim, alice, chat, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_result_in_a_group_dm_comes_by_dm() {
    let sim = Simulator::start().await;
    let home = sim.add_guild("Home");
    sim.add_channel(home, "general");
    let alice = sim.add_stranger("alice");
    sim.install_app(alice).unwrap();
    let bob = sim.add_stranger("bob");
    let group = sim.add_group_dm("friends", &[alice, bob]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    late_result_comes_by_dm(&sim, alice, group, dir.path()).await;
}
