//! Real servers the bot's tests run against, started on free `127.0.0.1` ports in temporary
//! folders and stopped when their guard drops (also when a test panics).

pub mod nats;
