//! `swarm-agent leave`: take this node out of the swarm cleanly (scale-in, `terraform
//! destroy`, and the systemd unit's stop at poweroff).
//!
//! 1. Ask for a drain in the backend's `drains` document. A worker cannot drain itself: the
//!    leader's agent sets it to drain and reports when no task is meant to run here any more.
//!    A manager drains itself.
//! 2. Wait (bounded by `--timeout-secs`, default `[quorum] leave_timeout_secs`) for the tasks
//!    to run elsewhere; on timeout leave anyway (the swarm reschedules them once it is down).
//! 3. A manager demotes itself first when the remaining managers keep a quorum. The last
//!    manager is never removed without `--force`.
//! 4. `docker swarm leave`, then mark the request `left`: the leader's agent removes the node
//!    entry once it is down.

use crate::backend;
use crate::config::{Config, Overrides};
use crate::engine::{BollardEngine, Engine, LocalSwarmState};
use crate::lifecycle::docs::{self, DrainRequest, DrainState, Drains, DRAINS_DOC};
use crate::lifecycle::keeper::set_state;
use crate::lifecycle::nodes::{self, majority, Availability};
use crate::retry::Policy;
use crate::state::{self, rfc3339_now, AgentPhase, StateStore};
use anyhow::{bail, Context};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::Role;

const ENGINE_TIMEOUT: Duration = Duration::from_secs(60);
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// One long-poll of the drains document.
const LONG_POLL: Duration = Duration::from_secs(25);
/// Longest wait for the engine to report the demotion.
const DEMOTE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct LeaveArgs {
    /// Leave even when this is the last manager (that ends the swarm) or when demoting this
    /// manager would lose the quorum.
    #[arg(long)]
    pub force: bool,
    /// Longest wait for this node's tasks to move elsewhere [default: [quorum]
    /// leave_timeout_secs, 300]
    #[arg(long, value_name = "SECS")]
    pub timeout_secs: Option<u64>,
    #[command(flatten)]
    pub config: Overrides,
}

