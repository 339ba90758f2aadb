//! The `imagine` binary: a thin shell over the library's commands.

use clap::Parser;

fn main() -> std::process::ExitCode {
    imagine::logging::init();
    let cli = imagine::cli::Cli::parse();
    match imagine::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
