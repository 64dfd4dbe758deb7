//! Command line: one file per subcommand, each with `run(self)`.

mod admin_client;
mod cluster;
mod fingerprint;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swarm-coordinator",
    version = crate::VERSION,
    about = "The swarmstrap rendezvous: elects the one node that runs `docker swarm init` and hands out join tokens",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTPS API.
    Serve(serve::Serve),
    /// Print the sha256 fingerprint of the served certificate (for clients to pin).
    Fingerprint(fingerprint::Fingerprint),
    /// Create, reset and inspect clusters (directly, or through a running server).
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(c) => c.run().await,
            Command::Fingerprint(c) => c.run(),
            Command::Cluster(c) => c.run().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tls_modes_are_exclusive_and_required() {
        assert!(Cli::try_parse_from(["swarm-coordinator", "serve", "--data-dir", "/x"]).is_err());
        assert!(Cli::try_parse_from([
            "swarm-coordinator",
            "serve",
            "--data-dir",
            "/x",
            "--tls-self-signed",
            "--insecure-http"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "swarm-coordinator",
            "serve",
            "--data-dir",
            "/x",
            "--tls-cert",
            "c.pem"
        ])
        .is_err());
        let ok = Cli::try_parse_from([
            "swarm-coordinator",
            "serve",
            "--data-dir",
            "/x",
            "--tls-self-signed",
            "--san",
            "198.18.0.1,coord.lab",
        ])
        .unwrap();
        let Command::Serve(s) = ok.command else {
            panic!("expected serve")
        };
        assert_eq!(
            s.san,
            vec!["198.18.0.1".to_string(), "coord.lab".to_string()]
        );
    }
}
