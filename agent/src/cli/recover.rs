//! `swarm-agent recover --swarm-id ID`: the operator's way out after every manager of the
//! cluster's swarm is lost for good. It resets the cluster in the backend (compare-and-set on
//! the lost swarm's id, recorded with this node and `--reason`), which allows exactly one new
//! `swarm init`: the agents whose swarm has no manager leave it and run the normal election.
//!
//! It refuses while this node still reaches a manager of its swarm (use `--force` only when
//! those managers are known to be gone).

use crate::backend;
use crate::config::{Config, Overrides};
use crate::engine::{BollardEngine, Engine, LocalSwarmState};
use crate::lifecycle::{nodes, supervise};
use crate::state;
use anyhow::{bail, Context};
use std::process::ExitCode;
use std::time::Duration;
use swarmstrap_wire::{Phase, ResetRequest};

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
    #[command(flatten)]
    pub config: Overrides,
}

impl RecoverArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cfg = Config::load(&self.config)?;
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
        let after = backend
            .reset(&ResetRequest {
                node_id,
                swarm_id: self.swarm_id.clone(),
                reason,
            })
            .await
            .context("resetting the cluster")?;
        println!(
            "cluster {} reset (reset #{}): swarm {} is given up. The agents whose swarm has no \
             manager now leave it and elect one node to run a new `swarm init`. Services, \
             secrets and configs of the lost swarm are gone: deploy them again.",
            cfg.cluster, after.resets, self.swarm_id
        );
        Ok(ExitCode::SUCCESS)
    }
}
