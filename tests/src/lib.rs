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
//! use imagine_tests::{Simulator, OptionValue, Upload};
//! use serenity::http::HttpBuilder;
//!
//! let sim = Simulator::start().await;
//! let guild = sim.add_guild("Test Guild");
//! let channel = sim.add_channel(guild, "general");
//! let alice = sim.add_user("alice");
//!
//! // The bot builds its Http like this and hands it to `ClientBuilder::new_with_http`.
//! let http = HttpBuilder::new(sim.token()).proxy(sim.api_base()).ratelimiter_disabled(true).build();
//! # let _ = http;
//! // ... start the bot ...
//! sim.wait_ready(Duration::from_secs(60)).await.unwrap();
//!
//! let run = sim
//!     .slash_command(alice, channel, "imagine", vec![("prompt", OptionValue::from("a cat"))])
//!     .unwrap();
//! let callback = sim.wait_callback(&run, Duration::from_secs(30)).await.unwrap();
//! let followup = sim.wait_followup(&run, Duration::from_secs(30)).await.unwrap();
//! let png = sim.file_bytes(&followup.attachments[0].url).unwrap();
//! # let _ = (callback, png, Upload::png("x.png", vec![]));
//! # }
//! ```
//!
//! Rules and faults: [`Simulator::advance_clock`] moves the simulator's clock (for the 3 s and
//! 15 min rules), [`Simulator::fail_route`] injects 429/5xx/latency on chosen routes, and
//! [`Simulator::drop_gateway`] closes the bot's WebSocket so it must RESUME. Every REST call and
//! gateway frame lands in [`Simulator::transcript`]; failed waits print it.

// The GUILD_CREATE fixture is one large `json!` literal.
#![recursion_limit = "256"]

mod sim;

pub use sim::faults::Fault;
pub use sim::fixtures;
pub use sim::transcript::{Direction, Entry, FileSummary, RestCall, Transcript};
pub use sim::{
    Callback, Interaction, OptionValue, SimConfig, SimError, Simulator, Upload, WaitError,
};
