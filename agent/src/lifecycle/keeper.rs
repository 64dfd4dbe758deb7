//! The quorum keeper and the drain handler, on every agent; they act only while the local
//! engine is the raft leader. Every pass (every [`TICK`]) reads the node list and:
//!
//! 1. keeps the rendezvous following the swarm ([`Rendezvous::sync`]: live manager addresses,
//!    roles, departed nodes) and, when the rendezvous lost the cluster's formation (database
//!    wiped or rolled back, secret re-created), publishes the running swarm again
//!    ([`Rendezvous::adopt`]);
//! 2. carries out pending drain requests;
//! 3. finishes the role change in flight, or plans the next one ([`super::plan`]). **One step at
//!    a time**: after a promotion the keeper waits until that node is a Reachable manager
//!    (bounded: [`PROMOTE_BOUND`]; on expiry it demotes it again and has the node's agent rejoin
//!    instead) before it decides anything else. A worker that joined the swarm through a
//!    manager that is now dead cannot be promoted by its engine (Docker's raft join goes through
//!    the address the engine originally joined through), so that worker's agent is asked to
//!    leave and join again as a manager through a live manager ([`Kind::Rejoin`], bounded by
//!    [`REJOIN_BOUND`]).
//!
//! Everything is logged and recorded in the [`KEEPER_DOC`] report that `swarm-agent status`
//! shows, with the step in flight.

