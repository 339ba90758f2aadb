//! A Discord simulator for end-to-end tests of Imagine.
//!
//! Discord is unreachable from our machines, so tests run the real, unmodified serenity/poise
//! stack against [`Simulator`]: a REST server (`/api/v10/...`) and a gateway WebSocket, both on
//! `127.0.0.1` with an OS-chosen port. It behaves like Discord, including where Discord says no
//! (3 s callback deadline, 15 min interaction tokens, message limits).
//!
//! How a test uses it:
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use imagine_tests::{OptionValue, Simulator, Upload};
//!
//! let sim = Simulator::start().await;
//! let guild = sim.add_guild("Test Guild");
//! let channel = sim.add_channel(guild, "general");
//! let alice = sim.add_user("alice");
//!
//! // The bot hands this Http (proxy = `sim.api_base()`, rate limiter off, no env proxy) to
//! // `serenity::ClientBuilder::new_with_http(http, intents)` and starts as usual.
//! let http = sim.bot_http();
//! # let _ = http;
//! sim.wait_ready(Duration::from_secs(60)).await.unwrap(); // READY sent, commands PUT
//!
//! let image = Upload::png("start.png", vec![0; 16]);
//! let options = vec![("prompt", OptionValue::from("a cat")), ("image", image.into())];
//! let run = sim.slash_command(alice, channel, "imagine", options).unwrap();
//! let callback = sim.wait_callback(&run, Duration::from_secs(30)).await.unwrap(); // kind 5
//! let result = sim.wait_followup(&run, Duration::from_secs(30)).await.unwrap(); // a Message
//! let png = sim.file_bytes(&result.attachments[0].url).unwrap();
//! let click = sim.click_button(alice, result.id, "imagine:upscale:1").unwrap();
//! # let _ = (callback, png, click, sim.dm_channel(alice));
//! # }
//! ```
//!
//! DMs: `sim.dm_channel(user)` gives the channel to run commands in; `dm_text` and
//! `add_reaction` send MESSAGE_CREATE and MESSAGE_REACTION_ADD. Other waits: `wait_edit`,
//! `wait_channel_message`, `wait_interaction_failed`, `wait_resumed`, and the general
//! `wait_for(what, timeout, predicate)` over the transcript. Every wait returns as soon as the
//! thing happens and, on timeout, an error whose `Debug` prints the transcript.
//!
//! Rules and faults: [`Simulator::advance_clock`] moves the simulator's clock (for the 3 s and
//! 15 min rules), [`Simulator::fail_route`] injects 429/5xx/latency/hangs on chosen routes, and
//! [`Simulator::drop_gateway`] closes the bot's WebSocket so it must RESUME. Every REST call and
//! gateway frame lands in [`Simulator::transcript`]; failed waits print it.
//!
//! Places: [`Simulator::add_guild`] (the bot is a member), [`Simulator::add_guild_without_bot`]
//! and [`Simulator::add_group_dm`] (reached only through users who ran
//! [`Simulator::install_app`]; the bot's channel endpoints there answer 403 Missing Access),
//! and DMs with the bot. Messages honour `allowed_mentions` and channel posts `nonce` +
//! `enforce_nonce`, as Discord does.
//!
//! Storm bookkeeping: [`Simulator::interaction_reports`] (when each interaction was first
//! answered, against the 3 s rule), [`Simulator::message_events`] (every change of every bot
//! message and whom it pinged) and [`Simulator::deliveries`] (how often each finished result
//! reached users).

// The GUILD_CREATE fixture is one large `json!` literal.
#![recursion_limit = "256"]

pub mod servers;
mod sim;

pub use sim::faults::Fault;
pub use sim::fixtures;
pub use sim::ledger::{
    button_ids, looks_finished, Change, Delivery, InteractionReport, MessageEvent,
};
pub use sim::mentions::Pings;
pub use sim::transcript::{Direction, Entry, FileSummary, RestCall, Transcript};
pub use sim::{
    Callback, Interaction, OptionValue, SimConfig, SimError, Simulator, Upload, WaitError,
};
