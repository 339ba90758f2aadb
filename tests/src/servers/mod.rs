//! Real servers the tests start on 127.0.0.1 (free ports, temporary directories) and stop
//! after, also when a test panics. Nothing here is a fake: the bot talks to the same
//! programs its users run.
//!
//! - [`postgres`]: a PostgreSQL cluster made by `initdb`, for the store on PostgreSQL.
//! - [`nats`]: `nats-server -js`, for the gateway and workers on JetStream.

pub mod nats;
pub mod postgres;
