//! `swarm-agent rotate-tokens`: the operator asks for new swarm join tokens (a leaked token, or
//! a schedule). The backend marks a rotation pending; the raft leader's agent rotates the
//! swarm's worker and manager tokens (`docker swarm join-token --rotate`) and publishes them,
//! within seconds. Nodes joining afterwards get the new tokens; the old ones no longer join.
//!
//! On the coordinator this needs the cluster's operator credential, read from
//! `--operator-credential-file FILE` or `-` (stdin), never from argv or the environment (the
//! coordinator host can also use `swarm-coordinator cluster rotate-tokens NAME`). On Secrets
//! Manager the operator is whoever IAM lets write the secret.

use super::recover::read_operator_credential;
use crate::backend;
use crate::config::{BackendKind, Config, Overrides};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use swarmstrap_wire::rules::Code;

/// How long `--wait` waits for the leader's agent to publish the new tokens.
const WAIT_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The cluster's operator credential (what `swarm-coordinator cluster create` printed): a
    /// file holding it, or `-` to read it from stdin. Required with the coordinator backend.
    #[arg(long, value_name = "FILE")]
    pub operator_credential_file: Option<PathBuf>,
    /// Wait (up to 60 s) until the leader's agent published the new tokens.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub config: Overrides,
}

impl RotateArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cfg = Config::load(&self.config)?;
        let operator = match &self.operator_credential_file {
            Some(path) => Some(read_operator_credential(path)?),
            None if cfg.backend == BackendKind::Coordinator => bail!(
                "rotating cluster {}'s join tokens needs its operator credential: pass \
                 --operator-credential-file FILE (or `-` to read it from stdin) with the \
                 credential `swarm-coordinator cluster create` printed. Nothing was changed",
                cfg.cluster
            ),
            None => None,
        };
        let backend = backend::open(&cfg, Duration::from_secs(10)).await?;
        let st = match backend.request_token_rotation(operator.as_ref()).await {
            Ok(st) => st,
            Err(e) if e.code() == Some(Code::OperatorRequired) => bail!(
                "the rendezvous refused: rotating the join tokens needs cluster {}'s operator \
                 credential (not the join secret, not a node credential), and the one given is \
                 missing or wrong. Nothing was changed. Detail: {e}",
                cfg.cluster
            ),
            Err(e) if e.code() == Some(Code::SwarmMismatch) => bail!(
                "cluster {} is not formed: it has no join tokens to rotate. Detail: {e}",
                cfg.cluster
            ),
            Err(e) => return Err(e).context("asking for a join-token rotation"),
        };
        crate::relay::announce_write(&cfg).await;
        let n = st.token_rotation_pending.unwrap_or(st.token_rotations);
        println!(
            "cluster {}: join-token rotation #{n} requested; the raft leader's agent rotates the \
             swarm's tokens and publishes them (`swarm-agent status` on a manager shows it)",
            cfg.cluster
        );
        if !self.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let deadline = Instant::now() + WAIT_FOR;
        let mut delay = Duration::from_millis(250);
        loop {
            match backend.status().await {
                Ok(s) if s.token_rotation_pending.is_none() && s.token_rotations >= n => {
                    println!("rotation #{n} done: the old join tokens no longer join");
                    return Ok(ExitCode::SUCCESS);
                }
                _ if Instant::now() >= deadline => bail!(
                    "rotation #{n} is still pending after {} s: is an agent running on the raft \
                     leader? (`swarm-agent status` on a manager)",
                    WAIT_FOR.as_secs()
                ),
                _ => {}
            }
            let jitter = rand::random_range(0..=delay.as_millis() as u64 / 2);
            tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
