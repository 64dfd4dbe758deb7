//! Node management calls on the local engine (managers only): the node list with what the
//! keeper needs, role and availability changes (read-modify-write with the node's version),
//! removal, and the count of tasks still meant to run on a node.

use crate::engine::{BollardEngine, Engine, EngineError};
use bollard::models::{NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, Reachability};
use bollard::query_parameters::{
    DeleteNodeOptionsBuilder, ListNodesOptions, ListTasksOptionsBuilder, UpdateNodeOptionsBuilder,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use swarmstrap_wire::Role;

type Result<T> = std::result::Result<T, EngineError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

/// One node of `docker node ls`, reduced to what the lifecycle code decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub availability: Availability,
    /// Status.State == ready.
    pub ready: bool,
    /// `ready`, `down`, `disconnected`, `unknown`.
    pub state: String,
    pub leader: bool,
    /// Managers: ManagerStatus.Reachability == reachable.
    pub reachable: Option<bool>,
    /// Managers: `ip:2377`.
    pub manager_addr: Option<String>,
    /// Status.Addr: the node's IP as the managers see it (its advertise address).
    pub addr: Option<String>,
}

impl NodeView {
    /// What is wrong with it, in a word for log lines: `down`, `unreachable`, `ready`, ...
    pub fn condition(&self) -> &str {
        if self.ready && self.role == Role::Manager && !self.reachable_manager() {
            if self.outside_raft() {
                "not in raft"
            } else {
                "unreachable"
            }
        } else {
            &self.state
        }
    }

    /// A manager that takes part in raft, or a worker that runs tasks. The leader counts even
    /// while its engine still reports its own reachability as `unknown` (for a few seconds
    /// after an election): it leads raft, so it is in it.
    pub fn healthy(&self) -> bool {
        match self.role {
            Role::Manager => self.ready && self.reachable_manager(),
            Role::Worker => self.ready,
        }
    }

    fn reachable_manager(&self) -> bool {
        self.reachable == Some(true) || self.leader
    }

    /// A node whose role is manager but that is not a raft member (no manager status: it was
    /// promoted and never joined raft). The engine refuses to demote it (`can't find manager in
    /// raft memberlist`); once it is down it can only be removed.
    pub fn outside_raft(&self) -> bool {
        self.role == Role::Manager && self.reachable.is_none()
    }
}

pub async fn list(engine: &BollardEngine) -> Result<Vec<NodeView>> {
    let c = engine.client().await?;
    let nodes = c
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map_err(|e| engine.map_err(e))?;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let spec = n.spec.unwrap_or_default();
            let ms = n.manager_status;
            let state = n.status.as_ref().and_then(|s| s.state);
            let status_addr = n.status.as_ref().and_then(|s| s.addr.clone());
            NodeView {
                id: n.id.unwrap_or_default(),
                hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
                role: match spec.role {
                    Some(NodeSpecRoleEnum::MANAGER) => Role::Manager,
                    _ => Role::Worker,
                },
                availability: match spec.availability {
                    Some(NodeSpecAvailabilityEnum::DRAIN) => Availability::Drain,
                    Some(NodeSpecAvailabilityEnum::PAUSE) => Availability::Pause,
                    _ => Availability::Active,
                },
                ready: state == Some(NodeState::READY),
                state: match state {
                    Some(NodeState::READY) => "ready",
                    Some(NodeState::DOWN) => "down",
                    Some(NodeState::DISCONNECTED) => "disconnected",
                    _ => "unknown",
                }
                .to_string(),
                leader: ms.as_ref().and_then(|m| m.leader).unwrap_or(false),
                reachable: ms
                    .as_ref()
                    .and_then(|m| m.reachability)
                    .map(|r| r == Reachability::REACHABLE),
                manager_addr: ms.and_then(|m| m.addr).filter(|a| !a.is_empty()),
                addr: status_addr.filter(|a| !a.is_empty() && a != "0.0.0.0"),
            }
        })
        .collect())
}

/// Read the node's spec and version, change it, write it back (the engine refuses a write
/// based on an old version; callers retry on their next pass).
async fn update(
    engine: &BollardEngine,
    id: &str,
    change: impl FnOnce(&mut bollard::models::NodeSpec),
) -> Result<()> {
    let c = engine.client().await?;
    let node = c.inspect_node(id).await.map_err(|e| engine.map_err(e))?;
    let version = node
        .version
        .and_then(|v| v.index)
        .ok_or_else(|| EngineError::Protocol {
            host: engine.describe(),
            message: format!("node {id} has no version"),
        })?;
    let mut spec = node.spec.unwrap_or_default();
    change(&mut spec);
    c.update_node(
        id,
        spec,
        UpdateNodeOptionsBuilder::default()
            .version(version as i64)
            .build(),
    )
    .await
    .map_err(|e| engine.map_err(e))
}

pub async fn set_role(engine: &BollardEngine, id: &str, role: Role) -> Result<()> {
    update(engine, id, |s| {
        s.role = Some(match role {
            Role::Manager => NodeSpecRoleEnum::MANAGER,
            Role::Worker => NodeSpecRoleEnum::WORKER,
        })
    })
    .await
}

pub async fn set_availability(engine: &BollardEngine, id: &str, a: Availability) -> Result<()> {
    update(engine, id, |s| {
        s.availability = Some(match a {
            Availability::Active => NodeSpecAvailabilityEnum::ACTIVE,
            Availability::Pause => NodeSpecAvailabilityEnum::PAUSE,
            Availability::Drain => NodeSpecAvailabilityEnum::DRAIN,
        })
    })
    .await
}

pub async fn remove(engine: &BollardEngine, id: &str, force: bool) -> Result<()> {
    let c = engine.client().await?;
    c.delete_node(
        id,
        Some(DeleteNodeOptionsBuilder::default().force(force).build()),
    )
    .await
    .map_err(|e| engine.map_err(e))
}

/// Tasks of services that the orchestrator still wants running on node `id` (after a drain
/// they are moved elsewhere and this drops to 0; global services' tasks on a drained node are
/// shut down too).
pub async fn tasks_on(engine: &BollardEngine, id: &str) -> Result<usize> {
    let c = engine.client().await?;
    let mut filters: HashMap<&str, Vec<&str>> = HashMap::new();
    filters.insert("node", vec![id]);
    filters.insert("desired-state", vec!["running"]);
    let tasks = c
        .list_tasks(Some(
            ListTasksOptionsBuilder::default().filters(&filters).build(),
        ))
        .await
        .map_err(|e| engine.map_err(e))?;
    Ok(tasks.len())
}

/// Majority of `n` raft members.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_raft_sizes() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }
}
