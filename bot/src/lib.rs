//! Imagine's product crate: the command line today, the Discord bot on top of it.
//!
//! - [`cli`]: argument parsing and dispatch (`imagine generate`).
//! - [`generate_cmd`]: the offline `generate` subcommand.
//! - [`render`]: grids and PNG files with their `parameters` text chunk.
//! - [`logging`]: tracing setup.

pub mod cli;
pub mod generate_cmd;
pub mod logging;
pub mod render;
