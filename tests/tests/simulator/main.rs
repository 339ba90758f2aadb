//! End-to-end tests of the Discord simulator, driving a minimal serenity/poise bot.

mod bot;
mod contexts;
mod delivery;
mod faults;
mod fixtures;
mod flows;
mod forms;
mod mentions;
mod rest;
mod rules;
mod sharding;

use std::time::Duration;

use imagine_tests::Simulator;
use serenity::all::{ChannelId, UserId};

/// Generous: the machine may be loaded; waits return as soon as the thing happens.
pub const WAIT: Duration = Duration::from_secs(60);

/// A simulator with one guild, one channel and one user, and the minimal bot connected and ready.
pub struct World {
    pub sim: Simulator,
    pub channel: ChannelId,
    pub alice: UserId,
}

pub async fn ready_world() -> World {
    let sim = Simulator::start().await;
    let guild = sim.add_guild("Test Guild");
    let channel = sim.add_channel(guild, "general");
    let alice = sim.add_user("alice");
    bot::start(&sim).await;
    sim.wait_ready(WAIT).await.unwrap();
    World {
        sim,
        channel,
        alice,
    }
}