use super::docs::{
    self, DownNode, DrainState, Drains, InflightStep, KeeperReport, RecordedAction, RejoinRequest,
    RejoinState, Rejoins, DRAINS_DOC, KEEPER_DOC, KEEPER_HISTORY, REJOINS_DOC,
};
use super::nodes::{self, majority, Availability, NodeView};
use super::plan::{self, Action, Kind, Rules, View};
use crate::config::QuorumConfig;
use crate::engine::{BollardEngine, Engine, EngineError, SwarmDetails};
use crate::lb::docker::is_leader;
use crate::state::{rfc3339_now, StateStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::rules::Code;
use swarmstrap_wire::{AdoptRequest, ClusterStatus, Member, NodeInfo, Role, SyncRequest};

/// One keeper pass this often (a periodic check of the node list: T is measured in passes).
pub const TICK: Duration = Duration::from_secs(2);
/// Forget drain requests whose node is gone from the swarm and that nobody finished.
const STALE_REQUEST: Duration = Duration::from_secs(3600);
/// A promoted engine is a Reachable manager within seconds; after this the promotion is undone.
pub const PROMOTE_BOUND: Duration = Duration::from_secs(20);
/// Leave + join as a manager (the join waits for raft) takes seconds; after this it is given up.
pub const REJOIN_BOUND: Duration = Duration::from_secs(90);
/// A demotion shows in the node list at once; bound it anyway.
const DEMOTE_BOUND: Duration = Duration::from_secs(20);
/// A worker whose promotion failed is not picked again for this long.
const AVOID_FOR: Duration = Duration::from_secs(600);
/// Read the cluster from the rendezvous this often while all is well (every pass otherwise), so
/// a lost formation is adopted again within seconds of the rendezvous answering.
const STATUS_EVERY: Duration = Duration::from_secs(4);
/// Send an unchanged sync again this often (registrations that never joined expire).
pub const SYNC_REFRESH: Duration = Duration::from_secs(60);
/// A new leader counts a manager's unhealthy time from when it last saw it healthy as a
/// follower (a raft election takes ~10 s), if that was at most this long ago.
const BACKDATE_MAX: Duration = Duration::from_secs(30);
/// Longest wait for the leader check and a follower's node list.
const ENGINE_CHECK: Duration = Duration::from_secs(3);

pub struct Keeper {
    pub engine: Arc<BollardEngine>,
    pub backend: Arc<dyn Rendezvous>,
    pub cfg: QuorumConfig,
    /// The target from the config, until the backend's is known.
    pub target: u8,
    /// The agent's state file: which cluster and swarm this node belongs to, its node id.
    pub store: StateStore,
    /// This agent's node id: the writer of the documents the keeper changes (with its
    /// credential).
    pub node_id: String,
    /// How long a changed sync must stay the same before it is sent (a third of it when a
    /// manager address went away). Zero: at once. On Secrets Manager every sync that changes
    /// something is a version of the secret: the joins of a formation make one sync, not one
    /// each ([`SYNC_SETTLE`]).
    pub sync_settle: Duration,
    /// Send an unchanged sync again this often ([`SYNC_REFRESH`]; on Secrets Manager each
    /// costs a read).
    pub sync_refresh: Duration,
    /// The relay (Secrets Manager): which manager each node joined through, as the nodes told
    /// the managers' agents (they do not write it into the secret).
    pub relay: Option<Arc<crate::relay::Relay>>,
    /// `[cloud]`: this node's labels from its cloud tags ([`super::labels`]).
    pub cloud: crate::config::CloudConfig,
}

/// [`Keeper::sync_settle`] on Secrets Manager.
pub const SYNC_SETTLE: Duration = Duration::from_secs(15);
/// [`Keeper::sync_refresh`] on Secrets Manager.
pub const SYNC_REFRESH_SLOW: Duration = Duration::from_secs(600);

/// The role change in flight.
#[derive(Clone, Debug)]
struct Inflight {
    kind: Kind,
    /// Docker node id (for a rejoin: the node's id as a worker, before it left).
    node_id: String,
    /// The node's agent (registration), when known.
    agent_node_id: Option<String>,
    hostname: String,
    /// The node's address (Status.Addr): a rejoined node has a new Docker id, the same address.
    addr: Option<String>,
    started: Instant,
    since: String,
    bound: Duration,
    reason: String,
}

impl Inflight {
    fn report(&self) -> InflightStep {
        InflightStep {
            kind: self.kind,
            hostname: self.hostname.clone(),
            since: self.since.clone(),
            bound_secs: self.bound.as_secs(),
            reason: self.reason.clone(),
        }
    }
}

/// This node as the rendezvous should know it.
struct Me {
    node_id: String,
    hostname: String,
    advertise_addr: String,
    /// The swarm the state file says this node belongs to.
    swarm_id: Option<String>,
    ca_digest: Option<String>,
}

#[derive(Default)]
struct Memory {
    unhealthy_since: HashMap<String, (Instant, String)>,
    imbalance_since: Option<Instant>,
    /// The target of the last status read.
    target: Option<u8>,
    report: Option<KeeperReport>,
    actions: Vec<RecordedAction>,
    last_error: Option<String>,
    was_leader: bool,
    inflight: Option<Inflight>,
    avoid: HashMap<String, Instant>,
    /// The last cluster status read, and when; `None` after a failed read.
    status: Option<(ClusterStatus, Instant)>,
    last_sync: Option<(SyncRequest, Instant)>,
    /// A changed sync waiting to settle ([`Keeper::sync_settle`]): the request, since when it
    /// is this one, and since when any change waits.
    sync_pending: Option<(SyncRequest, Instant, Instant)>,
    logged: HashSet<String>,
    /// The rejoin requests were checked since this node became the leader.
    rejoins_checked: bool,
    /// While not the leader: when each node was last seen healthy, and when the node list
    /// last answered (see [`BACKDATE_MAX`]).
    last_healthy: HashMap<String, Instant>,
    last_list_ok: Option<Instant>,
    /// The operator's token rotation whose new tokens the engine already made (their
    /// publication is what is left, should it have failed).
    rotated_for: Option<u64>,
    /// Node labels from tags: warnings given.
    labels: super::labels::LabelsMemory,
}

impl Memory {
    /// Log a warning once until [`Memory::clear_logged`] forgets it.
    fn warn_once(&mut self, key: &str, msg: String) {
        if self.logged.insert(format!("{key}:{msg}")) {
            self.logged
                .retain(|k| !k.starts_with(key) || k == &format!("{key}:{msg}"));
            tracing::warn!("{msg}");
        }
    }

    fn clear_logged(&mut self, key: &str) {
        self.logged.retain(|k| !k.starts_with(key));
    }
}

/// What an in-flight step came to.
enum StepEnd {
    Pending,
    Done(String),
    Failed(String),
}

impl Keeper {
    pub async fn run(&self) {
        // This node's own tags, published in its registration (every agent).
        let publish = super::labels::publish(
            &self.cloud,
            self.backend.clone(),
            &self.store,
            &self.node_id,
            self.relay.clone(),
        );
        tokio::join!(publish, self.keep());
    }

    async fn keep(&self) {
        let mut mem = Memory::default();
        loop {
            if let Err(e) = self.pass(&mut mem).await {
                let msg = format!("quorum keeper: {e}");
                if mem.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{msg}");
                    mem.last_error = Some(msg);
                }
            } else {
                mem.last_error = None;
            }
            let jitter = rand::random_range(0..=200);
            tokio::time::sleep(TICK + Duration::from_millis(jitter)).await;
        }
    }

    /// The cluster's target manager count: from the status [`Keeper::follow`] read (the last
    /// one known while the rendezvous does not answer), else the config's.
    fn target(&self, mem: &Memory) -> u8 {
        mem.status
            .as_ref()
            .map(|(s, _)| s.target_managers)
            .or(mem.target)
            .unwrap_or(self.target)
    }

    fn me(&self) -> Option<Me> {
        let st = self.store.load().ok().flatten()?;
        Some(Me {
            node_id: st.node_id,
            hostname: st.hostname?,
            advertise_addr: st.advertise_addr?,
            swarm_id: st.swarm_id,
            ca_digest: st.ca_digest,
        })
    }

    async fn pass(&self, mem: &mut Memory) -> anyhow::Result<()> {
        // During a raft election the engine's node calls hang until a leader is elected: bound
        // them, so a new leader notices within a pass of the election.
        let leader = tokio::time::timeout(ENGINE_CHECK, is_leader(&self.engine))
            .await
            .map_err(|_| anyhow::anyhow!("the engine did not say within {ENGINE_CHECK:?} whether it leads raft (an election?)"))??;
        if !leader {
            if mem.was_leader {
                tracing::info!("quorum keeper: this node is no longer the raft leader");
            }
            // Another leader measures from scratch (its own view of who is down). A step in
            // flight is the new leader's to judge: it sees the node list too.
            *mem = Memory {
                actions: std::mem::take(&mut mem.actions),
                last_healthy: std::mem::take(&mut mem.last_healthy),
                last_list_ok: mem.last_list_ok,
                ..Memory::default()
            };
            // A manager that is not the leader still watches who is healthy, so that if it
            // becomes the leader after the old leader died, the old leader's T counts from when
            // it was last seen healthy, not from the end of the election (~10 s later).
            if let Ok(Ok(list)) =
                tokio::time::timeout(ENGINE_CHECK, nodes::list(&self.engine)).await
            {
                let now = Instant::now();
                if mem.last_list_ok.is_none() {
                    tracing::info!(
                        "quorum keeper: this node is a manager (not the leader): watching the \
                         managers' health"
                    );
                }
                mem.last_list_ok = Some(now);
                mem.last_healthy.retain(|_, at| at.elapsed() < BACKDATE_MAX);
                for n in list.iter().filter(|n| n.healthy()) {
                    mem.last_healthy.insert(n.id.clone(), now);
                }
            }
            return Ok(());
        }
        if !mem.was_leader {
            tracing::info!("quorum keeper: this node is the raft leader; keeping the managers");
            mem.was_leader = true;
            // Carry the recorded history over from the previous leader's report.
            if let Ok((_, r)) = docs::read::<KeeperReport>(self.backend.as_ref(), KEEPER_DOC).await
            {
                if mem.actions.is_empty() {
                    mem.actions = r.actions;
                }
            }
        }
        let mut list = nodes::list(&self.engine).await?;
        if mem.inflight.is_none() && !mem.rejoins_checked {
            // A rejoin the previous leader started is still in flight: judge it, do not start
            // a second one.
            mem.rejoins_checked = true;
            self.adopt_rejoin_in_flight(mem, &list).await;
        }
        let now = Instant::now();
        let seen: HashSet<&str> = list.iter().map(|n| n.id.as_str()).collect();
        mem.unhealthy_since
            .retain(|id, _| seen.contains(id.as_str()));
        // Before this node was the leader it watched the list too: a manager last seen healthy
        // then (within BACKDATE_MAX, and the watch ran until recently) is unhealthy since then.
        let watched = mem
            .last_list_ok
            .is_some_and(|at| at.elapsed() < BACKDATE_MAX);
        for n in &list {
            if n.healthy() {
                mem.unhealthy_since.remove(&n.id);
                mem.last_healthy.remove(&n.id);
            } else {
                let since = mem
                    .last_healthy
                    .remove(&n.id)
                    .filter(|at| watched && at.elapsed() < BACKDATE_MAX)
                    .unwrap_or(now);
                mem.unhealthy_since.entry(n.id.clone()).or_insert_with(|| {
                    let ago = now.saturating_duration_since(since);
                    let wall = std::time::SystemTime::now() - ago;
                    (since, crate::state::rfc3339(wall))
                });
            }
        }
        mem.last_healthy.clear();
        mem.last_list_ok = None;
        mem.avoid.retain(|_, at| at.elapsed() < AVOID_FOR);

        // 1. The rendezvous follows the swarm (and adopts it when it forgot it).
        self.follow(mem, &list).await;
        let target = self.target(mem);

        // Node labels from the registrations (the nodes' cloud tags).
        if let Some((status, _)) = &mem.status {
            let regs = status.nodes.clone();
            match super::labels::reconcile(&self.engine, &regs, &mut mem.labels).await {
                Ok(()) => mem.clear_logged("labels"),
                Err(e) => mem.warn_once("labels", format!("node labels: {e}")),
            }
        }

        // 2. Drains.
        let (_, drains) = docs::read::<Drains>(self.backend.as_ref(), DRAINS_DOC).await?;
        self.drains(mem, &list, &drains).await;
        let leaving: HashSet<String> = drains.requests.keys().cloned().collect();

        if plan::imbalanced(&list, target) {
            mem.imbalance_since.get_or_insert(now);
        } else {
            mem.imbalance_since = None;
        }

        // 3. The step in flight, or the next one.
        if self.cfg.enabled {
            let busy = match mem.inflight.clone() {
                Some(f) => self.finish_step(mem, &mut list, f).await,
                None => false,
            };
            if !busy {
                self.next_step(mem, &list, target, &leaving).await;
            }
        }
        self.report(mem, &list, target).await;
        Ok(())
    }

    /// Judge the step in flight. True while it is still in flight (nothing else is decided).
    async fn finish_step(&self, mem: &mut Memory, list: &mut Vec<NodeView>, f: Inflight) -> bool {
        let end = match f.kind {
            Kind::Promote => match list.iter().find(|n| n.id == f.node_id) {
                Some(n) if n.role == Role::Manager && n.healthy() => {
                    StepEnd::Done(format!("{} is a Reachable manager", f.hostname))
                }
                Some(n) if n.role == Role::Worker => {
                    StepEnd::Failed(format!("{} is a worker again", f.hostname))
                }
                None => StepEnd::Failed(format!("{} left the swarm", f.hostname)),
                Some(_) if f.started.elapsed() >= f.bound => StepEnd::Failed(format!(
                    "{} did not become a Reachable manager within {} s",
                    f.hostname,
                    f.bound.as_secs()
                )),
                Some(_) => StepEnd::Pending,
            },
            Kind::Demote => match list.iter().find(|n| n.id == f.node_id) {
                Some(n) if n.role == Role::Manager && f.started.elapsed() < f.bound => {
                    StepEnd::Pending
                }
                Some(n) if n.role == Role::Manager => StepEnd::Failed(format!(
                    "{} is still a manager after {} s",
                    f.hostname,
                    f.bound.as_secs()
                )),
                _ => StepEnd::Done(format!("{} is no longer a manager", f.hostname)),
            },
            Kind::Rejoin => self.rejoin_progress(list, &f).await,
            Kind::Remove | Kind::Adopt => StepEnd::Done(String::new()),
        };
        match end {
            StepEnd::Pending => true,
            StepEnd::Done(what) => {
                mem.inflight = None;
                mem.imbalance_since = None;
                if !what.is_empty() {
                    tracing::info!("quorum keeper: step done: {what}");
                }
                if f.kind == Kind::Rejoin {
                    self.finish_rejoin(mem, list, &f).await;
                    list.retain(|n| n.id != f.node_id);
                }
                // The list this was judged on shows the step done: the next step may be
                // decided on it now (e.g. demote the dead manager the promotion replaced).
                false
            }
            StepEnd::Failed(why) => {
                mem.inflight = None;
                mem.imbalance_since = None;
                mem.avoid.insert(f.node_id.clone(), Instant::now());
                match f.kind {
                    Kind::Promote => {
                        // Undo it: a manager that never joined raft must not stay a manager.
                        let undo = nodes::set_role(&self.engine, &f.node_id, Role::Worker).await;
                        self.record(
                            mem,
                            Action {
                                kind: Kind::Demote,
                                node_id: f.node_id.clone(),
                                hostname: f.hostname.clone(),
                                reason: format!("undoing its promotion: {why}"),
                            },
                            undo.as_ref().err().map(|e| e.to_string()),
                        );
                        // The engine cannot: its agent leaves and joins again as a manager.
                        if undo.is_ok() {
                            if let Some(agent) = f.agent_node_id.clone() {
                                let n = list.iter().find(|n| n.id == f.node_id);
                                if let Some(n) = n {
                                    let reason = format!(
                                        "its engine could not be promoted ({why}); joining again \
                                         as a manager through a live manager"
                                    );
                                    self.start_rejoin(mem, list, n, agent, reason).await;
                                }
                            }
                        }
                    }
                    Kind::Rejoin => {
                        tracing::warn!("quorum keeper: rejoin of {} given up: {why}", f.hostname);
                        if let Some(agent) = &f.agent_node_id {
                            let _ =
                                forget_rejoin(self.backend.as_ref(), &self.node_id, agent).await;
                        }
                        // The registration's role follows the swarm again at the next sync.
                        mem.last_sync = None;
                    }
                    _ => tracing::warn!("quorum keeper: step given up: {why}"),
                }
                true
            }
        }
    }

    /// Take over a rejoin the previous leader's keeper started (recent, not finished); forget
    /// requests that are finished or too old.
    async fn adopt_rejoin_in_flight(&self, mem: &mut Memory, list: &[NodeView]) {
        let Ok((_, r)) = docs::read::<Rejoins>(self.backend.as_ref(), REJOINS_DOC).await else {
            return;
        };
        let now = docs::now_ms();
        for (agent, req) in &r.requests {
            let age = Duration::from_millis(now.saturating_sub(req.updated_ms));
            let live = matches!(req.state, RejoinState::Requested | RejoinState::Rejoining)
                && age < REJOIN_BOUND;
            if live && mem.inflight.is_none() {
                let addr = list
                    .iter()
                    .find(|n| n.id == req.swarm_node_id)
                    .and_then(|n| n.addr.clone());
                tracing::info!(
                    "quorum keeper: the previous leader asked {} to join again as a manager; \
                     waiting for it",
                    req.hostname
                );
                mem.inflight = Some(Inflight {
                    kind: Kind::Rejoin,
                    node_id: req.swarm_node_id.clone(),
                    agent_node_id: Some(agent.clone()),
                    hostname: req.hostname.clone(),
                    addr,
                    started: Instant::now() - age,
                    since: req.requested_at.clone(),
                    bound: REJOIN_BOUND,
                    reason: "started by the previous leader's keeper".into(),
                });
            } else if !live {
                let _ = forget_rejoin(self.backend.as_ref(), &self.node_id, agent).await;
            }
        }
    }

    async fn rejoin_progress(&self, list: &[NodeView], f: &Inflight) -> StepEnd {
        let joined = list.iter().find(|n| {
            n.id != f.node_id
                && n.role == Role::Manager
                && n.healthy()
                && f.addr.is_some()
                && n.addr == f.addr
        });
        if let Some(n) = joined {
            return StepEnd::Done(format!(
                "{} joined again as a manager ({}) and is Reachable",
                f.hostname, n.id
            ));
        }
        if let Some(agent) = &f.agent_node_id {
            if let Ok((_, r)) = docs::read::<Rejoins>(self.backend.as_ref(), REJOINS_DOC).await {
                if let Some(req) = r.requests.get(agent) {
                    if req.state == RejoinState::Failed {
                        return StepEnd::Failed(format!(
                            "its agent could not: {}",
                            req.message.as_deref().unwrap_or("no reason given")
                        ));
                    }
                }
            }
        }
        if f.started.elapsed() >= f.bound {
            return StepEnd::Failed(format!(
                "{} did not join again as a Reachable manager within {} s",
                f.hostname,
                f.bound.as_secs()
            ));
        }
        StepEnd::Pending
    }

    /// After a rejoin: remove the node's old (worker) entry and the request. The engine at the
    /// old entry's address now answers under the new node id, so the old entry is stale even
    /// while it still shows Ready (until its heartbeat times out): it is removed with force, so
    /// it is never mistaken for a spare worker.
    async fn finish_rejoin(&self, mem: &mut Memory, list: &[NodeView], f: &Inflight) {
        if let Some(old) = list.iter().find(|n| n.id == f.node_id) {
            let r = nodes::remove(&self.engine, &old.id, true).await;
            self.record(
                mem,
                Action {
                    kind: Kind::Remove,
                    node_id: old.id.clone(),
                    hostname: old.hostname.clone(),
                    reason: "its old worker entry, after it joined again as a manager".into(),
                },
                r.err().map(|e| e.to_string()),
            );
        }
        if let Some(agent) = &f.agent_node_id {
            if let Err(e) = forget_rejoin(self.backend.as_ref(), &self.node_id, agent).await {
                tracing::warn!("quorum keeper: cannot clear the rejoin request: {e}");
            }
        }
        mem.last_sync = None;
    }

    /// Ask a worker's agent to leave and join again as a manager: first its registration says
    /// manager (so the rendezvous hands it the manager token), then the request.
    async fn start_rejoin(
        &self,
        mem: &mut Memory,
        list: &[NodeView],
        n: &NodeView,
        agent: String,
        reason: String,
    ) {
        let f = Inflight {
            kind: Kind::Rejoin,
            node_id: n.id.clone(),
            agent_node_id: Some(agent.clone()),
            hostname: n.hostname.clone(),
            addr: n.addr.clone(),
            started: Instant::now(),
            since: rfc3339_now(),
            bound: REJOIN_BOUND,
            reason: reason.clone(),
        };
        mem.inflight = Some(f);
        mem.last_sync = None;
        self.sync(mem, list).await;
        let req = RejoinRequest {
            hostname: n.hostname.clone(),
            swarm_node_id: n.id.clone(),
            state: RejoinState::Requested,
            requested_at: rfc3339_now(),
            updated_ms: docs::now_ms(),
            message: None,
        };
        let written =
            docs::update::<Rejoins, _>(self.backend.as_ref(), &self.node_id, REJOINS_DOC, |d| {
                d.requests.insert(agent.clone(), req.clone());
                true
            })
            .await;
        let action = Action {
            kind: Kind::Rejoin,
            node_id: n.id.clone(),
            hostname: n.hostname.clone(),
            reason,
        };
        match written {
            Ok(_) => self.record(mem, action, None),
            Err(e) => {
                self.record(mem, action, Some(e.to_string()));
                mem.inflight = None;
                mem.last_sync = None;
            }
        }
    }

    async fn next_step(
        &self,
        mem: &mut Memory,
        list: &[NodeView],
        target: u8,
        leaving: &HashSet<String>,
    ) {
        let now = Instant::now();
        let unhealthy_for: HashMap<String, Duration> = mem
            .unhealthy_since
            .iter()
            .map(|(id, (at, _))| (id.clone(), now - *at))
            .collect();
        let regs = self.registrations(mem, list);
        let joined_through = |id: &str| {
            regs.get(id)
                .and_then(|r| r.joined_through.clone())
                .or_else(|| self.relay.as_ref().and_then(|r| r.joined_through(id)))
        };
        let live: HashSet<String> = list
            .iter()
            .filter(|n| n.role == Role::Manager && n.healthy())
            .filter_map(|n| n.manager_addr.clone())
            .collect();
        // Workers whose engine can be promoted in place: joined through a live manager (or
        // unknown: engines restarted since, or agents that did not say).
        let prefer: HashSet<String> = list
            .iter()
            .filter(|n| n.role == Role::Worker)
            .filter(|n| match joined_through(&n.id) {
                Some(a) => live.contains(&a),
                None => true,
            })
            .map(|n| n.id.clone())
            .collect();
        let avoid: HashSet<String> = mem.avoid.keys().cloned().collect();
        let rules = Rules {
            target,
            promote_after: self.cfg.promote_after,
            remove_down_after: self.cfg.remove_down_after,
        };
        let view = View {
            nodes: list,
            unhealthy_for: &unhealthy_for,
            imbalance_for: mem.imbalance_since.map(|s| now - s).unwrap_or_default(),
            leaving,
            avoid: &avoid,
            prefer: &prefer,
        };
        let Some(action) = plan::plan(&view, &rules) else {
            return;
        };
        let node = list.iter().find(|n| n.id == action.node_id);
        let agent = regs.get(&action.node_id).map(|r| r.node_id.clone());
        if action.kind == Kind::Promote && !prefer.contains(&action.node_id) {
            if let (Some(n), Some(agent)) = (node, agent.clone()) {
                let joined = joined_through(&action.node_id).unwrap_or_default();
                let reason = format!(
                    "{}; it joined the swarm through {joined}, which is not a live manager, so \
                     its engine cannot be promoted in place: its agent joins again as a manager",
                    action.reason
                );
                self.start_rejoin(mem, list, n, agent, reason).await;
                return;
            }
        }
        let result = self.execute(&action).await;
        // The count changed: a further imbalance is measured from now.
        mem.imbalance_since = None;
        if result.is_ok() && matches!(action.kind, Kind::Promote | Kind::Demote) {
            mem.inflight = Some(Inflight {
                kind: action.kind,
                node_id: action.node_id.clone(),
                agent_node_id: agent,
                hostname: action.hostname.clone(),
                addr: node.and_then(|n| n.addr.clone()),
                started: Instant::now(),
                since: rfc3339_now(),
                bound: if action.kind == Kind::Promote {
                    PROMOTE_BOUND
                } else {
                    DEMOTE_BOUND
                },
                reason: action.reason.clone(),
            });
            mem.last_sync = None;
        }
        self.record(mem, action, result.err().map(|e| e.to_string()));
    }

    /// Registrations by Docker node id (matched by address, else by hostname).
    fn registrations(&self, mem: &Memory, list: &[NodeView]) -> HashMap<String, NodeInfo> {
        let Some((status, _)) = &mem.status else {
            return HashMap::new();
        };
        match_registrations(&status.nodes, list)
            .into_iter()
            .map(|(agent, docker)| {
                let reg = status
                    .nodes
                    .iter()
                    .find(|r| r.node_id == agent)
                    .cloned()
                    .expect("matched from the list");
                (docker, reg)
            })
            .collect()
    }

    async fn execute(&self, a: &Action) -> Result<(), EngineError> {
        match a.kind {
            Kind::Promote => nodes::set_role(&self.engine, &a.node_id, Role::Manager).await,
            Kind::Demote => nodes::set_role(&self.engine, &a.node_id, Role::Worker).await,
            Kind::Remove => nodes::remove(&self.engine, &a.node_id, false).await,
            Kind::Rejoin | Kind::Adopt => Ok(()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // The rendezvous follows the swarm

    /// Read the cluster (every pass while something is off, else every [`STATUS_EVERY`]),
    /// adopt the swarm if the rendezvous lost it, and sync.
    async fn follow(&self, mem: &mut Memory, list: &[NodeView]) {
        let fresh = mem
            .status
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < STATUS_EVERY);
        if !fresh {
            match self.backend.status().await {
                Ok(s) => {
                    mem.clear_logged("status");
                    mem.target = Some(s.target_managers);
                    mem.status = Some((s, Instant::now()));
                }
                Err(e) => {
                    mem.status = None;
                    mem.warn_once(
                        "status",
                        format!(
                            "quorum keeper: cannot read cluster from {}: {e}",
                            self.backend.describe()
                        ),
                    );
                    return;
                }
            }
        }
        let Some(me) = self.me() else { return };
        let details = match self.engine.inspect_swarm().await {
            Ok(d) => d,
            Err(e) => {
                mem.warn_once(
                    "inspect",
                    format!("quorum keeper: cannot inspect the swarm: {e}"),
                );
                return;
            }
        };
        let status = mem
            .status
            .as_ref()
            .map(|(s, _)| s.clone())
            .expect("read above");
        if status.swarm_id.as_deref() != Some(details.id.as_str()) {
            self.adopt(mem, list, &me, &details, &status).await;
            return;
        }
        mem.clear_logged("adopt");
        if let Some(n) = status.token_rotation_pending {
            self.rotate_tokens(mem, list, &me, n).await;
        }
        self.sync(mem, list).await;
    }

    /// The operator asked for new join tokens (`swarm-coordinator cluster rotate-tokens`):
    /// rotate the swarm's worker and manager tokens on the engine (once per request), then
    /// publish them (an adoption of the formed swarm, which marks the rotation done). Nodes
    /// joining afterwards use the new tokens; the old ones no longer join.
    async fn rotate_tokens(&self, mem: &mut Memory, list: &[NodeView], me: &Me, n: u64) {
        if mem.rotated_for != Some(n) {
            if let Err(e) = nodes::rotate_join_tokens(&self.engine).await {
                mem.warn_once(
                    "rotate",
                    format!("quorum keeper: rotating the swarm's join tokens failed: {e}"),
                );
                return;
            }
            mem.rotated_for = Some(n);
            tracing::info!("quorum keeper: rotated the swarm's join tokens (rotation #{n})");
        }
        let details = match self.engine.inspect_swarm().await {
            Ok(d) => d,
            Err(e) => {
                mem.warn_once(
                    "rotate",
                    format!("quorum keeper: cannot read the new join tokens: {e}"),
                );
                return;
            }
        };
        let regs = mem
            .status
            .as_ref()
            .map_or(&[][..], |(s, _)| s.nodes.as_slice());
        let (addrs, managers) =
            live_managers(list, &mem.unhealthy_since, self.cfg.promote_after, regs);
        let req = AdoptRequest {
            node_id: me.node_id.clone(),
            hostname: me.hostname.clone(),
            advertise_addr: me.advertise_addr.clone(),
            swarm_id: details.id.clone(),
            ca_digest: details.ca_digest.clone(),
            manager_addrs: addrs,
            manager_token: details.manager_token.clone(),
            worker_token: details.worker_token.clone(),
            managers,
        };
        match self.backend.adopt(&req).await {
            Ok(_) => {
                tracing::info!(
                    "quorum keeper: published the new join tokens (rotation #{n}); the old ones \
                     no longer join"
                );
                mem.clear_logged("rotate");
                // Read the cluster again (the rotation is no longer pending).
                mem.status = None;
            }
            Err(e) => mem.warn_once(
                "rotate",
                format!("quorum keeper: publishing the new join tokens failed (retried): {e}"),
            ),
        }
    }

    async fn adopt(
        &self,
        mem: &mut Memory,
        list: &[NodeView],
        me: &Me,
        details: &SwarmDetails,
        status: &ClusterStatus,
    ) {
        // Only the swarm this agent's state file says it belongs to (a foreign swarm on this
        // engine is never published into the cluster).
        let ours = me.swarm_id.as_deref() == Some(details.id.as_str())
            || me.ca_digest.as_deref() == Some(details.ca_digest.as_str());
        if !ours {
            mem.warn_once(
                "adopt",
                format!(
                    "quorum keeper: the rendezvous does not hold swarm {} and this agent's state \
                     file does not say it belongs to it: not adopting it",
                    details.id
                ),
            );
            return;
        }
        if status.retired_swarm_ids.contains(&details.id) {
            mem.warn_once(
                "adopt",
                format!(
                    "quorum keeper: swarm {} was retired by an operator reset (`swarm-agent \
                     recover`): not adopting it",
                    details.id
                ),
            );
            return;
        }
        if let Some(other) = &status.swarm_id {
            mem.warn_once(
                "adopt",
                format!(
                    "quorum keeper: TWO SWARMS for cluster {}: the rendezvous holds swarm {other}, \
                     this node's swarm is {}. Nothing is changed automatically; an operator must \
                     decide which one to keep",
                    status.name, details.id
                ),
            );
            return;
        }
        let regs = mem
            .status
            .as_ref()
            .map_or(&[][..], |(s, _)| s.nodes.as_slice());
        let (addrs, managers) =
            live_managers(list, &mem.unhealthy_since, self.cfg.promote_after, regs);
        let req = AdoptRequest {
            node_id: me.node_id.clone(),
            hostname: me.hostname.clone(),
            advertise_addr: me.advertise_addr.clone(),
            swarm_id: details.id.clone(),
            ca_digest: details.ca_digest.clone(),
            manager_addrs: addrs,
            manager_token: details.manager_token.clone(),
            worker_token: details.worker_token.clone(),
            managers,
        };
        match self.backend.adopt(&req).await {
            Ok(r) => {
                let what = format!(
                    "the rendezvous had lost cluster {}'s formation (it was {}{}): adopted the \
                     running swarm {} again under fencing token {}",
                    status.name,
                    status.phase,
                    if status.awaiting_adoption {
                        ", awaiting adoption"
                    } else {
                        ""
                    },
                    details.id,
                    r.fencing_token
                );
                tracing::warn!("quorum keeper: {what}");
                self.record(
                    mem,
                    Action {
                        kind: Kind::Adopt,
                        node_id: String::new(),
                        hostname: me.hostname.clone(),
                        reason: what,
                    },
                    None,
                );
                mem.status = None;
                mem.last_sync = None;
                mem.clear_logged("adopt");
            }
            Err(e) => mem.warn_once(
                "adopt",
                format!("quorum keeper: adopting swarm {} failed: {e}", details.id),
            ),
        }
    }

    async fn sync(&self, mem: &mut Memory, list: &[NodeView]) {
        let Some((status, _)) = &mem.status else {
            return;
        };
        let Some(swarm_id) = status.swarm_id.clone() else {
            return;
        };
        let Some(me) = self.me() else { return };
        let (manager_addrs, managers) = live_managers(
            list,
            &mem.unhealthy_since,
            self.cfg.promote_after,
            &status.nodes,
        );
        if manager_addrs.is_empty() {
            return;
        }
        let matched = match_registrations(&status.nodes, list);
        let rejoining = mem
            .inflight
            .as_ref()
            .filter(|f| f.kind == Kind::Rejoin)
            .and_then(|f| f.agent_node_id.clone());
        let mut members: Vec<Member> = matched
            .iter()
            .filter_map(|(agent, docker)| {
                let n = list.iter().find(|n| &n.id == docker)?;
                Some(Member {
                    node_id: agent.clone(),
                    role: if rejoining.as_deref() == Some(agent.as_str()) {
                        Role::Manager
                    } else {
                        n.role
                    },
                })
            })
            .collect();
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let req = SyncRequest {
            node_id: me.node_id,
            swarm_id,
            manager_addrs,
            managers,
            members,
        };
        if let Some((last, at)) = &mem.last_sync {
            if *last == req && at.elapsed() < self.sync_refresh {
                return;
            }
        }
        if !self.sync_settle.is_zero() && mem.last_sync.as_ref().is_none_or(|(l, _)| *l != req) {
            // A manager address that went away (or another swarm) is sent after 5 s: joining
            // nodes must not be sent to a dead manager.
            let urgent = mem.last_sync.as_ref().is_some_and(|(l, _)| {
                l.swarm_id != req.swarm_id
                    || l.manager_addrs
                        .iter()
                        .any(|a| !req.manager_addrs.contains(a))
            });
            // Urgent ones settle too, for a third of the time: a manager whose reachability
            // flickers while it joins does not make a version each way.
            let settle = if urgent {
                self.sync_settle / 3
            } else {
                self.sync_settle
            };
            {
                match &mem.sync_pending {
                    // Settled, or changing for too long: send it.
                    Some((p, since, _)) if *p == req && since.elapsed() >= settle => {}
                    Some((_, _, first)) if first.elapsed() >= self.sync_settle * 4 => {}
                    Some((p, _, _)) if *p == req => return,
                    other => {
                        let first = other.as_ref().map_or_else(Instant::now, |(_, _, f)| *f);
                        mem.sync_pending = Some((req, Instant::now(), first));
                        return;
                    }
                }
            }
        }
        mem.sync_pending = None;
        match self.backend.sync(&req).await {
            Ok(r) => {
                mem.clear_logged("sync");
                let addrs_changed = mem
                    .last_sync
                    .as_ref()
                    .is_none_or(|(l, _)| l.manager_addrs != req.manager_addrs);
                if r.changed && addrs_changed {
                    tracing::info!(
                        "quorum keeper: joining nodes are sent to the live managers {}",
                        req.manager_addrs.join(", ")
                    );
                }
                if r.changed {
                    tracing::info!(
                        "quorum keeper: rendezvous synced: {} registered members, {} managers \
                         count for new nodes ({} registrations)",
                        req.members.len(),
                        r.manager_count,
                        r.node_count
                    );
                }
                if !r.pruned.is_empty() {
                    tracing::info!(
                        "quorum keeper: the rendezvous dropped the registrations of nodes that \
                         left the swarm: {}",
                        r.pruned.join(", ")
                    );
                }
                mem.last_sync = Some((req, Instant::now()));
            }
            Err(e) => {
                if matches!(
                    e.code(),
                    Some(Code::SwarmMismatch | Code::NodeNotRegistered)
                ) {
                    // The formation changed under us (or the rendezvous forgot this node's
                    // registration with its formation): read the cluster again next pass.
                    mem.status = None;
                }
                mem.warn_once(
                    "sync",
                    format!("quorum keeper: sync with the rendezvous: {e}"),
                );
            }
        }
    }
    fn record(&self, mem: &mut Memory, action: Action, error: Option<String>) {
        crate::metrics::agent().keeper_action(action.kind.as_str(), error.is_none());
        let verb = match action.kind {
            Kind::Promote => "promote",
            Kind::Demote => "demote",
            Kind::Remove => "remove",
            Kind::Rejoin => "rejoin as a manager",
            Kind::Adopt => "adopt the swarm",
        };
        match &error {
            None if action.kind != Kind::Adopt => tracing::warn!(
                "quorum keeper: {verb}: {} ({}): {}",
                action.hostname,
                action.node_id,
                action.reason
            ),
            None => {}
            Some(e) => tracing::warn!(
                "quorum keeper: could not {verb} {} ({}): {e}; reason: {}",
                action.hostname,
                action.node_id,
                action.reason
            ),
        }
        mem.actions.push(RecordedAction {
            action,
            at: rfc3339_now(),
            error,
        });
        if mem.actions.len() > KEEPER_HISTORY {
            let n = mem.actions.len() - KEEPER_HISTORY;
            mem.actions.drain(..n);
        }
    }

    /// The leader's side of `swarm-agent leave`.
    async fn drains(&self, mem: &mut Memory, list: &[NodeView], drains: &Drains) {
        for (id, req) in &drains.requests {
            let acts = matches!(req.state, DrainState::Requested | DrainState::Left);
            let regs = mem.status.as_ref().map(|(s, _)| s.nodes.as_slice());
            let owner =
                regs.is_some_and(|r| drain_requester_is_the_node(r, list, id, &req.agent_node_id));
            if acts && !owner {
                mem.warn_once(
                    &format!("drain-owner {id} {}", req.agent_node_id),
                    format!(
                        "drain: ignoring the request for Docker node {id} ({}): its requester \
                         {:?} is not the one registration matched to that node (a node may \
                         ask only for its own drain)",
                        req.hostname, req.agent_node_id
                    ),
                );
                continue;
            }
            let node = list.iter().find(|n| &n.id == id);
            let outcome: anyhow::Result<()> = async {
                match (req.state, node) {
                    (DrainState::Requested, Some(n)) => {
                        if n.availability != Availability::Drain {
                            nodes::set_availability(&self.engine, id, Availability::Drain).await?;
                            tracing::info!(
                                "drain: {} ({id}) set to drain for `swarm-agent leave`",
                                n.hostname
                            );
                        }
                        let left = nodes::tasks_on(&self.engine, id).await?;
                        let state = if left == 0 {
                            tracing::info!("drain: {} has no tasks left", n.hostname);
                            DrainState::Drained
                        } else {
                            DrainState::Requested
                        };
                        if state != req.state || req.tasks_left != Some(left) {
                            set_state(self.backend.as_ref(), &self.node_id, id, state, Some(left))
                                .await?;
                        }
                    }
                    (DrainState::Left, Some(n)) if !n.ready => {
                        if n.role == Role::Manager {
                            nodes::set_role(&self.engine, id, Role::Worker).await?;
                        }
                        nodes::remove(&self.engine, id, false).await?;
                        let action = Action {
                            kind: Kind::Remove,
                            node_id: id.clone(),
                            hostname: n.hostname.clone(),
                            reason: "it left with `swarm-agent leave`".into(),
                        };
                        self.record(mem, action, None);
                        forget(self.backend.as_ref(), &self.node_id, id).await?;
                    }
                    (DrainState::Left, None) => {
                        forget(self.backend.as_ref(), &self.node_id, id).await?
                    }
                    (_, None) if stale(req.updated_ms) => {
                        forget(self.backend.as_ref(), &self.node_id, id).await?
                    }
                    _ => {}
                }
                Ok(())
            }
            .await;
            if let Err(e) = outcome {
                tracing::warn!("drain of {} ({id}): {e}", req.hostname);
            }
        }
    }

    async fn report(&self, mem: &mut Memory, list: &[NodeView], target: u8) {
        let managers: Vec<&NodeView> = list.iter().filter(|n| n.role == Role::Manager).collect();
        let healthy: Vec<&&NodeView> = managers.iter().filter(|n| n.healthy()).collect();
        let mut down: Vec<DownNode> = list
            .iter()
            .filter(|n| !n.healthy())
            .map(|n| DownNode {
                hostname: n.hostname.clone(),
                role: n.role.to_string(),
                state: n.state.clone(),
                since: mem
                    .unhealthy_since
                    .get(&n.id)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default(),
            })
            .collect();
        down.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        let mut manager_addrs: Vec<String> = healthy
            .iter()
            .filter_map(|n| n.manager_addr.clone())
            .collect();
        manager_addrs.sort();
        let report = KeeperReport {
            leader: list
                .iter()
                .find(|n| n.leader)
                .map(|n| n.hostname.clone())
                .unwrap_or_default(),
            target,
            managers: managers.len(),
            managers_healthy: healthy.len(),
            quorum_margin: healthy.len() as i64 - majority(managers.len()) as i64,
            manager_addrs,
            down,
            actions: mem.actions.clone(),
            inflight: mem.inflight.as_ref().map(Inflight::report),
        };
        if mem.report.as_ref() == Some(&report) {
            return;
        }
        let body = report.clone();
        let written = docs::update::<KeeperReport, _>(
            self.backend.as_ref(),
            &self.node_id,
            KEEPER_DOC,
            |r| {
                if *r == body {
                    false
                } else {
                    *r = body.clone();
                    true
                }
            },
        )
        .await;
        match written {
            Ok(_) => mem.report = Some(report),
            Err(e) => tracing::warn!("quorum keeper: cannot publish its report: {e}"),
        }
    }
}

/// `ip:2377` of the healthy managers (sorted), and how many managers count for the rendezvous's
/// role assignment: healthy ones, and those unhealthy for less than T (probably restarting)
/// that are matched to a registration `regs`. An unhealthy manager no registration matches yet
/// is most likely joining right now (its engine is in the node list before it reports its
/// address): the rendezvous counts it through its pending registration, so counting it here
/// too would count it twice and turn the joining managers' registrations into workers.
fn live_managers(
    list: &[NodeView],
    unhealthy_since: &HashMap<String, (Instant, String)>,
    t: Duration,
    regs: &[NodeInfo],
) -> (Vec<String>, u32) {
    let matched: HashSet<String> = match_registrations(regs, list).into_values().collect();
    let mut addrs: Vec<String> = list
        .iter()
        .filter(|n| n.role == Role::Manager && n.healthy())
        .filter_map(|n| n.manager_addr.clone())
        .collect();
    addrs.sort();
    addrs.dedup();
    let managers = list
        .iter()
        .filter(|n| n.role == Role::Manager)
        .filter(|n| {
            n.healthy()
                || (matched.contains(&n.id)
                    && unhealthy_since
                        .get(&n.id)
                        .is_none_or(|(at, _)| at.elapsed() < t))
        })
        .count() as u32;
    (addrs, managers)
}

/// May agent `agent` ask for Docker node `id` to be drained and removed? Only for itself: its
/// registration must be the one registration matched to that node. Any holder of the join
/// secret can register another node id claiming a victim's address; then two registrations
/// match the node and the request is refused (the victim's own `leave` then waits out its
/// timeout, nothing is drained).
fn drain_requester_is_the_node(
    regs: &[NodeInfo],
    list: &[NodeView],
    id: &str,
    agent: &str,
) -> bool {
    let matched = match_registrations(regs, list);
    matched.get(agent).map(String::as_str) == Some(id)
        && matched.values().filter(|d| d.as_str() == id).count() == 1
}

/// Which Docker node each registration is (agent node id → Docker node id): the node with the
/// registration's advertise address (Status.Addr), else its hostname; a Ready node before a
/// Down one (a node that left and joined again has two entries), a manager before a worker.
pub fn match_registrations(regs: &[NodeInfo], list: &[NodeView]) -> BTreeMap<String, String> {
    let ip = |a: &str| -> String {
        match a.parse::<std::net::SocketAddr>() {
            Ok(sa) => sa.ip().to_string(),
            Err(_) => a.to_string(),
        }
    };
    let mut out = BTreeMap::new();
    for r in regs {
        let want = ip(&r.advertise_addr);
        let mut by_addr: Vec<&NodeView> = list
            .iter()
            .filter(|n| n.addr.as_deref().map(ip).as_deref() == Some(want.as_str()))
            .collect();
        if by_addr.is_empty() {
            by_addr = list.iter().filter(|n| n.hostname == r.hostname).collect();
        }
        by_addr.sort_by_key(|n| (!n.ready, n.role != Role::Manager, n.id.clone()));
        if let Some(n) = by_addr.first() {
            out.insert(r.node_id.clone(), n.id.clone());
        }
    }
    out
}

async fn forget_rejoin(
    backend: &dyn Rendezvous,
    writer: &str,
    agent: &str,
) -> Result<(), RendezvousError> {
    docs::update::<Rejoins, _>(backend, writer, REJOINS_DOC, |d| {
        d.requests.remove(agent).is_some()
    })
    .await
    .map(|_| ())
}

fn stale(updated_ms: u64) -> bool {
    docs::now_ms().saturating_sub(updated_ms) > STALE_REQUEST.as_millis() as u64
}

/// Set one request's state (CAS), written by node `writer`.
pub async fn set_state(
    backend: &dyn Rendezvous,
    writer: &str,
    id: &str,
    state: DrainState,
    tasks_left: Option<usize>,
) -> Result<(), swarmstrap_wire::rendezvous::RendezvousError> {
    docs::update::<Drains, _>(backend, writer, DRAINS_DOC, |d| {
        match d.requests.get_mut(id) {
            Some(r) if r.state != state || (tasks_left.is_some() && r.tasks_left != tasks_left) => {
                r.state = state;
                if tasks_left.is_some() {
                    r.tasks_left = tasks_left;
                }
                r.updated_at = rfc3339_now();
                r.updated_ms = docs::now_ms();
                true
            }
            _ => false,
        }
    })
    .await
    .map(|_| ())
}

async fn forget(
    backend: &dyn Rendezvous,
    writer: &str,
    id: &str,
) -> Result<(), swarmstrap_wire::rendezvous::RendezvousError> {
    docs::update::<Drains, _>(backend, writer, DRAINS_DOC, |d| {
        d.requests.remove(id).is_some()
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::RequestedRole;

    fn view(id: &str, host: &str, addr: &str, role: Role, ready: bool) -> NodeView {
        NodeView {
            id: id.into(),
            hostname: host.into(),
            role,
            availability: Availability::Active,
            ready,
            state: if ready { "ready" } else { "down" }.into(),
            leader: false,
            reachable: (role == Role::Manager).then_some(ready),
            manager_addr: (role == Role::Manager).then(|| format!("{addr}:2377")),
            addr: Some(addr.into()),
        }
    }

    fn reg(id: &str, host: &str, addr: &str) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            hostname: host.into(),
            advertise_addr: addr.into(),
            requested: RequestedRole::Auto,
            role: Role::Worker,
            registered_at_ms: 0,
            joined_through: None,
            seen_at_ms: None,
            credential_sha256: None,
            labels: Default::default(),
        }
    }

    #[test]
    fn registrations_match_by_address_then_hostname_preferring_the_live_entry() {
        let list = vec![
            view("d1", "n1", "10.0.0.1", Role::Manager, true),
            // n2 left as a worker and joined again as a manager: two entries, one address.
            view("d2-old", "n2", "10.0.0.2", Role::Worker, false),
            view("d2", "n2", "10.0.0.2", Role::Manager, true),
            view("d3", "n3", "172.16.0.3", Role::Worker, true),
        ];
        let regs = vec![
            reg("a1", "n1", "10.0.0.1"),
            reg("a2", "n2", "10.0.0.2"),
            // Behind NAT: the swarm sees another address; the hostname matches.
            reg("a3", "n3", "10.0.0.3"),
            reg("gone", "n9", "10.0.0.9"),
        ];
        let m = match_registrations(&regs, &list);
        assert_eq!(m.get("a1").map(String::as_str), Some("d1"));
        assert_eq!(m.get("a2").map(String::as_str), Some("d2"));
        assert_eq!(m.get("a3").map(String::as_str), Some("d3"));
        assert!(!m.contains_key("gone"));
    }

    #[test]
    fn a_drain_request_counts_only_from_the_node_itself() {
        let list = vec![
            view("d1", "n1", "10.0.0.1", Role::Manager, true),
            view("d2", "n2", "10.0.0.2", Role::Worker, true),
            view("d3", "n3", "10.0.0.3", Role::Worker, true),
        ];
        let mut regs = vec![
            reg("a1", "n1", "10.0.0.1"),
            reg("a2", "n2", "10.0.0.2"),
            reg("a3", "n3", "10.0.0.3"),
        ];
        // Its own node: yes. Another node's (a worker asking for the manager's drain): no.
        assert!(drain_requester_is_the_node(&regs, &list, "d2", "a2"));
        assert!(!drain_requester_is_the_node(&regs, &list, "d1", "a2"));
        // An unregistered requester: no.
        assert!(!drain_requester_is_the_node(&regs, &list, "d3", "ghost"));
        // A fake registration claiming n3's address makes n3's drain ambiguous: refused for
        // both (nothing is drained; n3's own leave waits out its timeout).
        regs.push(reg("fake", "n3", "10.0.0.3"));
        assert!(!drain_requester_is_the_node(&regs, &list, "d3", "fake"));
        assert!(!drain_requester_is_the_node(&regs, &list, "d3", "a3"));
    }

    #[test]
    fn live_managers_are_the_healthy_ones_and_the_count_spares_restarting_managers() {
        let list = vec![
            view("d1", "n1", "10.0.0.1", Role::Manager, true),
            view("d2", "n2", "10.0.0.2", Role::Manager, false),
            view("d3", "n3", "10.0.0.3", Role::Manager, false),
            view("d4", "n4", "10.0.0.4", Role::Worker, true),
        ];
        let t = Duration::from_secs(10);
        let mut since = HashMap::new();
        since.insert("d2".to_string(), (Instant::now(), String::new()));
        since.insert(
            "d3".to_string(),
            (Instant::now() - Duration::from_secs(11), String::new()),
        );
        let regs: Vec<NodeInfo> = (1..=4)
            .map(|i| reg(&format!("a{i}"), &format!("n{i}"), &format!("10.0.0.{i}")))
            .collect();
        let (addrs, managers) = live_managers(&list, &since, t, &regs);
        assert_eq!(addrs, vec!["10.0.0.1:2377".to_string()]);
        // d1 healthy, d2 down for less than T (restarting?), d3 dead.
        assert_eq!(managers, 2);
        // d2 matched to no registration (a manager joining right now, whose registration the
        // rendezvous counts as joining): not counted twice.
        let (_, managers) = live_managers(&list, &since, t, &regs[2..]);
        assert_eq!(managers, 1);
    }
}
