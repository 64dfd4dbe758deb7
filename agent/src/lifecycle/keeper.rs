//! The quorum keeper and the drain handler, on every agent; they act only while the local
//! engine is the raft leader. Every pass (every [`TICK`]) reads the node list, carries out
//! pending drain requests, plans at most one role change ([`super::plan`]), logs and records it
//! in the [`KEEPER_DOC`] report that `swarm-agent status` shows.

use super::docs::{
    self, DownNode, DrainState, Drains, KeeperReport, RecordedAction, DRAINS_DOC, KEEPER_DOC,
    KEEPER_HISTORY,
};
use super::nodes::{self, majority, Availability, NodeView};
use super::plan::{self, Action, Kind, Rules, View};
use crate::config::QuorumConfig;
use crate::engine::{BollardEngine, EngineError};
use crate::lb::docker::is_leader;
use crate::state::rfc3339_now;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::Role;

/// One keeper pass this often (a periodic check of the node list: T is measured in passes).
pub const TICK: Duration = Duration::from_secs(2);
/// Re-read the cluster's target manager count this often.
const TARGET_REFRESH: Duration = Duration::from_secs(60);
/// Forget drain requests whose node is gone from the swarm and that nobody finished.
const STALE_REQUEST: Duration = Duration::from_secs(3600);

pub struct Keeper {
    pub engine: Arc<BollardEngine>,
    pub backend: Arc<dyn Rendezvous>,
    pub cfg: QuorumConfig,
    /// The target from the config, until the backend's is known.
    pub target: u8,
}

#[derive(Default)]
struct Memory {
    unhealthy_since: HashMap<String, (Instant, String)>,
    imbalance_since: Option<Instant>,
    target: Option<(u8, Instant)>,
    report: Option<KeeperReport>,
    actions: Vec<RecordedAction>,
    last_error: Option<String>,
    was_leader: bool,
}

impl Keeper {
    pub async fn run(&self) {
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

    async fn target(&self, mem: &mut Memory) -> u8 {
        match mem.target {
            Some((t, at)) if at.elapsed() < TARGET_REFRESH => t,
            _ => match self.backend.status().await {
                Ok(s) => {
                    mem.target = Some((s.target_managers, Instant::now()));
                    s.target_managers
                }
                Err(_) => mem.target.map(|(t, _)| t).unwrap_or(self.target),
            },
        }
    }

    async fn pass(&self, mem: &mut Memory) -> anyhow::Result<()> {
        if !is_leader(&self.engine).await? {
            if mem.was_leader {
                tracing::info!("quorum keeper: this node is no longer the raft leader");
            }
            // Another leader measures from scratch (its own view of who is down).
            *mem = Memory {
                actions: std::mem::take(&mut mem.actions),
                ..Memory::default()
            };
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
        let target = self.target(mem).await;
        let list = nodes::list(&self.engine).await?;
        let now = Instant::now();
        let seen: HashSet<&str> = list.iter().map(|n| n.id.as_str()).collect();
        mem.unhealthy_since
            .retain(|id, _| seen.contains(id.as_str()));
        for n in &list {
            if n.healthy() {
                mem.unhealthy_since.remove(&n.id);
            } else {
                mem.unhealthy_since
                    .entry(n.id.clone())
                    .or_insert_with(|| (now, rfc3339_now()));
            }
        }

        let (_, drains) = docs::read::<Drains>(self.backend.as_ref(), DRAINS_DOC).await?;
        self.drains(mem, &list, &drains).await;
        let leaving: HashSet<String> = drains.requests.keys().cloned().collect();

        if plan::imbalanced(&list, target) {
            mem.imbalance_since.get_or_insert(now);
        } else {
            mem.imbalance_since = None;
        }
        let unhealthy_for: HashMap<String, Duration> = mem
            .unhealthy_since
            .iter()
            .map(|(id, (at, _))| (id.clone(), now - *at))
            .collect();
        let rules = Rules {
            target,
            promote_after: self.cfg.promote_after,
            remove_down_after: self.cfg.remove_down_after,
        };
        let view = View {
            nodes: &list,
            unhealthy_for: &unhealthy_for,
            imbalance_for: mem.imbalance_since.map(|s| now - s).unwrap_or_default(),
            leaving: &leaving,
        };
        if self.cfg.enabled {
            if let Some(action) = plan::plan(&view, &rules) {
                let result = self.execute(&action).await;
                // The count changed: a further imbalance is measured from now.
                mem.imbalance_since = None;
                self.record(mem, action, result.err().map(|e| e.to_string()));
            }
        }
        self.report(mem, &list, target).await;
        Ok(())
    }

    async fn execute(&self, a: &Action) -> Result<(), EngineError> {
        match a.kind {
            Kind::Promote => nodes::set_role(&self.engine, &a.node_id, Role::Manager).await,
            Kind::Demote => nodes::set_role(&self.engine, &a.node_id, Role::Worker).await,
            Kind::Remove => nodes::remove(&self.engine, &a.node_id, false).await,
        }
    }

    fn record(&self, mem: &mut Memory, action: Action, error: Option<String>) {
        let verb = match action.kind {
            Kind::Promote => "promoted",
            Kind::Demote => "demoted",
            Kind::Remove => "removed",
        };
        match &error {
            None => tracing::warn!(
                "quorum keeper: {verb} {} ({}): {}",
                action.hostname,
                action.node_id,
                action.reason
            ),
            Some(e) => tracing::warn!(
                "quorum keeper: could not {} {} ({}): {e}; reason: {}",
                verb.trim_end_matches('d'),
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
                            set_state(self.backend.as_ref(), id, state, Some(left)).await?;
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
                        forget(self.backend.as_ref(), id).await?;
                    }
                    (DrainState::Left, None) => forget(self.backend.as_ref(), id).await?,
                    (_, None) if stale(req.updated_ms) => forget(self.backend.as_ref(), id).await?,
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
        };
        if mem.report.as_ref() == Some(&report) {
            return;
        }
        let body = report.clone();
        let written = docs::update::<KeeperReport, _>(self.backend.as_ref(), KEEPER_DOC, |r| {
            if *r == body {
                false
            } else {
                *r = body.clone();
                true
            }
        })
        .await;
        match written {
            Ok(_) => mem.report = Some(report),
            Err(e) => tracing::warn!("quorum keeper: cannot publish its report: {e}"),
        }
    }
}

fn stale(updated_ms: u64) -> bool {
    docs::now_ms().saturating_sub(updated_ms) > STALE_REQUEST.as_millis() as u64
}

/// Set one request's state (CAS).
pub async fn set_state(
    backend: &dyn Rendezvous,
    id: &str,
    state: DrainState,
    tasks_left: Option<usize>,
) -> Result<(), swarmstrap_wire::rendezvous::RendezvousError> {
    docs::update::<Drains, _>(backend, DRAINS_DOC, |d| match d.requests.get_mut(id) {
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
    })
    .await
    .map(|_| ())
}

async fn forget(
    backend: &dyn Rendezvous,
    id: &str,
) -> Result<(), swarmstrap_wire::rendezvous::RendezvousError> {
    docs::update::<Drains, _>(backend, DRAINS_DOC, |d| d.requests.remove(id).is_some())
        .await
        .map(|_| ())
}
