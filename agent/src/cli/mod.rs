//! The command line: one file per subcommand.

pub mod lb;
pub mod leave;
pub mod recover;
pub mod rotate;
pub mod run;
pub mod status;
pub mod upgrade;

use crate::config::ENV_LOG;
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Environment variable for `--log-format`.
pub const ENV_LOG_FORMAT: &str = "SWARM_AGENT_LOG_FORMAT";

#[derive(Debug, Parser)]
#[command(
    name = "swarm-agent",
    version = crate::VERSION,
    about = "Bootstraps a Docker Swarm on every VM: exactly one init, the right managers, every node joined.",
    long_about = None
)]
pub struct Cli {
    /// Log line format on stderr: `text` (human) or `json` (one JSON object per line: timestamp,
    /// level, target, fields.message and the event's other fields; see README).
    #[arg(
        long,
        global = true,
        value_enum,
        env = ENV_LOG_FORMAT,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`: both binaries take the same two values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bootstrap this node into the cluster's swarm, then keep running (systemd service).
    Run(run::RunArgs),
    /// Show the engine, swarm, agent and backend state. Exit 0 joined+healthy, 1 not (yet), 2 error.
    Status(status::StatusArgs),
    /// Load-balancer config tools (`lb render`: print what would be written now).
    Lb(lb::LbArgs),
    /// Leave the swarm cleanly: drain (tasks move elsewhere), demote a manager, leave.
    Leave(leave::LeaveArgs),
    /// After every manager is lost for good: allow exactly one new swarm init (recorded).
    Recover(recover::RecoverArgs),
    /// Ask for new swarm join tokens (the operator; the leader's agent rotates and publishes).
    RotateTokens(rotate::RotateArgs),
    /// Install release VERSION in place (signature and hash checked) and restart the agent on it.
    Upgrade(upgrade::UpgradeArgs),
    /// Print a shell completion script (bash, zsh, fish) on stdout (the installer writes them).
    #[command(hide = true)]
    Completions(Completions),
    /// Print the man page (roff) on stdout (the installer writes it to man1).
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, clap::Args)]
pub struct Completions {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Write `swarm-agent`'s completion script for `shell` to `out`. (Generated into memory first:
/// clap_complete panics on a write error, e.g. a closed pipe.)
pub fn write_completions(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "swarm-agent", &mut script);
    out.write_all(&script)
}

/// Write `swarm-agent`'s man page (roff, section 1) to `out`.
pub fn write_manpage(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

/// `swarm-agent run` exits with this (sysexits' EX_CONFIG) when retrying cannot help: the
/// configuration is invalid, or the backend refuses at start this node's TLS set-up,
/// credentials or role (etcd, Secrets Manager: checked when the backend opens). The systemd unit does not restart it on this code
/// (`RestartPreventExitStatus=78`): the operator fixes the configuration and starts it again.
pub const EXIT_CONFIG: u8 = 78;

/// True when `e` (anywhere in its chain) is an error that the same configuration will meet
/// again: see [`EXIT_CONFIG`].
pub fn is_configuration_error(e: &anyhow::Error) -> bool {
    use crate::backend::BackendError;
    use crate::bootstrap::BootstrapError;
    use crate::retry::Failure;
    use swarmstrap_wire::rendezvous::RendezvousError;
    let permanent_refusal = |r: &RendezvousError| match r {
        RendezvousError::Unauthorized(_) => true,
        RendezvousError::Rejected { code, .. } => matches!(
            code.as_str(),
            "invalid_config" | "tls_certificate" | "tls_client_certificate"
        ),
        _ => false,
    };
    e.chain().any(|c| {
        if c.is::<crate::config::ConfigError>() {
            return true;
        }
        if let Some(b) = c.downcast_ref::<BackendError>() {
            return match b {
                BackendError::Etcd(r) | BackendError::SecretsManager(r) => permanent_refusal(r),
                // The join secret file: missing, unreadable, or readable by others.
                BackendError::Secret(_) => true,
                _ => false,
            };
        }
        if let Some(b) = c.downcast_ref::<BootstrapError>() {
            // Not `BootstrapError::Unauthorized`: a coordinator that lost its store refuses
            // the join secret until the operator creates the cluster again, and the agents
            // should then come back without being started by hand.
            return match b {
                BootstrapError::Backend {
                    source: Failure::Permanent(r),
                    ..
                } => permanent_refusal(r) && !matches!(r, RendezvousError::Unauthorized(_)),
                _ => false,
            };
        }
        false
    })
}

impl Command {
    /// Exit code of a failure: `run` exits [`EXIT_CONFIG`] on a configuration error (see
    /// [`is_configuration_error`]); otherwise [`Self::error_exit_code`].
    pub fn failure_exit_code(&self) -> impl Fn(&anyhow::Error) -> u8 {
        let run = matches!(self, Command::Run(_));
        let other = self.error_exit_code();
        move |e| {
            if run && is_configuration_error(e) {
                EXIT_CONFIG
            } else {
                other
            }
        }
    }

    /// Exit code when the command fails with an error.
    pub fn error_exit_code(&self) -> u8 {
        match self {
            Command::Run(_) => 1,
            Command::Status(_) => status::EXIT_ERROR,
            Command::Lb(_)
            | Command::Leave(_)
            | Command::Recover(_)
            | Command::RotateTokens(_)
            | Command::Upgrade(_)
            | Command::Completions(_)
            | Command::Manpage => 1,
        }
    }

    /// `status` prints a report on stdout; keep stderr quiet unless asked ([`ENV_LOG`]).
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Run(_) => "info",
            Command::Status(_) | Command::Lb(_) | Command::Completions(_) | Command::Manpage => {
                "error"
            }
            Command::Leave(_)
            | Command::Recover(_)
            | Command::RotateTokens(_)
            | Command::Upgrade(_) => "info",
        }
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run(args) => args.run().await,
            Command::Status(args) => args.run().await,
            Command::Lb(args) => args.run().await,
            Command::Leave(args) => args.run().await,
            Command::Recover(args) => args.run().await,
            Command::RotateTokens(args) => args.run().await,
            Command::Upgrade(args) => args.run().await,
            Command::Completions(c) => {
                write_completions(c.shell, &mut std::io::stdout())?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Manpage => {
                write_manpage(&mut std::io::stdout())?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Logs go to stderr. Level from [`ENV_LOG`] (or `RUST_LOG`), e.g. `debug`.
///
/// `json`: one object per line, `{"timestamp":"<RFC 3339>","level":"INFO","fields":{"message":
/// "..."},"target":"swarm_agent::bootstrap"}` (tracing-subscriber's JSON format; no span
/// fields). No log call of the agent carries a secret in a field or in its message.
pub fn init_logging(default_level: &str, format: LogFormat) {
    let filter = std::env::var(ENV_LOG)
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_target(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_exit_78_and_others_1() {
        use crate::backend::BackendError;
        use swarmstrap_wire::rendezvous::RendezvousError;
        let run = Cli::parse_from(["swarm-agent", "run"]).command;
        let code = run.failure_exit_code();
        let refused = anyhow::Error::new(BackendError::Etcd(RendezvousError::Unauthorized(
            "role".into(),
        )))
        .context("opening the etcd backend");
        assert_eq!(code(&refused), EXIT_CONFIG);
        let cert = anyhow::Error::new(BackendError::Etcd(RendezvousError::Rejected {
            code: "tls_client_certificate".into(),
            message: "m".into(),
        }));
        assert_eq!(code(&cert), EXIT_CONFIG);
        let down = anyhow::Error::new(BackendError::Etcd(RendezvousError::Transient(
            "no member".into(),
        )));
        assert_eq!(code(&down), 1);
        let config = anyhow::Error::new(crate::config::ConfigError::Missing("x".into()));
        assert_eq!(code(&config), EXIT_CONFIG);
        let secret =
            anyhow::Error::new(BackendError::Secret(crate::fsutil::FsError::EmptySecret {
                path: "/etc/swarm-agent/join-secret".into(),
            }));
        assert_eq!(code(&secret), EXIT_CONFIG);
        let refused_later = anyhow::Error::new(crate::bootstrap::BootstrapError::Unauthorized {
            backend: "b".into(),
            cluster: "c".into(),
            hint: "h".into(),
            detail: "d".into(),
        });
        assert_eq!(code(&refused_later), 1, "a coordinator may be re-created");
        // Other commands keep their codes.
        let status = Cli::parse_from(["swarm-agent", "status"]).command;
        assert_eq!(status.failure_exit_code()(&config), status::EXIT_ERROR);
    }
    use clap::CommandFactory;

    #[test]
    fn clap_debug_assert() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_command_lines() {
        let c = Cli::try_parse_from(["swarm-agent", "run", "--config", "/x.toml"]).unwrap();
        match c.command {
            Command::Run(a) => assert_eq!(a.config.config.unwrap().to_str(), Some("/x.toml")),
            _ => panic!("not run"),
        }
        let c = Cli::try_parse_from(["swarm-agent", "status", "--json", "--config", "/x.toml"])
            .unwrap();
        match c.command {
            Command::Status(a) => assert!(a.json),
            _ => panic!("not status"),
        }
        let c = Cli::try_parse_from([
            "swarm-agent",
            "run",
            "--cluster",
            "c",
            "--role",
            "worker",
            "--target-managers",
            "5",
            "--lease-ttl-secs",
            "9",
            "--coordinator-url",
            "http://198.18.0.254:8080",
        ])
        .unwrap();
        match c.command {
            Command::Run(a) => {
                assert_eq!(a.config.cluster.as_deref(), Some("c"));
                assert_eq!(a.config.target_managers, Some(5));
                assert_eq!(a.config.lease_ttl_secs, Some(9));
            }
            _ => panic!("not run"),
        }
        // The secret never goes through argv: there is no flag for it.
        assert!(Cli::try_parse_from(["swarm-agent", "run", "--join-secret", "x"]).is_err());
    }

    #[test]
    fn log_format_is_a_global_flag_with_two_values() {
        let c = Cli::try_parse_from(["swarm-agent", "status", "--log-format", "json"]).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        let c = Cli::try_parse_from(["swarm-agent", "--log-format", "text", "run"]).unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        let e = Cli::try_parse_from(["swarm-agent", "run", "--log-format", "xml"]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("'xml'") && text.contains("text") && text.contains("json"),
            "{text}"
        );
    }

    #[test]
    fn status_wait_flags() {
        let c = Cli::try_parse_from([
            "swarm-agent",
            "status",
            "--wait",
            "--timeout",
            "30",
            "--expect-nodes",
            "5",
        ])
        .unwrap();
        match c.command {
            Command::Status(a) => {
                assert!(a.wait);
                assert_eq!(a.timeout, 30);
                assert_eq!(a.expect_nodes, Some(5));
            }
            _ => panic!("not status"),
        }
        match Cli::try_parse_from(["swarm-agent", "status", "--wait"])
            .unwrap()
            .command
        {
            Command::Status(a) => assert_eq!((a.timeout, a.expect_nodes), (600, None)),
            _ => panic!("not status"),
        }
        // --timeout / --expect-nodes mean nothing without --wait; 0 nodes is a mistake.
        assert!(Cli::try_parse_from(["swarm-agent", "status", "--timeout", "5"]).is_err());
        assert!(
            Cli::try_parse_from(["swarm-agent", "status", "--wait", "--expect-nodes", "0"])
                .is_err()
        );
    }

    #[test]
    fn man_page_and_completions_render() {
        let mut out = Vec::new();
        write_manpage(&mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains(".TH swarm-agent"), "{page}");
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            assert!(
                script.contains("log-format") && script.contains("status"),
                "{shell}"
            );
        }
    }
}
