//! Thin main: logging to stderr, parse, run, print the error, exit code.
//!
//! The global `--log-format` flag and the `completions` / `manpage` subcommands wrap the
//! library's [`Cli`] here: they concern this binary's process, not the coordinator.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use swarm_coordinator::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

/// `--log-format` (the same two values as swarm-agent's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "swarm-coordinator",
    version = swarm_coordinator::VERSION,
    about = "The swarmstrap rendezvous: elects the one node that runs `docker swarm init` and hands out join tokens",
    propagate_version = true
)]
struct Main {
    /// Log line format on stderr: `text` (human) or `json` (one JSON object per line:
    /// timestamp, level, target, fields.message and the event's other fields; see README).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SWARM_COORDINATOR_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Top,
}

// The coordinator's own commands dwarf the two small ones; this value is parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Top {
    #[command(flatten)]
    Coordinator(Command),
    /// Print a shell completion script (bash, zsh, fish) on stdout.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    #[command(hide = true)]
    Manpage,
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("SWARM_COORDINATOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let main = Main::parse();
    let command = match main.command {
        Top::Coordinator(c) => c,
        Top::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut Main::command(),
                "swarm-coordinator",
                &mut script,
            );
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the completion script: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Top::Manpage => {
            return match clap_mangen::Man::new(Main::command()).render(&mut std::io::stdout()) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the man page: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    init_logging(main.log_format);
    // One process-wide crypto provider: ring (see the workspace Cargo.toml).
    swarmstrap_wire::pin::crypto_provider();
    match (Cli { command }).run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_debug_assert() {
        Main::command().debug_assert();
    }

    #[test]
    fn log_format_is_global_and_checked() {
        let e = Main::try_parse_from(["swarm-coordinator", "--log-format", "xml", "manpage"])
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("xml") && text.contains("text") && text.contains("json"),
            "{text}"
        );
        let m =
            Main::try_parse_from(["swarm-coordinator", "--log-format", "json", "manpage"]).unwrap();
        assert_eq!(m.log_format, LogFormat::Json);
        assert!(matches!(m.command, Top::Manpage));
    }

    #[test]
    fn man_page_and_completions_render() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Main::command())
            .render(&mut out)
            .unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains(".TH swarm-coordinator"), "{page}");
        assert!(page.contains("log\\-format"), "{page}");
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Main::command(),
            "swarm-coordinator",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        assert!(
            script.contains("--log-format") && script.contains("serve"),
            "{script}"
        );
    }
}
