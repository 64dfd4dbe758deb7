//! `swarm-agent recover --swarm-id ID`: the operator's way out after every manager of the
//! cluster's swarm is lost for good. It resets the cluster in the backend (compare-and-set on
//! the lost swarm's id, recorded with this node and `--reason`), which allows exactly one new
//! `swarm init`: the agents whose swarm has no manager leave it and run the normal election.
//!
//! It refuses while this node still reaches a manager of its swarm (use `--force` only when
//! those managers are known to be gone).
//!
//! A reset is the operator's call: on the coordinator it needs the cluster's operator
//! credential (printed by `swarm-coordinator cluster create`, never in user-data), read from
//! `--operator-credential-file FILE` or `-` (stdin) — never from argv or the environment. The
//! join secret and node credentials cannot reset a cluster. On Secrets Manager the operator is
//! whoever IAM lets write the secret; no credential file is needed.

use crate::backend;
use crate::config::{BackendKind, Config, Overrides};
use crate::engine::{BollardEngine, Engine, LocalSwarmState};
use crate::lifecycle::{nodes, supervise};
use crate::state;
use anyhow::{bail, Context};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use swarmstrap_wire::rules::Code;
use swarmstrap_wire::{Phase, ResetRequest, Secret};

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// The lost swarm's id (see `swarm-agent status`): confirms which swarm is given up.
    #[arg(long, value_name = "ID")]
    pub swarm_id: String,
    /// Recorded with the reset.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Reset even though this node still reaches a manager.
    #[arg(long)]
    pub force: bool,
    /// The cluster's operator credential (what `swarm-coordinator cluster create` printed): a
    /// file holding it, or `-` to read it from stdin. Required with the coordinator backend.
    #[arg(long, value_name = "FILE")]
    pub operator_credential_file: Option<PathBuf>,
    #[command(flatten)]
    pub config: Overrides,
}

impl RecoverArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cfg = Config::load(&self.config)?;
        let operator = match &self.operator_credential_file {
            Some(path) => Some(read_operator_credential(path)?),
            None if cfg.backend == BackendKind::Coordinator => bail!(
                "resetting cluster {} needs its operator credential: pass \
                 --operator-credential-file FILE (or `-` to read it from stdin) with the \
                 credential `swarm-coordinator cluster create` printed. Nothing was reset",
                cfg.cluster
            ),
            None => None,
        };
        let backend = backend::open(&cfg, Duration::from_secs(10)).await?;
        let status = backend.status().await.context("reading the cluster")?;
        if status.phase != Phase::Formed || status.swarm_id.as_deref() != Some(&self.swarm_id) {
            bail!(
                "cluster {} is {} with swarm {}, not {}: nothing was reset (check the id in \
                 `swarm-agent status`)",
                cfg.cluster,
                status.phase,
                status.swarm_id.as_deref().unwrap_or("none"),
                self.swarm_id
            );
        }
        let engine = BollardEngine::new(&cfg.docker_host, Duration::from_secs(10));
        if let Ok(info) = engine.info().await {
            if info.swarm.state == LocalSwarmState::Active && !self.force {
                let reachable = if info.swarm.control_available {
                    nodes::list(&engine).await.is_ok()
                } else {
                    supervise::any_reachable(&info.swarm.remote_managers).await
                };
                if reachable {
                    bail!(
                        "this node still reaches a manager of its swarm: `recover` is only for \
                         the loss of every manager. Nothing was reset (use --force if those \
                         managers are known to be gone)"
                    );
                }
            }
        }
        let node_id = state::load_or_create_node_id(&cfg.state_dir)?;
        let reason = if self.reason.is_empty() {
            "all managers lost".to_string()
        } else {
            self.reason.clone()
        };
        let after = match backend
            .reset(
                &ResetRequest {
                    node_id,
                    swarm_id: self.swarm_id.clone(),
                    reason,
                },
                operator.as_ref(),
            )
            .await
        {
            Ok(after) => after,
            Err(e) if e.code() == Some(Code::OperatorRequired) => bail!(
                "the rendezvous refused the reset: it needs cluster {}'s operator credential \
                 (the one `swarm-coordinator cluster create` printed, not the join secret and \
                 not a node credential), and the one given is missing or wrong. Nothing was \
                 reset. Detail: {e}",
                cfg.cluster
            ),
            Err(e) => return Err(e).context("resetting the cluster"),
        };
        println!(
            "cluster {} reset (reset #{}): swarm {} is given up. The agents whose swarm has no \
             manager now leave it and elect one node to run a new `swarm init`. Services, \
             secrets and configs of the lost swarm are gone: deploy them again.",
            cfg.cluster, after.resets, self.swarm_id
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// The operator credential from `path`, or stdin for `-`: trimmed, not empty. The error never
/// holds the content.
pub(crate) fn read_operator_credential(path: &Path) -> anyhow::Result<Secret> {
    let text = if path == Path::new("-") {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .context("reading the operator credential from stdin")?;
        t
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the operator credential file {}", path.display()))?
    };
    parse_operator_credential(&text, path)
}

fn parse_operator_credential(text: &str, path: &Path) -> anyhow::Result<Secret> {
    let c = text.trim();
    if c.is_empty() {
        bail!(
            "the operator credential {} is empty: give the credential `swarm-coordinator              cluster create` printed",
            if path == Path::new("-") {
                "on stdin".to_string()
            } else {
                format!("file {}", path.display())
            }
        );
    }
    Ok(Secret::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_operator_credential_comes_from_a_file_or_stdin_never_argv() {
        let c = Cli::try_parse_from([
            "swarm-agent",
            "recover",
            "--swarm-id",
            "s",
            "--operator-credential-file",
            "-",
        ])
        .unwrap();
        match c.command {
            Command::Recover(a) => {
                assert_eq!(a.operator_credential_file.as_deref(), Some(Path::new("-")))
            }
            _ => panic!("not recover"),
        }
        for flag in ["--operator-credential", "--operator"] {
            assert!(
                Cli::try_parse_from(["swarm-agent", "recover", "--swarm-id", "s", flag, "x"])
                    .is_err(),
                "{flag}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("op");
        std::fs::write(&f, "  op-cred-1\n").unwrap();
        assert_eq!(read_operator_credential(&f).unwrap().expose(), "op-cred-1");
        std::fs::write(&f, "\n").unwrap();
        let e = read_operator_credential(&f).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        assert!(parse_operator_credential(" \n", Path::new("-"))
            .unwrap_err()
            .to_string()
            .contains("stdin"));
    }
}
