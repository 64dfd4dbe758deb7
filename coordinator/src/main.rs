//! Thin main: logging to stderr, parse, run, print the error, exit code.

use clap::Parser;
use std::io::IsTerminal;
use swarm_coordinator::cli::Cli;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("SWARM_COORDINATOR_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // One process-wide crypto provider: ring (see the workspace Cargo.toml).
    swarmstrap_wire::pin::crypto_provider();
    let cli = Cli::parse();
    match cli.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