impl LeaveArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cfg = Config::load(&self.config)?;
        let timeout = self
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(cfg.quorum.leave_timeout);
        let engine = BollardEngine::new(&cfg.docker_host, ENGINE_TIMEOUT);
        let store = StateStore::new(&cfg.state_dir);
        let info = engine
            .info()
            .await
            .context("the Docker engine must answer to leave the swarm")?;
        if info.swarm.state == LocalSwarmState::Inactive {
            println!("this engine is in no swarm: nothing to leave");
            mark(&store, AgentPhase::Left);
            return Ok(ExitCode::SUCCESS);
        }
        let id = info
            .swarm
            .node_id
            .clone()
            .context("the engine reports no swarm node id")?;
        let manager = info.swarm.control_available;
        if manager {
            let list = nodes::list(&engine).await?;
            let managers = list.iter().filter(|n| n.role == Role::Manager).count();
            if managers <= 1 && !self.force {
                bail!(
                    "this node is the last manager of the swarm: leaving would end the swarm and \
                     every service on it. Nothing was changed. Add managers first, or run \
                     `swarm-agent leave --force` if the swarm should end"
                );
            }
            let healthy_others = list
                .iter()
                .filter(|n| n.role == Role::Manager && n.id != id && n.healthy())
                .count();
            if managers > 1 && healthy_others < majority(managers - 1) && !self.force {
                bail!(
                    "demoting this manager would leave {healthy_others} healthy of {} managers, \
                     below the quorum of {}: nothing was changed. Bring the other managers back \
                     first, or use --force",
                    managers - 1,
                    majority(managers - 1)
                );
            }
        }
        mark(&store, AgentPhase::Leaving);
        let result = self
            .leave(&cfg, &engine, &store, &id, &info.hostname, manager, timeout)
            .await;
        if result.is_err() {
            // Still a member: let `run` supervise it again.
            if let Ok(i) = engine.info().await {
                if i.swarm.state == LocalSwarmState::Active {
                    mark(&store, AgentPhase::Joined);
                }
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn leave(
        &self,
        cfg: &Config,
        engine: &BollardEngine,
        store: &StateStore,
        id: &str,
        hostname: &str,
        manager: bool,
        timeout: Duration,
    ) -> anyhow::Result<ExitCode> {
        let deadline = Instant::now() + timeout;
        let backend = match backend::open(cfg, BACKEND_TIMEOUT).await {
            Ok(b) => Some(b),
            Err(e) if manager => {
                tracing::warn!("the backend cannot be reached ({e}); draining without it");
                None
            }
            Err(e) => {
                return Err(e).context(
                    "a worker needs the backend to ask the leader for its drain; use \
                     `docker swarm leave` directly if the cluster is gone",
                )
            }
        };
        // This agent's node id writes its drain request (with its credential, which
        // `backend::open` loaded from the state dir).
        let agent_node_id = state::read_node_id(&cfg.state_dir).unwrap_or_default();
        if let Some(b) = &backend {
            let now = rfc3339_now();
            docs::update::<Drains, _>(b.as_ref(), &agent_node_id, DRAINS_DOC, |d| {
                if d.requests.contains_key(id) {
                    return false;
                }
                d.requests.insert(
                    id.to_string(),
                    DrainRequest {
                        hostname: hostname.to_string(),
                        agent_node_id: agent_node_id.clone(),
                        state: DrainState::Requested,
                        requested_at: now.clone(),
                        updated_at: now.clone(),
                        updated_ms: docs::now_ms(),
                        tasks_left: None,
                    },
                );
                true
            })
            .await
            .context("asking for the drain in the backend")?;
            crate::relay::announce_write(cfg).await;
            println!("drain requested for {hostname} ({id})");
        }

        let drained = if manager {
            drain_self(engine, id, deadline).await?
        } else {
            wait_drained(backend.as_deref().expect("workers have one"), id, deadline).await?
        };
        if drained {
            println!("drained: no task is meant to run on {hostname} any more");
        } else {
            println!(
                "the tasks did not all move within {} s: leaving anyway (the swarm reschedules \
                 them once this node is down)",
                timeout.as_secs()
            );
        }

        let mut force_leave = false;
        if manager {
            let managers = nodes::list(engine)
                .await?
                .iter()
                .filter(|n| n.role == Role::Manager)
                .count();
            if managers > 1 {
                demote_self(engine, id).await?;
                println!("demoted {hostname} to worker");
            } else {
                force_leave = true; // --force was checked above
            }
        }
        // The managers are told of the `left` mark below; after the leave this node no longer
        // knows them, nor has its swarm certificate.
        let poker = crate::relay::poker_for(cfg).await;
        engine
            .leave(force_leave)
            .await
            .context("docker swarm leave")?;
        println!("{hostname} left the swarm");
        if let Some(b) = &backend {
            if let Err(e) = set_state(b.as_ref(), &agent_node_id, id, DrainState::Left, None).await
            {
                tracing::warn!("cannot mark the drain request as left ({e}); the leader's agent removes the node once it is down anyway");
            } else if let Some(p) = &poker {
                // The version written (this instance reads its own writes): the managers read
                // until they see it, whatever else is written meanwhile.
                match b.get_doc(DRAINS_DOC, None, Duration::ZERO).await {
                    Ok(d) => {
                        p.send(serde_json::json!({"doc": DRAINS_DOC, "version": d.version}))
                            .await
                    }
                    Err(_) => p.send_generic().await,
                }
            }
        }
        if let Some(mut st) = store.load().ok().flatten() {
            st.phase = AgentPhase::Left;
            st.left_at = Some(rfc3339_now());
            let _ = store.save(&mut st);
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn mark(store: &StateStore, phase: AgentPhase) {
    if let Ok(Some(mut st)) = store.load() {
        st.phase = phase;
        if let Err(e) = store.save(&mut st) {
            tracing::warn!("cannot save the state file: {e}");
        }
    }
}

/// A manager drains itself and waits until no task is meant to run on it.
async fn drain_self(engine: &BollardEngine, id: &str, deadline: Instant) -> anyhow::Result<bool> {
    let mut delays = Policy::FAST.delays();
    let mut set = false;
    loop {
        if !set {
            match nodes::set_availability(engine, id, Availability::Drain).await {
                Ok(()) => set = true,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(e) => tracing::debug!("setting drain: {e}; retrying"),
            }
        }
        if set && nodes::tasks_on(engine, id).await? == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        let d = delays.next().unwrap_or(Duration::from_millis(500));
        tokio::time::sleep(d.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// A worker long-polls the drains document until the leader's agent marks it drained.
async fn wait_drained(
    backend: &dyn Rendezvous,
    id: &str,
    deadline: Instant,
) -> anyhow::Result<bool> {
    let mut after: Option<u64> = None;
    let mut delays = Policy::FAST.delays();
    loop {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(LONG_POLL);
        match backend.get_doc(DRAINS_DOC, after, wait).await {
            Ok(d) => {
                let drains: Drains = serde_json::from_value(d.body).unwrap_or_default();
                match drains.requests.get(id) {
                    Some(r) if r.state != DrainState::Requested => return Ok(true),
                    Some(r) => {
                        if let Some(n) = r.tasks_left {
                            tracing::info!("waiting for the drain: {n} task(s) left");
                        }
                    }
                    None => bail!("the drain request disappeared from the backend"),
                }
                after = Some(d.version);
            }
            Err(e) => {
                tracing::warn!("reading the drain state: {e}");
                let d = delays.next().unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(d.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

async fn demote_self(engine: &BollardEngine, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEMOTE_DEADLINE;
    let mut delays = Policy::FAST.delays();
    let mut done = false;
    loop {
        if !done {
            match nodes::set_role(engine, id, Role::Worker).await {
                Ok(()) => done = true,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context("demoting this manager")
                }
                Err(e) => tracing::debug!("demote: {e}; retrying"),
            }
        }
        if done && !engine.info().await?.swarm.control_available {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the engine still reports manager status {} s after the demotion",
                DEMOTE_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_millis(500))).await;
    }
}
