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
//! - the quorum keeper asks this node (a worker) to join again as a manager (a promotion the
//!   engine cannot carry out, see [`super::keeper`]): leave the swarm and bootstrap again, which
//!   joins with the manager token through a live manager. The request is long-polled, so this
//!   starts within moments of the keeper's decision.
//!
//! A rendezvous that forgot the cluster's formation (database wiped, restored from an old
//! backup, secret re-created) is not an operator's reset: only a swarm listed as retired by a
//! reset makes the node leave. Otherwise the running swarm's leader adopts the cluster again.
//!
//! `swarm-agent leave` marks the state file `leaving`/`left`; the supervisor then stays out of
//! the way.

use super::docs::{self, RejoinRequest, RejoinState, Rejoins, REJOINS_DOC};
use super::nodes;
use crate::bootstrap::Bootstrap;
use crate::engine::{BollardEngine, EngineInfo, LocalSwarmState};
use crate::state::{rfc3339_now, AgentPhase, AgentState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::Role;

/// One membership check this often (a periodic check, not a wait).
pub const TICK: Duration = Duration::from_secs(5);
/// No reachable manager this long → "all managers lost" (a leader election or a manager's
/// engine restart takes seconds).
pub const NO_MANAGER_GRACE: Duration = Duration::from_secs(20);
/// One TCP connect to a manager's swarm port.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// One long-poll of the rejoin requests.
const REJOIN_POLL: Duration = Duration::from_secs(25);

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
        let (tx, mut rx) = tokio::sync::watch::channel(None::<RejoinRequest>);
        let watcher = watch_rejoins(
            self.boot.backend.clone(),
            self.boot.settings.node_id.clone(),
            tx,
        );
        tokio::pin!(watcher);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                r = rx.changed() => {
                    if r.is_err() {
                        // The watcher ended (it never does): fall back to the tick.
                        tokio::time::sleep(TICK).await;
                    }
                }
                _ = &mut watcher => {}
            }
            let request = rx.borrow_and_update().clone();
            if let Some(req) = request {
                if self.rejoin(&mut mem, &req).await {
                    continue;
                }
            }
            self.pass(&mut mem).await;
        }
    }

    /// Carry out the keeper's request to join again as a manager, if it is for this engine as
    /// it is now. True when it acted.
    async fn rejoin(&self, mem: &mut Memory, req: &RejoinRequest) -> bool {
        if req.state != RejoinState::Requested {
            return false;
        }
        let Some(st) = self.load() else { return false };
        if matches!(st.phase, AgentPhase::Leaving | AgentPhase::Left) {
            return false;
        }
        let info = match self.boot.engine.info().await {
            Ok(i) => i,
            Err(_) => return false,
        };
        if info.swarm.state != LocalSwarmState::Active
            || info.swarm.control_available
            || info.swarm.node_id.as_deref() != Some(req.swarm_node_id.as_str())
        {
            return false;
        }
        let backend = self.boot.backend.as_ref();
        let me = self.boot.settings.node_id.clone();
        // The keeper made this node's registration a manager before asking: check, so the
        // node does not leave only to join as a worker again.
        match backend.wait_join(&me, Duration::ZERO).await {
            Ok(r) if r.join.as_ref().is_some_and(|j| j.role == Role::Manager) => {}
            Ok(_) => {
                tracing::info!(
                    "the quorum keeper asks this node to join again as a manager; the rendezvous \
                     does not hand it the manager role yet: waiting"
                );
                return false;
            }
            Err(e) => {
                tracing::warn!("rejoin as a manager: cannot read the join info: {e}");
                return false;
            }
        }
        tracing::warn!(
            "the quorum keeper asks this node to join again as a manager (its engine cannot be \
             promoted in place): leaving the swarm as a worker and joining as a manager"
        );
        let _ = set_rejoin(backend, &me, RejoinState::Rejoining, None).await;
        if let Err(e) = self.boot.engine.leave(false).await {
            let msg = format!("leaving the swarm failed: {e}");
            tracing::warn!("rejoin as a manager: {msg}");
            let _ = set_rejoin(backend, &me, RejoinState::Failed, Some(msg)).await;
            return true;
        }
        *mem = Memory::default();
        match self.boot.run().await {
            Ok(o) => {
                tracing::info!(
                    "joined cluster {} again as {} ({:?})",
                    self.boot.settings.cluster,
                    o.role,
                    o.how
                );
                let _ = set_rejoin(backend, &me, RejoinState::Rejoined, None).await;
            }
            Err(e) => {
                let msg = format!("joining again failed: {e}");
                tracing::error!("rejoin as a manager: {msg}");
                let _ = set_rejoin(backend, &me, RejoinState::Failed, Some(msg)).await;
            }
        }
        self.save_no_manager(None);
        true
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
        // `swarm-agent leave` (another process) writes `leaving`/`left` to the state file.
        crate::metrics::agent().set_phase(st.phase);
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
            LocalSwarmState::Active => {
                // The keeper may have promoted or demoted this node since the bootstrap.
                crate::metrics::agent().set_role(if info.swarm.control_available {
                    Role::Manager
                } else {
                    Role::Worker
                });
                self.check_managers(mem, &st, &info).await
            }
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
        // Has an operator reset the cluster (`swarm-agent recover`)? Only a reset retires a
        // swarm; a rendezvous that merely forgot it waits for the swarm to adopt it again.
        match self.boot.backend.status().await {
            Ok(s) if s.retired_swarm_ids.contains(&swarm) => {
                tracing::warn!(
                    "cluster {} retired swarm {swarm} (an operator ran `swarm-agent recover`; \
                     phase {}): leaving the dead swarm and bootstrapping into the new one",
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
        // `swarm-agent leave` may have started since this pass read the state file: a node
        // that is leaving never bootstraps again by itself.
        if self
            .load()
            .is_some_and(|st| matches!(st.phase, AgentPhase::Leaving | AgentPhase::Left))
        {
            return;
        }
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

/// Long-poll the rejoin requests; publish this node's request (or `None`) on every change.
async fn watch_rejoins(
    backend: Arc<dyn Rendezvous>,
    me: String,
    tx: tokio::sync::watch::Sender<Option<RejoinRequest>>,
) {
    let mut after: Option<u64> = None;
    let mut delay = Duration::from_millis(500);
    loop {
        match backend.get_doc(REJOINS_DOC, after, REJOIN_POLL).await {
            Ok(d) => {
                delay = Duration::from_millis(500);
                if after.is_some_and(|a| d.version <= a) {
                    continue;
                }
                after = Some(d.version);
                let mine = serde_json::from_value::<Rejoins>(d.body)
                    .ok()
                    .and_then(|r| r.requests.get(&me).cloned());
                tx.send_if_modified(|cur| {
                    if *cur != mine {
                        *cur = mine.clone();
                        true
                    } else {
                        false
                    }
                });
            }
            Err(e) => {
                tracing::debug!("watching the rejoin requests: {e}");
                let jitter = rand::random_range(0..=delay.as_millis() as u64 / 2);
                tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn set_rejoin(
    backend: &dyn Rendezvous,
    me: &str,
    state: RejoinState,
    message: Option<String>,
) -> Result<(), swarmstrap_wire::rendezvous::RendezvousError> {
    docs::update::<Rejoins, _>(backend, me, REJOINS_DOC, |d| match d.requests.get_mut(me) {
        Some(r) if r.state != state => {
            r.state = state;
            r.updated_ms = docs::now_ms();
            r.message = message.clone();
            true
        }
        _ => false,
    })
    .await
    .map(|_| ())
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
