//! After the bootstrap, `swarm-agent run` keeps watching the node's membership:
//!
//! - the engine restarted: nothing to do (Docker rejoins by itself); the agent just waits for
//!   it to answer again;
//! - the engine is in no swarm any more (it left, its swarm state was lost, or it was removed
//!   while the cluster still counts it): bootstrap again, which joins the cluster's swarm;
//! - no manager of the node's swarm is reachable for [`NO_MANAGER_GRACE`]: recorded for
//!   `status`, and logged with the operator's way out. The agent never initialises a new swarm
//!   by itself. Only once an operator ran `swarm-agent recover` (the backend no longer holds
//!   this swarm) does the node leave its dead swarm and bootstrap into the new one — through
//!   the same single-init election as a fresh cluster.
//!
//! `swarm-agent leave` marks the state file `leaving`/`left`; the supervisor then stays out of
//! the way.

use super::nodes;
use crate::bootstrap::Bootstrap;
use crate::engine::{BollardEngine, EngineInfo, LocalSwarmState};
use crate::state::{rfc3339_now, AgentPhase, AgentState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_wire::Phase;

/// One membership check this often (a periodic check, not a wait).
pub const TICK: Duration = Duration::from_secs(5);
/// No reachable manager this long → "all managers lost" (a leader election or a manager's
/// engine restart takes seconds).
pub const NO_MANAGER_GRACE: Duration = Duration::from_secs(20);
/// One TCP connect to a manager's swarm port.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Supervisor<'a> {
    pub boot: &'a Bootstrap,
    pub engine: Arc<BollardEngine>,
}

#[derive(Default)]
struct Memory {
    no_manager_since: Option<Instant>,
    logged: Option<String>,
}

impl Memory {
    fn log_once(&mut self, msg: String) {
        if self.logged.as_deref() != Some(msg.as_str()) {
            tracing::error!("{msg}");
            self.logged = Some(msg);
        }
    }
}

impl Supervisor<'_> {
    pub async fn run(&self) {
        let mut mem = Memory::default();
        loop {
            tokio::time::sleep(TICK).await;
            self.pass(&mut mem).await;
        }
    }

    fn load(&self) -> Option<AgentState> {
        self.boot.store.load().ok().flatten()
    }

    fn save_no_manager(&self, since: Option<String>) {
        if let Some(mut st) = self.load() {
            if st.no_manager_since != since {
                st.no_manager_since = since;
                if let Err(e) = self.boot.store.save(&mut st) {
                    tracing::warn!("cannot save the state file: {e}");
                }
            }
        }
    }

    async fn pass(&self, mem: &mut Memory) {
        let Some(st) = self.load() else { return };
        if matches!(st.phase, AgentPhase::Leaving | AgentPhase::Left) {
            return;
        }
        let info: EngineInfo =
            match tokio::time::timeout(Duration::from_secs(10), self.boot.engine.info()).await {
                Ok(Ok(i)) => i,
                // The engine restarts (or is stopped): Docker rejoins by itself once it is back.
                _ => return,
            };
        match info.swarm.state {
            LocalSwarmState::Inactive => {
                tracing::warn!(
                    "the engine is in no swarm any more (it left, or its swarm state was lost) \
                     while cluster {} counts this node: joining again",
                    self.boot.settings.cluster
                );
                self.rebootstrap(mem, false).await;
            }
            LocalSwarmState::Error
                if info
                    .swarm
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("removed")) =>
            {
                tracing::warn!(
                    "this node was removed from its swarm ({}): leaving the old state and \
                     joining again",
                    info.swarm.error.as_deref().unwrap_or_default()
                );
                self.rebootstrap(mem, true).await;
            }
            LocalSwarmState::Active => self.check_managers(mem, &st, &info).await,
            _ => {}
        }
    }

    async fn check_managers(&self, mem: &mut Memory, st: &AgentState, info: &EngineInfo) {
        let reachable = if info.swarm.control_available {
            // A manager: the node list answers only while raft has a leader (quorum).
            nodes::list(&self.engine).await.is_ok()
        } else {
            any_reachable(&info.swarm.remote_managers).await
        };
        if reachable {
            if mem.no_manager_since.take().is_some() {
                tracing::info!("a manager of the swarm is reachable again");
                mem.logged = None;
                self.save_no_manager(None);
            }
            return;
        }
        let since = *mem.no_manager_since.get_or_insert_with(Instant::now);
        if since.elapsed() < NO_MANAGER_GRACE {
            return;
        }
        if st.no_manager_since.is_none() {
            self.save_no_manager(Some(rfc3339_now()));
        }
        let swarm = st.swarm_id.clone().unwrap_or_else(|| "?".into());
        // Has an operator reset the cluster (`swarm-agent recover`)?
        match self.boot.backend.status().await {
            Ok(s) if s.phase != Phase::Formed || s.swarm_id.as_deref() != Some(swarm.as_str()) => {
                tracing::warn!(
                    "cluster {} no longer holds swarm {swarm} (an operator ran `swarm-agent \
                     recover`; phase {}): leaving the dead swarm and bootstrapping into the new one",
                    self.boot.settings.cluster,
                    s.phase
                );
                self.rebootstrap(mem, true).await;
            }
            Ok(_) => mem.log_once(format!(
                "no manager of swarm {swarm} has been reachable for {} s. swarmstrap never \
                 initialises a new swarm by itself. If the managers are coming back, wait. If \
                 every manager is lost for good, run `swarm-agent recover --swarm-id {swarm}` on \
                 one node: it allows exactly one new `swarm init` for cluster {}",
                since.elapsed().as_secs(),
                self.boot.settings.cluster
            )),
            Err(e) => mem.log_once(format!(
                "no manager of swarm {swarm} is reachable, and the backend cannot be read: {e}"
            )),
        }
    }

    async fn rebootstrap(&self, mem: &mut Memory, leave_first: bool) {
        if leave_first {
            if let Err(e) = self.boot.engine.leave(true).await {
                tracing::warn!("leaving the old swarm failed: {e}");
                return;
            }
        }
        *mem = Memory::default();
        match self.boot.run().await {
            Ok(o) => tracing::info!(
                "back in cluster {} ({:?})",
                self.boot.settings.cluster,
                o.how
            ),
            Err(e) => tracing::error!("joining again failed: {e}"),
        }
        self.save_no_manager(None);
    }
}

/// Can this node open a TCP connection to any manager's swarm port?
pub async fn any_reachable(addrs: &[String]) -> bool {
    let probes = addrs.iter().map(|a| async move {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(a.as_str())).await,
            Ok(Ok(_))
        )
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .any(|ok| ok)
}
